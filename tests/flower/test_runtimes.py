"""Both Flower runtimes end to end on a tiny model, 3 clients x 2 rounds, against the in-process simulator.

- simulation runtime: a SuperLink in simulation mode and `flwr run` with 3 simulated SuperNodes;
- deployment runtime: a SuperLink and 3 SuperNodes as separate processes on loopback, each SuperNode keeping its
  own partition of the data; every message a client sends is logged and inspected;
- faults: a SuperNode killed (SIGKILL) mid-round, then the server killed and restarted with ``resume=true``.

Each run's final global adapter must equal the simulator's for the same config (``fl.batch_clients=false``:
each client generates alone, as a Flower client does), within 1e-5. Every process is stopped and checked gone.
"""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr", reason="Flower is not installed (pip install -e '.[flower]')")

import torch  # noqa: E402
from conftest import require_shared_data, tiny_overrides  # noqa: E402
from flower_harness import (  # noqa: E402
    Processes,
    flwr_run,
    free_port,
    metrics_rows,
    start_superlink,
    start_supernode,
    wait_for,
)
from safetensors.torch import load_file  # noqa: E402

from fedspear.config import load_config  # noqa: E402
from fedspear.flower.app_config import write_flower_app  # noqa: E402

pytestmark = [pytest.mark.flower, pytest.mark.slow]

NUM_CLIENTS = 3
RUN_TIMEOUT = 480


def flower_cfg(model_dir: Path, out_dir: Path):
    """The shared config: 3 clients, all sampled, 2 rounds, clients generating one at a time."""
    return load_config(None, tiny_overrides(model_dir, out_dir, **{
        "data.num_clients": NUM_CLIENTS, "fl.clients_per_round": NUM_CLIENTS, "fl.batch_clients": False,
        "data.max_eval_examples": 8}))


def final_adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(str(run_dir / "checkpoint" / "state.safetensors"))
    return {k: v for k, v in tensors.items() if k.startswith("global.")}


def assert_same_adapter(flower_run: Path, simulator_run: Path) -> None:
    a, b = final_adapter(flower_run), final_adapter(simulator_run)
    assert a.keys() == b.keys() and a
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)  # training moved the adapter
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def references(tiny_qwen, tmp_path_factory):
    """Simulator runs of the shared config, computed on first use: 'clean', and 'client0_fails_round1'."""
    from fedspear.federation import client, simulator

    root = tmp_path_factory.mktemp("simulator")
    cache: dict[str, tuple[Path, float]] = {}

    def get(name: str) -> tuple[Path, float]:
        if name not in cache:
            real = client.client_update

            def flaky(policy, algorithm, job, *args, **kwargs):
                if name == "client0_fails_round1" and (job.client_id, job.round_idx) == (0, 1):
                    raise RuntimeError("killed")
                return real(policy, algorithm, job, *args, **kwargs)

            client.client_update = flaky
            try:
                start = time.perf_counter()
                run_dir = simulator.run(flower_cfg(tiny_qwen, root / name))
                cache[name] = (run_dir, time.perf_counter() - start)
            finally:
                client.client_update = real
        return cache[name]

    return get


def _finish(procs: Processes, run, name: str = "flwr-run") -> None:
    """Wait for `flwr run --stream` to end (it streams the ServerApp's log until the run ends)."""
    try:
        run.wait(timeout=RUN_TIMEOUT)
    except Exception:
        print(procs.log(name)[-6000:])
        raise


def _check_rows(run_dir: Path, procs: Processes) -> list[dict]:
    rows = metrics_rows(run_dir)
    assert [r["round"] for r in rows] == [0, 1, 2], procs.log("flwr-run")[-6000:]
    return rows


def _app(model_dir: Path, tmp_path: Path) -> tuple[int, Path, Path]:
    """(a free SuperLink port, the run folder, the Flower app folder) of the shared config."""
    port = free_port()
    run_dir = tmp_path / "run"
    app = write_flower_app(flower_cfg(model_dir, run_dir), tmp_path / "app", superlink=f"127.0.0.1:{port}",
                           connect_timeout=120)
    return port, run_dir, app


def test_simulation_runtime_matches_simulator(tiny_qwen, tmp_path, procs, references):
    require_shared_data()
    port, run_dir, app = _app(tiny_qwen, tmp_path)
    start_superlink(procs, port, tmp_path / "superlink-home", simulation=True)
    _finish(procs, flwr_run(procs, "flwr-run", app, "--federation-config", f"num-supernodes={NUM_CLIENTS}"))
    rows = _check_rows(run_dir, procs)
    for row in rows[1:]:
        assert [c["client_id"] for c in row["clients"]] == [0, 1, 2]
        assert not [c for c in row["clients"] if "error" in c]
    assert (run_dir / "report.md").is_file() and (run_dir / "adapters" / "round_0002").is_dir()
    reference, _ = references("clean")
    assert_same_adapter(run_dir, reference)
    sim_rows = metrics_rows(reference)
    assert [r["aggregate"]["wins"] for r in rows[1:]] == [r["aggregate"]["wins"] for r in sim_rows[1:]]


def test_deployment_runtime_matches_simulator_and_sends_only_adapters_and_metrics(tiny_qwen, tmp_path, procs,
                                                                                 references):
    require_shared_data()
    port, run_dir, app = _app(tiny_qwen, tmp_path)
    wire_log = tmp_path / "wire.jsonl"
    start_superlink(procs, port, tmp_path / "superlink-home")
    for i in range(NUM_CLIENTS):
        start_supernode(procs, f"supernode-{i}", port, tmp_path / f"supernode-{i}-home",
                        f"partition-id={i} num-partitions={NUM_CLIENTS}", FEDSPEAR_FLOWER_WIRE_LOG=str(wire_log))
    start = time.perf_counter()
    _finish(procs, flwr_run(procs, "flwr-run", app))
    flower_s = time.perf_counter() - start
    rows = _check_rows(run_dir, procs)
    for row in rows[1:]:
        assert not [c for c in row["clients"] if "error" in c]
        assert len({c["node_id"] for c in row["clients"]}) == NUM_CLIENTS
    reference, simulator_s = references("clean")
    assert_same_adapter(run_dir, reference)
    print(f"\n2-round deployment run (flwr run, 3 SuperNodes): {flower_s:.1f} s; "
          f"in-process simulator, same config: {simulator_s:.1f} s")

    # Every message a client sent: 3 query replies and 3 x 2 train replies, holding nothing but the records
    # the wire allows; the tensors are exactly the adapter's, the metrics are numbers.
    adapter_shapes = {k[len("global."):]: list(v.shape) for k, v in final_adapter(reference).items()}
    sent = [json.loads(line) for line in wire_log.read_text().splitlines()]
    assert sorted(m["message_type"] for m in sent) == ["query"] * 3 + ["train"] * 6
    assert sorted(m["node_config"]["partition-id"] for m in sent if m["message_type"] == "query") == [0, 1, 2]
    for msg in sent:
        assert "error" not in msg
        if msg["message_type"] == "query":
            assert msg["records"] == {"identity": {"kind": "metrics", "values": {"client-id": "int"}}}
            continue
        assert set(msg["records"]) <= {"adapter", "metrics"} and "metrics" in msg["records"]
        assert msg["records"]["metrics"]["kind"] == "metrics"
        assert set(msg["records"]["metrics"]["values"].values()) <= {"int", "float"}
        if "adapter" in msg["records"]:
            arrays = msg["records"]["adapter"]["arrays"]
            assert {k: a["shape"] for k, a in arrays.items()} == adapter_shapes
            assert {a["dtype"] for a in arrays.values()} == {"float32"}


def test_killed_supernode_and_restarted_server(tiny_qwen, tmp_path, procs, references):
    require_shared_data()
    port, run_dir, app = _app(tiny_qwen, tmp_path)
    database = tmp_path / "superlink.db"
    start_superlink(procs, port, tmp_path / "superlink-home", database=database)
    for i in range(NUM_CLIENTS):
        start_supernode(procs, f"supernode-{i}", port, tmp_path / f"supernode-{i}-home",
                        f"partition-id={i} num-partitions={NUM_CLIENTS}")
    run = flwr_run(procs, "flwr-run", app)

    # Client 0's machine dies while it works on round 1: the round aggregates clients 1 and 2.
    wait_for(lambda: "Receiving: train message" in procs.log("supernode-0"), RUN_TIMEOUT, "round 1 to reach client 0")
    procs.kill_tree("supernode-0", signal.SIGKILL)
    wait_for(lambda: len(metrics_rows(run_dir)) >= 2 or run.poll() is not None, RUN_TIMEOUT, "round 1 to end")
    row = metrics_rows(run_dir)[1]
    assert row["round"] == 1 and row["aggregation"]["num_failed_clients"] == 1, procs.log("flwr-run")[-6000:]
    (failed,) = [c for c in row["clients"] if "error" in c]
    assert failed["client_id"] == 0 and failed["weight"] == 0.0
    assert not [c for c in row["clients"] if c["client_id"] != 0 and "error" in c]

    # The server dies during round 2; restarted (same database and port) with resume=true, it continues after
    # round 1 with client 0 back online.
    procs.kill_tree("superlink", signal.SIGKILL)
    procs.kill_tree("flwr-run", signal.SIGTERM)
    assert [r["round"] for r in metrics_rows(run_dir)] == [0, 1]
    start_superlink(procs, port, tmp_path / "superlink-home", database=database, name="superlink-restarted")
    start_supernode(procs, "supernode-0-restarted", port, tmp_path / "supernode-0-home",
                    f"partition-id=0 num-partitions={NUM_CLIENTS}")
    _finish(procs, flwr_run(procs, "flwr-run-resumed", app, "--run-config", "resume=true"), "flwr-run-resumed")
    rows = metrics_rows(run_dir)
    assert [r["round"] for r in rows] == [0, 1, 2], procs.log("flwr-run-resumed")[-6000:]
    assert not [c for c in rows[2]["clients"] if "error" in c]
    assert "resuming" in procs.log("flwr-run-resumed")
    reference, _ = references("client0_fails_round1")
    assert_same_adapter(run_dir, reference)
    shutil.rmtree(tmp_path / "superlink-home", ignore_errors=True)
