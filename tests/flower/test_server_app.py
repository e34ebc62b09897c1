"""The ServerApp's client runner against a scripted Grid: node discovery and every way a client can fail."""

from __future__ import annotations

import pytest

pytest.importorskip("flwr", reason="Flower is not installed (pip install -e '.[flower]')")

import torch  # noqa: E402
from flwr.app import Error, Message, MetricRecord, RecordDict  # noqa: E402

from fedspear.algorithms.base import LocalUpdateResult  # noqa: E402
from fedspear.federation.server import RoundPlan  # noqa: E402
from fedspear.flower import wire  # noqa: E402
from fedspear.flower.app_config import ServerSettings  # noqa: E402
from fedspear.flower.server_app import GridClients  # noqa: E402

pytestmark = pytest.mark.flower

GLOBAL_STATE = {"w": torch.zeros(2)}


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


class ScriptedGrid:
    """A Grid whose nodes answer through ``behaviour[node](msg)``: a reply Message, or None (no reply yet)."""

    def __init__(self, behaviour: dict[int, object]) -> None:
        self.behaviour = behaviour
        self.online = set(behaviour)
        self.sent: dict[str, Message] = {}
        self.polls = 0

    def get_node_ids(self):
        return sorted(self.online)

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            msg_id = f"m{len(self.sent)}"
            msg.metadata.__dict__["_message_id"] = msg_id
            self.sent[msg_id] = msg
            ids.append(msg_id)
        return ids

    def pull_messages(self, message_ids):
        self.polls += 1
        out = []
        for msg_id in message_ids:
            msg = self.sent[msg_id]
            reply = self.behaviour[msg.metadata.dst_node_id](msg)
            if reply is not None:
                out.append(reply)
        return out


def identity(client_id):
    def answer(msg):
        if msg.metadata.message_type == "query":
            return Message(RecordDict({"identity": MetricRecord({"client-id": client_id})}), reply_to=msg)
        return trained(msg)
    return answer


def trained(msg):
    state = wire.record_to_state(msg.content["global"], GLOBAL_STATE)
    result = LocalUpdateResult({"w": state["w"] + msg.content["job"]["client-id"]}, 2.0, {"wins": 2})
    return Message(wire.train_reply_content(result), reply_to=msg)


def runner(grid, round_timeout=0.0):
    settings = ServerSettings("x: 1", round_timeout=round_timeout, poll_interval=0.01, connect_timeout=1.0)
    return GridClients(grid, 3, "algorithm: {name: spear}\n", settings)


def plan():
    return RoundPlan(1, 0.1, [0, 1, 2], {0: 10, 1: 11, 2: 12})


def test_discovery_maps_clients_and_a_stand_by_node_takes_over():
    grid = ScriptedGrid({100: identity(0), 101: identity(1), 102: identity(1)})
    clients = runner(grid)
    clients.wait_for_clients(3, timeout=0.2)
    assert clients.nodes == {0: 100, 1: 101}  # node 102 claims client 1 too and stands by
    grid.online.discard(101)
    clients.discover()
    assert clients.nodes == {0: 100, 1: 102}
    queries = [m for m in grid.sent.values() if m.metadata.message_type == "query"]
    assert sorted(m.metadata.dst_node_id for m in queries) == [100, 101, 102]  # each node asked once
    assert queries[0].content["federation"]["num-clients"] == 3


def test_round_reports_successes_and_every_kind_of_failure():
    def error(msg):
        if msg.metadata.message_type == "query":
            return identity(1)(msg)
        return Message(Error(code=2, reason="ValueError: boom"), reply_to=msg)

    grid = ScriptedGrid({100: identity(0), 101: error})  # client 2 has no node
    clients = runner(grid)
    clients.wait_for_clients(3, timeout=0.05)
    reports = {r.client_id: r for r in clients(plan(), GLOBAL_STATE)}
    (train0,) = [m for m in grid.sent.values() if m.metadata.message_type == "train" and m.metadata.dst_node_id == 100]
    # the messages' sizes as Flower counts them: the train message each way, no reply content from a failed client
    sent, returned = wire.content_nbytes(train0.content), wire.content_nbytes(grid.behaviour[100](train0).content)
    assert sent > 2 * 4 and returned > 2 * 4
    assert reports[0].error is None and reports[0].weight == 2.0
    assert reports[0].details == {"node_id": 100, "wire_bytes_down": sent, "wire_bytes_up": returned}
    assert torch.equal(reports[0].adapter["w"], torch.zeros(2))
    assert reports[1].error == "client error 2: ValueError: boom"
    assert reports[1].details == {"node_id": 101, "wire_bytes_down": sent}
    assert reports[2].error == "not connected" and reports[2].details == {}
    job = train0.content["job"]
    assert (job["client-id"], job["round"], job["lr"], job["seed"]) == (0, 1, 0.1, 10)
    assert train0.metadata.group_id == "1"


def test_node_that_goes_offline_or_stays_silent_fails_the_round():
    def silent(msg):
        return identity(2)(msg) if msg.metadata.message_type == "query" else None

    grid = ScriptedGrid({100: identity(0), 101: silent, 102: silent})
    grid.behaviour[101] = lambda msg: identity(1)(msg) if msg.metadata.message_type == "query" else None
    clients = runner(grid, round_timeout=0.3)
    clients.wait_for_clients(3, timeout=1.0)
    grid.behaviour[101] = lambda msg: grid.online.discard(101)  # its machine dies when polled
    reports = {r.client_id: r for r in clients(plan(), GLOBAL_STATE)}
    assert reports[0].error is None
    assert reports[1].error == "node went offline during the round"
    assert reports[2].error == "no reply within round-timeout=0.3s"
    sent = wire.content_nbytes([m for m in grid.sent.values() if m.metadata.dst_node_id == 102
                                and m.metadata.message_type == "train"][0].content)
    assert reports[2].details == {"node_id": 102, "wire_bytes_down": sent}  # sent, never answered


def test_discovery_keeps_a_bounded_window_of_queries(monkeypatch):
    """With more new nodes than the window, discovery asks at most MAX_QUERIES_IN_FLIGHT at a time (the rest once
    answers come back), and still maps every client, each node asked once."""
    from fedspear.flower import server_app

    monkeypatch.setattr(server_app, "MAX_QUERIES_IN_FLIGHT", 2)
    pending = {}  # nodes that answer only on the second poll of their query

    def slow(client_id):
        def answer(msg):
            pending[msg.metadata.message_id] = pending.get(msg.metadata.message_id, 0) + 1
            return identity(client_id)(msg) if pending[msg.metadata.message_id] >= 2 else None
        return answer

    grid = ScriptedGrid({100 + i: slow(i) for i in range(5)})
    clients = GridClients(grid, 5, "algorithm: {name: spear}\n",
                          ServerSettings("x: 1", poll_interval=0.0, connect_timeout=1.0))
    clients.discover()
    assert len(grid.sent) == 2  # the window, not all five
    clients.wait_for_clients(5, timeout=1.0)
    assert clients.nodes == {i: 100 + i for i in range(5)}
    assert sorted(m.metadata.dst_node_id for m in grid.sent.values()) == [100, 101, 102, 103, 104]
