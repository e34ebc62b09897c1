"""A new algorithm in one file outside the package, named by its dotted path, through a Flower simulation run:
the SuperLink's ServerApp and the simulated ClientApps import it from PYTHONPATH, and its declared metrics
(``loss_pg``, ``samples_y0``) cross the wire to the server's metrics rows."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("flwr", reason="Flower is not installed (pip install -e '.[flower]')")

from flower_harness import flwr_run, free_port, metrics_rows, start_superlink  # noqa: E402

from fedspear import config  # noqa: E402
from fedspear.flower.app_config import write_flower_app  # noqa: E402
from fedspear.presets import resolve_config  # noqa: E402

pytestmark = [pytest.mark.flower, pytest.mark.slow]

SPEC = "ext_flower_reinforce:Reinforce"


def test_a_dotted_path_algorithm_runs_over_flower(tmp_path, monkeypatch, procs, outside_algorithm):
    folder = outside_algorithm("ext_flower_reinforce")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]))
    cfg = config.load_config(resolve_config("default"), [f"algorithm.name={SPEC}", "reinforce.num_samples=2", "fl.rounds=1",
                                    "data.num_clients=2", "fl.clients_per_round=2", "fl.local_rollout_steps=2",
                                    "fl.local_train_steps=1", "data.max_eval_examples=4", "fl.batch_clients=false",
                                    f"output_dir={tmp_path / 'run'}"])
    port = free_port()
    app = write_flower_app(cfg, tmp_path / "app", superlink=f"127.0.0.1:{port}", connect_timeout=120)
    start_superlink(procs, port, tmp_path / "superlink-home", simulation=True)
    run = flwr_run(procs, "flwr-run", app, "--federation-config", "num-supernodes=2")
    try:
        run.wait(timeout=540)
    except Exception:
        print(procs.log("flwr-run")[-6000:])
        raise
    rows = metrics_rows(tmp_path / "run")
    assert [r["round"] for r in rows] == [0, 1], procs.log("flwr-run")[-6000:]
    clients = rows[1]["clients"]
    assert len(clients) == 2 and not [c for c in clients if "error" in c], clients
    for client in clients:
        m = client["metrics"]
        assert "loss_pg" in m and (m["prompts"], m["samples_y0"]) == (2, 4), m
