"""Pieces several client updates share: sequence batching, completion log-probs, the optimiser loop with its
regulariser hooks, and the rollout helpers of the group-sampling algorithms (prompt choice, rewards, scoring).

Batches are left-padded so every completion ends at the last position; only the logits of the last
``L_max + 1`` positions are computed (``logits_to_keep``), so the prompt never costs a vocabulary projection.
Completion tensors are right-aligned: column ``j`` of a ``[B, L]`` tensor is completion token ``j - (L - L_i)``.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fedspear.algorithms.base import ClientJob, LocalUpdateResult, RunSettings, Trace
from fedspear.algorithms.losses import anchor_loss, gather_token_logprobs
from fedspear.config import GenConfig
from fedspear.generation import GenSettings
from fedspear.models import Policy, left_truncate
from fedspear.tasks.base import Example

State = dict[str, torch.Tensor]  # adapter tensors by PEFT state-dict name (CPU)


@dataclass
class SeqBatch:
    """A left-padded batch of prompt+completion sequences.

    Attributes:
        input_ids_BT: token ids, left-padded.
        attention_BT: 1 on real tokens.
        position_ids_BT: positions counted from each sequence's first real token (as in generation).
        targets_BL: the completion tokens, right-aligned in L = max completion length.
        mask_BL: 1.0 where column j holds a completion token of that sequence.
    """

    input_ids_BT: torch.Tensor
    attention_BT: torch.Tensor
    position_ids_BT: torch.Tensor
    targets_BL: torch.Tensor
    mask_BL: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return int(self.attention_BT.sum())


def make_batch(traces: list[Trace], pad_id: int, max_len: int, device: torch.device,
               bos_id: int | None = None) -> SeqBatch:
    """Left-pad ``prompt_ids + completion_ids`` of each trace; prompts are left-truncated to fit ``max_len``,
    keeping a leading ``bos_id`` (``Policy.bos_id``) first (:func:`fedspear.models.left_truncate`)."""
    seqs, comp_lens = [], []
    for t in traces:
        comp = kept_completion(t.completion_ids, max_len)
        prompt = left_truncate(t.prompt_ids, max_len - len(comp), bos_id)
        seqs.append(prompt + comp)
        comp_lens.append(len(comp))
    width = max(len(s) for s in seqs)
    length = max(1, max(comp_lens))
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros((len(seqs), length))
    for i, (s, c) in enumerate(zip(seqs, comp_lens)):
        input_ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        attention[i, width - len(s) :] = 1
        mask[i, length - c :] = 1.0
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    targets = input_ids[:, width - length :]
    return SeqBatch(input_ids.to(device), attention.to(device), positions.to(device), targets.to(device),
                    mask.to(device))


def kept_completion(completion_ids: list[int], max_len: int) -> list[int]:
    """The completion tokens :func:`make_batch` trains: the first ``max_len - 1`` (room for one prompt token)."""
    return completion_ids[: max_len - 1]


def completion_logits(model: torch.nn.Module, batch: SeqBatch) -> torch.Tensor:
    """Logits predicting each completion column: ``[B, L, V]`` (positions T-L-1 .. T-2)."""
    length = batch.targets_BL.shape[1]
    out = model(input_ids=batch.input_ids_BT, attention_mask=batch.attention_BT,
                position_ids=batch.position_ids_BT, logits_to_keep=length + 1, use_cache=False)
    return out.logits[:, :length, :]


def completion_logprobs(model: torch.nn.Module, batch: SeqBatch) -> torch.Tensor:
    """Log-probability of each completion token under the model: ``[B, L]`` (float32; 0 where mask is 0)."""
    logits_BLV = completion_logits(model, batch)
    return gather_token_logprobs(logits_BLV, batch.targets_BL) * batch.mask_BL


def right_align(rows: list[list[float]], length: int, device: torch.device) -> torch.Tensor:
    """Pack per-trace completion-position values into a right-aligned ``[B, length]`` tensor (0 padding)."""
    out = torch.zeros((len(rows), length))
    for i, row in enumerate(rows):
        row = row[-length:] if row else []
        if row:
            out[i, length - len(row) :] = torch.tensor(row, dtype=torch.float32)
    return out.to(device)


def draw(rng: random.Random, items: list[Any], k: int) -> list[Any]:
    """k items without replacement, or k draws with replacement when there are fewer than k."""
    if not items:
        return []
    if len(items) >= k:
        return rng.sample(items, k)
    return [rng.choice(items) for _ in range(k)]


def collapse(items: list[Any], enabled: bool = True) -> tuple[list[Any], list[int]]:
    """Distinct items (by identity, first-appearance order) with how often each was drawn.

    Drawing with replacement repeats traces when a client has few of them; computing each distinct trace once
    and weighting its tokens by its count gives the same loss for a fraction of the compute. With
    ``enabled=False`` every draw is kept (count 1 each).
    """
    if not enabled:
        return list(items), [1] * len(items)
    counts: dict[int, int] = {}
    first: dict[int, Any] = {}
    for item in items:
        counts[id(item)] = counts.get(id(item), 0) + 1
        first.setdefault(id(item), item)
    return list(first.values()), list(counts.values())


@dataclass
class TrainStats:
    """What an optimisation loop reports."""

    steps: int = 0
    skipped_steps: int = 0
    tokens_trained: int = 0
    seconds: float = 0.0
    terms: dict[str, float] = field(default_factory=dict)

    def add_terms(self, terms: dict[str, float]) -> None:
        for k, v in terms.items():
            self.terms[k] = self.terms.get(k, 0.0) + float(v)

    def as_metrics(self, micro_steps: int) -> dict[str, float]:
        out = {"steps": self.steps, "skipped_steps": self.skipped_steps, "tokens_trained": self.tokens_trained,
               "training_s": self.seconds}
        out.update({f"loss_{k}": v / max(1, micro_steps) for k, v in self.terms.items()})
        return out


# A micro-step function returns (loss, number of trained tokens, {term: value}).
MicroStep = Callable[[random.Random], tuple[torch.Tensor, int, dict[str, float]]]
# A regulariser hook: (live adapter parameters, round-start global adapter on the same device) -> penalty (scalar).
Regulariser = Callable[[dict[str, torch.nn.Parameter], dict[str, torch.Tensor]], torch.Tensor]


def l2_to_global(weight: float, reduction: str) -> Regulariser:
    """``weight * anchor_loss(live, global, reduction)``: SPEAR's anchor (mean) or FedProx (sum, weight mu/2).

    Args:
        weight: the coefficient (SPEAR's ``lambda_anchor``; FedProx's ``0.5 * mu``).
        reduction: "mean" (mean squared difference per tensor, summed over tensors) or "sum" (squared L2 norm).
    """

    def penalty(live: dict[str, torch.nn.Parameter], anchor: dict[str, torch.Tensor]) -> torch.Tensor:
        return weight * anchor_loss(live, anchor, reduction=reduction)[0]

    return penalty


def fedprox(run: RunSettings) -> list[Regulariser]:
    """The FedProx term ``mu/2 * ||theta - theta_global||^2`` (``fl.fedprox_mu``; every algorithm), or none."""
    mu = run.fl.fedprox_mu
    return [l2_to_global(0.5 * mu, "sum")] if mu > 0 else []


def optimise(policy: Policy, start: State, run: RunSettings, lr: float, seed: int, micro_step: MicroStep,
             regularisers: Sequence[Regulariser] = ()) -> TrainStats:
    """Run S optimizer steps of A micro-steps each on the live adapter, starting from ``start`` (the job's
    round-start adapter, ``job.start_state``), which the regularisers anchor to.

    Each micro-step's loss gets every hook in ``regularisers`` added, in order (e.g. SPEAR's anchor, then
    FedProx: :func:`fedprox`); clips the gradient norm; skips (and counts) a step whose gradient norm is not
    finite. Fresh AdamW per call. S = ``fl.local_train_steps``, A = ``optim.grad_accum_steps``.
    """
    model = policy.model
    stats = TrainStats()
    began = time.perf_counter()
    policy.adapter.set(start)
    params = list(policy.adapter.params.values())
    if run.fl.local_train_steps == 0:
        return stats
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=run.optim.weight_decay)
    anchor = None
    if regularisers:
        anchor = {k: v.to(policy.device) for k, v in start.items()}
    rng = random.Random(seed)
    torch.manual_seed(seed)  # LoRA dropout
    model.train()
    accum = run.optim.grad_accum_steps
    for _ in range(run.fl.local_train_steps):
        optimizer.zero_grad(set_to_none=True)
        for _ in range(accum):
            loss, tokens, terms = micro_step(rng)
            if anchor is not None:
                live = policy.adapter.params
                for regulariser in regularisers:
                    loss = loss + regulariser(live, anchor)
            (loss / accum).backward()
            stats.tokens_trained += tokens
            stats.add_terms({"total": loss.item(), **terms})
        norm = torch.nn.utils.clip_grad_norm_(params, run.optim.max_grad_norm)
        if not math.isfinite(float(norm)):
            stats.skipped_steps += 1
            optimizer.zero_grad(set_to_none=True)
            continue
        optimizer.step()
        stats.steps += 1
    model.eval()
    stats.seconds = time.perf_counter() - began
    return stats


def finish_update(policy: Policy, start: State, ema_decay: float = 0.0) -> dict[str, torch.Tensor]:
    """The trained adapter as CPU copies, after ``theta <- ema*start + (1-ema)*theta`` when ``ema_decay > 0``
    (``start``: the job's round-start adapter)."""
    state = policy.adapter.get()
    if ema_decay > 0:
        state = {k: ema_decay * start[k].to(v.dtype) + (1 - ema_decay) * v for k, v in state.items()}
    return state


def train_metrics(stats: TrainStats, run: RunSettings) -> dict[str, float]:
    """The loop's metrics, loss terms averaged over the S * A micro-steps."""
    return stats.as_metrics(run.fl.local_train_steps * run.optim.grad_accum_steps)


def no_update(metrics: dict[str, Any], **extra: Any) -> LocalUpdateResult:
    """A client that trained nothing: no adapter, weight 0, zero training counters (plus ``extra``)."""
    metrics.update(steps=0, skipped_steps=0, tokens_trained=0, training_s=0.0, **extra)
    return LocalUpdateResult(None, 0.0, metrics)


# --------------------------------------------------------------------------- rollout helpers (GRPO, OPSD, RLTF-SD)

# Sampling temperature floor for group rollouts (a group of identical greedy answers has no signal).
MIN_SAMPLING_TEMPERATURE = 0.7


def sampling_settings(gen: GenConfig, max_new_tokens: int) -> GenSettings:
    """Sampling forced on: temperature max(0.7, ``gen.temperature``), top_p ``gen.top_p``."""
    return GenSettings(max_new_tokens, True, max(MIN_SAMPLING_TEMPERATURE, gen.temperature), gen.top_p,
                       gen.top_k)


def choose_prompts(policy: Policy, job: ClientJob, count: int) -> list[tuple[Example, list[int]]]:
    """``min(|D_c|, count)`` examples without replacement, seeded by ``job.seed``, with their x0 token ids.

    The same draw as SPEAR's rollout: algorithms with the same budget roll out the same prompts for a
    (round, client).
    """
    rng = random.Random(job.seed)
    chosen = rng.sample(job.examples, min(len(job.examples), max(0, count)))
    return [(ex, policy.encode(ex.prompt)) for ex in chosen]


def binary_reward(correct: bool, scale: float, clip: float | None) -> float:
    """``scale * 1[correct]``, clipped to +-``clip`` when set."""
    r = scale * float(correct)
    if clip is not None:
        r = max(-clip, min(clip, r))
    return r


def split_by_count(total: float, counts: list[int]) -> list[float]:
    """Split a batched cost (e.g. seconds of one generate call) over clients in proportion to their items."""
    n = sum(counts)
    return [total * c / n if n else 0.0 for c in counts]


@torch.no_grad()
def score_traces(policy: Policy, start: State, run: RunSettings, traces: list[Trace]) -> tuple[list[list[float]], int]:
    """Per-token completion log-probs of ``traces`` under the round-start adapter ``start`` (``job.start_state``;
    eval mode, no grad).

    Loads ``start`` into the live model (the caller trains from it next). Forwards are chunked by
    ``optim.micro_batch_size`` (else ``gen.rollout_batch_size``).

    Returns:
        (one list of log-probs per trace, as long as its completion after the ``max_seq_len`` cut,
        number of forward tokens).
    """
    model = policy.model
    policy.adapter.set(start)
    was_training = model.training
    model.eval()
    size = run.optim.micro_batch_size or run.gen.rollout_batch_size
    rows: list[list[float]] = []
    tokens = 0
    for start in range(0, len(traces), size):
        batch = make_batch(traces[start : start + size], policy.tokenizer.pad_token_id, run.max_seq_len,
                           policy.device, policy.bos_id)
        logp_BL = completion_logprobs(model, batch).float().cpu()
        lengths = batch.mask_BL.sum(-1).long().tolist()
        width = logp_BL.shape[1]
        rows.extend(logp_BL[i, width - n :].tolist() if n else [] for i, n in enumerate(lengths))
        tokens += batch.num_tokens
    model.train(was_training)
    return rows, tokens


def seconds_since(start: float) -> float:
    return time.perf_counter() - start
