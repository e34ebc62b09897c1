"""Pieces every client update shares: sequence batching, completion log-probs, the optimiser loop, seeds.

Batches are left-padded so every completion ends at the last position; only the logits of the last
``L_max + 1`` positions are computed (``logits_to_keep``), so the prompt never costs a vocabulary projection.
Completion tensors are right-aligned: column ``j`` of a ``[B, L]`` tensor is completion token ``j - (L - L_i)``.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from fedspear.algorithms.base import Trace
from fedspear.algorithms.losses import anchor_loss, gather_token_logprobs
from fedspear.models import Engine


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


def make_batch(traces: list[Trace], pad_id: int, max_len: int, device: torch.device) -> SeqBatch:
    """Left-pad ``prompt_ids + completion_ids`` of each trace; prompts are left-truncated to fit ``max_len``."""
    seqs, comp_lens = [], []
    for t in traces:
        comp = kept_completion(t.completion_ids, max_len)
        prompt = t.prompt_ids[-(max_len - len(comp)) :] if max_len > len(comp) else []
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


def optimise(engine: Engine, lr: float, seed: int, micro_step: MicroStep) -> TrainStats:
    """Run S optimizer steps of A micro-steps each on the live adapter, starting from the global adapter.

    Adds the anchor (``spear.lambda_anchor``, mean; SPEAR and feedback-SFT only) and FedProx (``fl.fedprox_mu``,
    sum) terms; clips the
    gradient norm; skips (and counts) a step whose gradient norm is not finite. Fresh AdamW per call.
    """
    cfg, model = engine.cfg, engine.model
    stats = TrainStats()
    start = time.perf_counter()
    engine.load_global()
    params = list(engine.adapter.params.values())
    if cfg.fl.local_train_steps == 0:
        return stats
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.optim.weight_decay)
    # spear.lambda_anchor belongs to SPEAR and feedback-SFT; FedProx (fl.fedprox_mu) applies to every algorithm.
    lambda_anchor = cfg.spear.lambda_anchor if cfg.algorithm.name in ("spear", "feedback_sft") else 0.0
    anchor = None
    if lambda_anchor > 0 or cfg.fl.fedprox_mu > 0:
        anchor = {k: v.to(engine.device) for k, v in engine.global_state.items()}
    rng = random.Random(seed)
    torch.manual_seed(seed)  # LoRA dropout
    model.train()
    accum = cfg.optim.grad_accum_steps
    for _ in range(cfg.fl.local_train_steps):
        optimizer.zero_grad(set_to_none=True)
        for _ in range(accum):
            loss, tokens, terms = micro_step(rng)
            if anchor is not None:
                live = engine.adapter.params
                if lambda_anchor > 0:
                    loss = loss + lambda_anchor * anchor_loss(live, anchor, reduction="mean")[0]
                if cfg.fl.fedprox_mu > 0:
                    loss = loss + 0.5 * cfg.fl.fedprox_mu * anchor_loss(live, anchor, reduction="sum")[0]
            (loss / accum).backward()
            stats.tokens_trained += tokens
            stats.add_terms({"total": loss.item(), **terms})
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm)
        if not math.isfinite(float(norm)):
            stats.skipped_steps += 1
            optimizer.zero_grad(set_to_none=True)
            continue
        optimizer.step()
        stats.steps += 1
    model.eval()
    stats.seconds = time.perf_counter() - start
    return stats


def finish_update(engine: Engine) -> dict[str, torch.Tensor]:
    """The trained adapter as CPU copies, after the optional EMA toward the global adapter."""
    state = engine.adapter.get()
    ema = engine.cfg.spear.ema_decay if engine.cfg.algorithm.name in ("spear", "feedback_sft") else 0.0
    if ema > 0:
        state = {k: ema * engine.global_state[k].to(v.dtype) + (1 - ema) * v for k, v in state.items()}
    return state


def seconds_since(start: float) -> float:
    return time.perf_counter() - start
