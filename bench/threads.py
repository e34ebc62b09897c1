"""Thread-count bench: a CPU run's wall time with 1 and 2 torch threads, alone and beside busy processes.

Runs ``fedspear run`` (the world preset, ``fl.rounds`` rounds) in a fresh process for every (busy, threads)
pair: ``busy`` extra processes spinning a Python loop (started before the run, stopped after it) and
``model.torch_threads=threads``. ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` are removed from the runs' environment
so the setting alone decides. For each run it records the total wall time, the rounds' ``time.round_s`` (no
evaluation), the load average before it, and the slowdown against the same thread count with no busy process.
The fair-share slowdown of a run with ``t`` threads beside ``k`` spinning processes on ``c`` cores is
``(k + t) / c`` (for ``t <= c``): each runnable thread gets ``c / (k + t)`` of a core.

Usage:
    python bench/threads.py                                  # busy 0 and 3, threads 1 and 2, 2 rounds
    python bench/threads.py --busy 0,3 --threads 1,2,auto --rounds 2 --out bench/threads.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPIN = "while True:\n    pass\n"


def run_once(threads: str, rounds: int, out_dir: Path, timeout: float, extra: list[str]) -> dict:
    """One ``fedspear run`` in a subprocess; wall seconds, the rounds' round_s and the chosen-threads log line."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "fedspear", "run", f"fl.rounds={rounds}", f"model.torch_threads={threads}",
           f"output_dir={out_dir}", *extra]
    load = os.getloadavg()[0]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"threads": threads, "load_before": load, "wall_s": None, "timed_out": timeout}
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    header = next((line.split("INFO fedspear: ", 1)[1] for line in proc.stderr.splitlines()
                   if "torch threads" in line), "")
    return {"threads": threads, "load_before": load, "wall_s": wall,
            "round_s": sum(r["time"]["round_s"] for r in rows if r["round"] >= 1), "header": header}


def bench(busy_counts: list[int], thread_settings: list[str], rounds: int, timeout: float,
          extra: list[str]) -> list[dict]:
    """Every (busy, threads) pair; the spinning processes are this script's own and stopped by pid."""
    results = []
    with tempfile.TemporaryDirectory(prefix="fedspear-threads-") as tmp:
        for busy in busy_counts:
            spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(busy)]
            try:
                time.sleep(2.0 if busy else 0.0)
                for threads in thread_settings:
                    out = run_once(threads, rounds, Path(tmp) / f"busy{busy}-t{threads}", timeout, extra)
                    out["busy"] = busy
                    results.append(out)
                    print(json.dumps(out), flush=True)
            finally:
                for p in spinners:
                    p.kill()
                    p.wait()
    return results


def write_markdown(results: list[dict], path: Path, rounds: int, started: str, load_start: tuple) -> None:
    cores = os.cpu_count() or 1
    base = {r["threads"]: r["round_s"] for r in results if r["busy"] == 0 and r.get("round_s")}
    lines = [
        "# Torch threads on a busy CPU (bench/threads.py)", "",
        f"World preset, `fl.rounds={rounds}`, one fresh `fedspear run` per row, {cores} cores; "
        f"started {started}. Load average when the bench started: {load_start[0]:.2f} / {load_start[1]:.2f} / "
        f"{load_start[2]:.2f} (1 / 5 / 15 min).", "",
        "**Conditions, honestly:** this machine is shared by several engineers' test runs, so \"no busy process\" "
        "means none *added by the bench*: the load average before each run (column 4) shows what else ran. "
        "Timings on it vary from run to run by tens of percent; compare rows of one table, not across tables.", "",
        "| busy processes added | torch threads | start line | load before | wall s | rounds' round_s | slowdown vs "
        "no busy | fair share |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        t = r["threads"]
        t_num = int(t) if str(t).isdigit() else None
        fair = f"{(r['busy'] + t_num) / cores:.2f}x" if r["busy"] and t_num and t_num <= cores else "-"
        slow = f"{r['round_s'] / base[t]:.2f}x" if r["busy"] and r.get("round_s") and base.get(t) else "-"
        wall = f"{r['wall_s']:.1f}" if r.get("wall_s") else f"> {r.get('timed_out', '?'):.0f} (stopped)"
        round_s = f"{r['round_s']:.1f}" if r.get("round_s") is not None else "-"
        chosen = r.get("header", "").split("; ", 1)[-1] or "-"
        lines.append(f"| {r['busy']} | {t} | {chosen} | {r['load_before']:.2f} | {wall} | {round_s} | {slow} | {fair} |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--busy", default="0,3", help="comma-separated numbers of spinning processes to add")
    parser.add_argument("--threads", default="1,2", help="comma-separated model.torch_threads values")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds before a run is stopped")
    parser.add_argument("--out", default=None, help="write the markdown table here (e.g. bench/threads.md)")
    parser.add_argument("overrides", nargs="*", help="more KEY=VALUE for every run")
    args = parser.parse_args(argv)
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_start = os.getloadavg()
    results = bench([int(b) for b in args.busy.split(",")], [t.strip() for t in args.threads.split(",")],
                    args.rounds, args.timeout, args.overrides)
    if args.out:
        write_markdown(results, Path(args.out), args.rounds, started, load_start)
        print(Path(args.out).read_text())
    return results


if __name__ == "__main__":
    main()
