"""The typed round row (fedspear/federation/rounds.py) and the round observers (fedspear/federation/observers.py):
the row's JSON object is the metrics.jsonl line, key for key and in order; rows of any age parse back; observers
see each row after it is on disk and checkpointed."""

from __future__ import annotations

import json

import pytest
import torch
from fixtures.fake_policy import FakePolicy

from fedspear import records
from fedspear.config import load_config
from fedspear.federation.observers import RoundObserver
from fedspear.federation.rounds import ClientRow, RoundRow, as_row
from fedspear.federation.server import ClientReport, FederatedServer
from fedspear.records import RunRecord


def _server(tmp_path, observers=(), **overrides):
    items = {"data.num_clients": 4, "fl.clients_per_round": 2, "fl.rounds": 2, "data.seed": 5, **overrides}
    cfg = load_config(None, [f"{k}={v}" for k, v in items.items()])
    return FederatedServer(cfg, RunRecord(tmp_path / "run"), FakePolicy({"w": torch.tensor([1.0, 1.0])}), [], observers=observers)


def test_a_training_row_lists_its_keys_in_metrics_jsonl_order():
    client = ClientRow(3, weight=1.0, metrics={"wins": 1}, bytes_down=8, bytes_up=8, details={"node_id": 9})
    failed = ClientRow(4, weight=0.0, metrics={}, error="boom", bytes_down=8, bytes_up=0)
    row = RoundRow(1, lr=1e-3, selected_clients=[3, 4], clients=[client, failed], aggregate={"wins": 1},
                   aggregation={"num_aggregated": 1}, time={"round_s": 1.0}, resources={"bytes_down": 16},
                   privacy={"epsilon": 1.0}, extra={"interface_accuracy": 0.5})
    row.stopped, row.eval = "why", {"accuracy": 0.5}  # end_round sets these last
    assert list(row.to_dict()) == ["round", "lr", "selected_clients", "clients", "aggregate", "aggregation", "time",
                                   "resources", "privacy", "interface_accuracy", "stopped", "eval"]
    assert list(row.to_dict()["clients"][0]) == ["client_id", "node_id", "bytes_down", "bytes_up", "weight", "metrics"]
    assert list(failed.to_dict()) == ["client_id", "bytes_down", "bytes_up", "weight", "error", "metrics"]
    central = RoundRow(2, lr=1e-3, aggregate={}, aggregation={}, time={}, resources={}, num_selected=0, privacy={})
    assert list(central.to_dict()) == ["round", "lr", "aggregate", "aggregation", "time", "resources",
                                       "num_selected", "privacy"]
    start = RoundRow(0, eval={"accuracy": 0.25}, time={"eval_s": 1.0}, data={"train": 3})
    assert list(start.to_dict()) == ["round", "eval", "time", "data"]
    assert RoundRow(0, eval={}, time={}).to_dict() == {"round": 0, "eval": {}, "time": {}}  # None = absent


@pytest.mark.parametrize("data", [
    {"round": 0, "eval": {"accuracy": 0.5}, "time": {"eval_s": 1.0}, "data": {"train": 3}},
    {"eval": {"accuracy": 0.5}, "round": 3, "x": [1, 2], "lr": 1},  # another order, an unknown key, an int lr
    {"round": "3", "aggregate": [1, 2], "clients": [{"metrics": {"wins": 1}}, 7], "eval": None, "stopped": True},
    {"round": 2, "clients": [{"client_id": 1, "metrics": "n/a", "node_id": 4, "error": 5}], "selected_clients": [1, "x"]},
    {},
])
def test_any_row_read_from_a_file_serialises_back_unchanged(data):
    row = RoundRow.from_dict(data)
    assert json.dumps(row.to_dict()) == json.dumps(data)  # the same keys, values and order


def test_a_malformed_row_reads_as_what_could_be_read():
    row = RoundRow.from_dict({"round": "3", "aggregate": [1], "clients": [{"metrics": {"wins": 1}}, 7],
                              "eval": None, "stopped": True, "selected_clients": [1, "x"], "extra_key": 1})
    assert row.round is None and row.aggregate is None and row.eval is None and row.stopped == "True"
    assert [c.metric("wins") for c in row.clients] == [1] and row.selected_clients == [1]
    assert row.extra == {"extra_key": 1} and row.value("eval", "accuracy") is None
    assert as_row(row) is row and as_row({"round": 1}).round == 1


def test_runner_fields_go_to_extra_and_a_known_name_sets_the_attribute():
    row = RoundRow(1, lr=0.1, time={"round_s": 1.0})
    row.merge({"questions": 4, "lr": 0.2})
    assert row.extra == {"questions": 4} and row.lr == 0.2
    assert list(row.to_dict()) == ["round", "lr", "time", "questions"]


class Recorder(RoundObserver):
    """Notes every call, and what the run folder held when on_round came."""

    def __init__(self, record: RunRecord):
        self.record, self.calls = record, []

    def on_start(self):
        self.calls.append("start")

    def on_round(self, row):
        on_disk = self.record.read_metrics()[-1]
        checkpointed = self.record.read_checkpoint()[0]
        self.calls.append(("round", row.round, on_disk == json.loads(json.dumps(row.to_dict())), checkpointed))

    def on_finish(self, final_adapter, report):
        self.calls.append(("finish", final_adapter.name, report.name))

    def on_abort(self, reason):
        self.calls.append(("abort", reason))


def test_an_added_observer_sees_each_row_once_it_is_on_disk_and_checkpointed(tmp_path, monkeypatch):
    record = RunRecord(tmp_path / "run")
    watcher = Recorder(record)
    server = _server(tmp_path, observers=[watcher])
    monkeypatch.setattr(server, "evaluate", lambda round_idx: {"accuracy": 0.5, "n": 2})
    monkeypatch.setattr(server, "_save_adapter", lambda out_dir, what: out_dir.mkdir(parents=True))
    labels: list[str] = []
    monkeypatch.setattr(records, "fault_hook", labels.append)
    assert type(server.observers[0]).__name__ == "RecordWriter" and server.observers[-1] is watcher
    server.open_trackers()
    server.start()

    def runner(plan, state):
        return [ClientReport(c, {"w": torch.tensor([2.0, 2.0])}, 1.0, {"wins": 1, "prompts": 1})
                for c in plan.selected]

    server.run_rounds(runner, 1)
    server.finish()
    assert watcher.calls == ["start", ("round", 0, True, 0), ("round", 1, True, 1), ("round", 2, True, 2),
                             ("finish", "round_0002", "report.md")]
    assert labels == ["metrics", "checkpoint.tmp", "checkpoint.replace"] * 3  # the row, then its checkpoint
    text = "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in record.read_rows())
    assert record.metrics_path.read_text() == text  # the rows read back write the same file


def test_an_observer_hears_why_a_run_failed(tmp_path):
    watcher = Recorder(RunRecord(tmp_path / "run"))
    server = _server(tmp_path, observers=[watcher])

    def runner(plan, state):
        raise RuntimeError("client page unreachable")

    with pytest.raises(RuntimeError):
        server.run_rounds(runner, 1)
    assert watcher.calls == [("abort", "RuntimeError: client page unreachable")]
