"""Experiment tracking: what TensorBoard and wandb (offline) received, read back from their files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from fedspear.config import ConfigError, load_config
from fedspear.tracking import Trackers, round_scalars

ROW0 = {"round": 0, "eval": {"accuracy": 0.5, "groups": {"known": 1.0, "misconception": 0.0}}, "time": {"eval_s": 2.0}}
ROW1 = {
    "round": 1, "lr": 1e-3,
    "clients": [{"metrics": {"loss_total": 1.0, "loss_win": 0.5}}, {"metrics": {"loss_total": 3.0, "loss_win": 1.5}}],
    "aggregate": {"wins": 7, "losses": 3, "wins_revision": 2, "revision_successes": 2, "tokens_generated": 120,
                  "tokens_trained": 300, "y0_accuracy": 0.25},
    "aggregation": {"num_aggregated": 2, "num_failed_clients": 0},
    "time": {"round_s": 4.5, "training_s": 3.0},
    "privacy": {"mode": "central", "epsilon": 1.25, "delta": 1e-5},
    "eval": {"accuracy": 0.625, "groups": {"known": 1.0, "misconception": 0.25}},
    "resources": {"peak_rss_mb_max": 512.5, "update_rss_peak_mb_max": 300.0, "bytes_down": 2000,
                  "bytes_down_per_client": 1000.0, "bytes_up": 1000, "bytes_up_per_client": 500.0},
}


def test_round_scalars_flattens_a_row():
    s = round_scalars(ROW1)
    assert s["eval/accuracy"] == 0.625 and s["eval/group/misconception"] == 0.25
    assert s["train/wins"] == 7 and s["train/losses"] == 3 and s["train/wins_revision"] == 2
    assert s["loss/total"] == 2.0 and s["loss/win"] == 1.0  # the clients' mean
    assert s["time/round_s"] == 4.5 and s["train/tokens_generated"] == 120 and s["privacy/epsilon"] == 1.25
    assert "privacy/epsilon" not in round_scalars(ROW0)
    assert {k: v for k, v in s.items() if k.startswith("resources/")} == {
        "resources/peak_rss_mb_max": 512.5, "resources/update_rss_peak_mb_max": 300.0, "resources/bytes_down": 2000,
        "resources/bytes_down_per_client": 1000.0, "resources/bytes_up": 1000, "resources/bytes_up_per_client": 500.0}


def _wandb_records(path: Path) -> list:
    """Records of a wandb ``.wandb`` file: W&B's 7-byte header, then LevelDB-log framed protobuf Records."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, records, pending = 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def test_tensorboard_and_wandb_offline_receive_rounds_config_and_final_adapter(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = load_config(None, ["logging.report_to=[tensorboard,wandb]", "dp.mode=central", "fl.rounds=1"])
    trackers = Trackers(cfg, tmp_path)
    trackers.log_round(ROW0)
    trackers.log_round(ROW1)
    trackers.finish(tmp_path / "adapters" / "round_0001")

    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("eval/accuracy")] == [(0, 0.5), (1, 0.625)]
    assert [e.value for e in acc.Scalars("eval/group/misconception")] == [0.0, 0.25]
    assert acc.Scalars("privacy/epsilon")[0].value == 1.25 and acc.Scalars("train/wins")[0].value == 7
    texts = {tag: acc.Tensors(tag)[0].tensor_proto.string_val[0].decode() for tag in acc.Tags()["tensors"]}
    assert str(tmp_path / "adapters" / "round_0001") in texts["final_adapter/text_summary"]
    assert "mode: central" in texts["config/text_summary"]

    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    records = _wandb_records(runs[0])
    history = [{item.nested_key[0] if item.nested_key else item.key: json.loads(item.value_json)
                for item in r.history.item} for r in records if r.HasField("history")]
    assert [(h["_step"], h["eval/accuracy"]) for h in history] == [(0, 0.5), (1, 0.625)]
    assert history[1]["loss/total"] == 2.0 and history[1]["privacy/epsilon"] == 1.25
    config = {item.key: json.loads(item.value_json) for r in records if r.HasField("run") for item in r.run.config.update}
    assert config["dp"]["mode"] == "central" and config["fl"]["rounds"] == 1
    summary = {(item.nested_key[0] if item.nested_key else item.key): json.loads(item.value_json)
               for r in records if r.HasField("summary") for item in r.summary.update}
    assert summary["final_adapter"] == str(tmp_path / "adapters" / "round_0001")


def test_no_trackers_writes_nothing(tmp_path):
    trackers = Trackers(load_config(None, []), tmp_path)
    trackers.log_round(ROW1)
    trackers.finish(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_unknown_tracker_is_a_config_error():
    with pytest.raises(ConfigError, match="logging.report_to: 'mlflow' is not one of tensorboard, wandb"):
        load_config(None, ["logging.report_to=[mlflow]"])


def test_a_stopped_run_closes_its_trackers_with_the_reason(tmp_path, monkeypatch):
    """A run that stops (or fails) after rounds were logged leaves TensorBoard closed with the reason, and a wandb
    run marked failed (exit code 1) with the reason in its summary, instead of a run left open."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = load_config(None, ["logging.report_to=[tensorboard,wandb]", "fl.rounds=3"])
    trackers = Trackers(cfg, tmp_path)
    trackers.log_round(ROW0)
    trackers.abort("RunStopped: no usable client update in 2 consecutive rounds")
    assert trackers.backends is None
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    text = acc.Tensors("stopped/text_summary")[0].tensor_proto.string_val[0].decode()
    assert text == "RunStopped: no usable client update in 2 consecutive rounds"
    (run,) = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    records = _wandb_records(run)
    summary = {(item.nested_key[0] if item.nested_key else item.key): json.loads(item.value_json)
               for r in records if r.HasField("summary") for item in r.summary.update}
    assert summary["stopped"].startswith("RunStopped: no usable")
    assert [r.exit.exit_code for r in records if r.HasField("exit")] == [1]
    Trackers(cfg, tmp_path / "never").abort("x")  # never opened: nothing to close, no folder written
    assert not (tmp_path / "never").exists()
