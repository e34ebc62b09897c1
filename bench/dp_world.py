"""Accuracy against privacy budget: SPEAR on the built-in world under central DP-FedAvg, one seed per noise level.

Each setting is one `fedspear run` of the default preset (``fedspear/configs/default.yaml``) with
``dp.mode=central dp.noise_multiplier=SIGMA dp.clip_norm=C dp.seed=0`` (``off`` = no DP, the reference). A run
folder that already holds a finished report is reused, so a second call only rebuilds the table.

Usage:
    python bench/dp_world.py                                  # off, sigma 0 / 0.03 / 0.1 / 0.3 / 1 (runs in runs/dp_world)
    python bench/dp_world.py --sigmas off 1 --rounds 2 --out-dir /tmp/dp   # a small check (what `make bench` runs)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def run_dir(out_dir: Path, sigma: str) -> Path:
    """The run folder of one noise level."""
    return out_dir / ("dp_off" if sigma == "off" else f"sigma_{sigma}")


def ensure_run(out_dir: Path, sigma: str, clip_norm: float, extra: list[str]) -> Path:
    """Run ``fedspear run`` for one noise level unless its folder already has a report; returns the folder."""
    folder = run_dir(out_dir, sigma)
    if (folder / "report.md").is_file():
        return folder
    if folder.exists():
        raise SystemExit(f"{folder} holds an unfinished run; delete it and rerun")
    dp = ["dp.mode=off"] if sigma == "off" else [
        "dp.mode=central", f"dp.noise_multiplier={sigma}", f"dp.clip_norm={clip_norm}", "dp.seed=0"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    subprocess.run([sys.executable, "-m", "fedspear", "run", *dp, *extra, f"output_dir={folder}"], check=True,
                   env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    return folder


def summarize(folder: Path, sigma: str) -> dict[str, Any]:
    """sigma, epsilon, rounds, round-0 / final / best accuracy and group accuracies of one run folder."""
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [(r["round"], r["eval"]) for r in rows if isinstance(r.get("eval"), dict)]
    final_round, final = evals[-1]
    privacy = next((r["privacy"] for r in reversed(rows) if "privacy" in r), None)
    return {"sigma": sigma, "epsilon": privacy["epsilon"] if privacy else None,
            "delta": privacy["delta"] if privacy else None, "rounds": final_round,
            "round0_accuracy": evals[0][1]["accuracy"], "final_accuracy": final["accuracy"],
            "best_accuracy": max(ev["accuracy"] for rnd, ev in evals if rnd > 0), "groups": final.get("groups", {})}


def table(results: list[dict[str, Any]], clip_norm: float) -> str:
    """The markdown table of :func:`summarize` rows."""
    lines = [f"| sigma (clip C = {clip_norm}) | epsilon (delta=1e-5) | final accuracy | best after round 0 | final per group |",
             "| --- | --- | --- | --- | --- |"]
    for r in results:
        eps = "- (no DP)" if r["sigma"] == "off" else ("inf" if r["epsilon"] is None else f"{r['epsilon']:.3g}")
        groups = " / ".join(f"{g} {a:.2f}" for g, a in r["groups"].items())
        lines.append(f"| {r['sigma']} | {eps} | {r['final_accuracy']:.3f} | {r['best_accuracy']:.3f} | {groups} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sigmas", nargs="+", default=["off", "0", "0.03", "0.1", "0.3", "1"],
                        help="noise multipliers; 'off' = no DP")
    parser.add_argument("--clip-norm", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=None, help="fl.rounds (default: the preset's 20)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "runs" / "dp_world")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once")
    parser.add_argument("--write", type=Path, default=None, help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    extra = [f"fl.rounds={args.rounds}"] if args.rounds else []
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        folders = list(pool.map(lambda s: ensure_run(args.out_dir, s, args.clip_norm, extra), args.sigmas))
    results = [summarize(f, s) for f, s in zip(folders, args.sigmas, strict=True)]
    text = table(results, args.clip_norm)
    print(text)
    if args.write:
        args.write.write_text(text + "\n")
    return results


if __name__ == "__main__":
    main()
