"""A run folder on a disk that refuses writes (issue 23, class 2): one line naming the file and the reason, no
partial ``.tmp`` file, the last good checkpoint kept; a resume checks that it can write before any work."""

from __future__ import annotations

import errno
import subprocess

import pytest
import torch

from fedspear import records
from fedspear.config import Config
from fedspear.records import RunRecord, RunWriteError


def _record(tmp_path) -> RunRecord:
    cfg = Config()
    cfg.output_dir = str(tmp_path / "run")
    record = RunRecord(tmp_path / "run")
    record.create(cfg)
    return record


class _FullDisk:
    """A file whose write puts a few bytes on disk, then fails as a full disk does."""

    def __init__(self, fh, err: int) -> None:
        self.fh, self.err = fh, err

    def write(self, data: bytes) -> int:
        self.fh.write(data[:16])
        raise OSError(self.err, "disk refused")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.fh.close()


def fail_checkpoint_writes(monkeypatch, err: int = errno.ENOSPC) -> None:
    """Make every write of a checkpoint's temporary file fail with ``err`` (other files write normally)."""
    real_open = open

    def fake_open(path, mode="r", *args, **kwargs):
        fh = real_open(path, mode, *args, **kwargs)
        return _FullDisk(fh, err) if str(path).endswith(".tmp") and "w" in mode else fh

    monkeypatch.setattr(records, "open", fake_open, raising=False)


@pytest.mark.parametrize(("err", "reason"), [(errno.ENOSPC, "no space left on device"),
                                             (errno.EDQUOT, "disk quota exceeded"),
                                             (errno.EROFS, "read-only file system")])
def test_a_refused_checkpoint_write_is_one_line_keeps_the_last_checkpoint_and_no_tmp(tmp_path, monkeypatch, err,
                                                                                     reason):
    record = _record(tmp_path)
    record.append_metrics({"round": 0})
    record.write_checkpoint({"w": torch.zeros(3)}, 0)
    record.append_metrics({"round": 1})
    fail_checkpoint_writes(monkeypatch, err)
    with pytest.raises(RunWriteError) as caught:
        record.write_checkpoint({"w": torch.ones(3)}, 1)
    assert str(caught.value) == (
        f"{record.checkpoint_path()}: {reason} while writing the checkpoint of round 1; the previous checkpoint is "
        f"kept; free space (or fix the folder's permissions), then continue with `fedspear run --resume "
        f"{record.run_dir}`")
    assert sorted(p.name for p in record.checkpoint_dir().iterdir()) == ["state.safetensors"]
    monkeypatch.undo()
    round_idx, tensors = record.read_checkpoint()  # the last good one; the row of round 1 is cut
    assert round_idx == 0 and torch.equal(tensors["w"], torch.zeros(3))
    assert [r["round"] for r in record.read_metrics()] == [0]


def test_other_os_errors_are_not_reworded(tmp_path, monkeypatch):
    record = _record(tmp_path)
    fail_checkpoint_writes(monkeypatch, errno.EIO)
    with pytest.raises(OSError) as caught:
        record.write_checkpoint({"w": torch.zeros(3)}, 0)
    assert caught.value.errno == errno.EIO and not isinstance(caught.value, RunWriteError)
    assert not (record.checkpoint_dir() / "state.safetensors.tmp").exists()


def test_a_full_disk_while_appending_metrics_is_one_line(tmp_path, monkeypatch):
    record = _record(tmp_path)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(records, "_fsync_write", full)
    with pytest.raises(RunWriteError, match=r"metrics.jsonl: no space left on device while writing the row of "
                                            r"round 4; free space"):
        record.append_metrics({"round": 4})


def test_check_writable_names_the_folder_that_refuses(tmp_path, monkeypatch):
    record = _record(tmp_path)
    record.checkpoint_dir().mkdir()
    record.check_writable()  # a writable folder passes and is left as it was
    assert sorted(p.name for p in record.run_dir.iterdir()) == [".fedspear-run.lock", "checkpoint", "config.yaml"]

    def read_only(path):
        if path == record.checkpoint_dir():
            raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(records, "_probe_dir", read_only)
    with pytest.raises(RunWriteError) as caught:
        record.check_writable()
    assert str(caught.value).startswith(f"{record.checkpoint_dir()}: read-only file system while writing a resumed "
                                        f"run's files; make the run folder writable (e.g. chmod -R u+w")


def _immutable(path, on: bool) -> bool:
    """chattr +i / -i (refuses writes even to root); False where the file system or user cannot."""
    proc = subprocess.run(["chattr", "+i" if on else "-i", str(path)], capture_output=True)
    return proc.returncode == 0


def test_check_writable_on_a_folder_that_refuses_new_files(tmp_path):
    """The real probe, no monkeypatching: an immutable folder (chattr +i) takes no new file, even for root."""
    record = _record(tmp_path)
    record.append_metrics({"round": 0})
    try:
        if not _immutable(record.run_dir, True):
            pytest.skip("chattr +i is not available here")
        with pytest.raises(RunWriteError, match=rf"^{record.run_dir}: operation not permitted while writing"):
            record.check_writable()
    finally:
        _immutable(record.run_dir, False)


def test_discard_start_removes_what_the_start_wrote_and_the_folders_it_made(tmp_path):
    record = RunRecord(tmp_path / "runs" / "a" / "run")
    made = record.first_missing_folder()
    assert made == tmp_path / "runs"
    cfg = Config()
    record.create(cfg)
    record.append_metrics({"round": 0})
    (record.run_dir / "wandb").mkdir()
    (record.run_dir / "wandb" / "x").write_text("x")
    record.discard_start(remove_config=True, made=made)
    assert list(tmp_path.iterdir()) == []


def test_discard_start_keeps_the_config_and_files_it_did_not_write(tmp_path):
    record = _record(tmp_path)
    record.append_metrics({"round": 0})
    (record.run_dir / "notes.txt").write_text("mine")
    record.discard_start(remove_config=False, made=record.run_dir)
    assert sorted(p.name for p in record.run_dir.iterdir()) == ["config.yaml", "notes.txt"]
