"""Served clients in a real Flower federation: a SuperLink and two store-backed SuperNodes as processes.

Each device has a `fedspear serve` state folder in which a person taught the model (a right answer, and a wrong
answer fixed by a hint). The app written by ``fedspear flower-config --clients served`` runs 2 rounds: every
round each SuperNode trains from its own trace store, publishes the received global adapter to its page's
registry and replies with adapter tensors and numbers only; after every round the server sends each device the
new global adapter, so the pages end on the run's final adapter.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("flwr", reason="Flower is not installed (pip install -e '.[flower]')")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "flower"))

import torch  # noqa: E402
from flower_harness import Processes, flwr_run, free_port, metrics_rows, start_superlink, start_supernode  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from serve_fixtures import make_client, serve_overrides, teach, tiny_world_dir  # noqa: E402

from fedspear.cli import main  # noqa: E402
from fedspear.serve.adapters import AdapterRegistry  # noqa: E402
from fedspear.serve.runtime import ADAPTERS_DIR, STORE_FILE, ClientRuntime  # noqa: E402
from fedspear.serve.store import TraceStore  # noqa: E402

pytestmark = [pytest.mark.flower, pytest.mark.slow]

HINTS = ["think of the grass near the old mill", "picture the sky over the harbour"]


def teach_device(state: Path, world: Path, seed: int) -> None:
    """A person's session on the device's page: one answer marked right, one fixed by a hint."""
    served = ClientRuntime(*make_client(world), state, seed=seed)
    try:
        teach(served, f"What color is the zorvik number {seed}?", f"Where does the zorvik number {seed} live?",
              HINTS[seed])
    finally:
        served.close()


def test_store_backed_supernodes_under_the_deployment_runtime(tmp_path_factory, tmp_path):
    world = tiny_world_dir(tmp_path_factory)
    states = [tmp_path / f"device-{i}" for i in range(2)]
    for i, state in enumerate(states):
        teach_device(state, world, i)
    run_dir, app, wire_log = tmp_path / "run", tmp_path / "app", tmp_path / "wire.jsonl"
    port = free_port()
    settings = {"data.num_clients": 2, "fl.clients_per_round": 2, "fl.rounds": 2, "output_dir": run_dir}
    assert main(["-q", "flower-config", "--out", str(app), "--superlink", f"127.0.0.1:{port}", "--clients", "served",
                 "--connect-timeout", "120", *serve_overrides(world, **settings)]) == 0

    procs = Processes(tmp_path / "logs")
    try:
        start_superlink(procs, port, tmp_path / "superlink-home")
        for i, state in enumerate(states):
            start_supernode(procs, f"supernode-{i}", port, tmp_path / f"supernode-{i}-home",
                            f"client-id={i} state-dir='{state}'", FEDSPEAR_FLOWER_WIRE_LOG=str(wire_log))
        run = flwr_run(procs, "flwr-run", app)
        run.wait(timeout=480)
        rows = metrics_rows(run_dir)
        assert [r["round"] for r in rows] == [0, 1, 2], procs.log("flwr-run")[-6000:]
    finally:
        left = procs.close()
    assert not left, f"processes left behind: {left}"

    for row in rows[1:]:
        clients = sorted(row["clients"], key=lambda c: c["client_id"])
        assert [c["client_id"] for c in clients] == [0, 1] and not [c for c in clients if "error" in c]
        # 2 wins per device: the accepted first answer and the accepted revision
        assert [c["weight"] for c in clients] == [2.0, 2.0]
        assert [c["metrics"]["wins_revision"] for c in clients] == [1.0, 1.0]
    final = {k[len("global."):]: v for k, v in load_file(str(run_dir / "checkpoint" / "state.safetensors")).items()
             if k.startswith("global.")}
    for state in states:
        with TraceStore(state / STORE_FILE) as store:
            assert [t["label"] for t in store.trainings()] == ["server round 1", "server round 2"]
        # after each round the server sent the new global to the page: it serves the run's final adapter now
        registry = AdapterRegistry(state / ADAPTERS_DIR)
        assert registry.current().label == "global after server round 2"
        labels = [v.label for v in registry.history()]
        assert "global after server round 1" in labels and "global of server round 2" not in labels  # no duplicate
        served = registry.load(registry.current())
        assert served.keys() == final.keys() and all(torch.equal(served[k], final[k]) for k in final)

    # Every message a device sent held numbers and adapter tensors only: no text, no token ids.
    sent = [json.loads(line) for line in wire_log.read_text().splitlines()]
    assert sorted(m["message_type"] for m in sent) == ["evaluate"] * 4 + ["query"] * 2 + ["train"] * 4
    for msg in sent:
        if msg["message_type"] == "train":
            assert set(msg["records"]) == {"adapter", "metrics"}
            assert set(msg["records"]["metrics"]["values"].values()) <= {"int", "float"}
        elif msg["message_type"] == "evaluate":  # the acknowledgement of a published global adapter
            assert msg["records"] == {"metrics": {"kind": "metrics", "values": {"published": "int"}}}
        else:
            assert msg["records"]["identity"]["values"] == {"client-id": "int", "serves-page": "int"}
    assert (run_dir / "report.md").is_file()
