"""GRPO client update: the federated run end to end, the rollout's groups, old log-probs, the first-step gradient."""

from __future__ import annotations

import torch
from conftest import build_rig, require_shared_data, run_tiny

from fedspear.algorithms.base import ClientJob, RunSettings, Trace
from fedspear.algorithms.common import choose_prompts, completion_logprobs, make_batch, sampling_settings, score_traces
from fedspear.algorithms.grpo import GRPO
from fedspear.algorithms.losses import group_advantages
from fedspear.config import load_config
from fedspear.generation import GenSettings
from fedspear.tasks import get_task
from fedspear.tasks.base import Example


# Evaluate only at rounds 0 and 2, on 4 rows.
def _rig(model_dir, **kw):
    over = {"model.model_name": str(model_dir), "model.dtype": "fp32", "model.device_map": "cpu",
            "model.gradient_checkpointing": False, "lora.r": 4, "lora.dropout": 0.0, "grpo.num_generations": 2,
            "gen.max_new_tokens_y0": 3, "fl.local_rollout_steps": 3}
    over.update(kw)
    return build_rig(load_config(None, [f"{k}={v}" for k, v in over.items()]), get_task("arc_challenge"))


def _algo(policy):
    return GRPO.from_config(policy.cfg, policy.task)


def _examples(n):
    return [Example(f"q{i}", f"Question {i}: which one is hot?\nA. ice\nB. fire\nAnswer:", "B", "B", ("ice", "fire"))
            for i in range(n)]


def test_grpo_federated_run_two_rounds_two_clients(tiny_qwen, tmp_path):
    require_shared_data()
    run_dir, rows = run_tiny(tiny_qwen, tmp_path / "run", **{"algorithm.name": "grpo", "grpo.num_generations": 2,
                                                             "fl.local_rollout_steps": 4})
    assert [r["round"] for r in rows] == [0, 1, 2]
    for row in rows[1:]:
        assert len(row["clients"]) == 2 and row["aggregation"]["num_aggregated"] == 2
        for client in row["clients"]:
            m = client["metrics"]
            # P = 4 prompts, G = 2 samples each; n_eff = P
            assert (m["prompts"], m["samples_y0"], m["generations"], client["weight"]) == (4, 8, 8, 4.0)
            assert m["steps"] == 2 and m["tokens_trained"] > 0 and m["tokens_forward"] > m["tokens_generated"] > 0
            assert m["needs_revision"] == 0 and m["feedback_s"] == 0.0
            assert m["wins_y0"] == round(m["y0_accuracy"] * 8)
    assert (run_dir / "adapters" / "round_0002" / "adapter_config.json").is_file()


def test_rollout_groups_g_samples_of_the_plain_prompt(tiny_qwen):
    policy = _rig(tiny_qwen, **{"gen.do_sample": False, "gen.temperature": 0.2})
    assert sampling_settings(policy.cfg.gen, 5) == GenSettings(5, True, 0.7, policy.cfg.gen.top_p, policy.cfg.gen.top_k)
    jobs = [ClientJob(0, 1, _examples(5), 1e-3, seed=11), ClientJob(1, 1, _examples(2), 1e-3, seed=12)]
    out = _algo(policy).rollout(policy, jobs)
    assert [r.metrics["prompts"] for r in out] == [3, 2]  # min(|D_c|, P = 3)
    assert [len(r.traces) for r in out] == [6, 4] and [r.metrics["generations"] for r in out] == [6, 4]
    expected = [ex.prompt for ex, _ in choose_prompts(policy, jobs[0], 3)]
    prompts = [policy.tokenizer.decode(t.prompt_ids) for t in out[0].traces]
    assert prompts == [p for p in expected for _ in range(2)]  # group-major, x0 unchanged (no gold facts)
    for r in out:
        adv = torch.tensor([t.reward for t in r.traces]).reshape(-1, 2)
        torch.testing.assert_close(adv, group_advantages(r.rewards_PG, True))
        assert torch.all(adv.sum(-1).abs() < 1e-6)


def test_old_logprobs_come_from_the_round_start_adapter(tiny_qwen):
    policy = _rig(tiny_qwen)
    traces = [Trace(policy.encode("Which is hot?\nAnswer:"), [5, 6]), Trace(policy.encode("Sun?\nAnswer:"), [7])]
    start = policy.adapter.get()
    with torch.no_grad():
        expected = completion_logprobs(policy.model, make_batch(traces, 0, 512, policy.device))
        for p in policy.adapter.params.values():  # the live adapter has moved (e.g. a previous client trained)
            p.add_(0.5)
    rows, tokens = score_traces(policy, start, RunSettings.from_config(policy.cfg), traces)
    assert [len(r) for r in rows] == [2, 1]
    torch.testing.assert_close(torch.tensor(rows[0]), expected[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.tensor(rows[1]), expected[1, -1:], atol=1e-5, rtol=1e-5)
    assert tokens == sum(len(t.prompt_ids) + len(t.completion_ids) for t in traces)


def _first_step_grads(policy, rewards):
    x0 = policy.encode("Which one is hot?\nA. ice\nB. fire\nAnswer:")
    adv = group_advantages(torch.tensor([rewards]), normalize=True)[0].tolist()
    traces = [Trace(x0, ids, reward=a) for ids, a in zip([[5, 6, 7], [8, 9], [10]], adv, strict=True)]
    old_rows, _ = score_traces(policy, policy.adapter.get(), RunSettings.from_config(policy.cfg), traces)
    policy.model.train()
    policy.model.zero_grad(set_to_none=True)
    loss, tokens, terms = _algo(policy).micro_loss(policy, traces, old_rows)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in policy.adapter.params.values() if p.grad is not None])
    return loss, tokens, terms, grads


def test_constant_group_leaves_only_kl_and_zero_gradient_at_round_start(tiny_qwen):
    policy = _rig(tiny_qwen)
    # Constant rewards: A = 0, so the policy term is 0; at theta = theta_old = theta_ref the k3 term is exp(0)-0-1 = 0
    # with gradient (1 - exp(0)) * dlogp = 0.
    loss, tokens, terms, grads = _first_step_grads(policy, [1.0, 1.0, 1.0])
    assert loss.item() == 0.0 and terms["kl"] == 0.0 and terms["ratio"] == 1.0
    assert torch.count_nonzero(grads) == 0
    # A mixed group [1, 1, 0]: A = (r - 2/3) / std = [0.577, 0.577, -1.155]; at ratio 1 the loss is -mean(A) = 0,
    # but the gradient -mean_i A_i * mean_t dlogp_it is not.
    loss, tokens, terms, grads = _first_step_grads(policy, [1.0, 1.0, 0.0])
    assert abs(loss.item()) < 1e-6 and grads.abs().max() > 1e-4
    assert tokens == 3 * len(policy.encode("Which one is hot?\nA. ice\nB. fire\nAnswer:")) + 6
