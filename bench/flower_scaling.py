"""Flower's simulation runtime as the federation grows: N = 10, 100, 1,000 virtual clients, K = 2 per round.

For each N this writes a Flower app with ``fedspear flower-config``'s writer (:func:`write_flower_app`) for the
tiny random Qwen2 of ``../shared/bench/make_bench.py`` (small settings: 3 rounds, 8 rollouts and 2 training steps
per client, 8 new tokens, evaluation on 8 examples at round 0 and the end), starts a SuperLink in simulation mode
and runs ``flwr run APP fedspear --federation-config "num-supernodes=N" --stream``, as the README's "Simulation
runtime" section does. It measures:

- ``wall_s``: the whole ``flwr run``, from its start until it exits (Ray start, model loads, discovery, rounds,
  evaluation, report);
- ``round0_s``: until the ServerApp has evaluated round 0 (Ray started, the app installed, the model loaded);
- ``first_node_s``: until the first node has answered the ServerApp's discovery ``query`` (a Ray worker started
  and imported the ClientApp);
- ``connected_s``: until the ServerApp logs "k of N clients connected" (it sends every node a ``query`` message
  and waits for the answers before round 1);
- ``first_round_start_s`` / ``first_round_end_s``: when round 1 starts / its metrics row is written (from the
  ``flwr run`` start; the start is the row's write time minus its ``time.round_s``);
- ``round_s``: each round's ``time.round_s`` from the run folder's ``metrics.jsonl`` (send jobs, the 2 sampled
  clients' rollout + training in Ray workers, aggregation; no evaluation);
- peak resident memory: every 0.5 s, VmRSS of every process the run started (found by a marker in their
  environment, which Ray workers inherit), summed per role: ``superlink`` (flower-superlink), ``serverapp``
  (the ``flwr-simulation`` process, which holds the ServerApp and the simulation policy), ``ray`` (Ray's
  raylet, GCS and workers, where the ClientApps run), ``other``; and ``total``, the peak of the sum.

The bench's data folder holds 600 training rows; for N > 300 an ARC-shaped folder with max(600, 2N) rows is written
(the bench rows cycled, with new ids; the test rows copied), so every client has at least one row after the
seeded Dirichlet partition. Every point says how many rows it used (``train_rows``, ``rows_cycled``).

Usage:
    python bench/flower_scaling.py                         # N = 10, 100, 1000, 3 rounds each
    python bench/flower_scaling.py --clients 10,100 --rounds 2 --json
    python bench/flower_scaling.py --client-cpus 1         # Ray: 1 CPU per ClientApp (2 actors on 2 cores)
    python bench/flower_scaling.py --clients 1000 data.max_eval_examples=4   # extra fedspear overrides

Import :func:`flower_point` to measure one N from another script.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
# Flower processes are started, marked and cleaned up as the Flower tests do (one implementation of each).
sys.path.insert(0, str(BENCH.parent / "tests" / "flower"))
from flower_harness import BIN, Processes, free_port, start_superlink  # noqa: E402
from scaling import write_cycled_rows  # noqa: E402

# Lines of the streamed ServerApp log whose first appearance is timed (seconds from the `flwr run` start, polled
# every 0.5 s): the round-0 evaluation done (the ServerApp has loaded the model), the first node's answer to the
# discovery query (a Ray worker has started and imported the ClientApp), all nodes' answers.
MILESTONES = (("round0_s", "round   0/"), ("first_node_s", " is node "), ("connected_s", "clients connected"))
SMALL = ["fl.clients_per_round=2", "fl.local_rollout_steps=8", "fl.local_train_steps=2", "gen.max_new_tokens_y0=8",
         "gen.max_new_tokens_y1=8", "data.eval_every=1000", "data.eval_every_round_up_to=0",
         "data.max_eval_examples=8", "fl.batch_clients=false"]


# --------------------------------------------------------------------------- data


def scaled_data(bench_dir: Path, out_dir: Path, num_clients: int) -> tuple[Path, int, bool]:
    """The data folder for ``num_clients`` clients: the bench's own when it has >= 2 rows per client, else an
    ARC-shaped copy in ``out_dir`` whose train split holds max(600, 2 * num_clients) rows, the bench rows
    cycled with new ids ``train_<i>`` (test split copied). Returns (folder, train rows, whether rows were cycled)."""
    src = bench_dir / "data"
    have = sum(1 for line in (src / "train.jsonl").read_text().splitlines() if line.strip())
    wanted = max(600, 2 * num_clients)
    if have >= wanted:
        return src, have, False
    write_cycled_rows(src, out_dir, wanted)
    return out_dir, wanted, True


# --------------------------------------------------------------------------- processes


def _role(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "other"
    if "flower-superlink" in cmd:
        return "superlink"
    if "flwr-simulation" in cmd:
        return "serverapp"
    if "ray" in cmd.lower():
        return "ray"
    return "other"


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class MemoryPoller(threading.Thread):
    """Every ``interval`` s, the resident memory of the marked processes, summed per role (:func:`_role`); keeps
    the peak of each role's sum and of the total (MB), and the most processes seen at once."""

    def __init__(self, procs: Processes, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.procs, self.interval = procs, interval
        self.peak_mb: dict[str, float] = {}
        self.max_processes = 0
        self._halt = threading.Event()

    def run(self) -> None:
        roles: dict[int, str] = {}
        while not self._halt.is_set():
            sums: dict[str, float] = {}
            pids = self.procs.marked()
            self.max_processes = max(self.max_processes, len(pids))
            for pid in pids:
                role = roles.setdefault(pid, _role(pid))
                sums[role] = sums.get(role, 0.0) + _rss_kb(pid) / 1024
            sums["total"] = sum(sums.values())
            for role, mb in sums.items():
                self.peak_mb[role] = max(self.peak_mb.get(role, 0.0), mb)
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


def _rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a row being written
            break
    return out


# --------------------------------------------------------------------------- one point


def flower_point(n: int, rounds: int = 3, *, bench_dir: Path | None = None, work_dir: Path | None = None,
                 timeout: float = 1800.0, client_cpus: float | None = None, overrides: list[str] | None = None,
                 keep: bool = False) -> dict:
    """Run the tiny bench federation of ``n`` clients (2 per round) for ``rounds`` rounds on Flower's simulation
    runtime and measure it (see the module docstring).

    Args:
        n: the federation size ``data.num_clients`` = ``num-supernodes``.
        rounds: ``fl.rounds``.
        bench_dir: the make_bench.py folder (built when missing; default ``$TMPDIR/fedspear-bench``).
        work_dir: where the app, data, run folder and logs go (default: a new temporary folder).
        timeout: seconds after which ``flwr run`` is stopped and the point reported as ``timed_out``.
        client_cpus: Ray CPUs per ClientApp (``client-resources-num-cpus``; Flower's default is 2).
        overrides: more fedspear ``KEY=VALUE`` overrides.
        keep: keep ``work_dir`` (always kept when given).

    Returns:
        A dict: ``n``, ``rounds``, ``ok`` (the run ended with exit 0 and all rounds in metrics.jsonl), ``error``
        (when not ok, with the end of the log), times in seconds (``wall_s``, ``round0_s``, ``first_node_s``,
        ``connected_s``, ``first_round_start_s``, ``first_round_end_s``, ``round_s`` per round, ``eval_s`` per evaluated round),
        ``peak_rss_mb`` per role and ``total``, ``max_processes``, ``train_rows``, ``rows_cycled``, ``work_dir``.
    """
    import shutil

    from round_time import SHARED_BENCH, build_bench

    from fedspear.config import load_config
    from fedspear.flower.app_config import write_flower_app

    bench_dir = build_bench(Path(bench_dir or Path(tempfile.gettempdir()) / "fedspear-bench"))
    own_dir = work_dir is None
    work = Path(work_dir or tempfile.mkdtemp(prefix=f"fedspear-flower-{n}-"))
    data_dir, train_rows, cycled = scaled_data(bench_dir, work / "data", n)
    run_dir = work / "run"
    cfg = load_config(SHARED_BENCH / "bench.yaml", [
        f"model.model_name={bench_dir / 'model'}", f"data.path={data_dir}", f"data.num_clients={n}",
        f"fl.rounds={rounds}", f"output_dir={run_dir}", *SMALL, *(overrides or [])])
    port = free_port()
    app = write_flower_app(cfg, work / "app", superlink=f"127.0.0.1:{port}", connect_timeout=max(300.0, n))
    federation = f"num-supernodes={n}" + (f" client-resources-num-cpus={client_cpus:g}" if client_cpus else "")
    result: dict = {"n": n, "rounds": rounds, "clients_per_round": cfg.fl.clients_per_round, "train_rows": train_rows,
                    "rows_cycled": cycled, "federation_config": federation, "work_dir": str(work)}
    os.environ.setdefault("TQDM_DISABLE", "1")  # the Flower processes inherit it (as bench/round_time.py does)
    procs = Processes(work / "logs")
    poller = MemoryPoller(procs)
    try:
        start_superlink(procs, port, work / "superlink-home", simulation=True, timeout=120.0)
        poller.start()
        start = time.perf_counter()
        run = procs.start("flwr-run", [str(BIN / "flwr"), "run", str(app), "fedspear", "--stream",
                                       "--federation-config", federation], FLWR_HOME=str(app / ".flwr"))
        seen_rows = 0
        while run.poll() is None and time.perf_counter() - start < timeout:
            now = time.perf_counter() - start
            log = procs.log("flwr-run") if any(key not in result for key, _ in MILESTONES) else ""
            for key, needle in MILESTONES:
                if key not in result and needle in log:
                    result[key] = now
            rows = _rows(run_dir)
            if len(rows) > seen_rows:
                for row in rows[seen_rows:]:
                    if row.get("round") == 1:
                        result["first_round_end_s"] = now
                        result["first_round_start_s"] = now - row["time"]["round_s"]
                seen_rows = len(rows)
            time.sleep(0.5)
        result["wall_s"] = time.perf_counter() - start
        result["timed_out"] = run.poll() is None
        rows = _rows(run_dir)
        result["round_s"] = [r["time"]["round_s"] for r in rows if r.get("round", 0) >= 1]
        result["eval_s"] = {r["round"]: r["time"]["eval_s"] for r in rows if "eval_s" in r.get("time", {})}
        failed = [c for r in rows for c in r.get("clients", []) if "error" in c]
        result["failed_clients"] = len(failed)
        result["ok"] = not result["timed_out"] and run.returncode == 0 and len(result["round_s"]) == rounds \
            and not failed
        if not result["ok"]:
            result["error"] = ("timed out" if result["timed_out"] else f"flwr run exited with {run.returncode}") + \
                f"; rounds done {len(result['round_s'])} of {rounds}; failed clients {len(failed)}; log tail:\n" + \
                procs.log("flwr-run")[-2000:]
    finally:
        try:
            if poller.is_alive():
                poller.stop()
        finally:
            left = procs.close()  # always, even when the poller fails
        result["peak_rss_mb"] = {k: round(v, 1) for k, v in sorted(poller.peak_mb.items())}
        result["max_processes"] = poller.max_processes
        if left:
            result["left_behind"] = left
    if own_dir and not keep and result.get("ok"):
        shutil.rmtree(work, ignore_errors=True)
    return result


# --------------------------------------------------------------------------- CLI


def _table(points: list[dict]) -> str:
    head = f"{'N':>6}{'ok':>4}{'wall s':>9}{'eval0 s':>8}{'node1 s':>8}{'conn s':>8}{'1st rnd s':>10}{'round s (each)':>24}" \
           f"{'srvapp MB':>10}{'ray MB':>8}{'link MB':>8}{'total MB':>9}{'procs':>6}{'rows':>8}"
    lines = [head]
    for p in points:
        mem = p.get("peak_rss_mb", {})
        rounds = ", ".join(f"{s:.1f}" for s in p.get("round_s", []))
        lines.append(f"{p['n']:>6}{'y' if p.get('ok') else 'n':>4}{p.get('wall_s', 0):>9.1f}"
                     f"{p.get('round0_s', float('nan')):>8.1f}{p.get('first_node_s', float('nan')):>8.1f}"
                     f"{p.get('connected_s', float('nan')):>8.1f}{p.get('first_round_start_s', float('nan')):>10.1f}"
                     f"{rounds:>24}{mem.get('serverapp', 0):>10.0f}{mem.get('ray', 0):>8.0f}"
                     f"{mem.get('superlink', 0):>8.0f}{mem.get('total', 0):>9.0f}{p.get('max_processes', 0):>6}"
                     f"{p['train_rows']:>7}{'*' if p.get('rows_cycled') else ' '}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="10,100,1000", help="federation sizes N, comma separated")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per run (default 3)")
    parser.add_argument("--bench-dir", type=Path, default=None, help="make_bench.py folder (default $TMPDIR/fedspear-bench)")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep each N's app, run and logs in DIR/n<N>")
    parser.add_argument("--client-cpus", type=float, default=None,
                        help="Ray CPUs per ClientApp (Flower's client-resources-num-cpus; its default is 2)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per N before it is stopped")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines and a table")
    parser.add_argument("overrides", nargs="*", help="extra fedspear KEY=VALUE overrides")
    args = parser.parse_args(argv)
    try:
        sizes = [int(x) for x in args.clients.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--clients must be integers separated by commas, got '{args.clients}'")
    if not sizes or min(sizes) < 2:
        parser.error("--clients: each N must be at least 2 (2 clients are sampled per round)")
    points = []
    for n in sizes:
        work = args.work_dir / f"n{n}" if args.work_dir else None
        point = flower_point(n, args.rounds, bench_dir=args.bench_dir, work_dir=work, timeout=args.timeout,
                             client_cpus=args.client_cpus, overrides=args.overrides)
        points.append(point)
        if not args.json:
            print(json.dumps(point), flush=True)
    if args.json:
        print(json.dumps({"threads": os.environ.get("OMP_NUM_THREADS"), "points": points}))
    else:
        print(f"Flower simulation runtime, K=2 clients per round, {args.rounds} rounds, times from `flwr run` start "
              f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}); rows* = train rows cycled from the bench's 600")
        print(_table(points))
    return points


if __name__ == "__main__":
    main()
