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

Reused prompt prefixes (also ``gen.prefix_cache``): a caller that generates a chain of prompts, each extending an
earlier one's start (a revision attempt repeats its previous attempt's instructions and task part and changes
only the previous answer and the hint), passes a :class:`PromptKVStore` and a key per prompt. Each prompt's
key/value cache (its real tokens only) is kept under its key; the next prompt with that key reuses the longest
common token prefix (at least :data:`MIN_SHARED_PREFIX` tokens) and prefills only the rest. A batch then holds
``[padding][reused tokens][padding][new tokens]`` per row, positions again counted over real tokens only.

Static cache (``gen.cache=static``): a preallocated KV cache (transformers' ``cache_implementation="static"``);
on a CUDA device transformers then compiles the decode step (``torch.compile``, CUDA graphs), which removes the
per-step Python and kernel-launch overhead that bounds decoding of small batches. The shared-prefix cache is a
dynamic cache, so a static-cache call computes every prompt whole.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

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


def rollout_settings(gen: Any, revision: bool = False) -> GenSettings:
    """The rollout decoding settings of the ``gen`` config section: first answers (``gen.max_new_tokens_y0``) or
    revisions (``gen.max_new_tokens_y1``), with ``gen.do_sample``, ``temperature``, ``top_p`` and ``top_k``.
    Used by SPEAR's and OPSD's rollouts and by the served page."""
    return GenSettings(gen.max_new_tokens_y1 if revision else gen.max_new_tokens_y0, gen.do_sample, gen.temperature,
                       gen.top_p, gen.top_k)


def eval_settings(gen: Any) -> GenSettings:
    """The evaluation decoding settings of the ``gen`` config section: ``gen.eval_max_new_tokens`` (0: the first
    answers' ``gen.max_new_tokens_y0``), ``gen.eval_do_sample``, ``gen.eval_temperature``, ``gen.eval_top_p`` and
    ``gen.top_k``."""
    return GenSettings(gen.eval_max_new_tokens or gen.max_new_tokens_y0, gen.eval_do_sample, gen.eval_temperature,
                       gen.eval_top_p, gen.top_k)


def decode_kwargs(settings: GenSettings, pad_token_id: int | None, stop_ids: set[int]) -> dict[str, Any]:
    """The keyword arguments of Hugging Face ``generate`` for ``settings``: the one place that builds them, used
    by batched generation (rollouts, evaluation) and by streaming (``fedspear.serve.streaming``).

    One sequence per prompt (``num_beams=1, num_return_sequences=1``), whatever a checkpoint's
    ``generation_config`` says: beams would break the row order and change what is sampled. When sampling,
    ``temperature``, ``top_p`` and ``top_k`` (0 = off) apply; greedy decoding sets them to None so a checkpoint's
    defaults do not raise warnings.

    Args:
        settings: the call's decoding settings.
        pad_token_id: the tokenizer's pad id.
        stop_ids: every token id that ends a completion (:func:`eos_ids`).
    """
    kwargs: dict[str, Any] = {"max_new_tokens": settings.max_new_tokens, "do_sample": settings.do_sample,
                              "pad_token_id": pad_token_id, "eos_token_id": sorted(stop_ids), "use_cache": True,
                              "num_beams": 1, "num_return_sequences": 1}
    if settings.do_sample:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    return kwargs


MIN_SHARED_PREFIX = 16  # tokens; a shorter common prefix is not worth a separate forward pass

# Per layer, (keys, values) of one row's real prompt tokens, each [H_kv, T, D] (heads, tokens, head dim).
RowKV = list[tuple[torch.Tensor, torch.Tensor]]


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Number of leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    k = 0
    while k < n and a[k] == b[k]:
        k += 1
    return k


class PromptKVStore:
    """Each chain's latest prompt and its key/value cache, kept between generate calls of one rollout.

    ``lookup(key, ids)`` gives the cache of the longest token prefix ``ids`` shares with the stored prompt (at
    least :data:`MIN_SHARED_PREFIX` tokens, leaving ``ids`` at least one token of its own); ``generate`` stores
    each keyed prompt's cache after computing it. Memory: per kept prompt, 2 x layers x T x H_kv x D values.
    """

    def __init__(self) -> None:
        self._rows: dict[Hashable, tuple[list[int], RowKV]] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def lookup(self, key: Hashable, ids: list[int]) -> tuple[int, RowKV | None]:
        """(reusable length, per-layer cache sliced to it) for prompt ``ids``, or ``(0, None)``."""
        entry = self._rows.get(key)
        if entry is None:
            return 0, None
        n = min(common_prefix_len(entry[0], ids), len(ids) - 1)
        if n < MIN_SHARED_PREFIX:
            return 0, None
        return n, [(k[:, :n], v[:, :n]) for k, v in entry[1]]

    def put(self, key: Hashable, ids: list[int], kv: RowKV) -> None:
        """Keep ``kv`` (per layer, [H_kv, len(ids), D]) as the cache of prompt ``ids`` under ``key``."""
        self._rows[key] = (list(ids), kv)

    def retain(self, keys: set) -> None:
        """Drop every chain not in ``keys`` (chains that ended)."""
        for key in [k for k in self._rows if k not in keys]:
            del self._rows[key]


def shared_prefix_len(prompts: list[list[int]], minimum: int = MIN_SHARED_PREFIX) -> int:
    """Length of the token prefix every prompt starts with, leaving each prompt at least one token of its own
    (the last prompt token's logits start generation); 0 when that is shorter than ``minimum`` or there is one
    prompt."""
    if len(prompts) < 2:
        return 0
    first, n = prompts[0], min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        n = min(n, common_prefix_len(first, p))
        if n < minimum:
            return 0
    return n if n >= minimum else 0


def _batches(order: list[int], batch_size: int) -> list[list[int]]:
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def generate(
    policy: Policy, prompts: list[list[int]], settings: GenSettings, seed: int, stats: GenStats | None = None,
    store: PromptKVStore | None = None, keys: Sequence[Hashable | None] | None = None,
    keep: Sequence[bool] | None = None,
) -> list[Completion]:
    """Generate one completion per prompt with the live model (its current adapter).

    Args:
        policy: the policy holding model and tokenizer.
        prompts: token-id lists, one per prompt.
        settings: decoding settings.
        seed: seeds the sampler; the same prompts, settings and seed give the same completions.
        stats: optional counters updated in place.
        store: prompt caches kept across calls (module docstring); used with ``gen.prefix_cache`` and a dynamic
            cache only.
        keys: one key per prompt for ``store`` (``None``: neither reused nor kept).
        keep: per prompt, whether to keep its cache for a later call (default: every keyed prompt); ``False`` for
            a chain's last prompt saves the copy and the memory.

    Raises:
        ValueError: ``keys`` or ``keep`` of another length than ``prompts``.

    Returns:
        One Completion per prompt, in input order.
    """
    if not prompts:
        return []
    model, tok = policy.model, policy.tokenizer
    start = time.perf_counter()
    max_prompt = max(1, policy.max_seq_len - settings.max_new_tokens)
    prompts = [left_truncate(p, max_prompt, policy.bos_id) for p in prompts]
    # Length-sorted batches waste less compute on padding; results go back in input order.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    was_training = model.training
    model.eval()
    out: list[Completion | None] = [None] * len(prompts)
    stop_ids = eos_ids(policy)
    gen_kwargs = decode_kwargs(settings, tok.pad_token_id, stop_ids)
    torch.manual_seed(seed)
    static = policy.cache_implementation == "static"
    if static:
        gen_kwargs["cache_implementation"] = "static"
    reuse = policy.prefix_cache and not static and supports_prefix_reuse(model)
    prefix = shared_prefix_len(prompts) if reuse else 0
    if not reuse or store is None or keys is None:
        store, keys = None, None
    elif len(keys) != len(prompts) or (keep is not None and len(keep) != len(prompts)):
        raise ValueError(f"generate: {len(keys)} keys / {len(keep or keys)} keep flags for {len(prompts)} prompts")
    keep = [True] * len(prompts) if keep is None else list(keep)
    with merged_lora(policy):
        _generate_batches(policy, prompts, order, gen_kwargs, stop_ids, out, prefix, store, keys, keep)
    model.train(was_training)
    if stats is not None:
        stats.sequences += len(prompts)
        stats.tokens += sum(len(c.ids) for c in out if c is not None)
        stats.seconds += time.perf_counter() - start
    return [c for c in out if c is not None]


def supports_prefix_reuse(model) -> bool:
    """Whether every layer of the model's cache is a plain full-attention :class:`transformers.DynamicLayer`, which
    holds each position's keys and values and so can be cut into per-row prefixes. Sliding-window and chunked
    attention (Mistral, Phi-3, ``layer_types``) keep only a window and linear-attention layers (Qwen3-Next) a
    state, so prefix reuse steps aside for those models (both reuses; generation is then the plain path)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        layers = DynamicCache(config=model.config).layers
    except Exception:  # noqa: BLE001 - a config transformers cannot build a cache from: no reuse
        return False
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


@contextmanager
def merged_lora(policy: Policy) -> Iterator[None]:
    """Fold the LoRA weights into the base weights while generating (``gen.merge_lora``).

    A merged model skips the per-layer LoRA matmuls (about 1.5-2x faster decoding on CPU). The base weights are
    saved before merging and copied back afterwards, so merging never leaves rounding drift in the base model.
    """
    model = policy.model
    if not policy.merge_lora or not hasattr(model, "merge_adapter"):
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


def _generate_batches(policy: Policy, prompts: list[list[int]], order: list[int], gen_kwargs: dict,
                      stop_ids: set[int], out: list, prefix: int = 0, store: PromptKVStore | None = None,
                      keys: Sequence[Hashable | None] | None = None, keep: Sequence[bool] = ()) -> None:
    """Generate ``prompts`` batch by batch into ``out``. Each row starts from the longest cached prefix it has: its
    chain's stored prompt (``store``, ``keys``), else the call's shared ``prefix`` (one forward pass for all),
    else none (see the module docstring)."""
    model, tok = policy.model, policy.tokenizer
    shared: list[RowKV] = []  # computed on first use

    def cached(i: int) -> tuple[int, RowKV | None]:
        n, kv = store.lookup(keys[i], prompts[i]) if store is not None and keys[i] is not None else (0, None)
        if n >= prefix:
            return n, kv
        if not shared:
            prefix_ids = torch.tensor([prompts[order[0]][:prefix]], device=policy.device)
            shared.append(_row_kv(model(input_ids=prefix_ids, use_cache=True).past_key_values, 0, None))
        return prefix, shared[0]

    for batch in _batches(order, policy.gen_batch_size):
        reused = [cached(i) for i in batch]
        c_width = max(n for n, _ in reused)
        width = c_width + max(len(prompts[i]) - n for i, (n, _) in zip(batch, reused, strict=True))
        input_ids_BT = torch.full((len(batch), width), tok.pad_token_id, dtype=torch.long)
        attention_BT = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (i, (n, _)) in enumerate(zip(batch, reused, strict=True)):
            ids = prompts[i]
            input_ids_BT[row, c_width - n : c_width] = torch.tensor(ids[:n], dtype=torch.long)
            input_ids_BT[row, width - len(ids) + n :] = torch.tensor(ids[n:])
            attention_BT[row, c_width - n : c_width] = 1
            attention_BT[row, width - len(ids) + n :] = 1
        extra: dict = {}
        if c_width:
            extra["past_key_values"] = _batch_cache(model, [kv for _, kv in reused], c_width)
        kept = [row for row, i in enumerate(batch) if store is not None and keys[i] is not None and keep[i]]
        if kept:
            extra["return_dict_in_generate"] = True
        output = model.generate(input_ids=input_ids_BT.to(policy.device),
                                attention_mask=attention_BT.to(policy.device), **gen_kwargs, **extra)
        sequences_BS = (output.sequences if kept else output).cpu()
        for row in kept:
            real = attention_BT[row].nonzero().squeeze(1).to(policy.device)
            store.put(keys[batch[row]], prompts[batch[row]], _row_kv(output.past_key_values, row, real))
        new_BN = sequences_BS[:, width:].tolist()
        for row, i in enumerate(batch):
            ids, finished = cut_at_eos(new_BN[row], stop_ids)
            text = tok.decode(ids, skip_special_tokens=True).strip()
            out[i] = Completion(prompts[i], ids, text, finished)


def _row_kv(cache, row: int, positions: torch.Tensor | None) -> RowKV:
    """Row ``row``'s per-layer (keys, values), [H_kv, T, D], at cache ``positions`` (all when ``None``)."""
    kv = []
    for layer in cache.layers:
        k, v = layer.keys[row], layer.values[row]
        if positions is not None:
            k, v = k.index_select(1, positions), v.index_select(1, positions)
        kv.append((k, v))
    return kv


def _batch_cache(model, rows: list[RowKV | None], width: int):
    """A DynamicCache of ``width`` positions holding each row's cache right-aligned (zeros before it; the
    attention mask hides them). ``None`` rows are all padding."""
    from transformers import DynamicCache

    template = next(kv for kv in rows if kv is not None)
    data = []
    for layer, (k0, v0) in enumerate(template):
        keys_BHTD = k0.new_zeros((len(rows), k0.shape[0], width, k0.shape[2]))
        values_BHTD = v0.new_zeros((len(rows), v0.shape[0], width, v0.shape[2]))
        for row, kv in enumerate(rows):
            if kv is not None and kv[layer][0].shape[1]:
                n = kv[layer][0].shape[1]
                keys_BHTD[row, :, width - n :] = kv[layer][0]
                values_BHTD[row, :, width - n :] = kv[layer][1]
        data.append((keys_BHTD, values_BHTD))
    return DynamicCache(ddp_cache_data=data, config=model.config)


def eos_ids(policy: Policy) -> set[int]:
    """The tokenizer's EOS id, any EOS ids of the model's generation config and, under the chat template, the
    template's end-of-turn ids (:attr:`fedspear.models.Policy.end_of_turn_ids`)."""
    ids = {policy.tokenizer.eos_token_id, *getattr(policy, "end_of_turn_ids", ())}
    config_eos = getattr(getattr(policy.model, "generation_config", None), "eos_token_id", None)
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
