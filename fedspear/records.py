"""The run folder (``output_dir``): resolved config, per-round metrics, adapters, checkpoint and report.

Layout::

    run_dir/
      config.yaml             the resolved Config (cfg.to_yaml())
      metrics.jsonl           one JSON object per round (round 0 = the initial evaluation)
      adapters/round_NNNN/    global adapters saved at evaluation rounds
      checkpoint/             the latest resumable state (written by the simulator)
      plots/*.png, report.md  written by :func:`write_report`

metrics.jsonl is append-only and each row is flushed and fsync-ed, so a crash loses at most the row being
written; :meth:`RunRecord.read_metrics` skips such a truncated last line.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import yaml

from fedspear import plots
from fedspear.config import Config
from fedspear.plots import nested_get

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
REPORT_FILE = "report.md"
_RUN_MARKERS = (CONFIG_FILE, METRICS_FILE, "checkpoint", "adapters")


class RunExistsError(ValueError):
    """The output folder already holds a started or finished run."""


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
        """Whether the folder already holds a started or finished run (config, metrics, checkpoint or adapters)."""
        return any((self.run_dir / name).exists() for name in _RUN_MARKERS)

    def create(self, cfg: Config, resume: bool = False) -> None:
        """Create the folder and write config.yaml.

        Args:
            cfg: the resolved configuration.
            resume: continue a run in this folder; its config.yaml is kept (written only if missing).

        Raises:
            RunExistsError: when not resuming and the folder already holds a run.
        """
        if not resume and self.has_run():
            raise RunExistsError(
                f"output folder {self.run_dir} already holds a run; continue it with "
                f"`fedspear run --resume {self.run_dir}` or choose a new output_dir (e.g. output_dir={self.run_dir}_2)"
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not (resume and self.config_path.exists()):
            _fsync_write(self.config_path, cfg.to_yaml(), "w")

    def append_metrics(self, row: dict[str, Any]) -> None:
        """Append one row to metrics.jsonl (NaN/inf stored as null), flushed and fsync-ed.

        A partial last line left by a crash is cut off first, so the new row starts on its own line.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._drop_partial_last_line()
        line = json.dumps(_jsonable(row), allow_nan=False, ensure_ascii=False)
        _fsync_write(self.metrics_path, line + "\n", "a")

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
            ValueError: if a line other than the last is not a JSON object (the file is corrupt).
        """
        if not self.metrics_path.exists():
            return []
        lines = self.metrics_path.read_text(encoding="utf-8").splitlines()
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
                raise ValueError(f"{self.metrics_path}:{lineno}: corrupt metrics row ({exc})") from None
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
        f"# Run report: {run_dir.name}",
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
            _fmt(nested_get(row, "eval", "accuracy")),
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
