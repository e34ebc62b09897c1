"""Batched generation that returns the sampled token ids (never re-encoded text).

Prompts are token-id lists (tokenized once by the caller), grouped by length into left-padded batches,
generated with Hugging Face ``generate``, and returned in input order. Sampling uses the settings' temperature
and top_p plus ``gen.top_k`` (transformers' top-k filter; 0 turns it off). Each completion keeps the exact
sampled ids up to and including the first EOS; nothing after it (padding) is kept.

Shared prefix (``gen.prefix_cache``, on by default): when every prompt of a call starts with the same
:data:`MIN_SHARED_PREFIX` or more tokens (the instruction block of ``instructions_first`` revision prompts), the
prefix's key/value cache is computed once per call and copied into each batch; each row then holds
``[prefix][padding][own suffix]``, with the padding masked and positions counted over real tokens only, which is
the computation of the unshared prompt up to floating-point rounding (tests/test_generation.py checks the
completions). Decoding reads the same cache either way, so only the prefill is saved.

Static cache (``gen.cache=static``): a preallocated KV cache (transformers' ``cache_implementation="static"``);
on a CUDA device transformers then compiles the decode step (``torch.compile``, CUDA graphs), which removes the
per-step Python and kernel-launch overhead that bounds decoding of small batches. The shared-prefix cache is a
dynamic cache, so a static-cache call computes every prompt whole.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from fedspear.models import Policy, left_truncate


@dataclass(frozen=True)
class GenSettings:
    """Decoding settings for one generate call."""

    max_new_tokens: int
    do_sample: bool
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # transformers' top-k filter when sampling (``gen.top_k``); 0 = off


@dataclass
class Completion:
    """One generated answer.

    Attributes:
        prompt_ids: prompt token ids as fed to the model (after left truncation).
        ids: sampled completion ids, ending with EOS only where generation emitted it.
        text: decoded completion (special tokens skipped, stripped).
        finished: whether generation emitted EOS.
    """

    prompt_ids: list[int]
    ids: list[int]
    text: str
    finished: bool


@dataclass
class GenStats:
    """Counters for cost accounting."""

    sequences: int = 0
    tokens: int = 0
    seconds: float = 0.0


MIN_SHARED_PREFIX = 16  # tokens; a shorter common prefix is not worth a separate forward pass


def shared_prefix_len(prompts: list[list[int]], minimum: int = MIN_SHARED_PREFIX) -> int:
    """Length of the token prefix every prompt starts with, leaving each prompt at least one token of its own
    (the last prompt token's logits start generation); 0 when that is shorter than ``minimum`` or there is one
    prompt."""
    if len(prompts) < 2:
        return 0
    first, n = prompts[0], min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        k = 0
        while k < n and p[k] == first[k]:
            k += 1
        n = k
        if n < minimum:
            return 0
    return n if n >= minimum else 0


def _batches(order: list[int], batch_size: int) -> list[list[int]]:
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def generate(
    engine: Policy, prompts: list[list[int]], settings: GenSettings, seed: int, stats: GenStats | None = None
) -> list[Completion]:
    """Generate one completion per prompt with the live model (its current adapter).

    Args:
        engine: the engine holding model and tokenizer.
        prompts: token-id lists, one per prompt.
        settings: decoding settings.
        seed: seeds the sampler; the same prompts, settings and seed give the same completions.
        stats: optional counters updated in place.

    Returns:
        One Completion per prompt, in input order.
    """
    if not prompts:
        return []
    model, tok = engine.model, engine.tokenizer
    start = time.perf_counter()
    max_prompt = max(1, engine.max_seq_len - settings.max_new_tokens)
    prompts = [left_truncate(p, max_prompt, engine.bos_id) for p in prompts]
    # Length-sorted batches waste less compute on padding; results go back in input order.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    was_training = model.training
    model.eval()
    out: list[Completion | None] = [None] * len(prompts)
    stop_ids = eos_ids(engine)
    gen_kwargs = {"max_new_tokens": settings.max_new_tokens, "do_sample": settings.do_sample,
                  "pad_token_id": tok.pad_token_id, "eos_token_id": sorted(stop_ids), "use_cache": True}
    if settings.do_sample:
        # gen.top_k (0 = off) applies to every sampled call, rollouts and a sampling evaluation alike.
        gen_kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
    else:
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)
    torch.manual_seed(seed)
    static = engine.cache_implementation == "static"
    if static:
        gen_kwargs["cache_implementation"] = "static"
    prefix = shared_prefix_len(prompts) if engine.prefix_cache and not static else 0
    with merged_lora(engine):
        _generate_batches(engine, prompts, order, gen_kwargs, stop_ids, out, prefix)
    model.train(was_training)
    if stats is not None:
        stats.sequences += len(prompts)
        stats.tokens += sum(len(c.ids) for c in out if c is not None)
        stats.seconds += time.perf_counter() - start
    return [c for c in out if c is not None]


@contextmanager
def merged_lora(engine: Policy) -> Iterator[None]:
    """Fold the LoRA weights into the base weights while generating (``gen.merge_lora``).

    A merged model skips the per-layer LoRA matmuls (about 1.5-2x faster decoding on CPU). The base weights are
    saved before merging and copied back afterwards, so merging never leaves rounding drift in the base model.
    """
    model = engine.model
    if not engine.merge_lora or not hasattr(model, "merge_adapter"):
        yield
        return
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    saved = [m.get_base_layer().weight.detach().clone() for m in layers]
    model.merge_adapter()
    try:
        yield
    finally:
        model.unmerge_adapter()
        with torch.no_grad():
            for layer, weight in zip(layers, saved):
                layer.get_base_layer().weight.copy_(weight)


def _generate_batches(engine: Policy, prompts: list[list[int]], order: list[int], gen_kwargs: dict,
                      stop_ids: set[int], out: list, prefix: int = 0) -> None:
    """Generate ``prompts`` batch by batch into ``out``; with ``prefix`` > 0 every prompt's first ``prefix`` tokens
    are one shared cached forward pass (see the module docstring)."""
    model, tok = engine.model, engine.tokenizer
    prefix_cache = None
    if prefix:
        prefix_ids = torch.tensor([prompts[order[0]][:prefix]], device=engine.device)
        prefix_cache = model(input_ids=prefix_ids, use_cache=True).past_key_values
    for batch in _batches(order, engine.gen_batch_size):
        width = prefix + max(len(prompts[i]) - prefix for i in batch)
        input_ids_BT = torch.full((len(batch), width), tok.pad_token_id, dtype=torch.long)
        attention_BT = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            ids = prompts[i]
            input_ids_BT[row, width - len(ids) + prefix :] = torch.tensor(ids[prefix:])
            attention_BT[row, width - len(ids) + prefix :] = 1
        extra = {}
        if prefix_cache is not None:
            input_ids_BT[:, :prefix] = torch.tensor(prompts[batch[0]][:prefix])
            attention_BT[:, :prefix] = 1
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(len(batch))
            extra["past_key_values"] = cache
        sequences_BS = model.generate(
            input_ids=input_ids_BT.to(engine.device), attention_mask=attention_BT.to(engine.device), **gen_kwargs,
            **extra,
        ).cpu()
        new_BN = sequences_BS[:, width:].tolist()
        for row, i in enumerate(batch):
            ids, finished = cut_at_eos(new_BN[row], stop_ids)
            text = tok.decode(ids, skip_special_tokens=True).strip()
            out[i] = Completion(prompts[i], ids, text, finished)


def eos_ids(engine: Policy) -> set[int]:
    """The tokenizer's EOS id plus any EOS ids of the model's generation config."""
    ids = {engine.tokenizer.eos_token_id}
    config_eos = getattr(getattr(engine.model, "generation_config", None), "eos_token_id", None)
    if isinstance(config_eos, int):
        ids.add(config_eos)
    elif isinstance(config_eos, list):
        ids.update(config_eos)
    return ids


def cut_at_eos(ids: list[int], eos: set[int]) -> tuple[list[int], bool]:
    """``ids`` up to and including the first EOS, and whether there was one."""
    for pos, token in enumerate(ids):
        if token in eos:
            return ids[: pos + 1], True
    return ids, False
