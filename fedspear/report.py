"""The run report: ``report.md`` and ``plots/*.png`` of a run folder, written from its config.yaml and metrics.jsonl.

Works on partial runs and on any algorithm's metrics (missing values show as "-"); the server writes it at the
end of a run and when a run stops, ``fedspear report RUN_DIR`` rewrites it. The rows are read as
:class:`~fedspear.federation.rounds.RoundRow` objects (:meth:`RunRecord.read_rows`), old and partial rows included.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from fedspear import plots
from fedspear.federation.rounds import RoundRow
from fedspear.metrics import REPORTED
from fedspear.records import CONFIG_FILE, REPORT_TITLE, RunRecord


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


def _round_time(row: RoundRow) -> float | None:
    """Seconds of the round's client work and aggregation, without evaluation: time.round_s, or, when that
    is absent, the sum of the row's other time parts except eval_s."""
    times = row.time
    if times is None:
        return None
    if _num(times.get("round_s")) is not None:
        return float(times["round_s"])
    parts = [_num(v) for k, v in times.items() if k != "eval_s"]
    parts = [p for p in parts if p is not None]
    return sum(parts) if parts else None


def _row_wall_time(row: RoundRow) -> float | None:
    """Seconds of the whole row: :func:`_round_time` plus time.eval_s (the simulator times the evaluation
    separately from round_s)."""
    parts = [_round_time(row), _num(row.value("time", "eval_s"))]
    parts = [p for p in parts if p is not None]
    return sum(parts) if parts else None


def _mean_y0_accuracy(row: RoundRow) -> float | None:
    """aggregate.y0_accuracy, else the plain mean of the clients' metrics.y0_accuracy."""
    value = _num(row.value("aggregate", "y0_accuracy"))
    if value is not None:
        return value
    accs = [_num(c.metric("y0_accuracy")) for c in row.clients or []]
    accs = [a for a in accs if a is not None]
    return sum(accs) / len(accs) if accs else None


def _total(metrics: list[RoundRow], section: str, key: str) -> float | None:
    values = [_num(row.value(section, key)) for row in metrics]
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


def _label(row: RoundRow, missing: Any = "?") -> Any:
    """The row's round as the report names it: the number, else what the file holds instead (``missing``: none)."""
    return row.round if row.round is not None else row.to_dict().get("round", missing)


def _summary(metrics: list[RoundRow]) -> list[str]:
    evals = [(_label(row), row.eval) for row in metrics if row.eval and _num(row.eval.get("accuracy")) is not None]
    items: list[tuple[str, str]] = []
    completed = [row.round for row in metrics if row.round is not None]
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
    for label, key in REPORTED:
        total = _total(metrics, "aggregate", key)
        if total is not None:
            items.append((label, str(int(total))))
    items += _resource_items(metrics)
    privacy = next((row.privacy for row in reversed(metrics) if row.privacy is not None), None)
    if privacy is not None:
        eps = _num(privacy.get("epsilon"))
        items.append((f"privacy spent ({privacy.get('mode')} DP)",
                      f"epsilon {_fmt(eps, 3) if eps is not None else 'inf (no noise)'} at delta {privacy.get('delta')} "
                      f"after {privacy.get('rounds')} rounds (sigma {privacy.get('noise_multiplier')}, clip "
                      f"{privacy.get('clip_norm')}, sampling rate {_fmt(privacy.get('sampling_rate'), 3)}; "
                      "dp-accounting RDP)"))
        from fedspear.privacy import coverage

        covered, uncovered = coverage(str(privacy.get("mode")), bool(privacy.get("seeded")))
        items += [("epsilon covers", covered), ("not covered by epsilon", uncovered)]
    excluded = _total(metrics, "aggregation", "num_excluded_nonfinite")
    if excluded:
        items.append(("client updates excluded (non-finite)", str(int(excluded))))
    refused = [str(_label(row, None)) for row in metrics if row.value("aggregation", "refused_nonfinite_aggregate")]
    if refused:
        items.append(("aggregates refused (non-finite)", f"rounds {', '.join(refused)}"))
    diverged = [str(_label(row, None)) for row in metrics if row.value("eval", "diverged")]
    if diverged:
        items.append(("**diverged** (non-finite scores, no accuracy)", f"rounds {', '.join(diverged)}"))
    stopped = [row for row in metrics if row.stopped]
    if stopped:
        items.append(("**run stopped**", f"after round {_label(stopped[-1], None)}: {stopped[-1].stopped}"))
    lines = ["## Summary", "", "| metric | value |", "| --- | --- |"]
    lines += [f"| {label} | {value} |" for label, value in items]
    return lines + [""]


def _max(metrics: list[RoundRow], section: str, key: str) -> float | None:
    values = [_num(row.value(section, key)) for row in metrics]
    values = [v for v in values if v is not None]
    return max(values) if values else None


def _mean(metrics: list[RoundRow], section: str, key: str) -> float | None:
    values = [_num(row.value(section, key)) for row in metrics]
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _resource_items(metrics: list[RoundRow]) -> list[tuple[str, str]]:
    """Summary rows of the clients' memory and traffic (``resources`` of each round row; see
    fedspear/federation/resources.py for what each figure measures)."""
    items = []
    for label, key in (("peak memory, process RSS high-water mark (MB)", "peak_rss_mb_max"),
                       ("peak memory during a client update, RSS (MB)", "update_rss_peak_mb_max"),
                       ("peak CUDA memory of a client update (MB)", "cuda_peak_mb_max")):
        value = _max(metrics, "resources", key)
        if value is not None:
            items.append((label, f"{value:.1f}"))
    down, up = _mean(metrics, "resources", "bytes_down_per_client"), _mean(metrics, "resources", "bytes_up_per_client")
    if down is not None or up is not None:
        items.append(("adapter bytes per client-round, down / up (mean)", f"{_fmt(down, 0)} / {_fmt(up, 0)}"))
        items.append(("adapter bytes in all, down / up", f"{_fmt(_total(metrics, 'resources', 'bytes_down'), 0)} / "
                                                         f"{_fmt(_total(metrics, 'resources', 'bytes_up'), 0)}"))
    wire_down, wire_up = _total(metrics, "resources", "wire_bytes_down"), _total(metrics, "resources", "wire_bytes_up")
    if wire_down is not None or wire_up is not None:
        items.append(("Flower message bytes in all, down / up", f"{_fmt(wire_down, 0)} / {_fmt(wire_up, 0)}"))
    return items


def _per_round_table(metrics: list[RoundRow]) -> list[str]:
    lines = [
        "## Per round",
        "",
        "| round | eval accuracy | mean y0 accuracy | wins | losses | revisions fixed | needing revision | wall time (s) "
        "| peak RSS (MB) | bytes down / up per client |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in metrics:
        agg = row.aggregate or {}
        cells = [
            str(_label(row, "-")),
            "diverged" if row.value("eval", "diverged") else _fmt(row.value("eval", "accuracy")),
            _fmt(_mean_y0_accuracy(row)),
            _fmt(agg.get("wins")),
            _fmt(agg.get("losses")),
            _fmt(agg.get("revision_successes")),
            _fmt(agg.get("needs_revision")),
            _fmt(_row_wall_time(row), digits=1),
            _fmt(row.value("resources", "peak_rss_mb_max"), digits=1),
            "-" if row.resources is None else
            f"{_fmt(row.value('resources', 'bytes_down_per_client'), 0)} / "
            f"{_fmt(row.value('resources', 'bytes_up_per_client'), 0)}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _plots(metrics: list[RoundRow], run_dir: Path) -> list[str]:
    plot_dir = run_dir / "plots"
    cumulative: dict[str, list[plots.Point]] = {"with evaluation": [], "without evaluation": []}
    totals = [0.0, 0.0]
    for row in metrics:
        if row.round is None:
            continue
        for i, (label, seconds) in enumerate(zip(cumulative, (_row_wall_time(row), _round_time(row)), strict=True)):
            if seconds is not None:
                totals[i] += seconds
                cumulative[label].append((float(row.round), totals[i]))
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
    metrics = sorted(record.read_rows(), key=lambda row: row.round or 0)
    lines = _header(cfg, run_dir)
    if not record.config_path.exists():
        lines += [f"(no {CONFIG_FILE} in this folder)", ""]
    lines += _summary(metrics) + _plots(metrics, run_dir) + _per_round_table(metrics)
    record.report_path.write_text("\n".join(lines), encoding="utf-8")
    return record.report_path
