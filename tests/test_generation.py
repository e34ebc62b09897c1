"""Batched generation returns the sampled ids in input order, cut after EOS."""

from __future__ import annotations

import pytest
import torch
from conftest import build_rig

from fedspear.config import ConfigError, load_config
from fedspear.generation import GenSettings, cut_at_eos, generate


class _NoTask:
    name = "none"


def _rig(model_dir, batch_size):
    over = {"model.model_name": str(model_dir), "model.dtype": "fp32", "model.device_map": "cpu",
            "model.gradient_checkpointing": False, "lora.r": 4, "gen.rollout_batch_size": batch_size}
    return build_rig(load_config(None, [f"{k}={v}" for k, v in over.items()]), _NoTask())


def testcut_at_eos():
    assert cut_at_eos([5, 6, 2, 2, 2], {2}) == ([5, 6, 2], True)
    assert cut_at_eos([5, 6, 7], {2}) == ([5, 6, 7], False)


def test_batched_greedy_equals_one_by_one(tiny_qwen):
    prompts_text = ["Which gas do plants take in?\nAnswer:", "Water boils at\nAnswer:", "Light\nAnswer:"]
    settings = GenSettings(max_new_tokens=5, do_sample=False)
    batched = _rig(tiny_qwen, 8)
    prompts = [batched.encode(p) for p in prompts_text]
    together = generate(batched, prompts, settings, seed=0)
    single = _rig(tiny_qwen, 1)
    alone = [generate(single, [p], settings, seed=0)[0] for p in prompts]
    assert [c.ids for c in together] == [c.ids for c in alone]  # left padding does not change greedy output
    for comp, prompt in zip(together, prompts):
        assert comp.prompt_ids == prompt
        assert 1 <= len(comp.ids) <= 5
        eos = batched.tokenizer.eos_token_id
        assert eos not in comp.ids[:-1]  # nothing kept after the first EOS
        assert comp.finished == (comp.ids[-1] == eos)
        assert comp.text == batched.tokenizer.decode(comp.ids, skip_special_tokens=True).strip()


def test_sampling_is_seeded(tiny_qwen):
    policy = _rig(tiny_qwen, 4)
    prompts = [policy.encode("Which is hot?\nAnswer:")] * 6
    settings = GenSettings(max_new_tokens=4, do_sample=True, temperature=1.0, top_p=1.0)
    a = generate(policy, prompts, settings, seed=3)
    b = generate(policy, prompts, settings, seed=3)
    assert [c.ids for c in a] == [c.ids for c in b]
    assert torch.is_tensor(torch.tensor(a[0].ids))


def test_merged_generation_matches_unmerged_and_restores_base_exactly(tiny_qwen):
    policy = _rig(tiny_qwen, 8)
    with torch.no_grad():  # a non-trivial adapter, so merging really changes the weights
        for p in policy.adapter.params.values():
            p.copy_(torch.randn_like(p) * 0.05)
    base_before = {k: v.clone() for k, v in policy.model.state_dict().items() if "base_layer" in k}
    prompts = [policy.encode(t) for t in ("Which gas do plants take in?\nAnswer:", "Light\nAnswer:")]
    settings = GenSettings(max_new_tokens=6, do_sample=False)
    policy.merge_lora = True
    merged = generate(policy, prompts, settings, seed=0)
    policy.merge_lora = False
    plain = generate(policy, prompts, settings, seed=0)
    assert [c.ids for c in merged] == [c.ids for c in plain]
    after = {k: v for k, v in policy.model.state_dict().items() if "base_layer" in k}
    assert all(torch.equal(base_before[k], after[k]) for k in base_before)  # no merge/unmerge drift


def test_top_k_filters_sampling(tiny_qwen):
    policy = _rig(tiny_qwen, 8)
    prompts = [policy.encode(t) for t in ("Which is hot?\nAnswer:", "Light\nAnswer:", "Water boils at\nAnswer:")] * 3
    greedy = [c.ids for c in generate(policy, prompts, GenSettings(6, False), seed=0)]
    top1 = GenSettings(max_new_tokens=6, do_sample=True, temperature=1.0, top_p=1.0, top_k=1)
    assert [c.ids for c in generate(policy, prompts, top1, seed=5)] == greedy  # only the likeliest token survives
    off = GenSettings(max_new_tokens=6, do_sample=True, temperature=1.0, top_p=1.0, top_k=0)
    # off: the full distribution (a random tiny model rarely repeats greedy 9 times)
    assert [c.ids for c in generate(policy, prompts, off, seed=5)] != greedy


def test_top_k_config():
    assert load_config(None, []).gen.top_k == 50
    assert load_config(None, ["gen.top_k=0"]).gen.top_k == 0
    with pytest.raises(ConfigError, match=r"gen\.top_k: must be >= 0, got -1"):
        load_config(None, ["gen.top_k=-1"])


SHARED = ("### Instructions\nWrite the whole solution again as if it were your first attempt. Use the feedback, but "
          "do not mention it.\n\n### Task\n")


def test_shared_prefix_len():
    from fedspear.generation import shared_prefix_len

    assert shared_prefix_len([list(range(20)) + [1], list(range(20)) + [2, 3]], minimum=16) == 20
    assert shared_prefix_len([list(range(20)), list(range(20))], minimum=16) == 19  # one own token kept per row
    assert shared_prefix_len([list(range(20)) + [1], list(range(10)) + [9] * 12], minimum=16) == 0  # too short
    assert shared_prefix_len([list(range(30))], minimum=16) == 0  # one prompt: nothing to share


@pytest.mark.parametrize("batch_size", [2, 8])
def test_prefix_cache_gives_the_plain_completions(tiny_qwen, batch_size):
    """Greedy completions with the shared prefix computed once equal those of the plain path, for rows of
    different lengths (padding between prefix and suffix), batch by batch, and with a non-trivial merged adapter."""
    policy = _rig(tiny_qwen, batch_size)
    with torch.no_grad():
        for p in policy.adapter.params.values():
            p.copy_(torch.randn_like(p) * 0.05)
    tails = ["Which gas do plants take in?\nAnswer:", "Light\nAnswer:", "Water boils at a hundred degrees. Why?\n"
             "Answer:", "Ice\nAnswer:", "Name a planet.\nAnswer:"]
    prompts = [policy.encode(SHARED + t) for t in tails]
    from fedspear.generation import shared_prefix_len

    assert shared_prefix_len(prompts) >= 16  # the path under test really runs
    settings = GenSettings(max_new_tokens=6, do_sample=False)
    policy.prefix_cache = True
    cached = generate(policy, prompts, settings, seed=0)
    policy.prefix_cache = False
    plain = generate(policy, prompts, settings, seed=0)
    assert [c.ids for c in cached] == [c.ids for c in plain]
    assert [c.prompt_ids for c in cached] == prompts


def test_prefix_cache_prefill_logits_match(tiny_qwen):
    """The logits that start generation agree with the unshared forward pass to float rounding (max |diff| < 1e-4)."""
    import copy

    policy = _rig(tiny_qwen, 8)
    model = policy.model
    a, b = policy.encode(SHARED + "Light\nAnswer:"), policy.encode(SHARED + "Which gas do plants take in?\nAnswer:")
    from fedspear.generation import shared_prefix_len

    n = shared_prefix_len([a, b])
    with torch.no_grad():
        full = model(input_ids=torch.tensor([a])).logits[0, -1]
        cache = model(input_ids=torch.tensor([a[:n]]), use_cache=True).past_key_values
        width = max(len(a), len(b)) - n
        ids = torch.zeros((2, n + width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, p in enumerate((a, b)):
            ids[row, :n], mask[row, :n] = torch.tensor(p[:n]), 1
            ids[row, n + width - (len(p) - n):], mask[row, n + width - (len(p) - n):] = torch.tensor(p[n:]), 1
        c = copy.deepcopy(cache)
        c.batch_repeat_interleave(2)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids[:, n:], attention_mask=mask, position_ids=positions[:, n:], past_key_values=c)
    assert (out.logits[0, -1] - full).abs().max() < 1e-4


def test_prompt_kv_store_reuses_the_longest_common_prefix():
    from fedspear.generation import PromptKVStore

    store = PromptKVStore()
    ids = list(range(40))
    kv = [(torch.arange(40.0).view(1, 40, 1).expand(2, 40, 3), torch.zeros(2, 40, 3))]
    store.put("a", ids, kv)
    n, got = store.lookup("a", list(range(30)) + [99, 98])
    assert n == 30 and got[0][0].shape == (2, 30, 3) and got[0][0][0, -1, 0].item() == 29.0
    assert store.lookup("a", list(range(20)))[0] == 19  # the new prompt keeps one token of its own
    assert store.lookup("a", list(range(10)) + [7] * 30) == (0, None)  # under MIN_SHARED_PREFIX: not worth it
    assert store.lookup("b", ids) == (0, None)
    store.retain({"b"})
    assert len(store) == 0


@pytest.mark.parametrize("batch_size", [2, 8])
def test_chain_reuse_gives_the_plain_completions(tiny_qwen, batch_size, monkeypatch):
    """A second call whose prompts extend the first call's starts (a revision attempt after the previous one)
    reuses each row's stored cache and returns the plain path's greedy completions: rows of different reused and
    new lengths in one batch, a row with no key, a merged non-trivial adapter."""
    from fedspear.generation import PromptKVStore

    policy = _rig(tiny_qwen, batch_size)
    with torch.no_grad():
        for p in policy.adapter.params.values():
            p.copy_(torch.randn_like(p) * 0.05)
    tasks = ["Which gas do plants take in?", "Light", "Water boils at a hundred degrees. Why?", "Ice", "A planet?"]
    first = [policy.encode(SHARED + t + "\nPrevious: x\nAnswer:") for t in tasks]
    second = [policy.encode(SHARED + t + f"\nPrevious: {'y z ' * k}\nHint: think\nAnswer:") for k, t in enumerate(tasks)]
    keys = [0, 1, 2, None, 4]
    settings = GenSettings(max_new_tokens=6, do_sample=False)
    reused = []
    real_lookup = PromptKVStore.lookup
    monkeypatch.setattr(PromptKVStore, "lookup", lambda self, k, ids: reused.append(real_lookup(self, k, ids)[0])
                        or real_lookup(self, k, ids))
    policy.prefix_cache = True
    store = PromptKVStore()
    cached = [generate(policy, prompts, settings, seed=0, store=store, keys=keys) for prompts in (first, second)]
    assert len(store) == 4  # every keyed row kept
    assert reused[:4] == [0] * 4  # first call: nothing stored yet (the shared block is computed once instead)
    assert len(reused) == 8 and min(reused[4:]) > len(policy.encode(SHARED))  # second: beyond the shared block
    policy.prefix_cache = False
    plain = [generate(policy, prompts, settings, seed=0) for prompts in (first, second)]
    for c, p in zip(cached, plain, strict=True):
        assert [x.ids for x in c] == [x.ids for x in p]
    assert [x.prompt_ids for x in cached[1]] == second
    policy.prefix_cache = True
    last = PromptKVStore()
    generate(policy, first, settings, seed=0, store=last, keys=keys, keep=[True, False, True, True, True])
    assert len(last) == 3  # a chain's last prompt (keep=False) is looked up but not kept


def test_prefix_reuse_only_for_plain_full_attention_caches():
    """Sliding-window (Mistral's config without layer_types, or layer_types), chunked and linear-attention caches
    keep a window or a state, not every position: no prefix reuse for them."""
    from types import SimpleNamespace

    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    from fedspear.generation import supports_prefix_reuse

    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 50}
    assert supports_prefix_reuse(SimpleNamespace(config=LlamaConfig(**small)))
    assert supports_prefix_reuse(SimpleNamespace(config=Qwen2Config(**small)))  # use_sliding_window=False
    assert not supports_prefix_reuse(SimpleNamespace(config=MistralConfig(sliding_window=16, **small)))
    assert not supports_prefix_reuse(SimpleNamespace(config=Qwen2Config(use_sliding_window=True, sliding_window=16,
                                                                         max_window_layers=1, **small)))


def test_prefix_reuse_steps_aside_for_sliding_window_models(tiny_qwen, monkeypatch):
    """With a sliding-window layer neither the shared prefix nor a chain's stored cache is used: generate gets the
    whole prompts and no cache, and nothing is stored."""
    from fedspear.generation import PromptKVStore, supports_prefix_reuse

    policy = _rig(tiny_qwen, 8)
    assert supports_prefix_reuse(policy.model)
    config = policy.model.config.get_text_config()
    monkeypatch.setattr(config, "layer_types", ["full_attention", "sliding_attention"])
    monkeypatch.setattr(config, "sliding_window", 64)
    assert not supports_prefix_reuse(policy.model)
    seen = []

    def fake_generate(input_ids, attention_mask, **kwargs):
        seen.append(kwargs)
        return torch.cat([input_ids, torch.full((input_ids.shape[0], 2), 7)], dim=1)

    monkeypatch.setattr(policy.model, "generate", fake_generate)
    store = PromptKVStore()
    prompts = [policy.encode(SHARED + t) for t in ("Light\nAnswer:", "Ice\nAnswer:")]
    out = generate(policy, prompts, GenSettings(max_new_tokens=2, do_sample=False), seed=0, store=store, keys=[0, 1])
    assert [c.ids for c in out] == [[7, 7], [7, 7]] and len(store) == 0
    assert seen and all("past_key_values" not in k and "return_dict_in_generate" not in k for k in seen)
    assert all(k["num_beams"] == 1 and k["num_return_sequences"] == 1 for k in seen)  # one row per prompt, always


def test_static_cache_gives_the_dynamic_completions(tiny_qwen):
    """gen.cache=static (preallocated KV cache; compiled decoding on CUDA) returns the dynamic cache's greedy
    completions, batch by batch, with a merged non-trivial adapter."""
    policy = _rig(tiny_qwen, 2)
    with torch.no_grad():
        for p in policy.adapter.params.values():
            p.copy_(torch.randn_like(p) * 0.05)
    prompts = [policy.encode(SHARED + t) for t in ("Light\nAnswer:", "Which gas do plants take in?\nAnswer:",
                                                   "Ice\nAnswer:")]
    settings = GenSettings(max_new_tokens=6, do_sample=False)
    dynamic = generate(policy, prompts, settings, seed=0)
    policy.cache_implementation = "static"
    static = generate(policy, prompts, settings, seed=0)
    assert [c.ids for c in static] == [c.ids for c in dynamic]


def test_scheduler_and_cache_keys_are_validated():
    for key, bad in (("gen.scheduler", "eager"), ("gen.cache", "paged"), ("gen.revision_template", "mine")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(None, [f"{key}={bad}"])
