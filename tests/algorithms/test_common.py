"""Shared training pieces: batching alignment, completion log-probs, the optimiser loop."""

from __future__ import annotations

import pytest
import torch
from conftest import build_rig

from fedspear.algorithms.base import RunSettings, Trace
from fedspear.algorithms.common import completion_logprobs, l2_to_global, make_batch, optimise
from fedspear.config import load_config


class _Task:
    name = "none"
    answer_marker = "Answer:"


def _rig(model_dir, **kw):
    over = {"model.model_name": str(model_dir), "model.dtype": "fp32", "model.device_map": "cpu",
            "model.gradient_checkpointing": False, "lora.r": 4, "lora.dropout": 0.0, "fl.local_train_steps": 2,
            "optim.grad_accum_steps": 1, "spear.lambda_anchor": 0.0}
    over.update(kw)
    return build_rig(load_config(None, [f"{k}={v}" for k, v in over.items()]), _Task())


def test_make_batch_right_aligns_completions():
    batch = make_batch([Trace([1, 2, 3], [4, 5]), Trace([7], [8, 9, 10])], pad_id=0, max_len=64,
                       device=torch.device("cpu"))
    assert batch.input_ids_BT.tolist() == [[1, 2, 3, 4, 5], [0, 7, 8, 9, 10]]
    assert batch.targets_BL.tolist() == [[3, 4, 5], [8, 9, 10]]
    assert batch.mask_BL.tolist() == [[0, 1, 1], [1, 1, 1]]
    assert batch.position_ids_BT.tolist() == [[0, 1, 2, 3, 4], [0, 0, 1, 2, 3]]


def test_completion_logprobs_match_unpadded_forward(tiny_llama):
    policy = _rig(tiny_llama)
    traces = [Trace(policy.encode("Which is hot?\nAnswer:"), [5, 6]),
              Trace(policy.encode("Plants need light and water to grow.\nAnswer:"), [7, 8, 9])]
    batch = make_batch(traces, policy.tokenizer.pad_token_id, 512, policy.device)
    with torch.no_grad():
        logp_BL = completion_logprobs(policy.model, batch)
        for i, t in enumerate(traces):
            ids = torch.tensor([t.prompt_ids + t.completion_ids])
            logits = policy.model(input_ids=ids).logits[0].log_softmax(-1)
            n = len(t.completion_ids)
            expected = [logits[len(t.prompt_ids) - 1 + j, t.completion_ids[j]].item() for j in range(n)]
            torch.testing.assert_close(logp_BL[i, -n:], torch.tensor(expected), atol=1e-5, rtol=1e-5)


def test_nonfinite_gradient_skips_step(tiny_qwen):
    policy = _rig(tiny_qwen)
    before = policy.adapter.get()

    def nan_step(rng):
        p = next(iter(policy.adapter.params.values()))
        return p.sum() * float("nan"), 1, {}

    stats = optimise(policy, before, RunSettings.from_config(policy.cfg), lr=1e-2, seed=0, micro_step=nan_step)
    assert stats.skipped_steps == 2 and stats.steps == 0
    after = policy.adapter.get()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_regulariser_hooks_are_added_to_every_micro_step_loss(tiny_qwen):
    # One step of one micro-step whose own loss is 0 * (...): only the hook's gradient moves the adapter. The hook
    # is sum(theta), gradient 1 everywhere, so AdamW's first step is theta * (1 - lr * wd) - lr * 1 / (1 + eps).
    policy = _rig(tiny_qwen, **{"fl.local_train_steps": 1, "optim.weight_decay": 0.1})
    run = RunSettings.from_config(policy.cfg)
    first = next(iter(policy.adapter.params.values()))
    calls = []

    def hook(live, anchor):
        calls.append(set(live) == set(anchor))
        return sum(p.sum() for p in live.values())

    before = policy.adapter.get()
    stats = optimise(policy, before, run, lr=1e-2, seed=0, micro_step=lambda rng: (first.sum() * 0.0, 1, {}),
                     regularisers=[hook])
    assert calls == [True] and stats.steps == 1
    expected_total = sum(float(v.sum()) for v in before.values())
    assert stats.terms["total"] == pytest.approx(expected_total, abs=1e-4)
    after = policy.adapter.get()
    for k in before:
        torch.testing.assert_close(after[k], before[k] * (1 - 1e-2 * 0.1) - 1e-2 / (1 + 1e-8), rtol=0, atol=1e-6)


def test_l2_to_global_is_weight_times_the_anchor_loss():
    # theta = [1, 2], global = [0, 0]: sum of squares 5, mean 2.5
    live = {"a": torch.nn.Parameter(torch.tensor([1.0, 2.0]))}
    anchor = {"a": torch.zeros(2)}
    assert float(l2_to_global(0.5, "sum")(live, anchor)) == pytest.approx(2.5)
    assert float(l2_to_global(0.1, "mean")(live, anchor)) == pytest.approx(0.25)
