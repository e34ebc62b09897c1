"""Scaling curves: how a SPEAR round's cost grows with clients per round, rollouts per client, model width and
the federation's total size N, on CPU, on the shared bench setting (``../shared/bench/bench.yaml``: tiny random
Qwen2, ARC-shaped rows, 8 new tokens, two revision attempts).

Each point runs in its own process (so its peak RSS is its own), with one warm-up round and ``--rounds - 1``
timed rounds (median), one torch thread by default. Clients get near-equal shares of the rows
(``data.dirichlet_alpha=1000``), so the swept value, not a client's data, sets the work. Curves (every other setting as in bench.yaml):

- ``clients``: clients per round K = 1..16 of N = 16, 32 rollouts each, ``gen.rollout_batch_size=128`` so the
  clients' rollouts share batches;
- ``rollouts``: rollouts per client R = 8..128, K = 2 of N = 2 clients of 300 rows;
- ``width``: hidden size 64 / 128 (the bench model) / 256 (4 layers, random weights), K = 2;
- ``federation``: total clients N = 10..10,000 at K = 2 on 40 N ARC-shaped rows (the bench rows cycled with new
  ids, so a sampled client has as much data at every N): data loading, partition and client-sampling time,
  set-up and round time, peak RSS. The data grow with N by construction; nothing else should.

Set-up times exclude Python imports (done before the clock starts).

Flower's simulation runtime at N = 1,000 virtual clients is measured by ``bench/flower_scaling.py``.

Usage:
    python bench/scaling.py                               # every curve; table, JSON and plot
    python bench/scaling.py --curves clients,width --rounds 2
    python bench/scaling.py --out bench/results/scaling.json --plot bench/scaling.png
    python bench/scaling.py --curves rollouts --update --out bench/results/scaling.json   # redo one curve
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

CURVES: dict[str, tuple[str, list[int]]] = {
    "clients": ("clients per round K", [1, 2, 4, 8, 16]),
    "rollouts": ("rollouts per client", [8, 16, 32, 64, 128]),
    "width": ("hidden size", [64, 128, 256]),
    "federation": ("total clients N", [10, 100, 1000, 10000]),
}


def width_dir(bench_dir: Path, hidden: int) -> Path:
    """A copy of the bench setting whose model has ``hidden`` width (intermediate 2x, 4 heads, random weights)."""
    if hidden == 128:
        return bench_dir
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = bench_dir / f"width-{hidden}"
    if not (out / "model" / "config.json").is_file():
        config = AutoConfig.from_pretrained(bench_dir / "model")
        config.hidden_size, config.intermediate_size = hidden, 2 * hidden
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(out / "model")
        AutoTokenizer.from_pretrained(bench_dir / "model").save_pretrained(out / "model")
        _link(bench_dir / "data", out / "data")
    return out


ROWS_PER_CLIENT = 40  # federation curve: rows = 40 N, so a sampled client has about as many rows at every N


def federation_dir(bench_dir: Path, clients: int) -> Path:
    """A copy of the bench setting with ``ROWS_PER_CLIENT * clients`` training rows (the bench rows cycled, new
    ids)."""
    rows = max(600, ROWS_PER_CLIENT * clients)
    out = bench_dir / f"rows-{rows}"
    if not (out / "data" / "train.jsonl").is_file():
        write_cycled_rows(bench_dir / "data", out / "data", rows)
        _link(bench_dir / "model", out / "model")
    return out


def write_cycled_rows(src: Path, out: Path, rows: int) -> None:
    """An ARC-shaped data folder ``out`` whose train split holds ``rows`` rows: the rows of ``src/train.jsonl``
    cycled, with new ids ``train_<i>``; the test split is copied."""
    source = [json.loads(line) for line in (src / "train.jsonl").read_text().splitlines() if line.strip()]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "train.jsonl", "w") as f:
        for i in range(rows):
            f.write(json.dumps({**source[i % len(source)], "id": f"train_{i}"}) + "\n")
    shutil.copyfile(src / "test.jsonl", out / "test.jsonl")


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(target.resolve())


# Near-equal client sizes (Dirichlet concentration 1000 ~ an IID split), so every sampled client has the rows its
# rollouts need: with the bench's alpha = 1 a client often holds fewer rows than fl.local_rollout_steps, and
# its rollouts are capped by its data instead of the swept value.
EQUAL = ["data.dirichlet_alpha=1000"]


def point_setting(bench_dir: Path, curve: str, value: int) -> tuple[Path, list[str]]:
    """(bench folder, config overrides) of one point."""
    if curve == "clients":
        return bench_dir, [*EQUAL, "data.num_clients=16", f"fl.clients_per_round={value}",
                           "data.max_examples_per_client=37", "gen.rollout_batch_size=128"]
    if curve == "rollouts":
        return bench_dir, [*EQUAL, "data.num_clients=2", f"fl.local_rollout_steps={value}",
                           "data.max_examples_per_client=300", "gen.rollout_batch_size=128"]
    if curve == "width":
        return width_dir(bench_dir, value), EQUAL
    if curve == "federation":
        return federation_dir(bench_dir, value), [*EQUAL, f"data.num_clients={value}"]
    raise ValueError(f"unknown curve '{curve}'; choose from {', '.join(CURVES)}")


def measure_point(bench_dir: Path, curve: str, value: int, rounds: int) -> dict:
    """Run one point in this process: set-up time, then :func:`round_time.time_algorithm`'s figures."""
    import round_time
    import transformers  # noqa: F401  (imports outside every timed part)
    from transformers import Qwen2ForCausalLM  # noqa: F401

    from fedspear.federation import simulator  # noqa: F401

    run_dir, overrides = point_setting(bench_dir, curve, value)
    extra = federation_costs(run_dir, overrides) if curve == "federation" else {}
    start = time.perf_counter()
    result = round_time.time_algorithm(run_dir, "spear", rounds, overrides)
    result.update(curve=curve, value=value, total_s=time.perf_counter() - start, **extra)
    return result


def federation_costs(run_dir: Path, overrides: list[str]) -> dict:
    """Seconds to load the rows, partition them over N clients and draw one round's clients (mean of 1,000)."""
    import round_time

    from fedspear.federation.client import partition_examples
    from fedspear.federation.partition import sample_clients
    from fedspear.tasks import get_task

    cfg = round_time.bench_config(run_dir, "spear", 2, overrides)
    t0 = time.perf_counter()
    train = get_task(cfg.data.dataset).load(cfg).train
    t1 = time.perf_counter()
    parts = partition_examples(cfg, train)
    t2 = time.perf_counter()
    for r in range(1000):
        sample_clients(cfg.data.num_clients, cfg.fl.clients_per_round, cfg.data.seed, r)
    t3 = time.perf_counter()
    sizes = sorted(len(p) for p in parts)
    return {"rows": len(train), "load_s": t1 - t0, "partition_s": t2 - t1, "sample_ms": (t3 - t2),
            "client_rows_median": sizes[len(sizes) // 2], "empty_clients": sum(1 for n in sizes if n == 0)}


def run_point(bench_dir: Path, curve: str, value: int, rounds: int, threads: int) -> dict:
    """Run one point in a fresh process and return its figures (peak RSS is that process's own)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TQDM_DISABLE": "1",
           "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, __file__, "--point", f"{curve}={value}", "--rounds", str(rounds),
           "--bench-dir", str(bench_dir)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"scaling: point {curve}={value} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def growth(points: list[dict], key: str) -> float | None:
    """Log-log slope of ``key`` against the swept value between the first and last point (1 = linear)."""
    import math

    a, b = points[0], points[-1]
    if not a.get(key) or not b.get(key) or a["value"] == b["value"]:
        return None
    return math.log(b[key] / a[key]) / math.log(b["value"] / a["value"])


def table(results: dict[str, list[dict]]) -> str:
    """Markdown table of every point, with the growth exponent of round time per curve."""
    lines = ["| curve | value | generations | round s | generation s | training s | gen tok/s | train tok/s | "
             "peak RSS MB | set-up s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for curve, points in results.items():
        for p in points:
            lines.append(f"| {CURVES[curve][0]} | {p['value']:,} | {p['generations_per_round']:.0f} | "
                         f"{p['round_s']:.2f} | {p['generation_s']:.2f} | "
                         f"{p['training_s']:.2f} | {p['generated_tokens_per_s'] or 0:,.0f} | "
                         f"{p['trained_tokens_per_s'] or 0:,.0f} | {p['peak_rss_mb']:.0f} | {p['setup_s']:.2f} |")
    fed = results.get("federation", [])
    if fed:
        lines += ["", "| total clients N | rows | load s | partition s | sampling ms / round | median rows / client |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {p['value']:,} | {p['rows']:,} | {p['load_s']:.2f} | {p['partition_s']:.3f} | "
                  f"{p['sample_ms']:.3f} | {p['client_rows_median']} |" for p in fed]
    lines += ["", "Growth of round time, log-log slope first -> last point (1 = linear, 0 = flat): " + "; ".join(
        f"{CURVES[c][0]}: {growth(points, 'round_s'):.2f}" for c, points in results.items()
        if growth(points, "round_s") is not None)]
    return "\n".join(lines)


def plot(results: dict[str, list[dict]], path: Path) -> None:
    """One panel per curve: round time (left axis) and peak RSS (right axis) against the swept value, log x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.4), squeeze=False)
    for ax, (curve, points) in zip(axes[0], results.items()):
        xs = [p["value"] for p in points]
        ax.plot(xs, [p["round_s"] for p in points], "o-", label="round s")
        ax.plot(xs, [p["generation_s"] for p in points], "s--", label="generation s")
        ax.plot(xs, [p["training_s"] for p in points], "^--", label="training s")
        ax.set_xscale("log", base=2 if curve != "federation" else 10)
        ax.set_xlabel(CURVES[curve][0])
        ax.set_ylabel("seconds per round")
        right = ax.twinx()
        right.plot(xs, [p["peak_rss_mb"] for p in points], "k:", label="peak RSS MB")
        right.set_ylabel("peak RSS MB")
        ax.set_title(curve)
        if curve == next(iter(results)):
            ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--curves", default=",".join(CURVES), help=f"comma-separated ({', '.join(CURVES)})")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per point, the first a warm-up (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per point (default 1)")
    parser.add_argument("--bench-dir", type=Path, default=None, help="make_bench.py output (built if missing)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument("--plot", type=Path, default=None, help="write the plot here (PNG)")
    parser.add_argument("--update", action="store_true",
                        help="keep the other curves already in --out (rerun only --curves)")
    parser.add_argument("--point", default=None, help=argparse.SUPPRESS)  # CURVE=VALUE: one point, this process
    args = parser.parse_args(argv)
    import round_time

    bench_dir = round_time.build_bench(args.bench_dir or Path("/tmp") / "fedspear-bench")
    if args.point:
        curve, value = args.point.split("=")
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(measure_point(bench_dir, curve, int(value), args.rounds)))
        return {}
    curves = [c for c in args.curves.split(",") if c]
    unknown = [c for c in curves if c not in CURVES]
    if unknown:
        parser.error(f"unknown curve(s) {', '.join(unknown)}; choose from {', '.join(CURVES)}")
    results: dict[str, list[dict]] = {}
    if args.update and args.out and args.out.is_file():
        results = {c: pts for c, pts in json.loads(args.out.read_text())["results"].items() if c not in curves}
    for curve in curves:
        results[curve] = []
        for value in CURVES[curve][1]:
            p = run_point(bench_dir, curve, value, args.rounds, args.threads)
            results[curve].append(p)
            print(f"{curve}={value}: round {p['round_s']:.2f} s, set-up {p['setup_s']:.2f} s, "
                  f"peak RSS {p['peak_rss_mb']:.0f} MB", flush=True)
    print(table(results))
    summary = {"threads": args.threads, "rounds": args.rounds, "results": results}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1) + "\n")
    if args.plot:
        plot(results, args.plot)
    return summary


if __name__ == "__main__":
    main()
