"""The run folder (``output_dir``): resolved config, per-round metrics, adapters, checkpoint and report.

Layout::

    run_dir/
      config.yaml             the resolved Config (cfg.to_yaml())
      metrics.jsonl           one JSON object per round (round 0 = the initial evaluation)
      adapters/round_NNNN/    global adapters saved at evaluation rounds
      checkpoint/state.safetensors  the latest resumable state: one file, committed atomically
      plots/*.png, report.md  written by :func:`write_report`

metrics.jsonl is append-only and each row is flushed and fsync-ed, so a crash loses at most the row being
written; :meth:`RunRecord.read_metrics` skips such a truncated last line.

The checkpoint is one safetensors file whose metadata names its round, the length and SHA-256 of
metrics.jsonl up to that round's row, and a SHA-256 over its own header entries, metadata and tensor bytes.
It is written to a temporary file, fsync-ed, renamed over the old one and the folder fsync-ed, so the round
can never disagree with the tensors; :meth:`RunRecord.read_checkpoint` verifies all of it before a resume
and raises :class:`RunFileError` naming the damaged file. A folder whose run never completed round 0 holds
no checkpoint and can be started again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from fedspear import plots
from fedspear.config import Config
from fedspear.plots import nested_get

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
REPORT_FILE = "report.md"
CHECKPOINT_FILE = "state.safetensors"
CHECKPOINT_FORMAT = "fedspear-checkpoint-1"
REPORT_TITLE = "# Run report: "
# What a start that failed before its first checkpoint may leave; removed when the folder is started again.
_START_LEFTOVERS = (METRICS_FILE, "data_stats.json", REPORT_FILE, "plots", "adapters", "checkpoint")

# Test hook: called with a label after every durable write of the run folder ("config", "metrics",
# "adapter", "checkpoint.tmp", "checkpoint.replace"); a test makes it raise to simulate a kill at that point.
fault_hook: Callable[[str], None] | None = None


class RunExistsError(ValueError):
    """The output folder already holds a started or finished run."""


class RunDirError(ValueError):
    """``output_dir`` cannot hold a run (empty, a file, below a file, not writable)."""


class RunFileError(ValueError):
    """A file of the run folder (checkpoint, metrics.jsonl) is damaged or disagrees with the others."""


def durable_step(label: str) -> None:
    """Mark the end of one durable write of the run folder (calls :data:`fault_hook` when a test set it)."""
    if fault_hook is not None:  # looked up at call time, so tests can patch it
        fault_hook(label)


def fsync_dir(path: Path) -> None:
    """fsync a folder, so renames and new files in it survive a power loss (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _jsonable(value: Any) -> Any:
    """A copy of ``value`` that ``json.dumps(allow_nan=False)`` accepts: NaN/inf become None,
    numpy/torch scalars become Python numbers, tuples and sets become lists, other objects their str()."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    item = getattr(value, "item", None)  # numpy scalars, one-element tensors
    if callable(item):
        try:
            return _jsonable(item())
        except (TypeError, ValueError, RuntimeError):
            pass
    return str(value)


def _fsync_write(path: Path, text: str, mode: str) -> None:
    with open(path, mode, encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def check_output_dir(run_dir: Path, key: str = "output_dir") -> None:
    """Raise :class:`RunDirError` unless ``run_dir`` is, or can be made, a writable folder.

    Refused: an empty path (it would write into the current folder), an existing regular file, a path below
    a file, a folder that cannot be created or written.
    """
    text = str(run_dir).strip()
    if not text or Path(text) == Path("."):
        raise RunDirError(f"{key} is empty; set it to a new folder, e.g. {key}=runs/my-run")
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{key}={path} is an existing file, not a folder; choose a folder path")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise RunDirError(f"{key}={path}: {parent} is a file, so no folder can be made below it; "
                                  "choose another path")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".fedspear-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise RunDirError(f"{key}={path} cannot be written ({exc.strerror or exc}); choose a folder you can "
                          "write to") from None


class RunRecord:
    """Reads and writes one run folder.

    Args:
        run_dir: the run folder (``cfg.output_dir``); nothing is created until :meth:`create`.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.config_path = self.run_dir / CONFIG_FILE
        self.metrics_path = self.run_dir / METRICS_FILE
        self.report_path = self.run_dir / REPORT_FILE

    def has_run(self) -> bool:
        """Whether the folder holds a run that completed round 0: a checkpoint, or metrics rows of rounds >= 1.

        A folder left by a start that failed earlier (config.yaml, perhaps a round-0 row) is not a run.
        """
        ckpt = self.checkpoint_dir()
        if (ckpt / CHECKPOINT_FILE).exists() or (ckpt / "round.json").exists():
            return True
        try:
            return self.last_completed_round() >= 1
        except ValueError:  # a damaged metrics file: something is there, never overwrite it silently
            return True

    def create(self, cfg: Config, resume: bool = False) -> None:
        """Create the folder and write config.yaml.

        A folder whose run never completed round 0 is reused: what that start left (metrics, adapters,
        report) is removed first, with a warning.

        Args:
            cfg: the resolved configuration.
            resume: continue a run in this folder; its config.yaml is kept (written only if missing).

        Raises:
            RunDirError: the folder cannot be created or written (see :func:`check_output_dir`).
            RunExistsError: when not resuming and the folder already holds a run.
        """
        check_output_dir(self.run_dir)
        if not resume and self.has_run():
            raise RunExistsError(
                f"output folder {self.run_dir} already holds a run; continue it with "
                f"`fedspear run --resume {self.run_dir}` or choose a new output_dir (e.g. output_dir={self.run_dir}_2)"
            )
        if not resume:
            self._clear_failed_start()
        if not (resume and self.config_path.exists()):
            _fsync_write(self.config_path, cfg.to_yaml(), "w")
            fsync_dir(self.run_dir)
            durable_step("config")

    def _clear_failed_start(self) -> None:
        left = [name for name in _START_LEFTOVERS if (self.run_dir / name).exists()]
        if self.config_path.exists() or left:
            logger.warning("%s holds a start that never completed round 0; starting it again (removing %s)",
                           self.run_dir, ", ".join(left) or "nothing")
        for name in left:
            path = self.run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()

    def append_metrics(self, row: dict[str, Any]) -> None:
        """Append one row to metrics.jsonl (NaN/inf stored as null), flushed and fsync-ed.

        A partial last line left by a crash is cut off first, so the new row starts on its own line.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._drop_partial_last_line()
        line = json.dumps(_jsonable(row), allow_nan=False, ensure_ascii=False)
        _fsync_write(self.metrics_path, line + "\n", "a")
        durable_step("metrics")

    def _drop_partial_last_line(self) -> None:
        if not self.metrics_path.exists():
            return
        data = self.metrics_path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            logger.warning("%s: dropping a partial last line (%d bytes)", self.metrics_path, len(data) - keep)
            with open(self.metrics_path, "r+b") as fh:
                fh.truncate(keep)
                fh.flush()
                os.fsync(fh.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        """All rows of metrics.jsonl ([] when there is none); an unreadable last line (a crash) is skipped.

        Raises:
            RunFileError: a line other than the last is not a JSON object, or the file is not UTF-8 text.
        """
        if not self.metrics_path.exists():
            return []
        try:
            lines = self.metrics_path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise RunFileError(f"{self.metrics_path}: not UTF-8 text ({exc.reason} at byte {exc.start}); the file "
                               "is damaged: restore it from a backup") from None
        rows: list[dict[str, Any]] = []
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                if lineno == len(lines):
                    logger.warning("%s: skipping a truncated last line (%s)", self.metrics_path, exc)
                    break
                raise RunFileError(f"{self.metrics_path}:{lineno}: corrupt metrics row ({exc}); the file is "
                                   "damaged: restore it from a backup") from None
            rows.append(row)
        return rows

    def last_completed_round(self) -> int:
        """The highest "round" in metrics.jsonl, or -1 when no row has one."""
        rounds = [row["round"] for row in self.read_metrics() if isinstance(row.get("round"), int)]
        return max(rounds, default=-1)

    def adapter_dir(self, round_idx: int) -> Path:
        """Folder of the global adapter saved after round ``round_idx`` (adapters/round_NNNN)."""
        return self.run_dir / "adapters" / f"round_{round_idx:04d}"

    def checkpoint_dir(self) -> Path:
        """Folder of the latest resumable state."""
        return self.run_dir / "checkpoint"

    def truncate_metrics_after(self, round_idx: int) -> None:
        """Keep only rows with round <= ``round_idx`` (rows without a round are kept); atomic rewrite.

        Used on resume, to drop rows of rounds after the checkpoint.
        """
        rows = [
            row for row in self.read_metrics() if not isinstance(row.get("round"), int) or row["round"] <= round_idx
        ]
        tmp = self.metrics_path.with_name(METRICS_FILE + ".tmp")
        text = "".join(json.dumps(row, allow_nan=False, ensure_ascii=False) + "\n" for row in rows)
        _fsync_write(tmp, text, "w")
        os.replace(tmp, self.metrics_path)
        fsync_dir(self.run_dir)

    # ------------------------------------------------------------------------------------------ checkpoint

    def checkpoint_path(self) -> Path:
        """The checkpoint file, ``checkpoint/state.safetensors``."""
        return self.checkpoint_dir() / CHECKPOINT_FILE

    def has_checkpoint(self) -> bool:
        """Whether a checkpoint file exists (it is verified only when read)."""
        return self.checkpoint_path().is_file()

    def write_checkpoint(self, tensors: dict[str, torch.Tensor], round_idx: int) -> None:
        """Commit the resumable state of round ``round_idx`` as one atomically replaced, fsync-ed file.

        The metadata holds the round, the byte length and SHA-256 of metrics.jsonl as it is now (it must
        already hold the round's row) and a SHA-256 over the header entries, the metadata and the tensor bytes.

        Args:
            tensors: name -> CPU tensor (any shapes and dtypes).
            round_idx: the last completed round.
        """
        from safetensors.torch import save

        metrics = self.metrics_path.read_bytes() if self.metrics_path.exists() else b""
        meta = {"format": CHECKPOINT_FORMAT, "round": str(round_idx), "metrics_bytes": str(len(metrics)),
                "metrics_sha256": hashlib.sha256(metrics).hexdigest()}
        tensors = {k: v.contiguous() for k, v in tensors.items()}
        header, data = _split_safetensors(save(tensors, metadata=meta))
        meta["sha256"] = _checkpoint_digest(header, data)
        blob = save(tensors, metadata=meta)
        ckpt = self.checkpoint_dir()
        ckpt.mkdir(parents=True, exist_ok=True)
        tmp = ckpt / (CHECKPOINT_FILE + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        durable_step("checkpoint.tmp")
        os.replace(tmp, self.checkpoint_path())
        fsync_dir(ckpt)
        durable_step("checkpoint.replace")

    def read_checkpoint(self) -> tuple[int, dict[str, torch.Tensor]]:
        """Read and verify the checkpoint and metrics.jsonl up to it; cut metrics rows written after it.

        Returns:
            (round, tensors).

        Raises:
            RunFileError: the checkpoint is missing, unreadable, truncated, altered (checksum), or metrics.jsonl
                is shorter than or differs from what the checkpoint recorded; the message names the file and
                what to do.
        """
        from safetensors.torch import load

        path = self.checkpoint_path()
        if not path.is_file():
            raise RunFileError(f"{path}: no checkpoint; {self._restart_hint()}")
        blob = path.read_bytes()
        try:
            header, data = _split_safetensors(blob)
            meta = header.get("__metadata__") or {}
            if meta.get("format") != CHECKPOINT_FORMAT:
                raise ValueError("no fedspear checkpoint metadata (written by another program or version)")
            if meta.get("sha256") != _checkpoint_digest(header, data):
                raise ValueError("checksum mismatch: its bytes were altered")
            round_idx, metrics_len = int(meta["round"]), int(meta["metrics_bytes"])
            metrics_sha = str(meta["metrics_sha256"])
            tensors = load(blob)
        except (ValueError, KeyError, TypeError, OverflowError) as exc:
            raise RunFileError(f"{path}: damaged checkpoint ({_short(exc)}); {self._restart_hint()}") from None
        metrics = self.metrics_path.read_bytes() if self.metrics_path.exists() else b""
        if len(metrics) < metrics_len or hashlib.sha256(metrics[:metrics_len]).hexdigest() != metrics_sha:
            problem = "shorter than" if len(metrics) < metrics_len else "different from"
            raise RunFileError(
                f"{self.metrics_path}: {problem} what the checkpoint of round {round_idx} recorded (damaged or "
                f"edited); restore it from a backup, or {self._restart_hint()}"
            )
        if len(metrics) > metrics_len:  # rows of a round that ended after its row but before its checkpoint
            with open(self.metrics_path, "r+b") as fh:
                fh.truncate(metrics_len)
                fh.flush()
                os.fsync(fh.fileno())
        return round_idx, tensors

    def _restart_hint(self) -> str:
        saved = sorted(p.name for p in (self.run_dir / "adapters").glob("round_*") if p.is_dir())
        last = f" (its last saved adapter is adapters/{saved[-1]})" if saved else ""
        return (f"this run cannot be resumed{last}: start it again with `fedspear run` and a new output_dir, "
                f"or delete {self.run_dir} and rerun")


def _split_safetensors(blob: bytes) -> tuple[dict[str, Any], bytes]:
    """(header JSON, tensor data) of a safetensors file's bytes; ValueError when the layout is broken."""
    if len(blob) < 8:
        raise ValueError(f"only {len(blob)} bytes")
    (size,) = struct.unpack("<Q", blob[:8])
    if size > len(blob) - 8:
        raise ValueError(f"header of {size} bytes in a file of {len(blob)} (truncated)")
    try:
        header = json.loads(blob[8 : 8 + size].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"unreadable header: {exc}") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    return header, blob[8 + size :]


def _checkpoint_digest(header: dict[str, Any], data: bytes) -> str:
    meta = {k: v for k, v in (header.get("__metadata__") or {}).items() if k != "sha256"}
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    digest = hashlib.sha256(json.dumps([entries, meta], sort_keys=True).encode())
    digest.update(data)
    return digest.hexdigest()


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


# --------------------------------------------------------------------------- report


def _num(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _fmt(value: Any, digits: int = 4) -> str:
    number = _num(value)
    if number is None:
        return "-"
    return str(int(number)) if isinstance(value, int) else f"{number:.{digits}f}"


def _fmt_duration(seconds: float) -> str:
    whole = int(round(seconds))
    return f"{seconds:.1f} s ({whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d})"


def _round_time(row: dict[str, Any]) -> float | None:
    """Seconds of the round's client work and aggregation, without evaluation: time.round_s, or, when that
    is absent, the sum of the row's other time parts except eval_s."""
    times = row.get("time")
    if not isinstance(times, dict):
        return None
    if _num(times.get("round_s")) is not None:
        return float(times["round_s"])
    parts = [_num(v) for k, v in times.items() if k != "eval_s"]
    parts = [p for p in parts if p is not None]
    return sum(parts) if parts else None


def _row_wall_time(row: dict[str, Any]) -> float | None:
    """Seconds of the whole row: :func:`_round_time` plus time.eval_s (the simulator times the evaluation
    separately from round_s)."""
    parts = [_round_time(row), _num(nested_get(row, "time", "eval_s"))]
    parts = [p for p in parts if p is not None]
    return sum(parts) if parts else None


def _mean_y0_accuracy(row: dict[str, Any]) -> float | None:
    """aggregate.y0_accuracy, else the plain mean of the clients' metrics.y0_accuracy."""
    value = _num(nested_get(row, "aggregate", "y0_accuracy"))
    if value is not None:
        return value
    clients = row.get("clients")
    accs = [_num(nested_get(c, "metrics", "y0_accuracy")) for c in clients] if isinstance(clients, list) else []
    accs = [a for a in accs if a is not None]
    return sum(accs) / len(accs) if accs else None


def _total(metrics: list[dict[str, Any]], *keys: str) -> float | None:
    values = [_num(nested_get(row, *keys)) for row in metrics]
    values = [v for v in values if v is not None]
    return sum(values) if values else None


def _header(cfg: dict[str, Any], run_dir: Path) -> list[str]:
    def get(section: str, key: str) -> Any:
        value = cfg.get(section)
        return value.get(key, "?") if isinstance(value, dict) else "?"

    return [
        f"{REPORT_TITLE}{run_dir.name}",
        "",
        f"- algorithm: {get('algorithm', 'name')}",
        f"- task: {get('data', 'dataset')}",
        f"- model: {get('model', 'model_name')}",
        f"- rounds: {get('fl', 'rounds')}",
        f"- clients: {get('data', 'num_clients')} ({get('fl', 'clients_per_round')} per round), "
        f"aggregation {get('fl', 'aggregation')}",
        "",
    ]


def _summary(metrics: list[dict[str, Any]]) -> list[str]:
    evals = [
        (row.get("round", "?"), row["eval"])
        for row in metrics
        if _num(nested_get(row, "eval", "accuracy")) is not None
    ]
    items: list[tuple[str, str]] = []
    completed = [row["round"] for row in metrics if isinstance(row.get("round"), int)]
    items.append(("rounds completed", str(max(completed)) if completed else "none"))
    round0 = [ev for rnd, ev in evals if rnd == 0]
    if round0:
        items.append(("round-0 accuracy", _fmt(round0[0]["accuracy"])))
    if evals:
        final_round, final = evals[-1]
        best_round, best = max(evals, key=lambda item: item[1]["accuracy"])
        items.append(
            (
                "final accuracy",
                f"{_fmt(final['accuracy'])} (round {final_round}, n={final.get('n', '?')}, "
                f"{final.get('method', '?')})",
            )
        )
        items.append(("best accuracy", f"{_fmt(best['accuracy'])} (round {best_round})"))
        for name, acc in (final.get("groups") or {}).items():
            items.append((f"final accuracy, group {name}", _fmt(acc)))
    walls = [w for w in (_row_wall_time(row) for row in metrics) if w is not None]
    if walls:
        items.append(("total wall time", _fmt_duration(sum(walls))))
    round_times = [t for t in (_round_time(row) for row in metrics) if t is not None]
    if round_times:
        items.append(("wall time without evaluation", _fmt_duration(sum(round_times))))
    for label, key in (
        ("tokens generated", "tokens_generated"),
        ("tokens trained", "tokens_trained"),
        ("successful revisions", "revision_successes"),
        ("samples needing revision", "needs_revision"),
    ):
        total = _total(metrics, "aggregate", key)
        if total is not None:
            items.append((label, str(int(total))))
    privacy = next((row["privacy"] for row in reversed(metrics) if isinstance(row.get("privacy"), dict)), None)
    if privacy is not None:
        eps = _num(privacy.get("epsilon"))
        items.append((f"privacy spent ({privacy.get('mode')} DP)",
                      f"epsilon {_fmt(eps, 3) if eps is not None else 'inf (no noise)'} at delta {privacy.get('delta')} "
                      f"after {privacy.get('rounds')} rounds (sigma {privacy.get('noise_multiplier')}, clip "
                      f"{privacy.get('clip_norm')}, sampling rate {_fmt(privacy.get('sampling_rate'), 3)}; "
                      "dp-accounting RDP)"))
    excluded = _total(metrics, "aggregation", "num_excluded_nonfinite")
    if excluded:
        items.append(("client updates excluded (non-finite)", str(int(excluded))))
    refused = [str(row.get("round")) for row in metrics if nested_get(row, "aggregation", "refused_nonfinite_aggregate")]
    if refused:
        items.append(("aggregates refused (non-finite)", f"rounds {', '.join(refused)}"))
    diverged = [str(row.get("round")) for row in metrics if nested_get(row, "eval", "diverged")]
    if diverged:
        items.append(("**diverged** (non-finite scores, no accuracy)", f"rounds {', '.join(diverged)}"))
    stopped = [row for row in metrics if row.get("stopped")]
    if stopped:
        items.append(("**run stopped**", f"after round {stopped[-1].get('round')}: {stopped[-1]['stopped']}"))
    lines = ["## Summary", "", "| metric | value |", "| --- | --- |"]
    lines += [f"| {label} | {value} |" for label, value in items]
    return lines + [""]


def _per_round_table(metrics: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Per round",
        "",
        "| round | eval accuracy | mean y0 accuracy | wins | losses | revisions fixed | needing revision | wall time (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in metrics:
        agg = row.get("aggregate") if isinstance(row.get("aggregate"), dict) else {}
        cells = [
            str(row.get("round", "-")),
            "diverged" if nested_get(row, "eval", "diverged") else _fmt(nested_get(row, "eval", "accuracy")),
            _fmt(_mean_y0_accuracy(row)),
            _fmt(agg.get("wins")),
            _fmt(agg.get("losses")),
            _fmt(agg.get("revision_successes")),
            _fmt(agg.get("needs_revision")),
            _fmt(_row_wall_time(row), digits=1),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _plots(metrics: list[dict[str, Any]], run_dir: Path) -> list[str]:
    plot_dir = run_dir / "plots"
    cumulative: dict[str, list[plots.Point]] = {"with evaluation": [], "without evaluation": []}
    totals = [0.0, 0.0]
    for row in metrics:
        if _num(row.get("round")) is None:
            continue
        for i, (label, seconds) in enumerate(zip(cumulative, (_row_wall_time(row), _round_time(row)), strict=True)):
            if seconds is not None:
                totals[i] += seconds
                cumulative[label].append((float(row["round"]), totals[i]))
    made = [
        ("Evaluation accuracy", plots.plot_accuracy(metrics, plot_dir / "accuracy.png")),
        ("Revisions", plots.plot_revisions(metrics, plot_dir / "revisions.png")),
        (
            "Cumulative wall time",
            plots.plot_series(cumulative, "Cumulative wall time", "round", "seconds", plot_dir / "wall_time.png"),
        ),
    ]
    lines = ["## Plots", ""]
    for title, path in made:
        if path is not None:
            lines += [f"![{title}]({path.relative_to(run_dir).as_posix()})", ""]
    return lines if len(lines) > 2 else []


def is_own_report(path: Path) -> bool:
    """Whether ``path`` is missing or a report written by :func:`write_report` (it starts with its title)."""
    if not path.exists():
        return True
    try:
        with open(path, "rb") as fh:
            return path.is_file() and fh.read(len(REPORT_TITLE)).decode("utf-8", "replace") == REPORT_TITLE
    except OSError:
        return False


def write_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.md`` (and ``run_dir/plots/*.png``) from config.yaml and metrics.jsonl.

    Works on partial runs and on any algorithm's metrics: missing keys show as "-" and plots with no data
    are left out.

    Args:
        run_dir: the run folder.

    Returns:
        The path of report.md.
    """
    run_dir = Path(run_dir)
    record = RunRecord(run_dir)
    cfg: dict[str, Any] = {}
    if record.config_path.exists():
        loaded = yaml.safe_load(record.config_path.read_text(encoding="utf-8"))
        cfg = loaded if isinstance(loaded, dict) else {}
    metrics = sorted(record.read_metrics(), key=lambda row: _num(row.get("round")) or 0.0)
    lines = _header(cfg, run_dir)
    if not record.config_path.exists():
        lines += [f"(no {CONFIG_FILE} in this folder)", ""]
    lines += _summary(metrics) + _plots(metrics, run_dir) + _per_round_table(metrics)
    record.report_path.write_text("\n".join(lines), encoding="utf-8")
    return record.report_path
