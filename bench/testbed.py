"""The testbed's three result sets (docs/testbed.md), each a ``fedspear sweep`` over one shared folder of runs.

(a) the five algorithms per fact group; (b) robustness: final accuracy against ``feedback.false_accept_rate`` and
against ``feedback.misleading_hint_rate`` (0, 0.1, 0.2, 0.4) for SPEAR, feedback-SFT, RLTF-SD and GRPO;
(c) SPEAR ablations, each against the paper setting with its paired tests: confidences 1.0/0.5 vs uniform
(``spear.confidence_unfixed=1.0``), ``spear.unlikelihood_margin``, ``spear.ul_tail_tokens``,
``gen.num_revisions``, ``spear.lambda_lose``.

All sweeps run on the default preset with every fact group (``data.groups=[]``) and share ``--out-dir``: a cell
whose configuration equals another's (e.g. the paper setting of SPEAR in every set) is one run, reused. Each run
uses one CPU thread; ``--jobs`` sweeps run at a time (2 by default): first the five-algorithm set, one seed per
job (it holds every run the other sets share), then the other sets split over the jobs (they share no new run,
so no two processes ever write one run folder). A second invocation reuses every finished run and only rewrites
the reports. Each set's report is ``<out-dir>/<set>/sweep.md``; ``bench/testbed.md`` collects them.

Usage:
    python bench/testbed.py                                   # everything: 3 seeds (see docs/testbed.md for time)
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

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
FIVE = "spear,feedback_sft,grpo,opsd,rltf_sd"
FOUR = "spear,feedback_sft,rltf_sd,grpo"
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
    "c-margin": ("(c) Unlikelihood margin", "spear.unlikelihood_margin=0.3,0.1,0.6", "spear",
                 "spear.unlikelihood_margin=0.3"),
    "c-tail": ("(c) Unlikelihood tail tokens (0 = all)", "spear.ul_tail_tokens=3,0,1", "spear",
               "spear.ul_tail_tokens=3"),
    "c-revisions": ("(c) Number of revisions", "gen.num_revisions=2,1,3", "spear", "gen.num_revisions=2"),
    "c-lambda-lose": ("(c) λ_lose", "spear.lambda_lose=0.1,0,0.3,1.0", "spear", "spear.lambda_lose=0.1"),
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


def run_parallel(queues: list[list[list[str]]], log_dir: Path) -> None:
    """Run each queue's commands in order, the queues side by side; stop with the first failure's log."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    log_dir.mkdir(parents=True, exist_ok=True)
    active: list[tuple[subprocess.Popen, list[list[str]], Path]] = []

    def start(queue: list[list[str]], index: int) -> None:
        cmd = queue.pop(0)
        log = log_dir / f"job{index}-{len(queue)}.log"
        print("$", " ".join(cmd[1:]), f"> {log}", flush=True)
        active.append((subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT),
                       queue, log))

    for i, q in enumerate(queues):
        if q:
            start(q, i)
    while active:
        time.sleep(1.0)
        for item in list(active):
            proc, queue, log = item
            if proc.poll() is None:
                continue
            active.remove(item)
            if proc.returncode != 0:
                for other, _, _ in active:
                    other.terminate()
                sys.exit(f"testbed: a sweep failed (exit {proc.returncode}); see {log}:\n"
                         + "\n".join(log.read_text().splitlines()[-5:]))
            if queue:
                start(queue, len(active) + 1)


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
    report.write_text("\n".join(lines), encoding="utf-8")
    summary = {name: json.loads((out_dir / name / "sweep.json").read_text()) for name in names
               if (out_dir / name / "sweep.json").is_file()}
    report.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default=",".join(SETS), help=f"comma-separated sets (default: all: {', '.join(SETS)})")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated data.seed values (default: 0,1,2)")
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
    start = time.perf_counter()
    jobs = max(1, args.jobs)
    # 1. the runs the sets share (every algorithm's default cell), one seed per job
    first = [[sweep_command("a", s, out_dir, args.overrides, report=f"a-seed{s}")] for s in seeds]
    run_parallel([sum(first[i::jobs], []) for i in range(jobs)], out_dir / "logs")
    # 2. the sets, split over the jobs (their new runs are disjoint)
    cmds = [sweep_command(n, ",".join(seeds), out_dir, args.overrides) for n in names]
    run_parallel([cmds[i::jobs] for i in range(jobs)], out_dir / "logs")
    for s in seeds:
        shutil.rmtree(out_dir / f"a-seed{s}", ignore_errors=True)
    collect(out_dir, names, Path(args.report))
    print(f"testbed: {len(names)} set(s), seeds {','.join(seeds)}, {time.perf_counter() - start:.0f} s; "
          f"report {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
