"""Issue 11 classes 1-4 on small inputs: run folder life cycle, verified checkpoints, divergence, config limits."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from fedspear import cli
from fedspear.config import ConfigError, load_config
from fedspear.federation.aggregation import ServerOptimizer, aggregate
from fedspear.models import left_truncate
from fedspear.records import RunDirError, RunFileError, RunRecord
from fedspear.report import write_report

# --------------------------------------------------------------------------- class 1: run folder


def _cfg(out: Path):
    return load_config(None, [f"output_dir={out}"])


def test_folder_of_a_failed_start_is_rerunnable(tmp_path):
    record = RunRecord(tmp_path / "run")
    record.create(_cfg(tmp_path / "run"))
    record.append_metrics({"round": 0, "eval": {"accuracy": 0.5}})  # crashed before its checkpoint
    (record.run_dir / "adapters" / "round_0000").mkdir(parents=True)
    assert not record.has_run()
    record.release()  # its process died
    RunRecord(tmp_path / "run").create(_cfg(tmp_path / "run"))  # no RunExistsError
    assert not record.metrics_path.exists() and not (record.run_dir / "adapters").exists()
    assert record.config_path.is_file()


@pytest.mark.parametrize("kind", ["empty", "file", "below_file", "unwritable"])
def test_bad_output_dir_is_one_error(tmp_path, kind):
    (tmp_path / "f").write_text("x")
    path = {"empty": "", "file": tmp_path / "f", "below_file": tmp_path / "f" / "run",
            "unwritable": "/proc/fedspear-run"}[kind]
    with pytest.raises(RunDirError, match="output_dir"):
        RunRecord(Path(str(path))).create(_cfg(tmp_path / "ok"))
    assert (tmp_path / "f").read_text() == "x"


@pytest.mark.parametrize("value", ["", "   "])
def test_empty_output_dir_is_a_config_error(value, capsys):
    assert cli.main(["check", f"output_dir={value}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedspear: error: output_dir: is empty") and err.count("\n") == 1


def test_report_does_not_overwrite_a_foreign_report(tmp_path, capsys):
    (tmp_path / "report.md").write_text("my notes\n")
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "--force" in capsys.readouterr().err
    assert (tmp_path / "report.md").read_text() == "my notes\n"
    assert cli.main(["report", "--force", str(tmp_path)]) == 0
    assert (tmp_path / "report.md").read_text().startswith("# Run report: ")
    assert cli.main(["report", str(tmp_path)]) == 0  # its own report is rewritten


def test_make_base_refuses_foreign_model_files(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    assert cli.main(["make-base", "--out", str(tmp_path / "m"), "--preset", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "config.json" in err and "--force" in err and "Traceback" not in err
    assert (tmp_path / "m" / "config.json").read_text() == "{}"
    (tmp_path / "file").write_text("x")
    assert cli.main(["make-base", "--out", str(tmp_path / "file"), "--preset", "tiny"]) == 2


# --------------------------------------------------------------------------- class 2: checkpoint files


def _checkpointed(tmp_path) -> RunRecord:
    record = RunRecord(tmp_path / "run")
    record.create(_cfg(tmp_path / "run"))
    for r in range(3):
        record.append_metrics({"round": r, "x": r})
    record.write_checkpoint({"global.w": torch.arange(64, dtype=torch.float32)}, 2)
    record.release()  # its process was interrupted
    return record


def test_checkpoint_round_trip_and_rows_after_it_are_cut(tmp_path):
    record = _checkpointed(tmp_path)
    record.append_metrics({"round": 3})  # a kill after the row, before the checkpoint
    round_idx, tensors = record.read_checkpoint()
    assert round_idx == 2 and torch.equal(tensors["global.w"], torch.arange(64, dtype=torch.float32))
    assert [r["round"] for r in record.read_metrics()] == [0, 1, 2]


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "zeroed":
        data = bytearray(len(data))
    elif how == "bitflip_end":
        data[-3] ^= 0x01
    elif how == "bitflip_start":
        data[10] ^= 0x04
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "zeroed", "bitflip_end", "bitflip_start"])
@pytest.mark.parametrize("which", ["checkpoint", "metrics"])
def test_damaged_checkpoint_or_metrics_is_one_error_naming_the_file(tmp_path, how, which):
    record = _checkpointed(tmp_path)
    path = record.checkpoint_path() if which == "checkpoint" else record.metrics_path
    _damage(path, how)
    with pytest.raises(RunFileError) as err:
        record.read_checkpoint()
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    assert "start it again" in message or "restore it" in message


def test_round_in_checkpoint_cannot_be_edited(tmp_path):
    record = _checkpointed(tmp_path)
    blob = record.checkpoint_path().read_bytes()
    assert b'"round":"2"' in blob
    record.checkpoint_path().write_bytes(blob.replace(b'"round":"2"', b'"round":"1"'))
    with pytest.raises(RunFileError, match="checksum"):
        record.read_checkpoint()


# --------------------------------------------------------------------------- class 3: divergence


def test_nonfinite_aggregate_is_refused_and_server_state_kept():
    """Finite client updates whose server step overflows float16 (1 + 1e6 * ~1 > 65504): refused, state kept."""
    glob = {"w": torch.zeros(2, dtype=torch.float16)}
    update = {"w": torch.tensor([1.0, 0.0], dtype=torch.float16)}
    opt = ServerOptimizer("fedadam", lr=1e6, beta1=0.9, beta2=0.99, tau=1e-3)
    new, info = aggregate(glob, [(update, 1.0), (update, 1.0)], opt)
    assert info["refused_nonfinite_aggregate"] is True and info["num_aggregated"] == 2
    assert torch.equal(new["w"], glob["w"]) and opt.num_steps == 0 and not opt.m
    new, info = aggregate(glob, [(update, 1.0)], None)  # plain FedAvg of a finite update is accepted
    assert "refused_nonfinite_aggregate" not in info and new["w"].tolist() == [1.0, 0.0]


def test_report_and_summary_show_divergence_and_stop(tmp_path):
    from fedspear.federation.observers import summary_line

    record = RunRecord(tmp_path / "run")
    record.create(_cfg(tmp_path / "run"))
    record.append_metrics({"round": 0, "eval": {"accuracy": 0.25, "n": 4}})
    row = {"round": 1, "eval": {"accuracy": None, "diverged": True, "n": 4}, "stopped": "no usable update"}
    record.append_metrics(row)
    assert "DIVERGED" in summary_line(row, 3) and "STOPPED" in summary_line(row, 3)
    text = write_report(record.run_dir).read_text()
    assert "**diverged**" in text and "rounds 1" in text and "**run stopped**" in text
    assert "| 1 | diverged |" in text


# --------------------------------------------------------------------------- class 4: config limits


@pytest.mark.parametrize("item", ["optim.lr=inf", "optim.lr=1e999", "optim.lr=-inf", "fl.server_lr=nan"])
def test_infinite_floats_are_refused(item):
    with pytest.raises(ConfigError, match=item.split("=")[0]):
        load_config(None, [item])


def test_infinite_float_in_yaml_is_refused(tmp_path):
    (tmp_path / "c.yaml").write_text("optim:\n  lr: .inf\n")
    with pytest.raises(ConfigError, match="optim.lr.*infinite"):
        load_config(tmp_path / "c.yaml")


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 10**30])
def test_integers_beyond_64_bits_are_refused(value):
    with pytest.raises(ConfigError, match="data.seed.*64 bits"):
        load_config(None, [f"data.seed={value}"])
    assert load_config(None, [f"data.seed={2**63 - 1}"]).data.seed == 2**63 - 1


@pytest.mark.parametrize("key", ["gen.max_new_tokens_y0", "gen.max_new_tokens_y1", "gen.eval_max_new_tokens"])
def test_generation_budget_must_leave_room_for_the_prompt(key):
    with pytest.raises(ConfigError, match=f"{key}.*model.max_seq_len=64"):
        load_config(None, ["model.max_seq_len=64", "gen.max_new_tokens_y0=16", "gen.max_new_tokens_y1=16",
                           f"{key}=64"])
    ok = load_config(None, ["model.max_seq_len=64", "gen.max_new_tokens_y0=32", "gen.max_new_tokens_y1=32",
                            f"{key}=32"])
    assert ok.model.max_seq_len == 64


def test_empty_yaml_and_duplicate_keys_name_the_file(tmp_path, capsys):
    (tmp_path / "empty.yaml").write_text("# nothing\n")
    (tmp_path / "dup.yaml").write_text("fl:\n  rounds: 3\n  rounds: 30\n")
    (tmp_path / "dup_section.yaml").write_text("fl:\n  rounds: 3\nfl:\n  clients_per_round: 2\n")
    with pytest.raises(ConfigError, match="empty.yaml: the file is empty"):
        load_config(tmp_path / "empty.yaml")
    for name in ("dup.yaml", "dup_section.yaml"):
        with pytest.raises(ConfigError, match=f"{name}: found duplicate key"):
            load_config(tmp_path / name)
        assert cli.main(["check", "--config", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and ("duplicate key 'fl'" in err or "duplicate key 'rounds'" in err)


def test_left_truncation_keeps_bos():
    assert left_truncate([1, 10, 11, 12, 13], 3, keep_first=1) == [1, 12, 13]
    assert left_truncate([1, 10, 11, 12, 13], 3, keep_first=None) == [11, 12, 13]
    assert left_truncate([7, 10, 11, 12, 13], 3, keep_first=1) == [11, 12, 13]  # no BOS there: plain cut
    assert left_truncate([1, 10], 5, keep_first=1) == [1, 10]


def test_make_batch_keeps_bos_when_cutting():
    from fedspear.algorithms.base import Trace
    from fedspear.algorithms.common import make_batch

    batch = make_batch([Trace([1, 10, 11, 12, 13], [20, 21])], pad_id=0, max_len=5, device=torch.device("cpu"),
                       bos_id=1)
    assert batch.input_ids_BT.tolist() == [[1, 12, 13, 20, 21]]


def test_every_excluded_update_is_a_warning(tmp_path, caplog):
    from fixtures.fake_policy import FakePolicy

    from fedspear.federation.server import ClientReport, FederatedServer

    cfg = load_config(None, ["data.num_clients=3", "fl.clients_per_round=3", "fl.max_idle_rounds=0"])
    server = FederatedServer(cfg, RunRecord(tmp_path / "run"), FakePolicy({"w": torch.zeros(2)}), [])
    plan = server.plan_round(1)
    nan = {"w": torch.tensor([float("nan"), 0.0])}
    reports = [ClientReport(plan.selected[0], nan, 2.0), ClientReport(plan.selected[1], {"w": torch.ones(2)}, math.inf),
               ClientReport.failure(plan.selected[2], "RuntimeError: boom")]
    row = server.aggregate_round(plan, reports).to_dict()
    assert row["aggregation"]["num_excluded_nonfinite"] == 2 and row["aggregation"]["num_failed_clients"] == 1
    assert caplog.text.count("non-finite update") == 2 and "boom" in caplog.text
    assert torch.equal(server.global_state["w"], torch.zeros(2))
