"""The oracle Flower ClientApp's train handler, called in-process: under dp.mode=local only a noised adapter and
the weight leave the node."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
from serve_fixtures import serve_config, tiny_world_dir  # noqa: E402

pytest.importorskip("flwr")
wire = pytest.importorskip("fedspear.flower.wire")
from flwr.app import Context, Message, MessageType, RecordDict  # noqa: E402

from fedspear.flower import client_app  # noqa: E402


def test_local_dp_reply_is_a_clipped_update_with_weight_one_and_no_counts(tmp_path_factory, monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    from fedspear.models import build_policy
    from fedspear.privacy import update_norm

    cfg = serve_config(tiny_world_dir(tmp_path_factory), **{"dp.mode": "local", "dp.clip_norm": 0.001,
                                                            "dp.noise_multiplier": 0.0, "data.num_clients": 2,
                                                            "fl.clients_per_round": 2,
                                                            "optim.lr": 0.1})
    global_state = build_policy(cfg).adapter.get()
    content = RecordDict({wire.GLOBAL: wire.state_to_record(global_state),
                          wire.JOB: wire.job_record(1, 1, 0.1, 5, cfg.to_yaml())})
    for key in ("_task_id", "_run_id", "_node_id"):  # what a Flower process sets before it builds messages
        monkeypatch.setattr(TaskIdentity, key, 1)
    msg = Message(content, dst_node_id=1, message_type=MessageType.TRAIN)
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 1}, state=RecordDict(), run_config={})
    reply = client_app.train(msg, context).content
    assert dict(reply[wire.METRICS]) == {wire.WEIGHT_KEY: 1.0}  # no wins, losses, norms or timings
    sent = wire.record_to_state(reply[wire.ADAPTER], global_state)
    assert update_norm({k: sent[k].double() - global_state[k].double() for k in global_state}) <= 0.001 * (1 + 1e-4)
    assert all(torch.isfinite(t).all() for t in sent.values())
