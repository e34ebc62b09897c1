"""Fingerprint small real runs, to show that a refactor leaves results unchanged, bit for bit.

Seven short runs on the built-in offline world (``fedspear/configs/default.yaml``, the default preset), each in its
own folder under ``--out``, each through the real command line in a subprocess (``model.torch_threads=1``):

- ``spear``, ``feedback_sft``, ``grpo``, ``opsd``, ``rltf_sd``: ``python -m fedspear run`` (the in-process
  simulator), 2 rounds of 3 clients, 8 rollouts and 4 training steps each, evaluation on 24 items at rounds 0-2;
- ``served``: ``python -m fedspear.serve.simulate`` (2 served clients behind HTTP, scripted people, 4 questions
  per client and round, 2 rounds);
- ``flower``: ``fedspear flower-config``, a SuperLink in simulation mode and ``flwr run`` with 3 simulated
  SuperNodes (2 rounds, all 3 clients every round), as the README's "Simulation runtime" section does.

The fingerprint (JSON) holds, per run, the sha256 of every tensor of every ``*.safetensors`` file in the run's
folder (adapters of every round, the checkpoint, a served client's adapter versions; each tensor's name, dtype,
shape and bytes, in sorted order; file metadata is left out) and the rows of ``metrics.jsonl`` without the fields
that differ between two runs of the same code (:data:`DROPPED_KEYS`, :data:`DROPPED_SUFFIX`).

Usage (run it from the checkout under test, whose fedspear the runs import)::

    cd OLD && PYTHONPATH=$PWD python NEW/bench/same_results.py --out /tmp/fp-old --json /tmp/old.json
    cd NEW && PYTHONPATH=$PWD python bench/same_results.py --out /tmp/fp-new --compare /tmp/old.json
    python bench/same_results.py --out /tmp/fp-new --no-run --compare /tmp/old.json   # fingerprint again only
    python bench/same_results.py --out /tmp/fp-new --only spear,flower --compare /tmp/old.json
    python bench/same_results.py --fingerprint /tmp/new.json --compare /tmp/old.json      # two saved fingerprints

``--compare`` prints SAME or the first differing metric key and tensor per run (with both values, and the max
absolute difference of the differing tensors while both run folders exist) and exits 1 on any difference; 2 when
a run failed. Floats are compared exactly.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ALGORITHMS = ("spear", "feedback_sft", "grpo", "opsd", "rltf_sd")
RUNS = (*ALGORITHMS, "served", "flower")
# The smallest settings that still roll out, revise, train, aggregate and evaluate (each run ~10 s on one core).
COMMON = ("fl.rounds=2", "fl.local_rollout_steps=8", "fl.local_train_steps=4", "data.max_eval_examples=24",
          "model.torch_threads=1")
SIMULATOR = (*COMMON, "fl.clients_per_round=3")
SERVED = ("--clients", "2", "--rounds", "2", "--questions", "4", "--threads", "1")
FLOWER = (*COMMON, "data.num_clients=3", "fl.clients_per_round=3")
FEDERATION = "num-supernodes=3"  # `flwr run --federation-config`: 3 simulated SuperNodes
RUN_TIMEOUT_S = 900
# Every process the runs start (and Ray's workers) sees these: one thread, no GPU, fixed string hashing, no bars.
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONHASHSEED": "0",
       "TQDM_DISABLE": "1", "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}

# Fields of a metrics row dropped from the fingerprint, wherever they occur (at any depth), and why.
DROPPED_KEYS = {
    "time": "the row's timing block (round_s, generation_s, training_s, aggregation_s, eval_s): wall clock",
    "seconds": "eval's wall-clock seconds",
    "peak_rss_mb": "a client's resident memory peak: depends on the host, the allocator and the process's past",
    "update_rss_peak_mb": "the same, during the client update",
    "peak_rss_mb_max": "resources: the largest of the clients' peak_rss_mb",
    "update_rss_peak_mb_max": "resources: the largest of the clients' update_rss_peak_mb",
    "node_id": "Flower's node id of a client: random per SuperNode start",
    "wire_bytes_down": "Flower: size of the train message, whose job holds the resolved config with output_dir, a path",
    "answer_seconds_median": "served: median latency of a first answer (wall clock)",
    "revision_seconds_median": "served: median latency of a revision (wall clock)",
}
DROPPED_SUFFIX = "_s"  # every duration in seconds: generation_s, feedback_s, training_s, round_s, eval_s, ...
# A kept key that matches this may be host- or time-dependent: it is listed under "unreviewed" in the fingerprint
# (and printed) until it is added to DROPPED_KEYS or to REVIEWED_KEYS.
SUSPECT = re.compile(r"time|second|rss|mem|peak|wall|date|stamp|path|pid|host|node|port|url|dir$|file|latency")
REVIEWED_KEYS = {
    "wire_bytes_up": "Flower: size of the client's reply (adapter tensors + scalar metrics): no path, deterministic",
    "num_without_update": "aggregation: clients that sent no update (a count; 'update' matches 'date')",
}


def strip_row(value: Any, dropped: set[str], unreviewed: set[str]) -> Any:
    """``value`` without the dropped fields (recursively); their names go to ``dropped``, suspect kept ones to
    ``unreviewed``."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key in DROPPED_KEYS or key.endswith(DROPPED_SUFFIX):
                dropped.add(key)
                continue
            if SUSPECT.search(key) and key not in REVIEWED_KEYS:
                unreviewed.add(key)
            out[key] = strip_row(item, dropped, unreviewed)
        return out
    if isinstance(value, list):
        return [strip_row(item, dropped, unreviewed) for item in value]
    return value


def tensor_hashes(path: Path) -> dict[str, str]:
    """sha256 of each tensor of a safetensors file (name, dtype, shape and raw bytes), by name, sorted."""
    import torch
    from safetensors import safe_open

    out = {}
    with safe_open(str(path), framework="pt") as f:
        for name in sorted(f.keys()):
            tensor = f.get_tensor(name).contiguous()
            digest = hashlib.sha256(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
            out[name] = digest.hexdigest()
    return out


def metrics_dir(name: str, folder: Path) -> Path:
    """Where a run's metrics.jsonl is: the served federation's server and Flower's ServerApp write subfolders."""
    return folder / {"served": "server", "flower": "run"}.get(name, "")


def fingerprint_run(name: str, folder: Path) -> dict[str, Any]:
    """The fingerprint of one finished run folder: stripped metrics rows, tensor hashes, dropped/unreviewed keys."""
    metrics = metrics_dir(name, folder) / "metrics.jsonl"
    if not metrics.is_file():
        return {"error": f"no {metrics}"}
    dropped: set[str] = set()
    unreviewed: set[str] = set()
    rows = [strip_row(json.loads(line), dropped, unreviewed) for line in metrics.read_text().splitlines() if line]
    tensors = {str(p.relative_to(folder)): tensor_hashes(p) for p in sorted(folder.rglob("*.safetensors"))}
    return {"rows": rows, "tensors": tensors, "dropped": sorted(dropped), "unreviewed": sorted(unreviewed)}


# --------------------------------------------------------------------------- the runs


def _env() -> dict[str, str]:
    return {**os.environ, **ENV}


def _call(argv: list[str], log: Path, timeout: float = RUN_TIMEOUT_S) -> None:
    """Run ``argv`` from the current folder (the checkout under test), output to ``log``; raise on failure."""
    with log.open("w") as out:
        rc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_env(),
                            timeout=timeout).returncode
    if rc != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} ... exited with {rc}; log {log}:\n" + log.read_text()[-2000:])


def run_simulator(algorithm: str, folder: Path, log: Path) -> None:
    """``python -m fedspear run`` on the default preset."""
    _call([sys.executable, "-m", "fedspear", "run", *SIMULATOR, f"algorithm.name={algorithm}",
           f"output_dir={folder}"], log)


def run_served(folder: Path, log: Path) -> None:
    """``python -m fedspear.serve.simulate``: a federation of served clients and scripted people."""
    _call([sys.executable, "-m", "fedspear.serve.simulate", "--out", str(folder), *SERVED, *COMMON], log)


def run_flower(folder: Path, log: Path) -> None:
    """Flower's simulation runtime: ``fedspear flower-config``, ``flower-superlink --simulation``, ``flwr run``.

    Processes are started and ended (all of them, Ray's included) by the Flower tests' harness.
    """
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "flower"))
    from flower_harness import BIN, Processes, free_port, start_superlink

    port, app = free_port(), folder / "app"
    _call([sys.executable, "-m", "fedspear", "flower-config", "--out", str(app), "--superlink", f"127.0.0.1:{port}",
           "--connect-timeout", "300", *FLOWER, f"output_dir={folder / 'run'}"], log)
    os.environ.update(ENV)  # the harness starts processes with os.environ
    procs = Processes(folder / "logs")
    try:
        start_superlink(procs, port, folder / "superlink-home", simulation=True, timeout=120.0)
        run = procs.start("flwr-run", [str(BIN / "flwr"), "run", str(app), "fedspear", "--stream",
                                       "--federation-config", FEDERATION],
                          FLWR_HOME=str(app / ".flwr"))
        rc = run.wait(timeout=RUN_TIMEOUT_S)
    finally:
        left = procs.close()
        with log.open("a") as out:
            out.write(procs.log("flwr-run") + (f"\nprocesses left behind: {left}\n" if left else ""))
    if rc != 0 or left:
        raise RuntimeError(f"flwr run exited with {rc} (left behind: {left}); log {log}:\n"
                           + procs.log("flwr-run")[-2000:])


def run_one(name: str, out: Path) -> float:
    """Run ``name`` into ``out/name`` (removed first; log ``out/name.log``); returns its wall-clock seconds."""
    folder = out / name
    if folder.exists():
        shutil.rmtree(folder)
    start = time.perf_counter()
    if name in ALGORITHMS:
        run_simulator(name, folder, out / f"{name}.log")
    elif name == "served":
        run_served(folder, out / f"{name}.log")
    else:
        folder.mkdir(parents=True)
        run_flower(folder, out / f"{name}.log")
    return time.perf_counter() - start


# --------------------------------------------------------------------------- comparing


def _same(a: Any, b: Any) -> bool:
    """Exactly equal scalars (same type; floats bit for bit, NaN equal to NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def differences(a: Any, b: Any, where: str = "") -> Iterator[tuple[str, Any, Any]]:
    """Every place where two JSON values differ, in order: (key path, value in ``a``, value in ``b``)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in [*a, *(k for k in b if k not in a)]:
            if key not in a or key not in b:
                yield f"{where}.{key}", a.get(key, "<missing>"), b.get(key, "<missing>")
            else:
                yield from differences(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        for i, (x, y) in enumerate(zip(a, b)):
            yield from differences(x, y, f"{where}[{i}]")
        if len(a) != len(b):
            yield f"{where} length", len(a), len(b)
    elif not _same(a, b):
        yield where or "value", a, b


def _max_abs_diff(base_file: Path, now_file: Path, names: list[str]) -> str:
    """The largest |difference| over ``names`` in two safetensors files, or why it cannot be told."""
    if not (base_file.is_file() and now_file.is_file()):
        return "max |diff| unknown: a run folder is gone"
    from safetensors.torch import load_file

    a, b = load_file(str(base_file)), load_file(str(now_file))
    diffs = [float((a[n].double() - b[n].double()).abs().max()) for n in names
             if n in a and n in b and a[n].shape == b[n].shape]
    return f"max |diff| {max(diffs):.3g}" if diffs else "max |diff| unknown: names or shapes differ"


def tensor_differences(base: dict[str, dict[str, str]], now: dict[str, dict[str, str]], base_dir: Path,
                       now_dir: Path) -> list[str]:
    """One line per file whose tensors differ: the first differing tensor (both hashes) and the max |diff|."""
    lines = []
    for file in sorted(set(base) | set(now)):
        if file not in base or file not in now:
            lines.append(f"tensor file {file}: {'only now' if file in now else 'only in base'}")
            continue
        names = sorted(set(base[file]) | set(now[file]))
        differ = [n for n in names if base[file].get(n) != now[file].get(n)]
        if differ:
            first = differ[0]
            lines.append(f"tensor {file} :: {first}: base {str(base[file].get(first))[:12]} != now "
                         f"{str(now[file].get(first))[:12]} ({len(differ)} of {len(names)} tensors differ, "
                         f"{_max_abs_diff(base_dir / file, now_dir / file, differ)})")
    return lines


def compare_run(name: str, base: dict[str, Any], now: dict[str, Any], base_out: Path, now_out: Path) -> list[str]:
    """What differs in run ``name`` (empty: the same): the first differing metric key, then tensor lines."""
    if "error" in base or "error" in now:
        return [f"run failed: base {base.get('error', 'ok')!r}, now {now.get('error', 'ok')!r}"]
    lines = []
    found = list(differences(base["rows"], now["rows"], "metrics.jsonl rows"))
    if found:
        where, old, new = found[0]
        lines.append(f"{where}: base {old!r} != now {new!r} ({len(found)} differing values in the rows)")
    return lines + tensor_differences(base["tensors"], now["tensors"], base_out / name, now_out / name)


def compare(base: dict[str, Any], now: dict[str, Any]) -> int:
    """Print SAME or the differences of each run of ``now`` against ``base``; 1 if any run differs, else 0."""
    if base.get("settings") != now.get("settings"):
        print("warning: the run settings differ from the base's (another version of this script?)")
    different = 0
    for name, run in now["runs"].items():
        if name not in base["runs"]:
            print(f"{name}: not in the base fingerprint")
            different += 1
            continue
        lines = compare_run(name, base["runs"][name], run, Path(base.get("out", "")), Path(now.get("out", "")))
        print(f"{name}: " + ("SAME" if not lines else "DIFFERENT"))
        for line in lines:
            print(f"    {line}")
        different += bool(lines)
    skipped = sorted(set(base["runs"]) - set(now["runs"]))
    print(("skipped (not run now): " + ", ".join(skipped) + "\n" if skipped else "")
          + ("all runs SAME" if not different else f"{different} of {len(now['runs'])} runs DIFFERENT"))
    return 1 if different else 0


# --------------------------------------------------------------------------- CLI


def checkout_info() -> dict[str, str]:
    """Which fedspear the runs import (as the subprocesses see it) and the current folder's git commit."""
    where = subprocess.run([sys.executable, "-c", "import fedspear; print(fedspear.__file__)"], env=_env(),
                           capture_output=True, text=True).stdout.strip()
    git = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True)
    return {"fedspear": where, "cwd": os.getcwd(), "commit": git.stdout.strip() or "unknown"}


def fingerprint(names: list[str], out: Path, run: bool) -> dict[str, Any]:
    """Run (unless ``run`` is False) and fingerprint ``names`` under ``out``."""
    info = checkout_info()
    print(f"fedspear from {info['fedspear']} ({info['commit']}); runs into {out}", flush=True)
    result: dict[str, Any] = {"format": 1, "out": str(out.resolve()), **info, "runs": {}, "seconds": {},
                              "settings": {"simulator": list(SIMULATOR), "served": [*SERVED, *COMMON], "flower": list(FLOWER),
                                           "federation": FEDERATION, "env": ENV}}
    start = time.perf_counter()
    for name in names:
        error = None
        if run:
            try:
                result["seconds"][name] = round(run_one(name, out), 1)
            except Exception as exc:  # a failed run is recorded, the others still run
                error = f"{type(exc).__name__}: {exc}"
        fp = {"error": error} if error else fingerprint_run(name, out / name)
        result["runs"][name] = fp
        state = fp.get("error") or f"{len(fp['rows'])} rows, {sum(map(len, fp['tensors'].values()))} tensors"
        print(f"{name}: {result['seconds'].get(name, '-')} s, {state}", flush=True)
        if fp.get("unreviewed"):
            print(f"    unreviewed keys kept (see SUSPECT in {Path(__file__).name}): {fp['unreviewed']}")
    result["total_seconds"] = round(time.perf_counter() - start, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="folder of the run folders (OUT/NAME, OUT/NAME.log)")
    parser.add_argument("--json", type=Path, default=None, help="fingerprint file to write (default OUT/fingerprint.json)")
    parser.add_argument("--compare", type=Path, metavar="BASE.json", help="compare with this fingerprint")
    parser.add_argument("--only", default=",".join(RUNS), help=f"runs, comma separated (default {','.join(RUNS)})")
    parser.add_argument("--no-run", action="store_true", help="fingerprint the run folders already in OUT")
    parser.add_argument("--fingerprint", type=Path, metavar="NOW.json",
                        help="with --compare: compare this saved fingerprint, run nothing")
    args = parser.parse_args(argv)
    base = json.loads(args.compare.read_text()) if args.compare else None  # read first: fail before the runs
    if args.fingerprint:
        if base is None:
            parser.error("--fingerprint needs --compare BASE.json")
        return compare(base, json.loads(args.fingerprint.read_text()))
    if args.out is None:
        parser.error("--out is required (or --fingerprint NOW.json --compare BASE.json)")
    names = [n for n in args.only.split(",") if n]
    if unknown := sorted(set(names) - set(RUNS)):
        parser.error(f"unknown runs {unknown}; known: {', '.join(RUNS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    now = fingerprint(names, args.out, run=not args.no_run)
    target = args.json or args.out / "fingerprint.json"
    target.write_text(json.dumps(now, indent=1) + "\n")
    print(f"fingerprint: {target} ({now['total_seconds']} s)")
    failed = [n for n, r in now["runs"].items() if "error" in r]
    rc = compare(base, now) if base is not None else 0
    return 2 if failed else rc


if __name__ == "__main__":
    sys.exit(main())
