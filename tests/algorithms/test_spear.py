"""SPEAR's client update: rollout bookkeeping, no-win clients, and fast path == plain path."""

from __future__ import annotations

import pytest
import torch
from conftest import build_rig, require_shared_data, tiny_overrides

from fedspear import rollout_queue
from fedspear.algorithms import spear
from fedspear.algorithms.base import ClientJob
from fedspear.algorithms.spear import Spear
from fedspear.config import load_config
from fedspear.generation import Completion
from fedspear.tasks import get_task
from fedspear.tasks.base import Example, Task


class ScriptTask(Task):
    """Answers are correct when they contain the example's answer word; feedback is a fixed clue."""

    name = "script"
    kind = "reasoning"

    def __init__(self):
        self.feedback_calls = []

    def extract(self, completion):
        return completion.strip() or None

    def feedback(self, example, completion, cfg):
        self.feedback_calls.append((example.id, completion))
        return "think again"


def _scripted_generate(script):
    """generate() stand-in: the i-th call returns script[i] (a text per prompt), with fake token ids."""
    calls = []

    def fake(policy, prompts, settings, seed, stats=None, store=None, keys=None, keep=None):
        texts = script[len(calls)]
        calls.append(prompts)
        assert len(texts) == len(prompts)
        if stats is not None:
            stats.tokens += len(prompts)
        return [Completion(p, [100 + len(t)], t, True) for p, t in zip(prompts, texts)]

    return fake, calls


@pytest.fixture()
def policy(tiny_qwen):
    cfg = load_config(None, [f"model.model_name={tiny_qwen}", "model.dtype=fp32", "model.device_map=cpu",
                             "model.gradient_checkpointing=false", "gen.num_revisions=2",
                             "fl.local_rollout_steps=3"])
    return build_rig(cfg, ScriptTask())


def _algo(policy):
    return Spear.from_config(policy.cfg, policy.task)


def _examples():
    return [Example(f"e{i}", f"question {i}\nAnswer:", answer=a, label="x") for i, a in enumerate(["p", "q", "r"])]


def test_rollout_wins_losses_and_revisions(policy, monkeypatch):
    exs = _examples()
    # sample order is seeded; map outputs by prompt text so the script does not depend on it
    by_prompt = {policy.encode(e.prompt)[-1]: e for e in exs}
    del by_prompt
    # first answers: e0 right, e1 wrong, e2 wrong; attempt 1: both still wrong; attempt 2: e1 fixed, e2 not
    script = {0: {"e0": "p", "e1": "x", "e2": "y"}, 1: {"e1": "x2", "e2": "y2"}, 2: {"e1": "q", "e2": "y3"}}
    order = {}

    chains = []  # per call: (chain keys, keep flags) the rollout passed

    def fake(policy_, prompts, settings, seed, stats=None, store=None, keys=None, keep=None):
        call = len(order)
        order[call] = prompts
        chains.append((keys, keep))
        if call == 0:
            ids = {tuple(policy_.encode(e.prompt)): e.id for e in exs}
            keys = [ids[tuple(p)] for p in prompts]
            fake.pending = [k for k in keys if script[0][k] != exs[int(k[1])].answer]
        else:
            keys = fake.pending
            fixed = [k for k in keys if script[call][k] == exs[int(k[1])].answer]
            fake.next_pending = [k for k in keys if k not in fixed]
        texts = [script[call][k] for k in keys]
        if call > 0:
            fake.pending = fake.next_pending
        return [Completion(p, [200 + call, 300 + i], t, True) for i, (p, t) in enumerate(zip(prompts, texts))]

    monkeypatch.setattr(rollout_queue, "generate", fake)
    job = ClientJob(0, 1, exs, 1e-3, seed=5)
    (out,) = _algo(policy).rollout(policy, [job])
    m = out.metrics
    assert m["prompts"] == 3 and m["wins_y0"] == 1 and m["needs_revision"] == 2
    assert m["revision_attempts_1"] == 2 and m["revision_attempts_2"] == 2 and m["revision_successes_2"] == 1
    assert len(out.wins) == 2 and len(out.losses) == 2
    x0 = {e.id: policy.encode(e.prompt) for e in exs}
    revision_win = [w for w in out.wins if w.text == "q"][0]
    assert revision_win.prompt_ids == x0["e1"]  # the revision is trained under the ORIGINAL prompt
    assert revision_win.completion_ids[0] == 202  # the sampled ids of attempt 2, not re-encoded text
    conf = {t.text: t.confidence for t in out.losses}
    assert conf == {"x": 1.0, "y": 0.5}  # fixed later -> 1.0, never fixed -> 0.5 (both keep y0)
    # first answers start no chain; attempt 1 keeps its prompt caches for attempt 2, the last, which keeps none
    assert chains[0][0] == [None] * 3
    assert chains[1][1] == [True, True] and chains[2][1] == [False, False]
    assert sorted(chains[1][0]) == sorted(chains[2][0]) and None not in chains[1][0]
    assert [c[0] for c in policy.task.feedback_calls] == ["e1", "e2", "e1", "e2"] or \
        sorted(c[0] for c in policy.task.feedback_calls) == ["e1", "e1", "e2", "e2"]
    assert ("e1", "x2") in policy.task.feedback_calls  # feedback is on the LATEST answer


def test_no_feedback_source_makes_every_wrong_answer_a_half_confidence_loss(policy, monkeypatch):
    policy.cfg.feedback.provider = "none"
    fake, calls = _scripted_generate([["zz", "zz", "zz"]])
    monkeypatch.setattr(rollout_queue, "generate", fake)
    (out,) = _algo(policy).rollout(policy, [ClientJob(0, 1, _examples(), 1e-3, seed=1)])
    assert len(calls) == 1 and not out.wins and [t.confidence for t in out.losses] == [0.5] * 3


def test_client_without_wins_returns_no_update(policy, monkeypatch):
    fake, _ = _scripted_generate([["zz"] * 3, ["zz"] * 3, ["zz"] * 3])
    monkeypatch.setattr(rollout_queue, "generate", fake)
    job = ClientJob(0, 1, _examples(), 1e-3, seed=1)
    result = _algo(policy).local_update(policy, job)
    assert result.adapter is None and result.weight == 0.0 and result.metrics["skipped_no_wins"] == 1


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_fast_path_equals_plain_reference_path(tiny_qwen, tmp_path, cache, monkeypatch):
    """Batched cross-client rollout + merged-LoRA generation + the shared-prefix cache (dynamic) or a static KV
    cache + deduplicated draws give the same client updates as one prompt per generate call, unmerged LoRA, no
    prefix cache and every draw computed separately (greedy decoding, no dropout, so both paths see the same
    samples; adapters within rtol 1e-4, atol 1e-5). The revision prompts (instructions first) share their
    instruction block, so the dynamic case runs the shared-prefix path, and a second attempt reuses its first
    attempt's cached instructions and task part (checked by spies)."""
    require_shared_data()
    common = {"gen.do_sample": False, "lora.dropout": 0.0, "fl.local_rollout_steps": 8, "optim.batch_size": 6,
              "gen.num_revisions": 2}
    fast_cfg = load_config(None, tiny_overrides(tiny_qwen, tmp_path / "a", **common, **{"gen.cache": cache}))
    plain_cfg = load_config(None, tiny_overrides(tiny_qwen, tmp_path / "b", **common, **{
        "gen.rollout_batch_size": 1, "gen.merge_lora": False, "optim.dedup_draws": False,
        "gen.prefix_cache": False}))
    task = get_task("arc_challenge")
    data = task.load(fast_cfg)
    from fedspear import generation

    prefixes = []
    real_prefix = generation.shared_prefix_len
    monkeypatch.setattr(generation, "shared_prefix_len", lambda p, *a: prefixes.append(real_prefix(p, *a)) or prefixes[-1])
    reused = []  # per revision row of attempt 2: tokens reused from its attempt-1 prompt
    real_lookup = generation.PromptKVStore.lookup
    monkeypatch.setattr(generation.PromptKVStore, "lookup",
                        lambda self, k, ids: reused.append(real_lookup(self, k, ids)[0]) or real_lookup(self, k, ids))
    results = {}
    for name, cfg in (("fast", fast_cfg), ("plain", plain_cfg)):
        policy = build_rig(cfg, task)
        with torch.no_grad():  # start from a non-zero global adapter so generation depends on the merge
            policy.adapter.set({k: torch.randn(v.shape, generator=torch.Generator().manual_seed(len(k))) * 0.02
                                for k, v in policy.adapter.get().items()})
        jobs = [ClientJob(c, 1, data.train[c * 40 : (c + 1) * 40], 1e-2, seed=c) for c in range(2)]
        if name == "fast":
            rollouts = _algo(policy).rollout(policy, jobs)
        else:
            rollouts = [_algo(policy).rollout(policy, [j])[0] for j in jobs]
        results[name] = [_algo(policy).train(policy, j, r) for j, r in zip(jobs, rollouts)]
    for fast, plain in zip(results["fast"], results["plain"]):
        for key in ("wins", "losses", "wins_y0", "wins_revision", "losses_fixed", "losses_unfixed", "tokens_trained"):
            assert fast.metrics[key] == plain.metrics[key], key
        assert fast.weight == plain.weight
        if fast.adapter is None:
            assert plain.adapter is None
            continue
        for k in fast.adapter:
            torch.testing.assert_close(fast.adapter[k], plain.adapter[k], rtol=1e-4, atol=1e-5)
    assert any(r.adapter is not None for r in results["fast"])  # at least one client really trained
    assert (max(prefixes, default=0) >= 16) == (cache == "dynamic")  # the shared-prefix path really ran (dynamic cache only)
    assert (max(reused, default=0) > max(prefixes, default=0)) == (cache == "dynamic")  # attempt 2 reused attempt 1's task part


@pytest.mark.parametrize(("dedup", "dropout", "rows"), [(True, 0.0, 3), (False, 0.0, 8), (True, 0.1, 8)])
def test_tokens_trained_counts_every_draw(policy, monkeypatch, dedup, dropout, rows):
    # 2 wins + 1 loss, each 3 prompt + 2 completion ids, drawn 4 + 4 times per micro-step (with replacement):
    # every draw is 5 tokens, so tokens_trained = S * A * 8 * 5 whether or not repeated draws are computed once.
    policy.cfg.optim.batch_size, policy.cfg.optim.dedup_draws, policy.cfg.lora.dropout = 4, dedup, dropout
    policy.cfg.fl.local_train_steps, policy.cfg.optim.grad_accum_steps = 2, 3
    data = spear.FeedbackRollout(wins=[spear.Trace([5, 6, 7], [8, 9]), spear.Trace([5, 6, 10], [11, 9])],
                                 losses=[spear.Trace([5, 6, 12], [13, 9], confidence=0.5)])
    widths = []
    real_make_batch = spear.make_batch
    monkeypatch.setattr(spear, "make_batch", lambda traces, *a: widths.append(len(traces)) or real_make_batch(traces, *a))
    result = _algo(policy).train(policy, ClientJob(0, 1, [], 1e-3, seed=3), data)
    assert result.metrics["tokens_trained"] == 2 * 3 * 8 * 5  # before: distinct traces only (<= 3 a step)
    # dedup computes the distinct traces once (at most 3); without it, or with LoRA dropout (off automatically),
    # all 8 draws
    assert len(widths) == 6 and (max(widths) <= 3 if rows == 3 else widths == [8] * 6)
def test_imperfect_feedback_reaches_the_rollout(policy, monkeypatch):
    """The rollout asks the feedback model, not the oracle: false accepts make wrong answers wins, drops remove
    prompts, and the client's metrics count what was corrupted; the loss confidences come from the config."""
    fake, calls = _scripted_generate([["zz"] * 3])
    monkeypatch.setattr(rollout_queue, "generate", fake)
    policy.cfg.feedback.false_accept_rate = 1.0
    (out,) = _algo(policy).rollout(policy, [ClientJob(0, 1, _examples(), 1e-3, seed=1)])
    m = out.metrics
    assert len(calls) == 1 and len(out.wins) == 3 and not out.losses  # every wrong answer reported correct
    assert m["wins_y0"] == 3 and m["feedback_false_accepts"] == m["feedback_corrupted_verdicts"] == 3
    policy.cfg.feedback.false_accept_rate = 0.0
    policy.cfg.feedback.drop_rate = 1.0
    fake, calls = _scripted_generate([["zz"] * 3])
    monkeypatch.setattr(rollout_queue, "generate", fake)
    (out,) = _algo(policy).rollout(policy, [ClientJob(0, 1, _examples(), 1e-3, seed=1)])
    assert out.metrics["prompts"] == 0 and out.metrics["feedback_dropped"] == 3 and not out.wins and not out.losses
    policy.cfg.feedback.drop_rate = 0.0
    policy.cfg.spear.confidence_unfixed = 1.0  # uniform confidences
    fake, _ = _scripted_generate([["zz"] * 3, ["zz"] * 3, ["zz"] * 3])
    monkeypatch.setattr(rollout_queue, "generate", fake)
    (out,) = _algo(policy).rollout(policy, [ClientJob(0, 1, _examples(), 1e-3, seed=1)])
    assert [t.confidence for t in out.losses] == [1.0] * 3 and out.metrics["feedback_corrupted_verdicts"] == 0


def test_continuous_scheduler_equals_batched(tiny_qwen, tmp_path):
    """gen.scheduler=continuous (transformers' continuous batching, revisions submitted as soon as their first
    answer is verified) gives the batched scheduler's wins, losses and client update under greedy decoding
    (adapter tolerance rtol 1e-4, atol 1e-5: the two paths batch the same rows differently)."""
    require_shared_data()
    common = {"gen.do_sample": False, "lora.dropout": 0.0, "fl.local_rollout_steps": 8, "optim.batch_size": 6,
              "gen.num_revisions": 2}
    task = get_task("arc_challenge")
    results = {}
    for scheduler in ("batched", "continuous"):
        cfg = load_config(None, tiny_overrides(tiny_qwen, tmp_path / scheduler, **common,
                                               **{"gen.scheduler": scheduler}))
        data = task.load(cfg)
        policy = build_rig(cfg, task)
        with torch.no_grad():
            policy.adapter.set({k: torch.randn(v.shape, generator=torch.Generator().manual_seed(len(k))) * 0.02
                                for k, v in policy.adapter.get().items()})
        jobs = [ClientJob(c, 1, data.train[c * 40 : (c + 1) * 40], 1e-2, seed=c) for c in range(2)]
        rollouts = _algo(policy).rollout(policy, jobs)
        results[scheduler] = (rollouts, [_algo(policy).train(policy, j, r) for j, r in zip(jobs, rollouts)])
    (batched, b_updates), (continuous, c_updates) = results["batched"], results["continuous"]
    for b, c in zip(batched, continuous):
        assert [(t.prompt_ids, t.completion_ids) for t in b.wins] == [(t.prompt_ids, t.completion_ids) for t in c.wins]
        assert [(t.completion_ids, t.confidence) for t in b.losses] == \
            [(t.completion_ids, t.confidence) for t in c.losses]
        for key in ("prompts", "wins_y0", "needs_revision", "revision_attempts_1", "wins_revision", "generations",
                    "tokens_generated"):
            assert b.metrics.get(key) == c.metrics.get(key), key
    assert sum(b.metrics.get("revision_attempts_1", 0) for b in batched) > 0  # revisions really ran
    for b, c in zip(b_updates, c_updates):
        assert (b.adapter is None) == (c.adapter is None)
        for k in b.adapter or {}:
            torch.testing.assert_close(b.adapter[k], c.adapter[k], rtol=1e-4, atol=1e-5)
