"""The typed round row (fedspear/federation/rounds.py): the row's JSON object is the metrics.jsonl line, key for key
and in order; rows of any age parse back."""

from __future__ import annotations

import json

import pytest

from fedspear.federation.rounds import ClientRow, RoundRow, as_row


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
