"""The store-backed Flower ClientApp: trains from people's feedback, and only adapter tensors and numbers leave."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
from serve_fixtures import make_client, make_policy, teach, tiny_world_dir  # noqa: E402

pytest.importorskip("flwr")
wire = pytest.importorskip("fedspear.flower.wire")
from flwr.common import serde  # noqa: E402

from fedspear.flower.served_client_app import train_content  # noqa: E402
from fedspear.serve.runtime import ClientRuntime  # noqa: E402


def test_train_message_from_the_store(tmp_path_factory, tmp_path):
    world = tiny_world_dir(tmp_path_factory)
    served = ClientRuntime(*make_client(world), tmp_path / "device", seed=1)  # the page people use
    secret_hint = "think of the grass near the old mill"
    teach(served, "What color is the zorvik?", "Where does the zorvik live?", secret_hint)
    texts = [a.text for it in served.store.recent() for a in it.attempts if len(a.text) >= 12]  # no chance matches

    policy = make_policy(world)  # the SuperNode's own process and model
    global_state = {k: v + 0.01 for k, v in policy.adapter.get().items()}
    content = wire.RecordDict({
        wire.GLOBAL: wire.state_to_record(global_state),
        wire.JOB: wire.job_record(0, 3, 1e-2, 77, policy.cfg.to_yaml()),
    })
    reply = train_content(content, {"client-id": 0, "state-dir": str(tmp_path / "device")}, policy=policy)

    wire.check_client_content(reply, content[wire.GLOBAL])
    assert set(reply.keys()) == {wire.ADAPTER, wire.METRICS}
    assert reply[wire.METRICS][wire.WEIGHT_KEY] == 2.0 and reply[wire.METRICS]["wins_revision"] == 1.0
    payload = serde.recorddict_to_proto(reply).SerializeToString()
    for text in [secret_hint, "zorvik", "What color", *texts]:
        assert text.encode() not in payload, text
    assert served.store.trainings()[0]["label"] == "server round 3"

    # the received global adapter is what the running page answers with next
    again = served.run_to_end(served.prepare_ask(question="What color is the zorvik?"))
    assert again["adapter"]["label"] == "global of server round 3"
    live = served.policy.adapter.get()
    assert all(torch.allclose(live[k], global_state[k]) for k in global_state)
    served.close()


def test_a_node_without_state_dir_is_refused(tmp_path_factory):
    from fedspear.config import ConfigError

    with pytest.raises(ConfigError, match="state-dir"):
        train_content(wire.RecordDict({}), {"client-id": 0})


def test_evaluate_message_publishes_the_global_once(tmp_path_factory, tmp_path):
    from fedspear.flower.served_client_app import publish_content
    from fedspear.serve.adapters import AdapterRegistry
    from fedspear.serve.runtime import ADAPTERS_DIR

    world = tiny_world_dir(tmp_path_factory)
    policy = make_policy(world)
    node = {"client-id": 1, "state-dir": str(tmp_path / "device")}
    after_round = {k: v - 0.02 for k, v in policy.adapter.get().items()}

    def message(round_idx: int) -> wire.RecordDict:
        return wire.RecordDict({wire.GLOBAL: wire.state_to_record(after_round),
                                wire.JOB: wire.job_record(1, round_idx, 0.0, 0, policy.cfg.to_yaml())})

    reply = publish_content(message(4), node, policy=policy)
    wire.check_client_content(reply)
    assert dict(reply[wire.METRICS]) == {wire.PUBLISHED_KEY: 1}
    registry = AdapterRegistry(tmp_path / "device" / ADAPTERS_DIR)
    assert registry.current().label == "global after server round 4"
    assert all(torch.equal(registry.load(registry.current())[k], after_round[k]) for k in after_round)
    # the same tensors again (e.g. with the next round's job) are not a new version
    assert dict(publish_content(message(5), node, policy=policy)[wire.METRICS]) == {wire.PUBLISHED_KEY: 0}
    assert [v.label for v in registry.history()] == ["global after server round 4"]
    with pytest.raises(ValueError, match="this node is client 0"):
        publish_content(message(4), {"client-id": 0, "state-dir": str(tmp_path / "other")}, policy=policy)


@pytest.mark.parametrize("taught", [True, False])
def test_local_dp_noises_the_store_update_and_sends_no_counts(tmp_path_factory, tmp_path, taught):
    """dp.mode=local on the store-backed path: the release is within the clip plus the noise, also without wins."""
    from fedspear.privacy import update_norm

    world = tiny_world_dir(tmp_path_factory)
    if taught:
        served = ClientRuntime(*make_client(world), tmp_path / "device", seed=1)
        teach(served, "What color is the zorvik?", "Where does the zorvik live?", "the grass near the old mill")
        served.close()
    dp = {"dp.mode": "local", "dp.clip_norm": 0.001, "dp.seed": 2}
    for sigma in (0.0, 1.0):
        policy = make_policy(world, **dp, **{"dp.noise_multiplier": sigma})
        global_state = policy.adapter.get()
        content = wire.RecordDict({wire.GLOBAL: wire.state_to_record(global_state),
                                   wire.JOB: wire.job_record(0, 1, 1e-1, 77, policy.cfg.to_yaml())})
        reply = train_content(content, {"client-id": 0, "state-dir": str(tmp_path / "device")}, policy=policy)
        assert dict(reply[wire.METRICS]) == {wire.WEIGHT_KEY: 1.0}  # no wins, losses or norms leave
        sent = wire.record_to_state(reply[wire.ADAPTER], global_state)
        norm = update_norm({k: sent[k].double() - global_state[k].double() for k in global_state})
        dim = sum(t.numel() for t in global_state.values())
        if sigma == 0:  # the clipped update only: at most C (and exactly C when the store held a win)
            assert norm <= 0.001 * (1 + 1e-4) and (norm > 0.0009 if taught else norm == 0)
        else:  # plus N(0, (sigma C)^2 I): norm about sigma C sqrt(d)
            assert norm <= 0.001 + 1.0 * 0.001 * (math.sqrt(dim) + 6) and norm > 0.5 * 0.001 * math.sqrt(dim)
