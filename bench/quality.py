"""Quality bench on the built-in world: SPEAR vs feedback-SFT (lambda_lose = 0) vs no training, over seeds.

Every method runs the default preset (``fedspear/configs/default.yaml``) with the same seed, hence the same
partition and client schedule; "none" rolls out and evaluates but takes no optimizer step
(``fl.local_train_steps=0``). Prints a table (final held-out accuracy mean ± std, accuracy per round, run time)
and writes a markdown table and a plot. Runs go to ``<out-dir>/seed-S/<method>``, the layout of
``bench/compare_world.py``: a finished run there with the same configuration is reused (an interrupted one
resumed), so the two benches share their SPEAR and feedback-SFT runs. Run time = the rounds' recorded times plus
evaluation (``time.round_s`` + ``time.eval_s``), the same whether a run is fresh or reused.

Usage:
    python bench/quality.py                               # 3 seeds, writes bench/quality.md and bench/quality.png
    python bench/quality.py --seeds 0 --methods spear     # a quick look
    python bench/quality.py --out-dir /tmp/q fl.rounds=4  # extra overrides apply to every run (default: runs/world-seeds)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from seeds import mean_curve, mean_std

HERE = Path(__file__).resolve().parent
METHODS = {
    "spear": ["algorithm.name=spear"],
    "feedback_sft": ["algorithm.name=feedback_sft"],
    "none": ["algorithm.name=spear", "fl.local_train_steps=0"],
}


def run_one(method: str, seed: int, out_dir: Path, extra: list[str]) -> dict:
    """One run of the default preset (or the finished one already there); its eval curve, groups and run time."""
    from fedspear.cli import resolve_config
    from fedspear.compare import run_or_reuse
    from fedspear.config import load_config
    from fedspear.records import RunRecord

    # the method's own overrides come last: "none" stays untrained whatever the extra overrides say
    overrides = [f"data.seed={seed}", f"output_dir={out_dir / f'seed-{seed}' / method}", *extra, *METHODS[method]]
    run_dir = run_or_reuse(load_config(resolve_config(None), overrides))
    rows = RunRecord(run_dir).read_metrics()
    wall = sum(r.get("time", {}).get("round_s", 0.0) + r.get("time", {}).get("eval_s", 0.0) for r in rows)
    curve = [(r["round"], r["eval"]["accuracy"]) for r in rows if r.get("eval")]
    groups = rows[-1]["eval"].get("groups", {})
    return {"method": method, "seed": seed, "curve": curve, "final": curve[-1][1], "start": curve[0][1],
            "groups": groups, "wall_s": wall}


def summarize(results: list[dict]) -> str:
    """A markdown table: one row per method."""
    lines = ["| method | round-0 acc | final acc (mean ± std) | gain (points) | final by group | acc per round (mean) "
             "| run s |", "|---|---|---|---|---|---|---|"]
    for method in METHODS:
        runs = [r for r in results if r["method"] == method]
        if not runs:
            continue
        per_round = [y for _, y in mean_curve([r["curve"] for r in runs])[0]]
        gains = [100 * (r["final"] - r["start"]) for r in runs]
        group_names = sorted({g for r in runs for g in r["groups"]})
        groups = ", ".join(f"{g} {statistics.mean(r['groups'].get(g, 0) for r in runs):.2f}" for g in group_names)
        lines.append(
            f"| {method} | {mean_std([r['start'] for r in runs])} | {mean_std([r['final'] for r in runs])} "
            f"| {mean_std(gains, '+.1f')} | {groups} | {' '.join(f'{a:.2f}' for a in per_round)} "
            f"| {statistics.mean(r['wall_s'] for r in runs):.0f} |"
        )
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    from fedspear.plots import plot_series

    series, spread = {}, {}
    for method in METHODS:
        runs = [r for r in results if r["method"] == method]
        if runs:
            series[method], std = mean_curve([r["curve"] for r in runs])
            if std is not None:
                spread[method] = std
    plot_series(series, "Held-out accuracy on the built-in world (mean ± std over seeds)", "round", "accuracy", path,
                spread=spread)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of spear,feedback_sft,none")
    parser.add_argument("--out-dir", type=Path, default=HERE.parent / "runs" / "world-seeds", help="where the runs go")
    parser.add_argument("--report", type=Path, default=HERE / "quality.md", help="markdown table to write")
    parser.add_argument("overrides", nargs="*", help="extra KEY=VALUE overrides for every run")
    args = parser.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    out_dir = args.out_dir
    results = []
    for seed in args.seeds:
        for method in args.methods.split(","):
            results.append(run_one(method, seed, out_dir, args.overrides))
            r = results[-1]
            print(f"{method:<13} seed {seed}: {r['start']:.3f} -> {r['final']:.3f} in {r['wall_s']:.0f}s", flush=True)
    table = summarize(results)
    print(table)
    args.report.write_text(f"Seeds {args.seeds}; runs in {os.path.relpath(out_dir, HERE.parent)}. Produced by "
                           f"`python bench/quality.py`.\n\n{table}\n")
    plot(results, args.report.with_suffix(".png"))
    (args.report.with_suffix(".json")).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
