"""Experiment tracking: per-round metrics to TensorBoard and/or Weights & Biases (``logging.report_to``).

Like TRL's ``report_to``: ``logging.report_to=[tensorboard,wandb]`` logs, for every metrics row the server writes
(round 0 included), the scalars of :func:`round_scalars` at step = round; the resolved config as
hyperparameters; and at the end the final adapter's path. :class:`Trackers` is one of the round observers of
:class:`FederatedServer` (:mod:`fedspear.federation.observers`), so the simulator, ``fedspear compare`` (which runs
the simulator), the Flower ServerApp and the served federation all log alike.

TensorBoard event files go to ``<run_dir>/tensorboard`` (``tensorboard --logdir runs``); wandb writes its run
folder under ``<run_dir>/wandb`` in ``logging.wandb_mode`` (``offline`` by default: no network, upload later with
``wandb sync <run_dir>/wandb/offline-run-*``). Both libraries are the optional extra ``fedspear[track]``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedspear import metrics
from fedspear.config import Config, ConfigError
from fedspear.federation.observers import RoundObserver
from fedspear.federation.rounds import RoundRow, as_row

logger = logging.getLogger("fedspear")

# Summed counts of the row's "aggregate" logged under train/: the metric registry's (fedspear.metrics).
TRAIN_KEYS = metrics.TRACKED


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def round_scalars(row: RoundRow | Mapping[str, Any]) -> dict[str, float]:
    """The scalars of one round row (or metrics.jsonl dict), keyed for a tracker.

    Keys: ``eval/accuracy`` and ``eval/group/<name>``; ``train/<count>`` (:data:`TRAIN_KEYS`) and ``train/lr``;
    ``loss/<name>`` = the clients' mean of each ``loss_*`` metric; ``time/<phase>_s`` (seconds);
    ``aggregation/<count>``; ``resources/<figure>`` (the clients' peak memory in MB and adapter bytes, see
    fedspear/federation/resources.py); ``privacy/epsilon`` (and ``privacy/delta``) when DP is on. Missing or
    non-numeric values are left out.

    Args:
        row: a round's row (:class:`~fedspear.federation.rounds.RoundRow`, or its metrics.jsonl dict).

    Returns:
        ``{tag: value}``.
    """
    out: dict[str, float] = {}

    def put(tag: str, value: Any) -> None:
        number = _number(value)
        if number is not None:
            out[tag] = number

    row = as_row(row)
    ev = row.eval or {}
    put("eval/accuracy", ev.get("accuracy"))
    for group, acc in (ev.get("groups") or {}).items():
        put(f"eval/group/{group}", acc)
    agg = row.aggregate or {}
    for key in TRAIN_KEYS:
        put(f"train/{key}", agg.get(key))
    put("train/lr", row.lr)
    losses: dict[str, list[float]] = {}
    for client in row.clients or []:
        for key, value in (client.metrics or {}).items():
            if key.startswith("loss_") and _number(value) is not None:
                losses.setdefault(key[len("loss_"):], []).append(float(value))
    for name, values in losses.items():
        out[f"loss/{name}"] = sum(values) / len(values)
    for key, value in (row.time or {}).items():
        put(f"time/{key}", value)
    for key, value in (row.aggregation or {}).items():
        put(f"aggregation/{key}", value)
    for key, value in (row.resources or {}).items():
        put(f"resources/{key}", value)
    privacy = row.privacy or {}
    put("privacy/epsilon", privacy.get("epsilon"))
    if privacy:
        put("privacy/delta", privacy.get("delta"))
    return out


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"fl": {"rounds": 3}}`` -> ``{"fl.rounds": 3}``; lists and None become text (TensorBoard hparams)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return out


class _TensorBoard:
    def __init__(self, cfg: Config, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("logging.report_to: tensorboard is not installed; pip install 'fedspear[track]' "
                              "or drop tensorboard from logging.report_to") from None
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.writer.add_text("config", "```yaml\n" + cfg.to_yaml() + "```", 0)

    def log(self, scalars: dict[str, float], step: int) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def finish(self, final_adapter: Path, hparams: dict[str, Any], final: dict[str, float]) -> None:
        self.writer.add_text("final_adapter", str(final_adapter), 0)
        self.writer.add_hparams(hparams, {f"hparam/{k}": v for k, v in final.items()}, run_name="hparams")
        self.writer.close()

    def abort(self, reason: str) -> None:
        self.writer.add_text("stopped", reason, 0)
        self.writer.close()


class _Wandb:
    def __init__(self, cfg: Config, run_dir: Path) -> None:
        try:
            import wandb
        except ImportError:
            raise ConfigError("logging.report_to: wandb is not installed; pip install 'fedspear[track]' "
                              "or drop wandb from logging.report_to") from None
        settings = wandb.Settings(quiet=True, console="off", x_disable_stats=True, disable_git=True,
                                  save_code=False)
        self.run = wandb.init(project=cfg.logging.wandb_project, name=run_dir.name, dir=str(run_dir),
                              config=cfg.to_dict(), mode=cfg.logging.wandb_mode, reinit="create_new",
                              settings=settings)

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def finish(self, final_adapter: Path, hparams: dict[str, Any], final: dict[str, float]) -> None:
        self.run.summary["final_adapter"] = str(final_adapter)
        self.run.finish()

    def abort(self, reason: str) -> None:
        self.run.summary["stopped"] = reason
        self.run.finish(exit_code=1)  # wandb marks the run failed, not finished


_BACKENDS = {"tensorboard": _TensorBoard, "wandb": _Wandb}


def _start_failure(name: str, cfg: Config, exc: BaseException) -> str:
    """The one-line message for a tracker whose start raised ``exc``."""
    detail = " ".join(f"{type(exc).__name__}: {exc}".split())
    detail = detail if len(detail) <= 200 else detail[:197] + "..."
    if name == "wandb" and cfg.logging.wandb_mode == "online":
        fix = ("log in first (`wandb login`, or set WANDB_API_KEY), or set logging.wandb_mode=offline (no network; "
               "`wandb sync` later)")
    else:
        fix = f"drop {name} from logging.report_to, or fix its setup"
    return f"logging.report_to: {name} could not start ({detail}); {fix}"


class Trackers(RoundObserver):
    """The trackers ``logging.report_to`` names for one run; a no-op when it is empty.

    Backends open at :meth:`open` (the server starts its observers before round 0) or else at the first
    :meth:`log_round`, and close in :meth:`finish` (or :meth:`abort`). As a round observer
    (:class:`~fedspear.federation.observers.RoundObserver`): ``on_start`` opens, ``on_round`` logs the row,
    ``on_finish`` finishes and ``on_abort`` aborts.

    Args:
        cfg: the resolved run configuration (logged as hyperparameters).
        run_dir: the run folder.

    Raises:
        ConfigError: (when opened) a named tracker that is not installed or cannot start.
    """

    def __init__(self, cfg: Config, run_dir: Path) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.backends: list[Any] | None = None
        self.last: dict[str, float] = {}

    def _open(self) -> list[Any]:
        if self.backends is None:
            opened: list[Any] = []
            for name in dict.fromkeys(self.cfg.logging.report_to):
                try:
                    opened.append(_BACKENDS[name](self.cfg, self.run_dir))
                except Exception as exc:
                    for backend in opened:
                        backend.abort(f"logging.report_to: {name} failed to start")
                    if isinstance(exc, ConfigError):
                        raise
                    raise ConfigError(_start_failure(name, self.cfg, exc)) from exc
            self.backends = opened
        return self.backends

    def open(self) -> None:
        """Start the trackers now (a no-op when ``logging.report_to`` is empty or they are open), so one that
        cannot start stops the run before round 0 instead of after it.

        Raises:
            ConfigError: a tracker is not installed or failed to start (wandb online without a login, for
                example); the message names it and the fix.
        """
        if self.cfg.logging.report_to:
            self._open()

    def log_round(self, row: RoundRow | Mapping[str, Any]) -> None:
        """Log one round row's :func:`round_scalars` at step = its round."""
        if not self.cfg.logging.report_to:
            return
        row = as_row(row)
        scalars = round_scalars(row)
        self.last.update(scalars)
        for backend in self._open():
            backend.log(scalars, int(row.round))  # type: ignore[arg-type]  # None only in a malformed row

    def finish(self, final_adapter: Path) -> None:
        """Record the final adapter's path (and, for TensorBoard, the hparams with the last scalars) and close."""
        if not self.cfg.logging.report_to:
            return
        final = {k: v for k, v in self.last.items() if k.startswith(("eval/", "privacy/epsilon"))}
        for backend in self._open():
            backend.finish(final_adapter, _flat(self.cfg.to_dict()), final)
        self.backends = None

    def abort(self, reason: str) -> None:
        """Close the trackers of a run that stopped or failed, recording ``reason`` (wandb marks the run failed);
        trackers that were never opened stay unopened."""
        for backend in self.backends or []:
            backend.abort(reason)
        self.backends = None

    # --------------------------------------------------------------------------------- a round observer

    def on_start(self) -> None:
        self.open()

    def on_round(self, row: RoundRow) -> None:
        self.log_round(row)

    def on_finish(self, final_adapter: Path, report: Path) -> None:
        self.finish(final_adapter)

    def on_abort(self, reason: str) -> None:
        self.abort(reason)
