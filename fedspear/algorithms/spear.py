"""SPEAR client update (Lee et al., arXiv 2605.07977; SPEAR.md section 2).

Objective, per micro-step of B wins W and B losses U (drawn with replacement when fewer):

    L = λ_win · L_win + λ_lose · L_lose + λ_anchor · Σ_k mean((θ_k − θ_global,k)²)  [+ μ/2 · ‖θ − θ_global‖²]

    L_win  = − Σ_{i∈W} Σ_t log p_θ(y_t | x0_i, y_<t) / Σ_{i∈W} |y_i|           (tokens incl. EOS if emitted)
    L_lose = Σ_{i∈U} c_i Σ_{t∈M_i} −log(1 − p_θ(y_t | x0_i, y_<t)) · 1[p > μ] / Σ_{i∈U} |M_i|

Wins are correct first answers (x0, y0) and feedback-guided revisions trained under the ORIGINAL prompt
(x0, y'); losses are wrong first answers (x0, y0) with confidence c = 1.0 when a revision fixed them and 0.5
when none did. M_i = completion positions minus EOS and protected answer-marker tokens, restricted to the last
``ul_tail_tokens`` positions (> 0) or to the answer suffix (``ul_answer_only``).

Deviations from the authors' reference (SPEAR.md section 6): training uses the sampled token ids (no
re-tokenisation; EOS only where emitted); a client with no wins returns no update (weight 0); the returned
adapter is a copy, so FedAvg sees distinct client updates.

Run: ``fedspear run --config arc_challenge-qwen2.5-1.5b``.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import torch

from fedspear.algorithms.base import ClientJob, LocalUpdateResult, Trace
from fedspear.algorithms.common import (
    collapse,
    completion_logprobs,
    draw,
    finish_update,
    make_batch,
    optimise,
    protected_token_ids,
    right_align,
)
from fedspear.algorithms.losses import spear_loss, unlikelihood_mask
from fedspear.feedback_noise import feedback_models
from fedspear.generation import GenSettings, GenStats, generate
from fedspear.models import Engine
from fedspear.tasks.prompts import build_revision_prompt


@dataclass
class FeedbackRollout:
    """One client's rollout with feedback-guided revisions.

    Attributes:
        wins: win traces (x0, y0) and (x0, y').
        losses: lose traces (x0, y0) with confidence 1.0 (fixed later) or 0.5 (never fixed).
        metrics: counts and timings of the rollout.
    """

    wins: list[Trace] = field(default_factory=list)
    losses: list[Trace] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


def _settings(engine: Engine, revision: bool) -> GenSettings:
    gen = engine.cfg.gen
    return GenSettings(gen.max_new_tokens_y1 if revision else gen.max_new_tokens_y0, gen.do_sample,
                       gen.temperature, gen.top_p)


def feedback_rollout(engine: Engine, jobs: list[ClientJob]) -> list[FeedbackRollout]:
    """Rollout + verification + feedback-guided revision for several clients at once (SPEAR.md 2.1-2.4).

    All clients share the round-start adapter, so their first answers are one batched generation, and each
    revision attempt is one batched generation over every client's still-wrong prompts.
    """
    cfg, task = engine.cfg, engine.task
    engine.load_global()
    users = feedback_models(engine, jobs)  # the oracle, through the imperfect-feedback knobs
    rollouts = [FeedbackRollout(metrics={"prompts": 0, "wins_y0": 0, "needs_revision": 0}) for _ in jobs]
    gen_stats = GenStats()
    feedback_s = 0.0
    # (job index, example, x0 ids) for every sampled prompt, in job order.
    items = []
    for j, job in enumerate(jobs):
        rng = random.Random(job.seed)
        chosen = rng.sample(job.examples, min(len(job.examples), cfg.fl.local_rollout_steps))
        items.extend((j, ex, engine.encode(ex.prompt)) for ex in chosen)
    seed = jobs[0].seed if jobs else 0
    first = generate(engine, [ids for _, _, ids in items], _settings(engine, False), seed, gen_stats)
    pending = []  # (item, first completion, latest completion)
    for item, comp in zip(items, first):
        j, ex, x0 = item
        if users[j].dropped():
            continue
        m = rollouts[j].metrics
        m["prompts"] = m.get("prompts", 0) + 1
        if users[j].verdict(ex, comp.text):
            m["wins_y0"] = m.get("wins_y0", 0) + 1
            rollouts[j].wins.append(Trace(x0, comp.ids, text=comp.text))
        else:
            m["needs_revision"] = m.get("needs_revision", 0) + 1
            pending.append((item, comp, comp))
    use_feedback = cfg.feedback.provider != "none"
    for attempt in range(1, cfg.gen.num_revisions + 1 if use_feedback else 1):
        if not pending:
            break
        start = time.perf_counter()
        prompts = []
        for (j, ex, _), _, latest in pending:
            hint = users[j].feedback(ex, latest.text)
            prompts.append(engine.encode(build_revision_prompt(ex.prompt, latest.text, hint, task.answer_format)))
        feedback_s += time.perf_counter() - start
        revisions = generate(engine, prompts, _settings(engine, True), seed + 7919 * attempt, gen_stats)
        still = []
        for ((j, ex, x0), y0, _), rev in zip(pending, revisions):
            m = rollouts[j].metrics
            m[f"revision_attempts_{attempt}"] = m.get(f"revision_attempts_{attempt}", 0) + 1
            if users[j].verdict(ex, rev.text):
                m[f"revision_successes_{attempt}"] = m.get(f"revision_successes_{attempt}", 0) + 1
                rollouts[j].wins.append(Trace(x0, rev.ids, text=rev.text))  # y' trained under x0
                rollouts[j].losses.append(Trace(x0, y0.ids, confidence=cfg.spear.confidence_fixed, text=y0.text))
            else:
                still.append(((j, ex, x0), y0, rev))
        pending = still
    for (j, _, x0), y0, _ in pending:
        rollouts[j].losses.append(Trace(x0, y0.ids, confidence=cfg.spear.confidence_unfixed, text=y0.text))
    share = 1.0 / max(1, len(items))
    for j, r in enumerate(rollouts):
        n = sum(1 for item in items if item[0] == j)
        m = r.metrics
        m.update(users[j].metrics())
        m["y0_accuracy"] = m.get("wins_y0", 0) / max(1, m["prompts"])
        m["wins_revision"] = sum(v for k, v in m.items() if k.startswith("revision_successes_"))
        m["revision_successes"] = m["wins_revision"]
        m["losses_fixed"] = m["wins_revision"]  # each fixed loss is the y0 of one successful revision
        m["losses_unfixed"] = len(r.losses) - m["wins_revision"]
        # Batched work is shared by the clients: each is charged its share of the round's prompts.
        m["generation_s"] = gen_stats.seconds * n * share
        m["feedback_s"] = feedback_s * n * share
        m["generations"] = n + sum(v for k, v in m.items() if k.startswith("revision_attempts_"))
    _split_tokens(rollouts, first, items, gen_stats)
    return rollouts


def _split_tokens(rollouts: list[FeedbackRollout], first: list, items: list, gen_stats: GenStats) -> None:
    """Attribute generated tokens to clients: exact for first answers, proportional for revisions."""
    first_tokens = [0] * len(rollouts)
    for (j, _, _), comp in zip(items, first):
        first_tokens[j] += len(comp.ids)
    revision_tokens = gen_stats.tokens - sum(first_tokens)
    total_attempts = sum(r.metrics["generations"] - r.metrics["prompts"] for r in rollouts) or 1
    for j, r in enumerate(rollouts):
        attempts = r.metrics["generations"] - r.metrics["prompts"]
        r.metrics["tokens_generated"] = first_tokens[j] + round(revision_tokens * attempts / total_attempts)


def rollout(engine: Engine, jobs: list[ClientJob]) -> list[FeedbackRollout]:
    """SPEAR's rollout: see :func:`feedback_rollout`."""
    return feedback_rollout(engine, jobs)


def _lose_masks(engine: Engine, losses: list[Trace]) -> list[list[float]]:
    spear_cfg, tok = engine.cfg.spear, engine.tokenizer
    protected = protected_token_ids(engine)
    masks = []
    for t in losses:
        span = None
        if spear_cfg.ul_answer_only:
            marks = [i for i, tid in enumerate(t.completion_ids) if tid in protected]
            span = (marks[-1], len(t.completion_ids)) if marks else None
        keep = unlikelihood_mask(t.completion_ids, protected, spear_cfg.ul_tail_tokens, span, tok.eos_token_id)
        masks.append([float(k) for k in keep])
    return masks


def train(engine: Engine, job: ClientJob, data: FeedbackRollout, lambda_lose: float | None = None) -> LocalUpdateResult:
    """Train the client's adapter on its wins (likelihood) and losses (unlikelihood) (SPEAR.md 2.5-2.8).

    Args:
        engine: the engine; the live model is reset to the global adapter first.
        job: the client's round job (lr, seed).
        data: the client's rollout.
        lambda_lose: override of ``spear.lambda_lose`` (feedback-SFT passes 0 and drops losses).

    Returns:
        The adapter copy and n_eff = number of wins, or no update when there are no wins.
    """
    cfg = engine.cfg
    lam_lose = cfg.spear.lambda_lose if lambda_lose is None else lambda_lose
    metrics = dict(data.metrics)
    wins, losses = data.wins, data.losses if lam_lose > 0 else []
    metrics.update(wins=len(wins), losses=len(losses))
    if not wins:
        metrics.update(skipped_no_wins=1, steps=0, tokens_trained=0, training_s=0.0)
        return LocalUpdateResult(None, 0.0, metrics)
    rng = random.Random(job.seed + 1)
    cap = int(cfg.spear.max_lose_ratio * len(wins))
    if len(losses) > cap:
        losses = rng.sample(losses, cap)
    metrics["losses_used"] = len(losses)
    lose_masks = dict(zip(map(id, losses), _lose_masks(engine, losses)))
    pad, max_len, device, bsz = engine.tokenizer.pad_token_id, cfg.model.max_seq_len, engine.device, cfg.optim.batch_size

    def micro_step(step_rng: random.Random) -> tuple[torch.Tensor, int, dict[str, float]]:
        w, w_count = collapse(draw(step_rng, wins, bsz), cfg.optim.dedup_draws)
        u, u_count = collapse(draw(step_rng, losses, bsz), cfg.optim.dedup_draws)
        batch = make_batch(w + u, pad, max_len, device)  # one forward for wins and losses
        logp_BL = completion_logprobs(engine.model, batch)
        # A trace drawn k times counts k times in both losses' numerators and denominators.
        mask_BL = batch.mask_BL * torch.tensor(w_count + u_count, dtype=torch.float32, device=device)[:, None]
        nw, length = len(w), mask_BL.shape[1]
        lose_logp = lose_mask = conf_B = None
        if u:
            lose_logp = logp_BL[nw:]
            lose_mask = right_align([lose_masks[id(t)] for t in u], length, device) * mask_BL[nw:]
            conf_B = torch.tensor([t.confidence for t in u], device=device)
        loss, stats = spear_loss(logp_BL[:nw], mask_BL[:nw], lose_logp, lose_mask, conf_B,
                                 _with_lambda(cfg.spear, lam_lose))
        terms = {k: float(v) for k, v in stats._asdict().items()}
        return loss, batch.num_tokens, terms

    stats = optimise(engine, job.lr, job.seed, micro_step)
    metrics.update(stats.as_metrics(cfg.fl.local_train_steps * cfg.optim.grad_accum_steps))
    return LocalUpdateResult(finish_update(engine), float(len(wins)), metrics)


def _with_lambda(spear_cfg, lambda_lose: float):
    if lambda_lose == spear_cfg.lambda_lose:
        return spear_cfg
    from dataclasses import replace

    return replace(spear_cfg, lambda_lose=lambda_lose)


def local_update(engine: Engine, job: ClientJob) -> LocalUpdateResult:
    """One client's whole SPEAR round: rollout, then training."""
    return train(engine, job, rollout(engine, [job])[0])
