"""The testbed's three result sets (docs/testbed.md), each a ``fedspear sweep`` over one shared folder of runs.

(a) the five algorithms per fact group; (b) robustness: final accuracy against ``feedback.false_accept_rate`` and
against ``feedback.misleading_hint_rate`` (0, 0.1, 0.2, 0.4) for SPEAR, feedback-SFT, GRPO and RLTF-SD;
(c) SPEAR ablations, each against the paper setting with its paired tests: confidences 1.0/0.5 vs uniform
(``spear.confidence_unfixed=1.0``), ``spear.unlikelihood_margin``, ``spear.ul_tail_tokens``,
``gen.num_revisions``, ``spear.lambda_lose``.

All sweeps run on the default preset with every fact group (``data.groups=[]``) and share ``--out-dir``: a cell
whose configuration equals another's (e.g. the paper setting of SPEAR in every set) is one run, reused. Each run
uses one CPU thread; ``--jobs`` sweeps run at a time (2 by default), from queues balanced by their number of new
runs: the five-algorithm set per seed first (it holds every run the other sets share), then the other sets, each
waiting until the five-algorithm runs of its seeds exist, so no two processes ever write one run folder. Every set
runs seeds 0, 1, 2 (``--seeds``; ``--ablation-seeds`` gives sets (b) and (c) fewer); each ablation moves one knob
to one other value (two for λ_lose). The statistics are the sweep's (fedspear.sweep, docs/testbed.md "Statistics"): the paired t
over seeds is the primary test; with one seed only McNemar within that seed is left, a test of those two runs on
those items, not of the settings. Every p has its Holm adjustment over its sweep, and the report adds the Holm
adjustment over all of (c)'s ablations together (:func:`ablation_holm`). 105 runs in all
(44 with ``--ablation-seeds 0``); RLTF-SD's and OPSD's runs are the longest, and 95 of them took 66 minutes with
2 jobs on the 2-core machine on 2026-12-07 (docs/testbed.md, "How the results are produced"). A second invocation reuses every finished run and only rewrites the reports. Each set's report is
``<out-dir>/<set>/sweep.md``; ``bench/testbed.md`` collects them.

Usage:
    python bench/testbed.py                                   # everything, seeds 0, 1, 2 (105 runs)
    python bench/testbed.py --ablation-seeds 0                # (b) and (c) on seed 0 only (44 runs)
    python bench/testbed.py --sets a --seeds 0                # one set, one seed
    python bench/testbed.py --seeds 0 fl.rounds=1 data.max_eval_examples=8   # a smoke run (extra overrides)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
FIVE = "spear,feedback_sft,grpo,opsd,rltf_sd"
FOUR = "spear,feedback_sft,grpo,rltf_sd"
RATES = "0,0.1,0.2,0.4"
# The testbed's fixed settings on top of the default preset: all four groups, every evaluation item, and an
# evaluation only at round 0 and the last round (the sweep reads the final one).
TESTBED = ["data.groups=[]", "data.max_eval_examples=10000", "data.eval_every=1000", "data.eval_every_round_up_to=0"]
# name -> (title, grid, algorithms, reference)
SETS: dict[str, tuple[str, str, str, str | None]] = {
    "a": ("(a) Five algorithms per fact group", "", FIVE, "spear"),
    "b-false-accept": ("(b) Robustness to false accepts", f"feedback.false_accept_rate={RATES}", FOUR,
                       "feedback.false_accept_rate=0"),
    "b-misleading": ("(b) Robustness to misleading hints", f"feedback.misleading_hint_rate={RATES}", FOUR,
                     "feedback.misleading_hint_rate=0"),
    "c-confidence": ("(c) Confidences 1.0/0.5 (paper) vs uniform 1.0/1.0", "spear.confidence_unfixed=0.5,1.0",
                     "spear", "spear.confidence_unfixed=0.5"),
    "c-margin": ("(c) Unlikelihood margin", "spear.unlikelihood_margin=0.3,0.6", "spear",
                 "spear.unlikelihood_margin=0.3"),
    "c-tail": ("(c) Unlikelihood tail tokens (0 = all)", "spear.ul_tail_tokens=3,0", "spear",
               "spear.ul_tail_tokens=3"),
    "c-revisions": ("(c) Number of revisions", "gen.num_revisions=2,1", "spear", "gen.num_revisions=2"),
    "c-lambda-lose": ("(c) λ_lose", "spear.lambda_lose=0.1,0,1.0", "spear", "spear.lambda_lose=0.1"),
}


def sweep_command(name: str, seeds: str, out_dir: Path, extra: list[str], report: str | None = None) -> list[str]:
    """The ``fedspear sweep`` command line of one set (``report`` overrides the report folder name)."""
    _, grid, algorithms, reference = SETS[name]
    cmd = [sys.executable, "-m", "fedspear", "sweep", "--config", "default", "--algorithms", algorithms,
           "--seeds", seeds, "--name", report or name, "--no-progress"]
    if grid:
        cmd += ["--grid", grid]
    if reference:
        cmd += ["--reference", reference]
    return cmd + [*TESTBED, f"output_dir={out_dir}", *extra]


def new_runs(name: str, seeds: int) -> int:
    """Runs a set adds beyond the five-algorithm set's default cells (for balancing the job queues)."""
    _, grid, algorithms, _ = SETS[name]
    if not grid:
        return len(algorithms.split(",")) * seeds
    values = grid.split("=", 1)[1].split(",")
    return (len(values) - 1) * len(algorithms.split(",")) * seeds


def plan(names: list[str], seeds: list[str], ablation_seeds: list[str], jobs: int, out_dir: Path,
         extra: list[str]) -> list[list[tuple[str, list[str], set[str]]]]:
    """Job queues of ``(label, command, labels it waits for)``: first the five-algorithm set per seed, then the
    other sets, each on the least-loaded queue, waiting until the five-algorithm runs of their seeds exist (they
    share those cells, and no two processes may write one run folder)."""
    queues: list[list[tuple[str, list[str], set[str]]]] = [[] for _ in range(jobs)]
    load = [0] * jobs
    for s in seeds:
        q = min(range(jobs), key=lambda k: (load[k], k))
        queues[q].append((f"a-seed{s}", sweep_command("a", s, out_dir, extra, report=f"a-seed{s}"), set()))
        load[q] += new_runs("a", 1)
    needs = {f"a-seed{s}" for s in ablation_seeds if s in seeds}
    for name in sorted((n for n in names if n != "a"), key=lambda n: -new_runs(n, len(ablation_seeds))):
        q = min(range(jobs), key=lambda k: (load[k], k))
        queues[q].append((name, sweep_command(name, ",".join(ablation_seeds), out_dir, extra), needs))
        load[q] += new_runs(name, len(ablation_seeds))
    return queues


def run_parallel(queues: list[list[tuple[str, list[str], set[str]]]], log_dir: Path) -> None:
    """Run each queue's commands in order, the queues side by side, a command only once the commands it waits
    for have finished; stop with the first failure's log."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    log_dir.mkdir(parents=True, exist_ok=True)
    active: dict[int, tuple[subprocess.Popen, str, Path]] = {}
    finished: set[str] = set()
    while any(queues) or active:
        for index, queue in enumerate(queues):
            if index in active or not queue or not queue[0][2] <= finished:
                continue
            label, cmd, _ = queue.pop(0)
            log = log_dir / f"{label}.log"
            print("$", " ".join(cmd[1:]), f"> {log}", flush=True)
            active[index] = (subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("w"),
                                              stderr=subprocess.STDOUT), label, log)
        time.sleep(1.0)
        for index, (proc, label, log) in list(active.items()):
            if proc.poll() is None:
                continue
            del active[index]
            if proc.returncode != 0:
                for other, _, _ in active.values():
                    other.terminate()
                sys.exit(f"testbed: a sweep failed (exit {proc.returncode}); see {log}:\n"
                         + "\n".join(log.read_text().splitlines()[-5:]))
            finished.add(label)


def collect(out_dir: Path, names: list[str], report: Path) -> None:
    """Write ``report`` (markdown) from the sets' sweep.md files, copying their plots next to it."""
    assets = report.with_suffix("")
    lines = ["# Testbed results", "", "Regenerated by `python bench/testbed.py` (expectations and discussion: "
             "docs/testbed.md). Each section is one `fedspear sweep` report.", ""]
    for name in names:
        path = out_dir / name / "sweep.md"
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        text = text.split("\n## Runs", 1)[0]
        for png in re.findall(r"\]\((plots/[^)]+\.png)\)", text):
            target = assets / name / Path(png).name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path.parent / png, target)
            text = text.replace(f"]({png})", f"]({target.relative_to(report.parent).as_posix()})")
        body = text.replace("# Sweep", f"## {SETS[name][0]}", 1).replace("\n## ", "\n### ").replace(
            f"\n### {SETS[name][0]}", f"\n## {SETS[name][0]}")
        lines += [body, ""]
    summary = {name: json.loads((out_dir / name / "sweep.json").read_text()) for name in names
               if (out_dir / name / "sweep.json").is_file()}
    lines += ablation_holm(summary)
    report.write_text("\n".join(lines), encoding="utf-8")
    report.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


def ablation_holm(summary: dict[str, Any]) -> list[str]:
    """Markdown lines: each (c) ablation's primary p and its Holm adjustment over all of (c) ([] without any).

    The primary p is the paired t over seeds; with one seed, McNemar within that seed (a test of the two runs).
    ``summary`` maps set names to their sweep.json contents.
    """
    from fedspear.sweep import holm

    rows = []
    for name, data in summary.items():
        if not name.startswith("c-"):
            continue
        for comp in data.get("comparisons", []):
            t_test, per_seed = comp.get("t_test"), comp.get("mcnemar") or {}
            if t_test is not None:
                test, p = ("paired t over seeds", t_test["pvalue"]) if t_test["pvalue"] is not None \
                    else ("paired t: no variance", None)
            elif len(per_seed) == 1:
                seed, mc = next(iter(per_seed.items()))
                test, p = f"McNemar within seed {seed} ({mc['cell_only']}/{mc['ref_only']})", mc["pvalue"]
            else:
                test, p = "-", None
            rows.append((comp["cell"]["label"], comp["reference"]["label"], comp["diff"]["mean"], test, p))
    if not rows:
        return []
    adjusted = holm([r[4] for r in rows])
    lines = ["## (c) All ablations together", "",
             f"Holm's adjustment (statsmodels) over the {sum(r[4] is not None for r in rows)} ablations of (c), one "
             "family: the claim that any one ablation changes accuracy has to survive it.", "",
             "| ablation | reference | Δ accuracy | test | p | Holm p over (c) |", "| --- | --- | --- | --- | --- | --- |"]
    for (cell, ref, diff, test, p), holm_p in zip(rows, adjusted, strict=True):
        lines.append(f"| {cell} | {ref} | {diff:+.3f} | {test} | {'-' if p is None else f'{p:.3g}'} | "
                     f"{'-' if holm_p is None else f'{holm_p:.3g}'} |")
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default=",".join(SETS), help=f"comma-separated sets (default: all: {', '.join(SETS)})")
    parser.add_argument("--seeds", default="0,1,2", help="data.seed values of set (a) (default: 0,1,2)")
    parser.add_argument("--ablation-seeds", default=None, help="data.seed values of sets (b) and (c) (default: "
                        "--seeds; with one seed only McNemar within it is left, a test of the two runs, not of the "
                        "settings)")
    parser.add_argument("--jobs", type=int, default=2, help="sweeps run at a time (default: 2)")
    parser.add_argument("--out-dir", default=str(REPO / "runs" / "testbed"), help="the shared folder of runs")
    parser.add_argument("--report", default=str(HERE / "testbed.md"), help="the collected report")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="applied to every run")
    args = parser.parse_args(argv)
    names = [n for n in args.sets.split(",") if n]
    unknown = [n for n in names if n not in SETS]
    if unknown or args.jobs < 1:
        parser.error(f"unknown set(s) {', '.join(unknown)}; choose from {', '.join(SETS)}" if unknown
                     else "--jobs must be >= 1")
    out_dir = Path(args.out_dir).resolve()
    seeds = [s for s in args.seeds.split(",") if s]
    ablation_seeds = [s for s in (args.seeds if args.ablation_seeds is None else args.ablation_seeds).split(",") if s]
    if not set(ablation_seeds) <= set(seeds):
        parser.error("--ablation-seeds must be among --seeds (sets (b) and (c) reuse the five-algorithm runs)")
    start = time.perf_counter()
    run_parallel(plan(names, seeds, ablation_seeds, max(1, args.jobs), out_dir, args.overrides), out_dir / "logs")
    if "a" in names:  # the five-algorithm report over every seed (all its runs exist now)
        run_parallel([[("a", sweep_command("a", ",".join(seeds), out_dir, args.overrides), set())]], out_dir / "logs")
    for s in seeds:
        shutil.rmtree(out_dir / f"a-seed{s}", ignore_errors=True)
    collect(out_dir, names, Path(args.report))
    print(f"testbed: {len(names)} set(s), seeds {','.join(seeds)}, {time.perf_counter() - start:.0f} s; "
          f"report {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
