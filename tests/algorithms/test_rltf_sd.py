"""RLTF-SD client update: the federated run end to end, early termination, advantages and the SD term."""

from __future__ import annotations

import pytest
import torch
from conftest import build_rig, require_shared_data, run_tiny

from fedspear.algorithms import rltf_sd
from fedspear.algorithms.base import ClientJob
from fedspear.algorithms.common import completion_logprobs, make_batch
from fedspear.config import load_config
from fedspear.tasks import get_task
from fedspear.tasks.base import Example


class ScriptedTask:
    """The ARC task with scripted verdicts (first answers in order, then revisions) and a feedback log."""

    def __init__(self, verdicts):
        self.task = get_task("arc_challenge")
        self.verdicts = list(verdicts)
        self.feedback_on = []

    def __getattr__(self, name):
        return getattr(self.task, name)

    def is_correct(self, example, completion):
        return self.verdicts.pop(0)

    def feedback(self, example, completion, cfg):
        self.feedback_on.append(completion)
        return "x" * 500 + self.task.feedback(example, completion, cfg)


# Evaluate only at rounds 0 and 2, on 4 rows.
def _rig(model_dir, task, **kw):
    over = {"model.model_name": str(model_dir), "model.dtype": "fp32", "model.device_map": "cpu",
            "model.gradient_checkpointing": False, "lora.r": 4, "lora.dropout": 0.0, "grpo.num_generations": 2,
            "fl.local_rollout_steps": 4, "gen.max_new_tokens_y0": 3, "gen.max_new_tokens_y1": 3,
            "distill.feedback_max_chars": 40}
    over.update(kw)
    return build_rig(load_config(None, [f"{k}={v}" for k, v in over.items()]), task)


def _algo(policy):
    return rltf_sd.RLTFSD.from_config(policy.cfg, policy.task)


def _examples():
    return [Example(f"q{i}", f"Question {i}: which one is hot?\nA. ice\nB. fire\nAnswer:", "B", "B", ("ice", "fire"))
            for i in range(3)]


def test_rltf_sd_federated_run_two_rounds_two_clients(tiny_qwen, tmp_path):
    require_shared_data()
    run_dir, rows = run_tiny(tiny_qwen, tmp_path / "run", **{"algorithm.name": "rltf_sd", "grpo.num_generations": 2,
                                                             "fl.local_rollout_steps": 4})
    assert [r["round"] for r in rows] == [0, 1, 2]
    for row in rows[1:]:
        assert row["aggregation"]["num_aggregated"] == 2
        for client in row["clients"]:
            m = client["metrics"]
            # n = P // N = 2 prompts x N = 2 samples; each wrong first answer gets one feedback and one revision
            assert (m["prompts"], m["samples_y0"], client["weight"]) == (2, 4, 4.0)
            assert m["needs_revision"] == 4 - m["wins_y0"] == m["feedback_calls"] == m["revision_attempts_1"]
            assert m["generations"] == 4 + m["needs_revision"]
            assert m["steps"] == 2 and m["tokens_trained"] > 0 and m["tokens_forward"] > 0
    assert (run_dir / "adapters" / "round_0002" / "adapter_config.json").is_file()


def test_correct_first_answers_get_no_revision_and_stay_out_of_sd(tiny_qwen):
    # 2 prompts x N = 2: first answers [right, wrong | wrong, wrong], then the revisions of the 3 wrong ones:
    # [right, wrong, wrong]
    task = ScriptedTask([True, False, False, False, True, False, False])
    policy = _rig(tiny_qwen, task)
    data = _algo(policy).rollout(policy, [ClientJob(0, 1, _examples(), 1e-3, seed=3)])[0]
    assert task.verdicts == [] and len(task.feedback_on) == 3
    s = data.samples
    assert [x.revised for x in s] == [False, True, True, True] and s[0].sd is None
    m = data.metrics
    assert (m["prompts"], m["samples_y0"], m["generations"], m["wins_y0"]) == (2, 4, 7, 1)
    assert (m["needs_revision"], m["revision_successes"], m["y0_accuracy"]) == (3, 1, 0.25)
    # group 1: r0 = [1, 0], r1 (revised only) = [-, 1]: A_sd = [0, 1 - 0.5], R = [1, 0 + 1] -> A_RL0 = [0, 0],
    # A_RL1 = [0, 1 - 1]; group 2: all rewards 0 -> all advantages 0
    assert [(x.adv_sd, x.adv_rl0, x.adv_rl1) for x in s] == [(0.0, 0.0, 0.0), (0.5, 0.0, 0.0), (0.0, 0.0, 0.0),
                                                              (0.0, 0.0, 0.0)]
    x1_text = policy.tokenizer.decode(s[1].rl1.prompt_ids)
    assert "x" * 40 in x1_text and "x" * 41 not in x1_text  # feedback cut to distill.feedback_max_chars
    assert s[1].sd.prompt_ids == s[1].rl0.prompt_ids and s[1].sd.completion_ids == s[1].rl1.completion_ids

    # At theta = theta_ref (k3 = 0) with A_RL0 = A_RL1 = 0, only SD is left, averaged over the revised samples:
    # with [not revised, revised] it is -0.5 * log pi(y1 | x0) (it would be -0.25 * ... if s[0] were counted).
    assert _algo(policy).set_reference_logprobs(policy, policy.adapter.get(), s) > 0
    policy.model.train()
    loss, tokens, terms = _algo(policy).micro_loss(policy, [s[0], s[1]])
    with torch.no_grad():
        batch = make_batch([s[1].sd], policy.tokenizer.pad_token_id, 512, policy.device)
        logp_y1_x0 = completion_logprobs(policy.model, batch).sum().item()
    assert terms["sd"] == pytest.approx(-0.5 * logp_y1_x0, rel=1e-5)
    assert terms["rl0"] == pytest.approx(0.0, abs=1e-6) and terms["rl1"] == pytest.approx(0.0, abs=1e-6)
    assert loss.item() == pytest.approx(policy.cfg.rltf_sd.sd_coeff * terms["sd"], rel=1e-5)
    # with only the non-revised sample, the SD and RL1 terms are empty
    _, _, terms = _algo(policy).micro_loss(policy, [s[0]])
    assert terms["sd"] == 0.0 and terms["rl1"] == 0.0


def test_without_early_termination_correct_answers_are_revised_without_oracle_feedback(tiny_qwen):
    task = ScriptedTask([True, False, True, True, True, True, False, True])
    policy = _rig(tiny_qwen, task, **{"rltf_sd.early_termination": False})
    data = _algo(policy).rollout(policy, [ClientJob(0, 1, _examples(), 1e-3, seed=3)])[0]
    assert all(x.revised for x in data.samples) and len(task.feedback_on) == 1  # the oracle sees wrong answers only
    assert rltf_sd.CORRECT_FEEDBACK[:40] in policy.tokenizer.decode(data.samples[0].rl1.prompt_ids)
    m = data.metrics
    assert (m["needs_revision"], m["revision_successes"], m["generations"]) == (1, 1, 8)
