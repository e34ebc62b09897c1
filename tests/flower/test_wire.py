"""What crosses the network: adapter tensors and scalar metrics only, and the guard that enforces it."""

from __future__ import annotations

import pytest

pytest.importorskip("flwr", reason="Flower is not installed (pip install -e '.[flower]')")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict  # noqa: E402

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
    metrics = {"wins": 3, "y0_accuracy": 0.5, "note": "the prompt text", "bad": float("nan"), "steps": True,
               "per_step": [0.1, 0.2], "nested": {"a": 1}, "none": None, "losses": [5, 17, 9],
               "revision_attempts_2": 1, "loss_win": 0.25, "What color is the zorvik?": 1.0}
    result = LocalUpdateResult({"k": torch.ones(2)}, 3.0, metrics)
    content = wire.train_reply_content(result)
    assert sorted(content.keys()) == ["adapter", "metrics"]
    # known names with one finite number each; text, lists (token ids), NaN and unknown names never leave
    assert dict(content["metrics"]) == {"wins": 3, "y0_accuracy": 0.5, "steps": 1, "revision_attempts_2": 1,
                                        "loss_win": 0.25, "weight": 3.0}
    wire.check_client_content(content, {"k": torch.zeros(2)})
    report = wire.report_from_reply(4, _message(content), {"k": torch.zeros(2)})
    assert report.client_id == 4 and report.weight == 3.0 and report.error is None
    assert torch.equal(report.adapter["k"], torch.ones(2)) and report.metrics["wins"] == 3


def test_client_without_update_sends_no_tensors():
    content = wire.train_reply_content(LocalUpdateResult(None, 0.0, {"skipped_no_wins": 1}))
    assert list(content.keys()) == ["metrics"] and content["metrics"]["weight"] == 0.0
    report = wire.report_from_reply(0, _message(content), {"k": torch.zeros(2)})
    assert report.adapter is None and report.weight == 0.0 and report.error is None


@pytest.mark.parametrize("content, match", [
    (RecordDict({"metrics": MetricRecord({"wins": 1}), "config": ConfigRecord({"prompt": "what is 2+2?"})}),
     "not 'config'"),
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

    msg = _message(RecordDict({"global": wire.state_to_record({"k": torch.zeros(2)})}))
    good = RecordDict({"metrics": MetricRecord({"wins": 1}), "adapter": wire.state_to_record({"k": torch.ones(2)})})
    reply = wire.wire_guard(msg, Ctx(), lambda m, c: Message(good, reply_to=m))
    assert reply.content is good
    refused = wire.wire_guard(msg, Ctx(), lambda m, c: Message(RecordDict({"x": ConfigRecord({"t": "s"})}),
                                                                 reply_to=m))
    assert refused.has_error() and not refused.has_content()  # the refused content never left
    wire.wire_guard(msg, Ctx(), lambda m, c: Message(Error(code=2, reason="boom"), reply_to=m))
    import json

    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(lines) == 3
    assert lines[0]["records"]["metrics"] == {"kind": "metrics", "values": {"wins": "int"}}
    assert lines[0]["node_config"] == {"partition-id": 1}
    assert lines[1]["error"]["code"] == wire.WIRE_REFUSED_CODE and "records" not in lines[1]
    assert lines[2]["error"] == {"code": 2, "reason": "boom"}


def test_error_reply_is_a_failure():
    reply = Message(Error(code=5, reason="node unavailable"), reply_to=_message(RecordDict({})))
    report = wire.report_from_reply(2, reply, {})
    assert report.error == "client error 5: node unavailable" and report.adapter is None


# --------------------------------------------------------------------------- what the guard refuses (issue 12)

GLOBAL_STATE = {"a.lora_A.weight": torch.zeros(2, 3), "a.lora_B.weight": torch.zeros(3, 2)}
SECRET = "What color is the zorvik? Hint: think of grass"


@pytest.mark.parametrize(("records", "match"), [
    ({"metrics": MetricRecord({SECRET: 1.0})}, "may not hold a metric of that name"),  # prompt text as a name
    ({"metrics": MetricRecord({"wins": [3923, 1502, 88, 2]})}, "not one finite number"),  # token ids as a list
    ({"metrics": MetricRecord({"wins": [0.5, 1.5]})}, "not one finite number"),
    ({"metrics": MetricRecord({"y0_accuracy": float("nan")})}, "not one finite number"),
    ({"metrics": MetricRecord({"weight": float("inf")})}, "not one finite number"),
    ({"identity": MetricRecord({"client-id": 1, "wins": 2})}, "'identity' may not hold"),
    ({"adapter": ArrayRecord({**{k: Array(v.numpy()) for k, v in GLOBAL_STATE.items()},
                              "a.lora_A.weight": Array(np.frombuffer(SECRET.encode()[:6], np.uint8).reshape(2, 3))})},
     "dtype uint8, not a float"),  # UTF-8 bytes in a tensor of the right shape
    ({"adapter": ArrayRecord({**{k: Array(v.numpy()) for k, v in GLOBAL_STATE.items()},
                              "a.lora_B.weight": Array(np.zeros((3, 2), np.int64))})}, "dtype int64"),
    ({"adapter": ArrayRecord({**{k: Array(v.numpy()) for k, v in GLOBAL_STATE.items()},
                              "notes": Array(np.zeros(4, np.float32))})}, "tensor names differ"),
    ({"adapter": ArrayRecord({"a.lora_A.weight": Array(np.zeros((2, 3), np.float32))})}, "tensor names differ"),
    ({"adapter": ArrayRecord({"a.lora_A.weight": Array(np.zeros((2, 3), np.float32)),
                              "a.lora_B.weight": Array(np.zeros((3, 200), np.float32))})}, r"shape \(3, 200\)"),
])
def test_guard_checks_names_dtypes_and_shapes(records, match):
    with pytest.raises(wire.WireError, match=match) as err:
        wire.check_client_content(RecordDict(records), wire.state_to_record(GLOBAL_STATE))
    assert "zorvik" not in str(err.value)  # the refusal does not repeat the text it refused


def test_guard_accepts_the_adapter_it_sent_in_float_dtypes_only_with_a_global():
    ok = RecordDict({"adapter": ArrayRecord({k: Array(v.numpy().astype(np.float16)) for k, v in GLOBAL_STATE.items()}),
                     "metrics": MetricRecord({"wins": 2, "loss_total": 0.5, "revision_successes_1": 1, "weight": 2.0})})
    wire.check_client_content(ok, wire.state_to_record(GLOBAL_STATE))
    wire.check_client_content(ok, GLOBAL_STATE)
    with pytest.raises(wire.WireError, match="sent no global adapter"):
        wire.check_client_content(ok)


def test_every_loss_term_the_algorithms_report_is_a_known_metric():
    from fedspear.algorithms import losses

    for stats in (losses.SpearStats, losses.GRPOStats, losses.RLTFSDStats, losses.DistillStats):
        for field in ("total", *stats._fields):
            assert wire.known_metric(f"loss_{field}"), (stats.__name__, field)
    assert not wire.known_metric("loss_the zorvik is green") and not wire.known_metric("revision_attempts_1x")


def test_a_failing_client_reply_carries_a_fixed_code_and_no_paths_or_text(caplog):
    msg = _message(RecordDict({}))

    class Ctx:
        node_config = {}

    def fails(m, c):
        raise FileNotFoundError(f"/home/person/data/private.jsonl: row 3 '{SECRET}' is broken")

    with caplog.at_level("ERROR", logger="fedspear"):
        reply = wire.wire_guard(msg, Ctx(), fails)
    assert reply.has_error() and reply.error.code == wire.CLIENT_FAILED_CODE
    assert reply.error.reason == "the client failed (FileNotFoundError); see the node's log"
    assert "private.jsonl" in caplog.text and SECRET in caplog.text  # the full message stays in the node's log
    leaky = wire.wire_guard(msg, Ctx(), lambda m, c: Message(RecordDict({"metrics": MetricRecord({SECRET: 1})}),
                                                             reply_to=m))
    assert leaky.error.code == wire.WIRE_REFUSED_CODE and "zorvik" not in leaky.error.reason
    report = wire.report_from_reply(3, reply, GLOBAL_STATE)
    assert report.error == f"client error {wire.CLIENT_FAILED_CODE}: {reply.error.reason}" and "/home" not in report.error


def test_memory_figures_cross_the_wire_and_message_sizes_are_flowers_count():
    metrics = {"wins": 1, "peak_rss_mb": 512.5, "update_rss_peak_mb": 300.25, "cuda_peak_mb": 80.0}
    content = wire.train_reply_content(LocalUpdateResult({"k": torch.ones(2, 3)}, 1.0, metrics))
    assert dict(content["metrics"]) == {**metrics, "weight": 1.0}
    report = wire.report_from_reply(0, _message(content), {"k": torch.zeros(2, 3)})
    assert report.metrics["update_rss_peak_mb"] == 300.25 and report.metrics["cuda_peak_mb"] == 80.0
    # the adapter as serialised (.npy header + 6 float32) plus its key, plus the metrics record's own count
    expected = len(content["adapter"]["k"].data) + len("k") + content["metrics"].count_bytes()
    assert wire.content_nbytes(content) == expected and len(content["adapter"]["k"].data) >= 6 * 4


OLD_ALLOW_LIST = (  # the wire's hand-written list before the metric registry: none of it may be lost
    "prompts", "samples_y0", "generations", "tokens_generated", "wins_y0", "y0_accuracy", "y1_accuracy",
    "needs_revision", "revision_successes", "wins_revision", "losses_fixed", "losses_unfixed", "mean_reward",
    "zero_advantage_groups", "teacher_prompts_truncated", "feedback_calls", "generation_s", "feedback_s",
    "wins", "losses", "losses_used", "skipped_no_wins", "steps", "skipped_steps", "tokens_trained", "tokens_forward",
    "training_s", "store_interactions", "weight", "published", "revision_attempts_1", "revision_successes_12",
    "loss_total", "loss_mean_lose_p", "loss_clip_frac", "loss_rl1", "loss_n_tokens",
)


def test_the_allow_list_is_the_declared_metrics_and_keeps_every_old_name():
    assert [n for n in OLD_ALLOW_LIST if not wire.known_metric(n)] == []
    for name in ("revision_attempts_123", "loss_", "Loss_x", "x" * 65, "feedback_made_up"):
        assert not wire.known_metric(name), name


def test_feedback_counts_and_a_new_algorithms_metrics_cross_the_wire(monkeypatch, caplog):
    """Today's gap: feedback_* (the user model) and loss_pg / a declared count of a registered algorithm."""
    from fedspear.algorithms import registry
    from fedspear.algorithms.base import Algorithm
    from fedspear.feedback_noise import METRICS as FEEDBACK

    class Pg(Algorithm):
        name = "pg_wire_test"
        metrics = ("pg_groups",)

    monkeypatch.setattr(registry, "ALGORITHMS", {**registry.ALGORITHMS, Pg.name: Pg})
    sent = {**dict.fromkeys(FEEDBACK, 2), "loss_pg": 0.5, "pg_groups": 3, "undeclared_count": 1, "prompts": 4}
    result = LocalUpdateResult({"a": torch.zeros(2)}, 4.0, sent)
    with caplog.at_level("WARNING", logger="fedspear"):
        content = wire.train_reply_content(result)
    wire.check_client_content(content, {"a": torch.zeros(2)})
    got = dict(content["metrics"])
    assert set(got) == {*FEEDBACK, "loss_pg", "pg_groups", "prompts", "weight"}
    assert got["feedback_false_rejects"] == 2 and got["loss_pg"] == 0.5 and got["pg_groups"] == 3
    assert "'undeclared_count' is not one the wire carries" in caplog.text  # still dropped, with a warning
    monkeypatch.setattr(registry, "ALGORITHMS", {k: v for k, v in registry.ALGORITHMS.items() if k != Pg.name})
    with pytest.raises(wire.WireError):
        wire.check_client_content(RecordDict({"metrics": MetricRecord({"pg_groups": 1.0})}))


def test_a_reply_with_too_many_metrics_is_refused():
    many = MetricRecord({f"loss_t{i}": 1.0 for i in range(wire.MAX_METRICS + 1)})
    with pytest.raises(wire.WireError, match="more than"):
        wire.check_client_content(RecordDict({"metrics": many}))
    kept = wire.metrics_to_record({f"loss_t{i}": 1.0 for i in range(wire.MAX_METRICS + 5)}, 1.0)
    assert len(kept) == wire.MAX_METRICS
