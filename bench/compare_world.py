"""All five algorithms on the built-in world over seeds: ``fedspear compare`` per seed, then mean ± std.

For each seed S this runs ``fedspear compare data.seed=S output_dir=<out-dir>/seed-S`` (the default preset:
SPEAR, feedback-SFT, GRPO, OPSD and RLTF-SD on the same partition, client schedule and per-client seeds;
finished runs in that folder are reused, interrupted ones resumed), so every seed also has its own
``comparison.md`` with the paper's figures. It then writes one markdown table over the seeds (final held-out
accuracy mean ± std, by fact group, round time, generations and tokens) and the averaged figures (accuracy with a
± std band, cumulative round time, cumulative successful revisions and samples needing revision, and the share
of first answers needing revision per round).

Usage:
    python bench/compare_world.py                          # seeds 0 1 2; writes bench/compare_world.md, .json and compare_world/*.png
    python bench/compare_world.py --centralized            # and each algorithm centralized (paper Figure 7)
    python bench/compare_world.py --seeds 0 fl.rounds=4    # a quick look (extra overrides apply to every run)

``bench/quality.py`` with the same ``--out-dir`` reuses this script's SPEAR and feedback-SFT runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from seeds import mean_curve, mean_std

from fedspear.config import ALGORITHMS as BUILTIN_ALGORITHMS

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ALGORITHMS = list(BUILTIN_ALGORITHMS)  # the registry's built-in algorithms (fedspear.algorithms.registry)
FIGURES = [  # (series, title, y label)
    ("accuracy", "Held-out accuracy of the global model (mean ± std over seeds)", "accuracy"),
    ("cumulative_round_time", "Cumulative round time (mean over seeds)", "seconds"),
    ("cumulative_revision_successes", "Cumulative successful revisions (mean over seeds)", "samples"),
    ("cumulative_needs_revision", "Cumulative samples needing revision (mean over seeds)", "samples"),
    ("needs_revision_pct", "First answers needing revision per round (mean over seeds)", "% of first answers"),
]


def run_seed(seed: int, out_dir: Path, extra: list[str], centralized: bool = False
             ) -> tuple[dict[str, Path], dict[str, Path]]:
    """``fedspear compare [--centralized]`` of all algorithms for one seed; (federated, centralized) run folders."""
    from fedspear.cli import resolve_config
    from fedspear.compare import CENTRALIZED_DIR, compare
    from fedspear.config import load_config

    base = out_dir / f"seed-{seed}"
    cfg = load_config(resolve_config(None), [f"data.seed={seed}", f"output_dir={base}", *extra])
    compare(cfg, ALGORITHMS, centralized=centralized)
    return {a: base / a for a in ALGORITHMS}, {a: base / CENTRALIZED_DIR / a for a in ALGORITHMS} if centralized else {}


def collect(runs: dict[int, dict[str, Path]]) -> dict[str, list[dict]]:
    """algorithm -> one entry per seed: totals, curves and the final accuracy per fact group."""
    from fedspear.compare import read_rounds, round_series, run_totals

    out: dict[str, list[dict]] = {}
    for seed, dirs in runs.items():
        for algorithm, run_dir in dirs.items():
            rows = read_rounds(run_dir)
            evals = [r.eval for r in rows if r.eval]
            out.setdefault(algorithm, []).append({
                "seed": seed, "totals": run_totals(rows), "series": round_series(rows, algorithm),
                "start": evals[0]["accuracy"], "groups": evals[-1].get("groups", {})})
    return out


def table(results: dict[str, list[dict]]) -> str:
    lines = ["| algorithm | final acc (mean ± std) | gain (points) | known / misconception | round s | "
             "generations / round | tokens generated / round | tokens trained / round | forward-only tokens / round |",
             "|---|---|---|---|---|---|---|---|---|"]
    for algorithm, runs in results.items():
        if not runs:
            continue
        finals = [r["totals"]["final_accuracy"] for r in runs]
        gains = [100 * (r["totals"]["final_accuracy"] - r["start"]) for r in runs]
        groups = " / ".join(f"{statistics.mean(r['groups'].get(g, 0.0) for r in runs):.2f}"
                            for g in ("known", "misconception"))

        def per_round(key: str, runs: list[dict] = runs) -> str:
            values = [r["totals"][key] / r["totals"]["rounds"] for r in runs if r["totals"][key] is not None]
            return mean_std(values, ".0f") if values else "-"

        lines.append(f"| {algorithm} | {mean_std(finals)} | {mean_std(gains, '+.1f')} | {groups} | "
                     f"{mean_std([r['totals']['per_round_s'] for r in runs], '.2f')} | {per_round('generations')} | "
                     f"{per_round('tokens_generated')} | {per_round('tokens_trained')} | {per_round('tokens_forward')} |")
    return "\n".join(lines)


def plots(results: dict[str, list[dict]], folder: Path, figures: list[tuple[str, str, str]] = FIGURES,
          prefix: str = "") -> list[Path]:
    """The averaged figures, ``<folder>/<prefix><series>.png``."""
    from fedspear.plots import plot_series

    written = []
    for name, title, ylabel in figures:
        series, spread = {}, {}
        for algorithm, runs in results.items():
            curves = [r["series"][name] for r in runs if r["series"][name]]
            if not curves:
                continue
            series[algorithm], std = mean_curve(curves)
            if name == "accuracy" and std is not None:
                spread[algorithm] = std
        path = plot_series(series, title, "round", ylabel, folder / f"{prefix}{name}.png", spread=spread)
        if path:
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--centralized", action="store_true",
                        help="also run every algorithm centralized (one client holding all data; paper Figure 7)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "runs" / "world-seeds", help="where the runs go")
    parser.add_argument("--report", type=Path, default=HERE / "compare_world.md", help="markdown report to write")
    parser.add_argument("overrides", nargs="*", help="extra KEY=VALUE overrides for every run")
    args = parser.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    runs = {seed: run_seed(seed, args.out_dir, args.overrides, args.centralized) for seed in args.seeds}
    results = collect({seed: fed for seed, (fed, _) in runs.items()})
    central = collect({seed: cen for seed, (_, cen) in runs.items()})
    folder = args.report.with_suffix("")  # bench/compare_world/*.png
    text = table(results)
    print(text)
    where = os.path.relpath(args.out_dir, REPO) if args.out_dir.resolve().is_relative_to(REPO) else args.out_dir
    lines = [f"All five algorithms on the built-in world, default preset, seeds {args.seeds} (per-seed reports: "
             f"`{where}/seed-S/comparison.md`). Produced by `python bench/compare_world.py"
             f"{' --centralized' if central else ''}`.", "",
             "Per round = mean over the training rounds of the run; token counts summed over the round's clients.",
             "", text, ""]
    lines += [f"![{p.stem}]({p.parent.name}/{p.name})" for p in plots(results, folder)]
    if central:
        central_text = table(central)
        print(central_text)
        lines += ["", "## Centralized (one client holding all training data; paper Figure 7)", "", central_text, ""]
        lines += [f"![{p.stem}]({p.parent.name}/{p.name})"
                  for p in plots(central, folder, [("accuracy", "Centralized: held-out accuracy (mean ± std over seeds)",
                                                     "accuracy")], prefix="centralized_")]
    args.report.write_text("\n".join(lines) + "\n")

    def entries(res: dict[str, list[dict]]) -> dict[str, list[dict]]:
        return {a: [{"seed": r["seed"], "start": r["start"], "groups": r["groups"], **r["totals"],
                     "accuracy": r["series"]["accuracy"]} for r in rows] for a, rows in res.items()}

    args.report.with_suffix(".json").write_text(json.dumps({"federated": entries(results),
                                                            "centralized": entries(central)}, indent=1))


if __name__ == "__main__":
    main()
