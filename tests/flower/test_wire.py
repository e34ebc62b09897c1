"""What crosses the network: adapter tensors and scalar metrics only, and the guard that enforces it."""

from __future__ import annotations

import pytest

pytest.importorskip("flwr", reason="Flower is not installed (pip install -e '.[flower]')")

import torch  # noqa: E402
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict  # noqa: E402

from fedspear.algorithms.base import LocalUpdateResult  # noqa: E402
from fedspear.flower import wire  # noqa: E402

pytestmark = pytest.mark.flower


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Messages take their run and node ids from the process's task identity, set by Flower's runtimes."""
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


def _message(content: RecordDict, message_type: str = "train") -> Message:
    return Message(content, dst_node_id=1, message_type=message_type)


def test_state_round_trip_is_exact_and_keeps_receiver_dtypes():
    state = {"a.lora_A.weight": torch.randn(2, 3, dtype=torch.bfloat16), "a.lora_B.weight": torch.randn(3, 2)}
    record = wire.state_to_record(state)
    assert {k: a.dtype for k, a in record.items()} == {"a.lora_A.weight": "float32", "a.lora_B.weight": "float32"}
    back = wire.record_to_state(record, state)
    for key, tensor in state.items():
        assert back[key].dtype == tensor.dtype and torch.equal(back[key], tensor)


def test_record_to_state_refuses_another_layout():
    state = {"x": torch.zeros(2, 2)}
    with pytest.raises(wire.WireError, match="keys differ"):
        wire.record_to_state(wire.state_to_record({"y": torch.zeros(2, 2)}), state)
    with pytest.raises(wire.WireError, match="shape"):
        wire.record_to_state(wire.state_to_record({"x": torch.zeros(4)}), state)


def test_train_reply_holds_only_adapter_and_scalar_metrics():
    metrics = {"wins": 3, "y0_accuracy": 0.5, "note": "the prompt text", "bad": float("nan"), "flag": True,
               "per_step": [0.1, 0.2], "nested": {"a": 1}, "none": None}
    result = LocalUpdateResult({"k": torch.ones(2)}, 3.0, metrics)
    content = wire.train_reply_content(result)
    assert sorted(content.keys()) == ["adapter", "metrics"]
    assert dict(content["metrics"]) == {"wins": 3, "y0_accuracy": 0.5, "flag": 1, "per_step": [0.1, 0.2],
                                        "weight": 3.0}
    wire.check_client_content(content)
    report = wire.report_from_reply(4, _message(content), {"k": torch.zeros(2)})
    assert report.client_id == 4 and report.weight == 3.0 and report.error is None
    assert torch.equal(report.adapter["k"], torch.ones(2)) and report.metrics["wins"] == 3


def test_client_without_update_sends_no_tensors():
    content = wire.train_reply_content(LocalUpdateResult(None, 0.0, {"skipped_no_wins": 1}))
    assert list(content.keys()) == ["metrics"] and content["metrics"]["weight"] == 0.0
    report = wire.report_from_reply(0, _message(content), {"k": torch.zeros(2)})
    assert report.adapter is None and report.weight == 0.0 and report.error is None


@pytest.mark.parametrize("content, match", [
    (RecordDict({"metrics": MetricRecord({"a": 1}), "config": ConfigRecord({"prompt": "what is 2+2?"})}), "not 'config'"),
    (RecordDict({"metrics": ConfigRecord({"a": "text"})}), "must be a MetricRecord"),
    (RecordDict({"adapter": MetricRecord({"a": 1})}), "must be a ArrayRecord"),
])
def test_guard_refuses_anything_else(content, match):
    with pytest.raises(wire.WireError, match=match):
        wire.check_client_content(content)


def test_wire_guard_mod_checks_and_logs_every_reply(tmp_path, monkeypatch):
    log = tmp_path / "wire.jsonl"
    monkeypatch.setenv(wire.WIRE_LOG_ENV, str(log))

    class Ctx:
        node_config = {"partition-id": 1, "secret": ["x"]}

    msg = _message(RecordDict({}))
    good = RecordDict({"metrics": MetricRecord({"a": 1}), "adapter": ArrayRecord({})})
    reply = wire.wire_guard(msg, Ctx(), lambda m, c: Message(good, reply_to=m))
    assert reply.content is good
    with pytest.raises(wire.WireError):
        wire.wire_guard(msg, Ctx(), lambda m, c: Message(RecordDict({"x": ConfigRecord({"t": "s"})}), reply_to=m))
    wire.wire_guard(msg, Ctx(), lambda m, c: Message(Error(code=2, reason="boom"), reply_to=m))
    import json

    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(lines) == 2  # the refused reply never left
    assert lines[0]["records"]["metrics"] == {"kind": "metrics", "values": {"a": "int"}}
    assert lines[0]["node_config"] == {"partition-id": 1}
    assert lines[1]["error"] == {"code": 2, "reason": "boom"}


def test_error_reply_is_a_failure():
    reply = Message(Error(code=5, reason="node unavailable"), reply_to=_message(RecordDict({})))
    report = wire.report_from_reply(2, reply, {})
    assert report.error == "client error 5: node unavailable" and report.adapter is None
