"""Issue 11 end to end on a tiny model: a kill after every durable write resumes exactly, damaged files stop
resume with one line, failed starts are re-runnable, divergence gets no accuracy, idle runs stop."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from conftest import FAST_EVAL, require_shared_data, tiny_overrides

from fedspear import cli, records
from fedspear.config import load_config
from fedspear.federation import simulator
from fedspear.federation.server import RunStopped
from fedspear.records import RunRecord


class Killed(BaseException):
    """Stands for a kill -9: nothing in fedspear catches it."""


def _overrides(model, out, **extra):
    return tiny_overrides(model, out, **{**FAST_EVAL, **extra})


def _final(run_dir):
    _, tensors = RunRecord(run_dir).read_checkpoint()
    return {k: v for k, v in tensors.items() if k.startswith("global.")}


def _count_steps(monkeypatch, model, out) -> list[str]:
    labels: list[str] = []
    monkeypatch.setattr(records, "fault_hook", labels.append)
    simulator.run(load_config(None, _overrides(model, out)))
    monkeypatch.setattr(records, "fault_hook", None)
    return labels


def _kill_after(monkeypatch, k: int):
    seen = []

    def hook(label):
        seen.append(label)
        if len(seen) == k:
            raise Killed(f"killed after write {k} ({label})")

    monkeypatch.setattr(records, "fault_hook", hook)


def _check_kill_points(monkeypatch, tmp_path, tiny_qwen, points):
    full_dir = tmp_path / "full"
    labels = _count_steps(monkeypatch, tiny_qwen, full_dir)
    assert labels[:1] == ["config"] and labels.count("checkpoint.replace") == 3  # rounds 0, 1, 2
    full = _final(full_dir)
    full_rows = RunRecord(full_dir).read_metrics()
    for k in points(len(labels)):
        out = tmp_path / f"kill{k}"
        _kill_after(monkeypatch, k)
        with pytest.raises(Killed):
            simulator.run(load_config(None, _overrides(tiny_qwen, out)))
        monkeypatch.setattr(records, "fault_hook", None)
        resumed = simulator.resume(out)
        got = _final(resumed)
        assert got.keys() == full.keys(), labels[k - 1]
        for key in full:
            assert torch.equal(got[key], full[key]), (k, labels[k - 1], key)
        rows = RunRecord(resumed).read_metrics()
        assert [r["round"] for r in rows] == [0, 1, 2], (k, labels[k - 1])
        assert [r.get("eval", {}).get("accuracy") for r in rows] == [
            r.get("eval", {}).get("accuracy") for r in full_rows]


def test_kill_between_checkpoint_write_and_replace_resumes_exactly(tiny_qwen, tmp_path, monkeypatch):
    require_shared_data()
    # write 6 is round 1's checkpoint.tmp (config, r0: adapter, metrics, tmp, replace; r1: metrics, tmp)
    _check_kill_points(monkeypatch, tmp_path, tiny_qwen, lambda n: [7])


@pytest.mark.slow
def test_kill_after_every_write_resumes_exactly(tiny_qwen, tmp_path, monkeypatch):
    require_shared_data()
    _check_kill_points(monkeypatch, tmp_path, tiny_qwen, lambda n: range(1, n + 1))


@pytest.fixture(scope="module")
def one_round_run(tiny_qwen, tmp_path_factory):
    require_shared_data()
    out = tmp_path_factory.mktemp("one-round") / "run"
    return simulator.run(load_config(None, _overrides(tiny_qwen, out, **{"fl.rounds": 1})))


@pytest.mark.parametrize("how", ["truncated", "zeroed", "bitflip"])
def test_resume_from_damaged_checkpoint_is_one_line_exit_2(one_round_run, tmp_path, capsys, how):
    run_dir = tmp_path / "run"
    shutil.copytree(one_round_run, run_dir)
    path = RunRecord(run_dir).checkpoint_path()
    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[: len(data) - 100]
    elif how == "zeroed":
        data = bytearray(len(data))
    else:
        data[len(data) - 40] ^= 0x10  # one bit of a tensor value
    path.write_bytes(bytes(data))
    capsys.readouterr()
    assert cli.main(["run", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedspear: error: ") and err.count("\n") == 1 and str(path) in err  # before model load
    assert "Traceback" not in err


def test_failed_start_leaves_a_rerunnable_folder(tiny_qwen, tmp_path, capsys):
    require_shared_data()
    out = tmp_path / "run"
    bad = _overrides(tiny_qwen, out, **{"data.path": str(tmp_path / "missing")})
    assert cli.main(["run", *bad]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert not out.exists()  # a start that failed before round 0 leaves nothing behind (issue 23)
    out.mkdir()
    (out / "config.yaml").write_text("left by an older fedspear\n")  # a failed start of an older version
    assert cli.main(["run", *_overrides(tiny_qwen, out, **{"fl.rounds": 1})]) == 0  # same folder, fixed config
    assert [r["round"] for r in RunRecord(out).read_metrics()] == [0, 1]


@pytest.mark.parametrize("kind", ["file", "below_file"])
def test_cli_output_dir_file_is_exit_2(tiny_qwen, tmp_path, capsys, kind):
    (tmp_path / "f").write_text("keep")
    out = tmp_path / "f" if kind == "file" else tmp_path / "f" / "run"
    assert cli.main(["run", *_overrides(tiny_qwen, out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedspear: error: output_dir=") and "Traceback" not in err
    assert (tmp_path / "f").read_text() == "keep"


@pytest.mark.parametrize("method", ["log_likelihood", "generative"])
def test_diverged_model_gets_no_accuracy(tiny_qwen, tmp_path, method):
    require_shared_data()
    from fedspear.evaluation import evaluate
    from fedspear.models import build_policy
    from fedspear.tasks import get_task

    cfg = load_config(None, _overrides(tiny_qwen, tmp_path / "r", **{"data.eval_method": method}))
    task = get_task(cfg.data.dataset)
    policy = build_policy(cfg)
    examples = task.load(cfg).eval[:4]
    ok = evaluate(policy, task, cfg, examples)
    assert ok["accuracy"] is not None and "diverged" not in ok
    policy.adapter.set({k: torch.full_like(v, math.nan) for k, v in policy.adapter.get().items()})
    bad = evaluate(policy, task, cfg, examples)
    assert bad["accuracy"] is None and bad[f"{method}_accuracy"] is None and bad["diverged"] is True
    # NaN logits from finite LoRA weights (scores, not the adapter): the score check catches them too
    policy.adapter.set({k: torch.full_like(v, 1e38) for k, v in policy.adapter.get().items()})
    assert evaluate(policy, task, cfg, examples)["diverged"] is True


def test_idle_rounds_stop_the_run_with_a_report(tiny_qwen, tmp_path, monkeypatch, capsys):
    require_shared_data()
    monkeypatch.setattr(simulator, "run_clients", lambda policy, algo, jobs, cfg, batched: [RuntimeError("boom")] * len(jobs))
    from fedspear.tracking import Trackers

    aborted = []
    monkeypatch.setattr(Trackers, "abort", lambda self, reason: aborted.append(reason))
    out = tmp_path / "run"
    with pytest.raises(RunStopped, match="2 consecutive rounds"):
        simulator.run(load_config(None, _overrides(tiny_qwen, out, **{"fl.rounds": 4, "fl.max_idle_rounds": 2})))
    assert len(aborted) == 1 and aborted[0].startswith("RunStopped: run stopped after round 2")  # trackers closed
    rows = RunRecord(out).read_metrics()
    assert [r["round"] for r in rows] == [0, 1, 2] and "fl.max_idle_rounds=2" in rows[-1]["stopped"]
    report = (out / "report.md").read_text()
    assert "**run stopped**" in report and "after round 2" in report
    assert cli.main(["run", *_overrides(tiny_qwen, tmp_path / "cli", **{"fl.rounds": 4, "fl.max_idle_rounds": 1})]) == 3
    err = capsys.readouterr().err
    assert "fedspear: stopped: run stopped after round 1" in err and "Traceback" not in err
    assert "client 0 failed in round 1" in err or "failed in round 1" in err


def test_max_seq_len_above_position_limit_is_capped(tiny_qwen, tmp_path, caplog):
    """A GPT-2-shaped model with 64 positions and a 300-token question: capped, no IndexError."""
    require_shared_data()
    import dataclasses

    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from fedspear.evaluation import evaluate
    from fedspear.models import fit_config, load_policy
    from fedspear.tasks import get_task

    tok = AutoTokenizer.from_pretrained(tiny_qwen)
    gpt = tmp_path / "gpt2"
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2)).save_pretrained(gpt)
    tok.save_pretrained(gpt)
    cfg = load_config(None, _overrides(gpt, tmp_path / "r", **{"model.max_seq_len": 2048}))
    task = get_task(cfg.data.dataset)
    policy = load_policy(cfg)
    fitted = fit_config(cfg, policy)
    assert cfg.model.max_seq_len == 2048  # the caller's config is not written; the copy carries the cap
    cfg = fitted
    assert cfg.model.max_seq_len == 64 == policy.max_seq_len and "position limit (64)" in caplog.text
    ex = task.load(cfg).eval[0]
    long = dataclasses.replace(ex, prompt="water light heat " * 100 + ex.prompt)
    assert len(policy.encode(long.prompt)) > 300
    assert evaluate(policy, task, cfg, [long, ex])["n"] == 2


def test_left_truncated_prompts_keep_bos(tiny_llama, tmp_path):
    require_shared_data()
    from fedspear.generation import GenSettings, generate
    from fedspear.models import build_policy

    cfg = load_config(None, _overrides(tiny_llama, tmp_path / "r", **{"model.max_seq_len": 16}))
    policy = build_policy(cfg)
    bos = policy.tokenizer.bos_token_id
    assert policy.bos_id == bos is not None
    prompt = policy.encode("which best describes the plant water energy light heat earth sun Answer:")
    assert len(prompt) > 13 and prompt[0] == bos
    (done,) = generate(policy, [prompt], GenSettings(3, False, 1.0, 1.0), seed=0)
    assert done.prompt_ids == [bos, *prompt[-12:]]  # 16 - 3 new tokens = 13 prompt tokens, BOS first
