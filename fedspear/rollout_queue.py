"""A request queue over a round's prompts: first answers, then the revisions their verdicts ask for.

Feedback-guided rollouts (SPEAR, feedback-SFT) are chains: a first answer is verified, a wrong one gets a hint
and a revision prompt, that revision is verified, and so on up to ``gen.num_revisions`` attempts. The caller
describes one step of the chain with a callback, ``on_done(finished) -> follow-up requests``; this module decides
when each request is generated (``gen.scheduler``):

- ``batched`` (default): waves. Wave 0 is every first answer (one :func:`fedspear.generation.generate` call,
  batched by ``gen.rollout_batch_size``, with the shared-prefix cache); the callback sees the whole wave, and the
  requests it returns form wave 1 (revision attempt 1), and so on. A request's ``chain`` keeps its prompt's
  key/value cache for the chain's next request, which prefills only the tokens it adds. Wave ``k`` is sampled with seed
  ``seed + 7919 k``, so a run is bit-reproducible. Fastest where prefill dominates (CPU).
- ``continuous``: transformers' continuous batching (``ContinuousBatchingManager``, paged KV cache). Every
  request is submitted at once; a wrong first answer's revision is submitted as soon as that answer is verified,
  while other first answers are still decoding, and finished rows are refilled token by token. No wave waits
  for the slowest row, which is what bounds decoding on a GPU. Greedy decoding gives the batched path's
  completions (``tests/algorithms/test_spear.py``); sampled runs draw from the same distribution but, since the
  batch composition depends on timing, are not bit-reproducible. transformers' paged attention is built for
  GPUs: on the CPU bench a SPEAR round took 129 s against 10 s batched (one thread), so a CPU run warns.

Both paths call ``on_done`` in an order the caller can rely on: within a call, results are in submission order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fedspear.generation import (
    Completion,
    GenSettings,
    GenStats,
    PromptKVStore,
    cut_at_eos,
    eos_ids,
    generate,
    merged_lora,
)
from fedspear.models import Policy, left_truncate

SCHEDULERS = ("batched", "continuous")
logger = logging.getLogger("fedspear")
_warned: list[bool] = []  # the CPU warning is logged once per process
WAVE_SEED_STRIDE = 7919  # wave k samples with seed + 7919 k (the revision attempts' seeds since the first release)


@dataclass
class Request:
    """One prompt to generate.

    Attributes:
        prompt_ids: the prompt's token ids.
        settings: decoding settings (first answers and revisions differ in ``max_new_tokens``).
        key: the caller's handle, returned with the completion (e.g. the item and attempt).
        chain: requests with the same chain extend one another's prompts (a revision attempt and the next); the
            batched scheduler keeps each chain's prompt cache and prefills only what a follow-up adds
            (``gen.prefix_cache``; :class:`fedspear.generation.PromptKVStore`). ``None``: no reuse.
        last_in_chain: no request follows this one in its chain, so its prompt cache is not kept.
    """

    prompt_ids: list[int]
    settings: GenSettings
    key: Any = None
    chain: Hashable | None = None
    last_in_chain: bool = False


OnDone = Callable[[list[tuple[Request, Completion]]], Sequence[Request]]


def run_requests(policy: Policy, requests: Sequence[Request], on_done: OnDone, seed: int,
                 stats: GenStats | None = None, scheduler: str = "batched") -> int:
    """Generate ``requests`` and every follow-up ``on_done`` returns, until none is left.

    Args:
        policy: the live model (its current adapter; LoRA is merged while generating when ``policy.merge_lora``).
        requests: the first requests (e.g. one first answer per sampled prompt).
        on_done: called with finished ``(request, completion)`` pairs in submission order (a whole wave in
            ``batched`` mode, one or more as they finish in ``continuous`` mode); returns the follow-up requests.
        seed: sampling seed (wave ``k`` of the batched scheduler uses ``seed + 7919 k``).
        stats: generation counters, updated in place.
        scheduler: ``batched`` or ``continuous`` (module docstring).

    Returns:
        The number of waves (batched) or 1 (continuous).

    Raises:
        ValueError: unknown ``scheduler``.
    """
    if scheduler == "batched":
        return _run_waves(policy, list(requests), on_done, seed, stats)
    if scheduler == "continuous":
        if policy.device.type == "cpu" and not _warned:
            _warned.append(True)
            logger.warning("gen.scheduler=continuous on a CPU: transformers' paged-attention batching is about 13x "
                           "slower than gen.scheduler=batched here (bench/RESULTS.md); it is meant for GPUs")
        _run_continuous(policy, list(requests), on_done, seed, stats)
        return 1
    raise ValueError(f"gen.scheduler={scheduler!r} is not a scheduler; use one of {', '.join(SCHEDULERS)}")


def _run_waves(policy: Policy, wave: list[Request], on_done: OnDone, seed: int, stats: GenStats | None) -> int:
    waves = 0
    store = PromptKVStore()  # each chain's latest prompt cache, for its next attempt
    while wave:
        done: list[tuple[Request, Completion] | None] = [None] * len(wave)
        groups: dict[GenSettings, list[int]] = {}
        for i, request in enumerate(wave):
            groups.setdefault(request.settings, []).append(i)
        for settings, members in groups.items():
            completions = generate(policy, [wave[i].prompt_ids for i in members], settings,
                                   seed + WAVE_SEED_STRIDE * waves, stats, store,
                                   [wave[i].chain for i in members], [not wave[i].last_in_chain for i in members])
            for i, completion in zip(members, completions, strict=True):
                done[i] = (wave[i], completion)
        waves += 1
        wave = list(on_done([d for d in done if d is not None]))
        store.retain({r.chain for r in wave if r.chain is not None})
    return waves


def _cb_config(settings: GenSettings, policy: Policy) -> Any:
    from transformers import GenerationConfig

    sampling = dict(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k or None) \
        if settings.do_sample else {}
    return GenerationConfig(max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample,
                            eos_token_id=sorted(eos_ids(policy)), pad_token_id=policy.tokenizer.pad_token_id,
                            **sampling)


def _cache_budget(policy: Policy, requests: list[Request]) -> dict[str, int]:
    """Paged-cache size for ``gen.rollout_batch_size`` requests in flight, each up to ``model.max_seq_len`` tokens,
    and prefill chunks of at most that many prompt tokens. Without it transformers sizes the cache from free
    device memory, which on a CPU means gigabytes."""
    page = 256
    pages_per_request = -(-policy.max_seq_len // page)
    longest = max(len(r.prompt_ids) + r.settings.max_new_tokens for r in requests)
    return {"page_size": page, "num_blocks": policy.gen_batch_size * pages_per_request + pages_per_request,
            "max_batch_tokens": max(page, min(policy.gen_batch_size * longest, 8192)),
            "max_requests_per_batch": policy.gen_batch_size}


def _run_continuous(policy: Policy, requests: list[Request], on_done: OnDone, seed: int,
                    stats: GenStats | None) -> None:
    """Submit every request to one continuous-batching manager; submit follow-ups as results arrive."""
    from transformers import ContinuousBatchingConfig

    if not requests:
        return
    if len({(r.settings.do_sample, r.settings.temperature, r.settings.top_p, r.settings.top_k)
            for r in requests}) > 1:
        raise ValueError("the continuous scheduler needs one sampling setting per call (max_new_tokens may differ)")
    model, tok = policy.model, policy.tokenizer
    start = time.perf_counter()
    stop_ids = eos_ids(policy)
    pending: dict[str, tuple[Request, list[int]]] = {}
    order: list[str] = []
    counter = 0
    sequences = tokens = 0

    def submit(manager: Any, request: Request) -> None:
        nonlocal counter
        ids = left_truncate(request.prompt_ids, max(1, policy.max_seq_len - request.settings.max_new_tokens),
                            policy.bos_id)
        request_id = f"r{counter}"
        counter += 1
        pending[request_id] = (request, ids)
        order.append(request_id)
        manager.add_request(ids, request_id=request_id, max_new_tokens=request.settings.max_new_tokens)

    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    cb_config = ContinuousBatchingConfig(seed=seed, **_cache_budget(policy, requests))
    with merged_lora(policy), torch.no_grad():
        manager_cm = model.continuous_batching_context_manager(
            generation_config=_cb_config(requests[0].settings, policy), continuous_batching_config=cb_config,
            block=True, timeout=30, warmup=False)
        with manager_cm as manager:
            for request in requests:
                submit(manager, request)
            finished: dict[str, Completion] = {}
            while pending:
                result = manager.get_result(timeout=0.05)
                if result is None:
                    if not manager.is_running():
                        raise RuntimeError("the continuous-batching manager stopped with requests pending")
                    continue
                if result.error:
                    raise RuntimeError(f"continuous batching failed on a request: {result.error}")
                request, ids = pending[result.request_id]
                new, done = cut_at_eos(list(result.generated_tokens), stop_ids)
                finished[result.request_id] = Completion(ids, new, tok.decode(new, skip_special_tokens=True).strip(),
                                                         done)
                sequences += 1
                tokens += len(new)
                # Hand results to the caller in submission order, as soon as the earliest pending one is in.
                ready = []
                while order and order[0] in finished:
                    rid = order.pop(0)
                    ready.append((pending.pop(rid)[0], finished.pop(rid)))
                if ready:
                    for follow_up in on_done(ready):
                        submit(manager, follow_up)
    model.train(was_training)
    if stats is not None:
        stats.sequences += sequences
        stats.tokens += tokens
        stats.seconds += time.perf_counter() - start
