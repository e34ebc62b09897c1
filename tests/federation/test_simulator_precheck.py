"""`fedspear run` checks everything it can before round 0 (issue 23, class 2): one line, exit 2, no run folder left;
a run in which no client ever sent a usable update does not exit 0; a full disk during a checkpoint is one line and
the run resumes once there is space again. Every test goes through the real command line, ``fedspear.cli.main``."""

from __future__ import annotations

import errno
import json
import sys
import textwrap

import pytest
from conftest import REPO, require_shared_data, tiny_overrides

from fedspear import records
from fedspear.cli import main

FAST = {"data.max_eval_examples": 4, "data.eval_every": 2, "data.eval_every_round_up_to": 0, "fl.rounds": 1}

USER_TASKS = '''
from arithmetic_task import ArithmeticTask


class WrongLoad(ArithmeticTask):
    def load(self, cfg):
        return [self._example(0, 1, 2)]


class BrokenExtract(ArithmeticTask):
    def extract(self, completion):
        raise ValueError("no digits here")


class BrokenFeedback(ArithmeticTask):
    def feedback(self, example, completion, cfg=None):
        return None


class FailsInClients(ArithmeticTask):
    """Passes the check before round 0 (its first feedback call), then fails in every client."""

    calls = 0

    def feedback(self, example, completion, cfg=None):
        FailsInClients.calls += 1
        if FailsInClients.calls > 1:
            raise RuntimeError("hint service down")
        return super().feedback(example, completion, cfg)
'''


@pytest.fixture
def user_tasks(tmp_path, monkeypatch):
    """The module ``usertasks`` (tasks built on examples/arithmetic) importable as a user's package."""
    (tmp_path / "usertasks.py").write_text(textwrap.dedent(USER_TASKS))
    monkeypatch.syspath_prepend(str(REPO / "examples" / "arithmetic"))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "usertasks"
    sys.modules.pop("usertasks", None)


def _args(tiny_qwen, out, **extra) -> list[str]:
    return ["run", *tiny_overrides(tiny_qwen, out, **{**FAST, **extra})]


def _error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("fedspear: ")]
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize(("cls", "message"), [
    ("WrongLoad", "fedspear: error: data.dataset=usertasks:WrongLoad: WrongLoad.load(cfg) returned a list ([Example("),
    ("BrokenExtract", "fedspear: error: data.dataset=usertasks:BrokenExtract: BrokenExtract.extract failed on row "
                      "add-0: ValueError: no digits here (see docs/extending.md)"),
    ("BrokenFeedback", "fedspear: error: data.dataset=usertasks:BrokenFeedback: BrokenFeedback.feedback returned a "
                       "NoneType (None) on row add-0; it must return a str (see docs/extending.md)"),
])
def test_a_broken_user_task_is_one_line_before_any_work(tiny_qwen, tmp_path, user_tasks, capsys, cls, message):
    out = tmp_path / "run"
    assert main(_args(tiny_qwen, out, **{"data.dataset": f"{user_tasks}:{cls}"})) == 2
    line = _error_line(capsys)
    assert line.startswith(message), line
    if cls == "WrongLoad":
        assert line.endswith("; it must return fedspear.tasks.base.TaskData(train=[Example, ...], eval=[Example, "
                             "...], stats=LoadStats(...)) (see docs/extending.md)")
    assert not out.exists()


def test_a_run_where_every_client_always_failed_stops_with_exit_3(tiny_qwen, tmp_path, user_tasks, capsys):
    out = tmp_path / "run"
    assert main(_args(tiny_qwen, out, **{"data.dataset": f"{user_tasks}:FailsInClients"})) == 3
    line = _error_line(capsys)
    assert line.startswith("fedspear: stopped: run stopped after round 1: no usable client update in any of the 1 "
                           "rounds of this run (clients failed or sent non-finite updates); nothing was trained"), line
    assert "(first error: RuntimeError: hint service down)" in line
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["stopped"] and rows[-1]["aggregation"]["num_failed_clients"] == 2


def test_wandb_online_without_a_login_is_one_line_and_leaves_no_run(tiny_qwen, tmp_path, monkeypatch, capsys):
    require_shared_data()
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc holding a key
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    out = tmp_path / "run"
    args = _args(tiny_qwen, out, **{"logging.report_to": "[wandb]", "logging.wandb_mode": "online"})
    assert main(args) == 2
    line = _error_line(capsys)
    assert line.startswith("fedspear: error: logging.report_to: wandb could not start (UsageError: No API key "
                           "configured."), line
    assert line.endswith("log in first (`wandb login`, or set WANDB_API_KEY), or set logging.wandb_mode=offline (no "
                         "network; `wandb sync` later)")
    assert not out.exists()  # the same command, logged in, is not refused as "already holds a run"


def test_resume_of_a_read_only_folder_is_one_line_before_any_work(tiny_qwen, tmp_path, monkeypatch, capsys):
    require_shared_data()
    out = tmp_path / "run"
    assert main(_args(tiny_qwen, out)) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != records.LOCK_FILE}

    def read_only(path):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(records, "_probe_dir", read_only)
    assert main(["run", "--resume", str(out), "fl.rounds=2"]) == 2
    assert _error_line(capsys) == (f"fedspear: error: {out}: read-only file system while writing a resumed run's "
                                   f"files; make the run folder writable (e.g. chmod -R u+w {out}) or copy it to a "
                                   "writable place and resume that copy")
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != records.LOCK_FILE} == before  # nothing trained or written (the lock holds a pid)


def test_a_full_disk_during_a_checkpoint_is_one_line_and_resume_finishes(tiny_qwen, tmp_path, monkeypatch, capsys):
    require_shared_data()
    out = tmp_path / "run"
    real_open, opened = open, []

    class FullDisk:
        def __init__(self, fh):
            self.fh = fh

        def write(self, data):
            self.fh.write(data[:100])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    def fake_open(path, mode="r", *args, **kwargs):
        fh = real_open(path, mode, *args, **kwargs)
        if str(path).endswith("state.safetensors.tmp"):
            opened.append(path)
            if len(opened) == 3:  # the checkpoints of rounds 0 and 1 are written; round 2's finds the disk full
                return FullDisk(fh)
        return fh

    monkeypatch.setattr(records, "open", fake_open, raising=False)
    assert main(_args(tiny_qwen, out, **{"fl.rounds": 2})) == 2
    ckpt = out / "checkpoint" / "state.safetensors"
    assert _error_line(capsys) == (f"fedspear: error: {ckpt}: no space left on device while writing the checkpoint "
                                   "of round 2; the previous checkpoint is kept; free space (or fix the folder's "
                                   f"permissions), then continue with `fedspear run --resume {out}`")
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["state.safetensors"]  # no .tmp left

    monkeypatch.delattr(records, "open")  # space is free again
    assert main(["run", "--resume", str(out)]) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert (out / "adapters" / "round_0002" / "adapter_model.safetensors").is_file()


def test_a_resumed_run_counts_the_rounds_before_the_resume(tiny_qwen, tmp_path, monkeypatch, capsys):
    """Round 1 ran (clients sent updates); round 2, resumed, has every client fail: not "nothing was trained"."""
    require_shared_data()
    from fedspear.federation import simulator

    out = tmp_path / "run"
    assert main(_args(tiny_qwen, out)) == 0
    first = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][1]
    assert first["aggregation"]["num_failed_clients"] == 0
    monkeypatch.setattr(simulator, "run_clients", lambda policy, algo, jobs, cfg, batched: [RuntimeError("boom")] * len(jobs))
    assert main(["run", "--resume", str(out), "fl.rounds=2"]) == 0  # 1 idle round of 2 (fl.max_idle_rounds=5)


def test_idle_rounds_in_a_row_are_counted_across_a_resume(tiny_qwen, tmp_path, monkeypatch, capsys):
    require_shared_data()
    from fedspear.federation import simulator

    monkeypatch.setattr(simulator, "run_clients", lambda policy, algo, jobs, cfg, batched: [RuntimeError("boom")] * len(jobs))
    out = tmp_path / "run"
    assert main(_args(tiny_qwen, out, **{"fl.max_idle_rounds": 2})) == 3  # its only round was idle
    assert "any of the 1 rounds of this run" in _error_line(capsys)
    assert main(["run", "--resume", str(out), "fl.rounds=3"]) == 3
    line = _error_line(capsys)
    assert line.startswith("fedspear: stopped: run stopped after round 2: no usable client update in 2 consecutive "
                           "rounds"), line  # round 1 (before the resume) and round 2
