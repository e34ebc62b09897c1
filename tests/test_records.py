"""Run folder: config, metrics.jsonl (crash-tolerant), resume helpers, and the Markdown report with plots."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fedspear.config import Config, load_config
from fedspear.plots import plot_series
from fedspear.records import RunExistsError, RunRecord
from fedspear.report import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _cfg(tmp_path, rounds: int = 3) -> Config:
    cfg = Config()
    cfg.fl.rounds = rounds
    cfg.output_dir = str(tmp_path / "run")
    return cfg


def test_create_writes_the_resolved_config(tmp_path):
    cfg = _cfg(tmp_path, rounds=7)
    record = RunRecord(tmp_path / "run")
    record.create(cfg)
    assert record.config_path.read_text() == cfg.to_yaml()
    assert load_config(record.config_path).fl.rounds == 7


def test_create_refuses_an_existing_run_unless_resuming(tmp_path):
    record = RunRecord(tmp_path / "run")
    record.create(_cfg(tmp_path, rounds=7))
    record.append_metrics({"round": 0})
    record.write_checkpoint({"w": torch.zeros(2)}, 0)  # round 0 completed: now the folder holds a run
    record.release()  # its process ended
    with pytest.raises(RunExistsError, match="--resume") as err:
        RunRecord(tmp_path / "run").create(_cfg(tmp_path, rounds=9))
    assert isinstance(err.value, ValueError) and "output_dir" in str(err.value)
    RunRecord(tmp_path / "run").create(_cfg(tmp_path, rounds=9), resume=True)
    assert load_config(record.config_path).fl.rounds == 7  # resuming keeps the run's own config


def test_create_accepts_an_empty_existing_folder(tmp_path):
    (tmp_path / "run").mkdir()
    RunRecord(tmp_path / "run").create(_cfg(tmp_path))
    assert (tmp_path / "run" / "config.yaml").exists()


def test_metrics_round_trip_with_nonfinite_and_foreign_types(tmp_path):
    record = RunRecord(tmp_path / "run")
    record.append_metrics({"round": 0, "eval": {"accuracy": 0.25, "n": 4}})
    record.append_metrics(
        {
            "round": 1,
            "lr": float("nan"),
            "loss": float("inf"),
            "selected_clients": (3, 1),
            "tokens": np.int64(12),
            "y0": torch.tensor(0.5),
        }
    )
    rows = record.read_metrics()
    assert rows == [
        {"round": 0, "eval": {"accuracy": 0.25, "n": 4}},
        {"round": 1, "lr": None, "loss": None, "selected_clients": [3, 1], "tokens": 12, "y0": 0.5},
    ]
    assert "NaN" not in record.metrics_path.read_text()
    assert record.last_completed_round() == 1


def test_truncated_last_line_is_skipped_and_cut_before_appending(tmp_path):
    record = RunRecord(tmp_path / "run")
    for r in range(2):
        record.append_metrics({"round": r})
    with open(record.metrics_path, "a") as fh:
        fh.write('{"round": 2, "ev')  # a crash in the middle of a write
    assert record.read_metrics() == [{"round": 0}, {"round": 1}]
    assert record.last_completed_round() == 1
    record.append_metrics({"round": 2})
    assert record.read_metrics() == [{"round": 0}, {"round": 1}, {"round": 2}]


def test_corrupt_middle_line_is_an_error(tmp_path):
    record = RunRecord(tmp_path / "run")
    record.run_dir.mkdir()
    record.metrics_path.write_text('{"round": 0}\nnot json\n{"round": 1}\n')
    with pytest.raises(ValueError, match=":2: corrupt"):
        record.read_metrics()


def test_resume_helpers(tmp_path):
    record = RunRecord(tmp_path / "run")
    assert record.read_metrics() == [] and record.last_completed_round() == -1
    for r in range(5):
        record.append_metrics({"round": r, "x": r * 10})
    record.truncate_metrics_after(2)
    assert record.read_metrics() == [{"round": 0, "x": 0}, {"round": 1, "x": 10}, {"round": 2, "x": 20}]
    assert record.last_completed_round() == 2
    assert record.adapter_dir(7) == tmp_path / "run" / "adapters" / "round_0007"
    assert record.checkpoint_dir() == tmp_path / "run" / "checkpoint"


def _round_row(r: int, acc: float | None, y0: float, fixed: int, needs: int) -> dict:
    row = {
        "round": r,
        "lr": 1e-4,
        "selected_clients": [0, 2],
        "clients": [
            {"client_id": 0, "weight": 3.0, "metrics": {"y0_accuracy": y0}},
            {"client_id": 2, "weight": 1.0, "metrics": {"y0_accuracy": y0}},
        ],
        "aggregate": {
            "y0_accuracy": y0,
            "wins": 4 + r,
            "losses": 3,
            "revision_successes": fixed,
            "needs_revision": needs,
            "tokens_generated": 100,
            "tokens_trained": 40,
        },
        "aggregation": {"num_aggregated": 2, "num_excluded_nonfinite": 0},
        "time": {"round_s": 10.0, "generation_s": 6.0, "training_s": 4.0},
    }
    if acc is not None:
        row["eval"] = {"accuracy": acc, "n": 16, "method": "generative", "groups": {"easy": acc + 0.1}}
        row["time"]["eval_s"] = 1.5  # timed separately from round_s, as the simulator does
    return row


def test_write_report_on_a_synthetic_run(tmp_path):
    record = RunRecord(tmp_path / "run")
    record.create(_cfg(tmp_path, rounds=3))
    record.append_metrics(
        {"round": 0, "eval": {"accuracy": 0.25, "n": 16, "method": "generative"}, "time": {"eval_s": 2.0}}
    )
    record.append_metrics(_round_row(1, None, 0.375, fixed=2, needs=5))
    record.append_metrics(_round_row(2, 0.7, 0.5, fixed=3, needs=4))
    record.append_metrics(_round_row(3, 0.625, 0.5, fixed=1, needs=4))

    path = write_report(record.run_dir)
    assert path == record.run_dir / "report.md"
    report = path.read_text()
    assert "- algorithm: spear" in report and "- rounds: 3" in report
    assert "| round-0 accuracy | 0.2500 |" in report
    assert "| final accuracy | 0.6250 (round 3" in report
    assert "| best accuracy | 0.7000 (round 2) |" in report
    assert "| total wall time | 35.0 s" in report  # round 0 eval 2 + 3 rounds * 10 + 2 evals * 1.5
    assert "| wall time without evaluation | 30.0 s" in report
    assert "| tokens generated | 300 |" in report and "| tokens trained | 120 |" in report
    assert "| successful revisions | 6 |" in report and "| samples needing revision | 13 |" in report
    assert "| 2 | 0.7000 | 0.5000 | 6 | 3 | 3 | 4 | 11.5 |" in report  # per-round table
    assert "| 1 | - | 0.3750 | 5 | 3 | 2 | 5 | 10.0 |" in report
    for name in ("accuracy.png", "revisions.png", "wall_time.png"):
        png = record.run_dir / "plots" / name
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 1000
        assert f"](plots/{name})" in report


def test_write_report_on_a_partial_run_without_config(tmp_path):
    record = RunRecord(tmp_path / "run")
    record.append_metrics({"round": 0, "eval": {"accuracy": 0.5, "n": 2}})
    report = write_report(record.run_dir).read_text()
    assert "| final accuracy | 0.5000 (round 0" in report
    assert "no config.yaml" in report
    assert (record.run_dir / "plots" / "accuracy.png").exists()
    assert not (record.run_dir / "plots" / "revisions.png").exists()  # nothing to plot, nothing written


def test_plot_series(tmp_path):
    out = plot_series({"a": [(1, 0.5), (2, 0.75)], "b": []}, "t", "round", "acc", tmp_path / "x" / "s.png")
    assert out == tmp_path / "x" / "s.png" and out.read_bytes()[:8] == PNG_MAGIC
    assert plot_series({"a": []}, "t", "x", "y", tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_metrics_file_is_one_json_object_per_line(tmp_path):
    record = RunRecord(tmp_path / "run")
    record.append_metrics({"round": 0, "text": "line\nbreak"})
    lines = record.metrics_path.read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["text"] == "line\nbreak"


def test_report_shows_peak_memory_and_adapter_bytes(tmp_path):
    record = RunRecord(tmp_path / "run")
    record.create(_cfg(tmp_path, rounds=2))
    for rnd, peak, update_peak, up in ((1, 480.25, 300.0, 1000), (2, 512.0, 290.5, 500)):
        row = _round_row(rnd, None, 0.5, fixed=1, needs=2)
        row["resources"] = {"peak_rss_mb_max": peak, "update_rss_peak_mb_max": update_peak, "bytes_down": 2000,
                            "bytes_down_per_client": 1000.0, "bytes_up": up, "bytes_up_per_client": up / 2}
        record.append_metrics(row)
    report = write_report(record.run_dir).read_text()
    assert "| peak memory, process RSS high-water mark (MB) | 512.0 |" in report  # the maximum over rounds
    assert "| peak memory during a client update, RSS (MB) | 300.0 |" in report
    assert "| adapter bytes per client-round, down / up (mean) | 1000 / 375 |" in report  # (500 + 250) / 2
    assert "| adapter bytes in all, down / up | 4000 / 1500 |" in report
    assert "CUDA" not in report and "Flower message bytes" not in report  # neither was measured
    assert "| 1 | - | 0.5000 | 5 | 3 | 1 | 2 | 10.0 | 480.2 | 1000 / 500 |" in report  # per-round columns


# --------------------------------------------------------------------------- a run owns its folder


def _claim(barrier, path, queue) -> None:
    from fedspear.records import claim_new_folder

    barrier.wait()  # every process asks for the same name at the same moment
    queue.put(str(claim_new_folder(path)))


def test_processes_racing_for_one_name_each_get_their_own_folder(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(5), ctx.Queue()
    procs = [ctx.Process(target=_claim, args=(barrier, tmp_path / "runs" / "20260101-000000", queue))
             for _ in range(5)]
    for p in procs:
        p.start()
    got = sorted(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    base = str(tmp_path / "runs" / "20260101-000000")
    assert got == [base, *(f"{base}-{i}" for i in range(1, 5))]


def test_claim_new_folder_never_reuses_an_existing_folder(tmp_path):
    from fedspear.records import claim_new_folder

    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.yaml").write_text("fl: {rounds: 1}\n")  # a failed start: still not ours to take
    (tmp_path / "r-1").write_text("a file")
    assert claim_new_folder(tmp_path / "r") == tmp_path / "r-2"
    assert claim_new_folder(tmp_path / "new" / "r") == tmp_path / "new" / "r"  # parents are made
    assert (tmp_path / "r" / "config.yaml").read_text() == "fl: {rounds: 1}\n"


_HOLDER = """
import os, sys, time
from fedspear.config import Config
from fedspear.records import RunRecord
cfg = Config(); cfg.output_dir = sys.argv[1]
record = RunRecord(sys.argv[1])
record.create(cfg)  # a start in progress: config.yaml, no round yet
print("held", flush=True)
if sys.argv[2] == "die":
    os._exit(1)  # the start fails: the process is gone
time.sleep(120)
"""


def _hold(folder, mode):
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder), mode], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_folder_a_live_run_holds_is_refused_not_taken_for_a_failed_start(tmp_path):
    from fedspear.records import RunInUseError

    folder = tmp_path / "run"
    proc = _hold(folder, "live")
    try:
        before = (folder / "config.yaml").read_text()
        with pytest.raises(RunInUseError, match=rf"in use by a running fedspear process \(pid {proc.pid}\)"):
            RunRecord(folder).create(_cfg(tmp_path, rounds=9))
        with pytest.raises(RunExistsError):  # RunInUseError is a RunExistsError: reported as a user error
            RunRecord(folder).lock()
        assert (folder / "config.yaml").read_text() == before  # the live start's files are untouched
    finally:
        proc.kill()
        proc.wait()
    record = RunRecord(folder)  # its process is gone: the folder is a failed start, free to start again
    record.create(_cfg(tmp_path, rounds=9))
    assert load_config(record.config_path).fl.rounds == 9
    record.release()


def test_a_start_whose_process_died_is_restartable(tmp_path):
    folder = tmp_path / "run"
    proc = _hold(folder, "die")
    assert proc.wait(timeout=60) == 1
    (folder / "metrics.jsonl").write_text('{"round": 0}\n')  # what the failed start left
    with RunRecord(folder) as record:
        record.create(_cfg(tmp_path, rounds=5))
        assert not record.metrics_path.exists()
        assert load_config(record.config_path).fl.rounds == 5
    with RunRecord(folder) as again:  # released at the end of the with block
        again.lock()
