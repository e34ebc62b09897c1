"""GRPO client update (Shao et al. 2024) as a federated baseline (SPEAR.md section 4).

Objective. Each client-round samples P = min(|D_c|, ``fl.local_rollout_steps``) prompts and G =
``grpo.num_generations`` answers per prompt from the plain task prompt x0 (sampling forced on, temperature
max(0.7, ``gen.temperature``)). With ``r_i = reward_scale * 1[y_i correct]`` (clipped to +-``reward_clip``)::

    A_i   = (r_i - mean_G r) / std_G r                 (unbiased std; a constant group gives A_i = 0)
    rho_it = pi_theta(y_it | x0, y_i,<t) / pi_old(y_it | x0, y_i,<t)
    k3_it  = exp(d_it) - d_it - 1,   d_it = log pi_ref(y_it | ...) - log pi_theta(y_it | ...)
    L = mean_{i in micro-batch} (1 / |y_i|) sum_t [ -min(rho_it A_i, clip(rho_it, 1 - eps, 1 + eps) A_i)
                                                     + beta_kl * k3_it ]

over B traces drawn (with ``draw``) from all P * G traces per micro-step; S optimizer steps of A micro-steps.
Zero-advantage traces stay in the pool: they still carry the KL term.

pi_old and pi_ref. The old policy is the policy that sampled the answers: the round-start global adapter, and
the KL reference is the round-start global adapter too. Both are therefore the SAME per-token log-probabilities;
they are computed once per client-round (eval mode, so no LoRA dropout, no gradient) right before training and
used for both roles. Their forward tokens are reported as ``tokens_forward`` and their time is part of
``training_s``.

Aggregation weight n_eff = P (number of prompts). Cost: P * G generations per client-round. No privileged facts
enter any prompt.

Deviations from the authors' reference (SPEAR.md section 6.5): the ratio is per token against the sampling-time
log-probs (the reference recomputes its "old" log-probs from the live adapter right before each update, so its
ratio is 1 and clipping never acts), the clipped surrogate takes the min for both signs of the advantage, the
rollout follows the budget P (the reference samples B prompts per micro-step and ignores P), n_eff = P (not
|D_c|), training uses the sampled token ids, and StrategyQA prompts carry no gold facts.

Run: ``fedspear run --config arc_challenge-qwen2.5-1.5b algorithm.name=grpo``.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from fedspear.algorithms.base import ClientJob, LocalUpdateResult, Trace
from fedspear.algorithms.common import completion_logprobs, draw, finish_update, make_batch, optimise, right_align
from fedspear.algorithms.losses import group_advantages, grpo_loss
from fedspear.feedback_noise import FeedbackModel, feedback_models
from fedspear.generation import Completion, GenSettings, GenStats, generate
from fedspear.models import Engine
from fedspear.tasks.base import Example

# Sampling temperature floor for GRPO / RLTF-SD rollouts (a group of identical greedy answers has no signal).
MIN_SAMPLING_TEMPERATURE = 0.7


@dataclass
class GroupRollout:
    """One client's GRPO rollout.

    Attributes:
        traces: the P * G sampled (x0, y) traces, group-major (sample g of prompt p at index p * G + g);
            ``Trace.reward`` holds the sample's advantage A_i.
        rewards_PG: rewards ``[P, G]``.
        metrics: counts and timings of the rollout.
    """

    traces: list[Trace] = field(default_factory=list)
    rewards_PG: torch.Tensor = field(default_factory=lambda: torch.zeros((0, 0)))
    metrics: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- helpers shared with rltf_sd


def sampling_settings(engine: Engine, max_new_tokens: int) -> GenSettings:
    """Sampling forced on: temperature max(0.7, ``gen.temperature``), top_p ``gen.top_p``."""
    gen = engine.cfg.gen
    return GenSettings(max_new_tokens, True, max(MIN_SAMPLING_TEMPERATURE, gen.temperature), gen.top_p)


def choose_prompts(engine: Engine, job: ClientJob, count: int) -> list[tuple[Example, list[int]]]:
    """``min(|D_c|, count)`` examples without replacement, seeded by ``job.seed``, with their x0 token ids.

    The same draw as SPEAR's rollout: algorithms with the same budget roll out the same prompts for a
    (round, client).
    """
    rng = random.Random(job.seed)
    chosen = rng.sample(job.examples, min(len(job.examples), max(0, count)))
    return [(ex, engine.encode(ex.prompt)) for ex in chosen]


def reward(engine: Engine, correct: bool) -> float:
    """``reward_scale * 1[correct]``, clipped to +-``reward_clip`` when set."""
    cfg = engine.cfg.grpo
    r = cfg.reward_scale * float(correct)
    if cfg.reward_clip is not None:
        r = max(-cfg.reward_clip, min(cfg.reward_clip, r))
    return r


def split_by_count(total: float, counts: list[int]) -> list[float]:
    """Split a batched cost (e.g. seconds of one generate call) over clients in proportion to their items."""
    n = sum(counts)
    return [total * c / n if n else 0.0 for c in counts]


@torch.no_grad()
def score_traces(engine: Engine, traces: list[Trace]) -> tuple[list[list[float]], int]:
    """Per-token completion log-probs of ``traces`` under the ROUND-START global adapter (eval mode, no grad).

    Loads the global adapter into the live model (the caller trains from it next). Forwards are chunked by
    ``optim.micro_batch_size`` (else ``gen.rollout_batch_size``).

    Returns:
        (one list of log-probs per trace, as long as its completion after the ``max_seq_len`` cut,
        number of forward tokens).
    """
    cfg, model = engine.cfg, engine.model
    engine.load_global()
    was_training = model.training
    model.eval()
    size = cfg.optim.micro_batch_size or cfg.gen.rollout_batch_size
    rows: list[list[float]] = []
    tokens = 0
    for start in range(0, len(traces), size):
        batch = make_batch(traces[start : start + size], engine.tokenizer.pad_token_id, cfg.model.max_seq_len,
                           engine.device)
        logp_BL = completion_logprobs(model, batch).float().cpu()
        lengths = batch.mask_BL.sum(-1).long().tolist()
        width = logp_BL.shape[1]
        rows.extend(logp_BL[i, width - n :].tolist() if n else [] for i, n in enumerate(lengths))
        tokens += batch.num_tokens
    model.train(was_training)
    return rows, tokens


# --------------------------------------------------------------------------- rollout


def rollout(engine: Engine, jobs: list[ClientJob]) -> list[GroupRollout]:
    """P prompts per client, G samples each from x0, all clients in one batched generation; rewards and
    group-normalised advantages.

    Args:
        engine: the engine; the round-start global adapter is loaded first.
        jobs: the round's clients (they share the round-start adapter).

    Returns:
        One GroupRollout per job.
    """
    cfg = engine.cfg
    engine.load_global()
    group = cfg.grpo.num_generations
    chosen = [choose_prompts(engine, job, cfg.fl.local_rollout_steps) for job in jobs]
    prompts = [x0 for items in chosen for _, x0 in items for _ in range(group)]
    gen_stats = GenStats()
    seed = jobs[0].seed if jobs else 0
    completions = generate(engine, prompts, sampling_settings(engine, cfg.gen.max_new_tokens_y0), seed, gen_stats)
    gen_seconds = split_by_count(gen_stats.seconds, [len(items) * group for items in chosen])
    users = feedback_models(engine, jobs)  # the verdicts, through the imperfect-feedback knobs
    out, pos = [], 0
    for items, seconds, user in zip(chosen, gen_seconds, users, strict=True):
        comps = completions[pos : pos + len(items) * group]
        pos += len(items) * group
        kept = [p for p in range(len(items)) if not user.dropped()]  # a dropped prompt loses its whole group
        items, comps = [items[p] for p in kept], [c for p in kept for c in comps[p * group : (p + 1) * group]]
        out.append(_group_rollout(engine, items, comps, group, seconds, user))
    return out


def _group_rollout(engine: Engine, items: list[tuple[Example, list[int]]], comps: list[Completion], group: int,
                   gen_seconds: float, user: FeedbackModel | None = None) -> GroupRollout:
    """Rewards, advantages and metrics of one client's P * G completions (group-major); ``user`` gives the
    verdicts (None = the task's oracle)."""
    cfg = engine.cfg
    user = user or FeedbackModel(engine.task, cfg, 0)
    correct = [user.verdict(ex, c.text) for (ex, _), c in zip(_repeat(items, group), comps, strict=True)]
    rewards_PG = torch.tensor([reward(engine, ok) for ok in correct], dtype=torch.float32).reshape(len(items), group)
    adv_PG = group_advantages(rewards_PG, cfg.grpo.normalize_advantage)
    traces = [Trace(x0, c.ids, reward=float(a), text=c.text)
              for (_, x0), c, a in zip(_repeat(items, group), comps, adv_PG.reshape(-1).tolist(), strict=True)]
    n_samples = len(comps)
    constant = int((rewards_PG.amax(-1) == rewards_PG.amin(-1)).sum()) if len(items) else 0
    metrics = {
        "prompts": len(items), "samples_y0": n_samples, "generations": n_samples,
        "tokens_generated": sum(len(c.ids) for c in comps), "wins_y0": sum(correct),
        "y0_accuracy": sum(correct) / n_samples if n_samples else None,
        "needs_revision": 0, "revision_successes": 0,  # GRPO asks for no feedback
        "mean_reward": float(rewards_PG.mean()) if n_samples else None, "zero_advantage_groups": constant,
        "generation_s": gen_seconds, "feedback_s": 0.0, **user.metrics(),
    }
    return GroupRollout(traces, rewards_PG, metrics)


def _repeat(items: list[Any], times: int) -> list[Any]:
    return [item for item in items for _ in range(times)]


# --------------------------------------------------------------------------- train


def micro_loss(engine: Engine, traces: list[Trace], old_rows: list[list[float]]
               ) -> tuple[torch.Tensor, int, dict[str, float]]:
    """GRPO loss of one micro-batch on the live model (train mode as set by the caller).

    Args:
        engine: the engine.
        traces: the micro-batch; ``Trace.reward`` is the advantage.
        old_rows: per trace, the sampling-time per-token log-probs (also the KL reference, see module docstring).

    Returns:
        (loss, forward+backward tokens, loss terms).
    """
    cfg = engine.cfg
    batch = make_batch(traces, engine.tokenizer.pad_token_id, cfg.model.max_seq_len, engine.device)
    logp_BL = completion_logprobs(engine.model, batch)
    old_BL = right_align(old_rows, logp_BL.shape[1], engine.device)  # = ref_BL: same round-start adapter
    adv_B = torch.tensor([t.reward for t in traces], dtype=torch.float32, device=engine.device)
    loss, stats = grpo_loss(logp_BL, old_BL, old_BL, adv_B, batch.mask_BL, cfg.grpo.clip_range, cfg.grpo.beta_kl)
    terms = {k: float(v) for k, v in stats._asdict().items() if k != "loss"}
    return loss, batch.num_tokens, terms


def train(engine: Engine, job: ClientJob, data: GroupRollout) -> LocalUpdateResult:
    """S optimizer steps of A micro-steps of the clipped GRPO objective on the client's P * G traces.

    Args:
        engine: the engine; the live model is reset to the global adapter first.
        job: the client's round job (lr, seed).
        data: the client's rollout.

    Returns:
        The adapter copy and n_eff = P, or no update (weight 0) when the client rolled out nothing.
    """
    cfg = engine.cfg
    metrics = dict(data.metrics)
    traces = data.traces
    if not traces:
        metrics.update(steps=0, skipped_steps=0, tokens_trained=0, tokens_forward=0, training_s=0.0)
        return LocalUpdateResult(None, 0.0, metrics)
    start = time.perf_counter()
    old_rows, forward_tokens = score_traces(engine, traces)
    score_seconds = time.perf_counter() - start
    old_of = {id(t): row for t, row in zip(traces, old_rows, strict=True)}

    def micro_step(step_rng: random.Random) -> tuple[torch.Tensor, int, dict[str, float]]:
        picked = draw(step_rng, traces, cfg.optim.batch_size)
        return micro_loss(engine, picked, [old_of[id(t)] for t in picked])

    stats = optimise(engine, job.lr, job.seed, micro_step)
    metrics.update(stats.as_metrics(cfg.fl.local_train_steps * cfg.optim.grad_accum_steps))
    metrics["training_s"] += score_seconds
    metrics["tokens_forward"] = forward_tokens
    return LocalUpdateResult(finish_update(engine), float(data.metrics["prompts"]), metrics)


def local_update(engine: Engine, job: ClientJob) -> LocalUpdateResult:
    """One client's whole GRPO round: rollout, then training."""
    return train(engine, job, rollout(engine, [job])[0])
