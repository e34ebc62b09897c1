"""Run several algorithms on the same federation and compare them: ``fedspear compare``.

:func:`compare` runs each algorithm on a copy of one Config that differs only in ``algorithm.name`` and
``output_dir`` (``<output_dir>/<algorithm>``), so with the same seed every run sees the same partition, the same
client schedule and the same per-(round, client) seeds. With ``centralized`` it also runs each algorithm with one
client holding all training data (``<output_dir>/centralized/<algorithm>``). Finished runs already in those folders
are reused and interrupted ones resumed, so an interrupted comparison continues where it stopped.

:func:`write_comparison` builds ``comparison.md`` and ``plots/*.png`` from finished run folders; it is what
``compare`` calls last, and it can rebuild the report without rerunning anything. The figures follow the
paper's: accuracy per round (Figure 3 style), cumulative time (Figure 2), cumulative successful revisions and
samples needing revision (Figures 4-5), the share of first answers needing revision per round (Figure 6) and
the centralized accuracy (Figure 7).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from fedspear.config import Config, ConfigError, config_from_dict, known_algorithms, validate
from fedspear.federation import simulator
from fedspear.federation.rounds import RoundRow, as_row
from fedspear.federation.server import names_new_folder
from fedspear.metrics import TOTALS
from fedspear.plots import Point, nested_get, plot_series
from fedspear.records import RunExistsError, RunRecord, claim_new_folder

logger = logging.getLogger("fedspear")

COMPARISON_FILE = "comparison.md"
CENTRALIZED_DIR = "centralized"
# Algorithms that never ask the feedback source: left out of the revision figures.
NO_FEEDBACK_ALGORITHMS = ("grpo", "opsd")
# data.max_examples_per_client in centralized runs: no cap (the one client holds all training data).
ALL_EXAMPLES = 2**31 - 1


# --------------------------------------------------------------------------- running


def variant(cfg: Config, algorithm: str, output_dir: Path, centralized: bool = False) -> Config:
    """A validated copy of ``cfg`` for one algorithm; with ``centralized``, one client holding all training data.

    Args:
        cfg: the shared configuration (not modified).
        algorithm: the ``algorithm.name`` of the copy.
        output_dir: the copy's run folder.
        centralized: set ``data.num_clients = fl.clients_per_round = fl.min_clients = 1`` and lift
            ``data.max_examples_per_client`` (the README's centralized comparison, paper Figure 7).

    Returns:
        The copy.
    """
    out = replace(cfg, algorithm=replace(cfg.algorithm, name=algorithm), output_dir=str(output_dir))
    if centralized:
        out = replace(out, data=replace(out.data, num_clients=1, max_examples_per_client=ALL_EXAMPLES),
                      fl=replace(out.fl, clients_per_round=1, min_clients=1))
    validate(out)
    return out


def _first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            diff = _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
            if diff:
                return diff
        return None
    return None if a == b else f"{prefix.rstrip('.')}: {a!r} there, {b!r} now"


# Settings that choose how a run executes, not what it is: a finished run is reused whatever they were. The torch
# thread count changes float rounding in the last bits, not the experiment, and a grid is often finished on
# another machine or under another load than it was started.
EXECUTION_ONLY = ("model.torch_threads",)


def _experiment(cfg: dict[str, Any]) -> dict[str, Any]:
    """The resolved config without ``output_dir`` (however it was spelled) and :data:`EXECUTION_ONLY` settings."""
    out = {**cfg, "output_dir": None}
    for dotted in EXECUTION_ONLY:
        section, key = dotted.split(".")
        out[section] = {**out.get(section, {}), key: None}
    return out


def run_or_reuse(cfg: Config) -> Path:
    """Run ``cfg`` in ``cfg.output_dir``; reuse a finished run there with the same config, resume an interrupted one.

    "The same config" ignores ``output_dir``'s spelling and the :data:`EXECUTION_ONLY` settings (thread count).

    Raises:
        RunExistsError: the folder holds a run with a different configuration, or a run that cannot be resumed.
    """
    record = RunRecord(Path(cfg.output_dir))
    if not record.has_run():
        return simulator.run(cfg)
    if record.config_path.is_file():
        existing = config_from_dict(yaml.safe_load(record.config_path.read_text(encoding="utf-8"))).to_dict()
        diff = _first_difference(_experiment(existing), _experiment(cfg.to_dict()))
        if diff:
            raise RunExistsError(f"{record.run_dir} holds a run with another configuration ({diff}); remove it or "
                                 "choose another output_dir")
    if record.last_completed_round() >= cfg.fl.rounds:
        logger.info("reusing the finished run in %s", record.run_dir)
        return record.run_dir
    if record.has_checkpoint():
        return simulator.resume(record.run_dir)
    raise RunExistsError(f"{record.run_dir} holds a run that stopped before its first checkpoint; remove it and "
                         "run the comparison again")


def compare(cfg: Config, algorithms: list[str], centralized: bool = False) -> Path:
    """Run every algorithm on the same federation (and, optionally, centralized), then write the comparison.

    Args:
        cfg: the shared configuration; ``output_dir`` (placeholders expanded, ``{algorithm}`` = "compare") is
            the comparison folder; with ``{time}`` in it a new folder is made (``-1``, ``-2``... appended when
            that name exists).
        algorithms: algorithm names, each at most once, e.g. ``["spear", "grpo"]``.
        centralized: also run each algorithm with one client holding all training data.

    Returns:
        The path of ``comparison.md``.

    Raises:
        ConfigError: no algorithm, an unknown or repeated one; every variant is validated before anything runs.
    """
    if not algorithms:
        raise ConfigError(f"compare: name at least one algorithm ({', '.join(known_algorithms())}, or pkg.mod:Class)")
    repeated = sorted({a for a in algorithms if algorithms.count(a) > 1})
    if repeated:
        raise ConfigError(f"compare: algorithm {', '.join(repeated)} is listed more than once")
    named = replace(cfg, algorithm=replace(cfg.algorithm, name="compare"))  # names the folder
    base = Path(simulator.expand_output_dir(named))

    def plan(base: Path) -> tuple[dict[str, Config], dict[str, Config]]:
        runs = {a: variant(cfg, a, base / a) for a in algorithms}
        central = {a: variant(cfg, a, base / CENTRALIZED_DIR / a, centralized=True) for a in algorithms} \
            if centralized else {}
        return runs, central

    runs, central = plan(base)  # every variant validated before any folder is made
    if names_new_folder(cfg.output_dir):  # {time}: a new comparison folder of its own, even within one second
        base = claim_new_folder(base)
        runs, central = plan(base)
    run_dirs = {a: run_or_reuse(c) for a, c in runs.items()}
    central_dirs = {a: run_or_reuse(c) for a, c in central.items()} or None
    return write_comparison(run_dirs, base, central_dirs)


# --------------------------------------------------------------------------- reading metrics


def _num(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


Row = RoundRow | Mapping[str, Any]  # a round row, or its metrics.jsonl dict


def read_rounds(run_dir: Path) -> list[RoundRow]:
    """A run folder's rows (:class:`~fedspear.federation.rounds.RoundRow`) with an integer round, sorted by round."""
    rows = [r for r in RunRecord(Path(run_dir)).read_rows() if r.round is not None]
    return sorted(rows, key=lambda r: r.round or 0)


def _rows(rows: Iterable[Row]) -> list[RoundRow]:
    return [as_row(r) for r in rows]


def client_sum(row: Row, key: str) -> float | None:
    """Sum of ``metrics[key]`` over the round's clients (None when no client reports it).

    ``samples_y0`` falls back to ``prompts`` for algorithms with one first answer per prompt.
    """
    values = []
    for client in as_row(row).clients or []:
        if client.metrics is None:
            continue
        value = client.metrics.get(key)
        if value is None and key == "samples_y0":
            value = client.metrics.get("prompts")
        if _num(value) is not None:
            values.append(float(value))
    return sum(values) if values else None


def _ratio(row: Row, num: str, den: str, scale: float = 1.0) -> float | None:
    top, bottom = client_sum(row, num), client_sum(row, den)
    return scale * top / bottom if top is not None and bottom else None


def _cumulative(rows: list[RoundRow], value: Callable[[RoundRow], Any]) -> list[Point]:
    """Running total of ``value(row)`` over training rounds, starting at (0, 0)."""
    out: list[Point] = [(0.0, 0.0)]
    total = 0.0
    for row in rows:
        v = _num(value(row))
        if row.round is not None and row.round >= 1 and v is not None:
            total += v
            out.append((float(row.round), total))
    return out if len(out) > 1 else []


def _series(rows: list[RoundRow], value: Callable[[RoundRow], Any], first: int = 1) -> list[Point]:
    return [(float(r.round), float(v)) for r in rows
            if r.round is not None and r.round >= first and (v := _num(value(r))) is not None]


def _algorithm_of(run_dir: Path, label: str) -> str:
    path = Path(run_dir) / "config.yaml"
    if path.is_file():
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
        name = nested_get(cfg, "algorithm", "name") if isinstance(cfg, dict) else None
        if isinstance(name, str):
            return name
    return label


# --------------------------------------------------------------------------- report


# Per-run curves of the comparison figures: name -> (value per round row, cumulative?, first round, feedback only).
SERIES: dict[str, tuple[Callable[[RoundRow], Any], bool, int, bool]] = {
    "accuracy": (lambda r: r.value("eval", "accuracy"), False, 0, False),
    "y0_accuracy": (lambda r: _ratio(r, "wins_y0", "samples_y0"), False, 1, False),
    "cumulative_round_time": (lambda r: r.value("time", "round_s"), True, 1, False),
    "cumulative_training_time": (lambda r: r.value("time", "training_s"), True, 1, False),
    "cumulative_revision_successes": (lambda r: client_sum(r, "revision_successes"), True, 1, True),
    "cumulative_needs_revision": (lambda r: client_sum(r, "needs_revision"), True, 1, True),
    "needs_revision_pct": (lambda r: _ratio(r, "needs_revision", "samples_y0", 100.0), False, 1, True),
}


def round_series(rows: Iterable[Row], algorithm: str = "") -> dict[str, list[Point]]:
    """One run's curves, by :data:`SERIES` name; the feedback curves are empty for algorithms that ask none.

    Args:
        rows: the run's rows with an integer round, in round order (:func:`read_rounds`; dicts work too).
        algorithm: the run's ``algorithm.name``.
    """
    rows = _rows(rows)
    out = {}
    for name, (value, cumulative, first, feedback_only) in SERIES.items():
        if feedback_only and algorithm in NO_FEEDBACK_ALGORITHMS:
            out[name] = []
        else:
            out[name] = _cumulative(rows, value) if cumulative else _series(rows, value, first=first)
    return out


def run_totals(rows: Iterable[Row]) -> dict[str, float | None]:
    """One run's summary numbers: final/best accuracy, training rounds, times and token counts (None = absent).

    Args:
        rows: the run's rows with an integer round, in round order (:func:`read_rounds`; dicts work too).
    """
    rows = _rows(rows)
    evals = [(r.round, a) for r in rows if (a := _num(r.value("eval", "accuracy"))) is not None]
    trained = [r for r in rows if r.round is not None and r.round >= 1]

    def total(key: str) -> float | None:
        vals = [v for r in trained if (v := client_sum(r, key)) is not None]
        return float(sum(vals)) if vals else None

    def resource(key: str, combine: Callable[[list[float]], float]) -> float | None:
        vals = [v for r in trained if (v := _num(r.value("resources", key))) is not None]
        return combine(vals) if vals else None

    def mean(vals: list[float]) -> float:
        return sum(vals) / len(vals)

    time_s = sum(_num(r.value("time", "round_s")) or 0.0 for r in trained)
    return {
        "final_accuracy": evals[-1][1] if evals else None, "final_round": evals[-1][0] if evals else None,
        "best_accuracy": max(a for _, a in evals) if evals else None, "rounds": len(trained),
        "total_s": time_s if trained else None, "per_round_s": time_s / len(trained) if trained else None,
        "training_s": sum(_num(r.value("time", "training_s")) or 0.0 for r in trained) if trained else None,
        **{key: total(key) for key in TOTALS},
        # fedspear/federation/resources.py: memory maxima over rounds, adapter bytes per client-round (mean)
        "peak_rss_mb": resource("peak_rss_mb_max", max), "update_rss_peak_mb": resource("update_rss_peak_mb_max", max),
        "cuda_peak_mb": resource("cuda_peak_mb_max", max),
        "bytes_down_per_client": resource("bytes_down_per_client", mean),
        "bytes_up_per_client": resource("bytes_up_per_client", mean),
    }


def _summary_rows(metrics: dict[str, list[RoundRow]]) -> list[str]:
    head = ("| algorithm | final accuracy (round) | best accuracy | rounds | total time (s) | time per round (s) | "
            "training time (s) | generations | tokens generated | tokens trained | forward-only tokens | "
            "peak RSS (MB) | peak RSS in an update (MB) | peak CUDA (MB) | bytes down / up per client-round |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    for label, rows in metrics.items():
        t = run_totals(rows)
        final = f"{t['final_accuracy']:.4f} ({t['final_round']})" if t["final_accuracy"] is not None else "-"
        cells = [label, final, fmt(t["best_accuracy"], ".4f"), str(t["rounds"]), fmt(t["total_s"], ".1f"),
                 fmt(t["per_round_s"], ".2f"), fmt(t["training_s"], ".1f"),
                 *(fmt(t[k], ".0f") for k in TOTALS),
                 *(fmt(t[k], ".1f") for k in ("peak_rss_mb", "update_rss_peak_mb", "cuda_peak_mb")),
                 f"{fmt(t['bytes_down_per_client'], '.0f')} / {fmt(t['bytes_up_per_client'], '.0f')}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


FIGURES = [  # (series name, title, y label, caption)
    ("accuracy", "Evaluation accuracy of the global model", "accuracy",
     "Evaluation accuracy after each evaluated round (round 0 = before training)."),
    ("y0_accuracy", "First-answer accuracy during rollouts", "accuracy",
     "Correct first answers / first answers sampled in the round, over the round's clients."),
    ("cumulative_round_time", "Cumulative round time (generation + feedback + training + aggregation)", "seconds",
     "Cumulative `time.round_s`: wall time of each round's client work and aggregation, evaluation excluded "
     "(paper Figure 2)."),
    ("cumulative_training_time", "Cumulative training time (optimisation only)", "seconds",
     "Cumulative `time.training_s`, summed over clients: optimisation plus the no-grad reference/teacher passes, "
     "without generation or feedback."),
    ("cumulative_revision_successes", "Cumulative successful revisions", "samples",
     "Wrong first answers fixed by a feedback-guided revision, cumulative (paper Figure 4)."),
    ("cumulative_needs_revision", "Cumulative samples needing revision", "samples",
     "Wrong first answers sent for feedback, cumulative (paper Figure 5)."),
    ("needs_revision_pct", "Samples needing revision per round", "% of first answers",
     "Wrong first answers / first answers sampled, per round (paper Figure 6)."),
]


def _figures(metrics: dict[str, list[RoundRow]], algos: dict[str, str], plot_dir: Path, prefix: str = ""
             ) -> list[tuple[str, Path | None, str]]:
    """(title, written path or None, caption) of every comparison figure."""
    series = {label: round_series(rows, algos[label]) for label, rows in metrics.items()}

    def fig(name: str, title: str, ylabel: str, caption: str):
        curves = {label: s[name] for label, s in series.items()}
        return title, plot_series(curves, title, "round", ylabel, plot_dir / f"{prefix}{name}.png"), caption

    if prefix:
        return [fig("accuracy", "Centralized: evaluation accuracy", "accuracy",
                    "One client holding all training data (paper Figure 7).")]
    no_fb = [label for label in metrics if algos[label] in NO_FEEDBACK_ALGORITHMS]
    fb_note = f" Left out (they ask for no feedback): {', '.join(no_fb)}." if no_fb else ""
    return [fig(name, title, ylabel, caption + (fb_note if SERIES[name][3] else ""))
            for name, title, ylabel, caption in FIGURES]


def _figure_lines(figures: list[tuple[str, Path | None, str]], out_dir: Path) -> list[str]:
    lines = []
    for title, path, caption in figures:
        if path is None:
            lines += [f"### {title}", "", "(no data)", ""]
        else:
            lines += [f"### {title}", "", f"![{title}]({path.relative_to(out_dir).as_posix()})", "", caption, ""]
    return lines


def _setting(run_dirs: dict[str, Path]) -> list[str]:
    """The shared setting, read from the first run folder that has a config.yaml."""
    paths = [Path(d) / "config.yaml" for d in run_dirs.values()]
    path = next((p for p in paths if p.is_file()), None)
    if path is None:
        return []
    cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}

    def get(*keys: str) -> Any:
        value = nested_get(cfg, *keys)
        return "?" if value is None else value

    return [f"- task: {get('data', 'dataset')}, model: {get('model', 'model_name')}",
            f"- rounds: {get('fl', 'rounds')}, clients: {get('data', 'num_clients')} "
            f"({get('fl', 'clients_per_round')} per round), seed: {get('data', 'seed')}",
            f"- rollout prompts P: {get('fl', 'local_rollout_steps')}, optimizer steps S: "
            f"{get('fl', 'local_train_steps')}, G/N: {get('grpo', 'num_generations')}", ""]


def write_comparison(run_dirs: dict[str, Path], out_dir: Path, centralized_dirs: dict[str, Path] | None = None
                     ) -> Path:
    """Write ``out_dir/comparison.md`` and ``out_dir/plots/*.png`` from finished (or partial) run folders.

    Args:
        run_dirs: label (usually the algorithm name) -> federated run folder.
        out_dir: where the report and plots go.
        centralized_dirs: label -> centralized run folder, or None.

    Returns:
        The path of comparison.md.
    """
    out_dir = Path(out_dir)
    plot_dir = out_dir / "plots"
    metrics = {label: read_rounds(d) for label, d in run_dirs.items()}
    algos = {label: _algorithm_of(Path(d), label) for label, d in run_dirs.items()}
    lines = ["# Algorithm comparison", ""] + _setting(run_dirs)
    lines += ["Runs: " + ", ".join(f"[{label}]({_rel(Path(d), out_dir)})" for label, d in run_dirs.items()), ""]
    lines += ["## Summary (federated)", ""] + _summary_rows(metrics)
    lines += ["Total time = sum of `time.round_s` over training rounds (generation + feedback + training + "
              "aggregation; evaluation excluded). Training time = sum of `time.training_s`. Tokens trained count "
              "forward+backward tokens; forward-only tokens are the no-grad reference, old-policy and teacher "
              "passes. Generations count every sampled answer (first answers and revisions). Peak RSS is the "
              "process's resident-set high-water mark (model loading and evaluation included; the runs of one "
              "comparison share a process, so a later run carries an earlier run's peak); peak RSS in an update is "
              "the resident set's peak while a client update ran, the figure to compare; bytes are the adapter tensors' nbytes sent to and returned by "
              "a client, per client-round (fedspear/federation/resources.py).", ""]
    lines += ["## Figures (federated)", ""] + _figure_lines(_figures(metrics, algos, plot_dir), out_dir)
    if centralized_dirs:
        central = {label: read_rounds(d) for label, d in centralized_dirs.items()}
        central_algos = {label: _algorithm_of(Path(d), label) for label, d in centralized_dirs.items()}
        lines += ["## Centralized", "", "One client holding all training data, same client update.", ""]
        lines += _summary_rows(central)
        lines += _figure_lines(_figures(central, central_algos, plot_dir, prefix="centralized_"), out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / COMPARISON_FILE
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _rel(path: Path, start: Path) -> str:
    try:
        return path.resolve().relative_to(start.resolve()).as_posix()
    except ValueError:
        return path.as_posix()
