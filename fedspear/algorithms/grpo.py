"""GRPO client update (Shao et al. 2024) as a federated baseline (docs/algorithms.md, "GRPO").

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

Deviations from the authors' reference (docs/deviations.md): the ratio is per token against the sampling-time
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

from fedspear.algorithms.base import Algorithm, ClientJob, LocalUpdateResult, Trace, start_job, start_jobs
from fedspear.algorithms.common import (
    binary_reward,
    choose_prompts,
    completion_logprobs,
    draw,
    fedprox,
    finish_update,
    make_batch,
    no_update,
    optimise,
    right_align,
    sampling_settings,
    score_traces,
    split_by_count,
    train_metrics,
)
from fedspear.algorithms.losses import group_advantages, grpo_loss
from fedspear.algorithms.settings import GRPOSettings
from fedspear.feedback_noise import FeedbackModel, feedback_models
from fedspear.generation import Completion, GenStats, generate
from fedspear.models import Policy
from fedspear.tasks.base import Example


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


class GRPO(Algorithm[GroupRollout]):
    """GRPO as a federated baseline (module docstring; settings
    :class:`~fedspear.algorithms.settings.GRPOSettings`, section ``grpo``)."""

    name = "grpo"
    section = "grpo"
    Settings = GRPOSettings
    metrics = ("prompts", "samples_y0", "generations", "tokens_generated", "wins_y0", "y0_accuracy", "needs_revision",
               "revision_successes", "generation_s", "feedback_s", "tokens_forward", "mean_reward",
               "zero_advantage_groups")  # fedspear.metrics; docs/algorithms.md, "Metrics"

    def rollout(self, policy: Policy, jobs: list[ClientJob]) -> list[GroupRollout]:
        """P prompts per client, G samples each from x0, all clients in one batched generation; rewards and
        group-normalised advantages.

        Args:
            policy: the policy; the jobs' shared start state is loaded first (:func:`start_jobs`).
            jobs: the round's clients (they share the round-start adapter).

        Returns:
            One GroupRollout per job.
        """
        run = self.run
        start_jobs(policy, jobs)
        group = self.settings.num_generations
        chosen = [choose_prompts(policy, job, run.fl.local_rollout_steps) for job in jobs]
        prompts = [x0 for items in chosen for _, x0 in items for _ in range(group)]
        gen_stats = GenStats()
        seed = jobs[0].seed if jobs else 0
        completions = generate(policy, prompts, sampling_settings(run.gen, run.gen.max_new_tokens_y0), seed,
                               gen_stats)
        gen_seconds = split_by_count(gen_stats.seconds, [len(items) * group for items in chosen])
        users = feedback_models(self.task, run, jobs)  # the verdicts, through the imperfect-feedback knobs
        out, pos = [], 0
        for items, seconds, user in zip(chosen, gen_seconds, users, strict=True):
            comps = completions[pos : pos + len(items) * group]
            pos += len(items) * group
            kept = [p for p in range(len(items)) if not user.dropped()]  # a dropped prompt loses its whole group
            items, comps = [items[p] for p in kept], [c for p in kept for c in comps[p * group : (p + 1) * group]]
            out.append(self._group_rollout(items, comps, group, seconds, user))
        return out

    def _group_rollout(self, items: list[tuple[Example, list[int]]], comps: list[Completion], group: int,
                       gen_seconds: float, user: FeedbackModel | None = None) -> GroupRollout:
        """Rewards, advantages and metrics of one client's P * G completions (group-major); ``user`` gives the
        verdicts (None = the task's oracle)."""
        settings = self.settings
        user = user or FeedbackModel(self.task, self.run, 0)
        correct = [user.verdict(ex, c.text) for (ex, _), c in zip(_repeat(items, group), comps, strict=True)]
        rewards_PG = torch.tensor([binary_reward(ok, settings.reward_scale, settings.reward_clip) for ok in correct],
                                  dtype=torch.float32).reshape(len(items), group)
        adv_PG = group_advantages(rewards_PG, settings.normalize_advantage)
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

    def micro_loss(self, policy: Policy, traces: list[Trace], old_rows: list[list[float]]
                   ) -> tuple[torch.Tensor, int, dict[str, float]]:
        """GRPO loss of one micro-batch on the live model (train mode as set by the caller).

        Args:
            policy: the policy.
            traces: the micro-batch; ``Trace.reward`` is the advantage.
            old_rows: per trace, the sampling-time per-token log-probs (also the KL reference, see module
                docstring).

        Returns:
            (loss, forward+backward tokens, loss terms).
        """
        settings = self.settings
        batch = make_batch(traces, policy.tokenizer.pad_token_id, self.run.max_seq_len, policy.device,
                           policy.bos_id)
        logp_BL = completion_logprobs(policy.model, batch)
        old_BL = right_align(old_rows, logp_BL.shape[1], policy.device)  # = ref_BL: same round-start adapter
        adv_B = torch.tensor([t.reward for t in traces], dtype=torch.float32, device=policy.device)
        loss, stats = grpo_loss(logp_BL, old_BL, old_BL, adv_B, batch.mask_BL, settings.clip_range, settings.beta_kl)
        terms = {k: float(v) for k, v in stats._asdict().items() if k != "loss"}
        return loss, batch.num_tokens, terms

    def train(self, policy: Policy, job: ClientJob, data: GroupRollout) -> LocalUpdateResult:
        """S optimizer steps of A micro-steps of the clipped GRPO objective on the client's P * G traces.

        Args:
            policy: the policy; the live model is reset to the job's start state first.
            job: the client's round job (lr, seed).
            data: the client's rollout.

        Returns:
            The adapter copy and n_eff = P, or no update (weight 0) when the client rolled out nothing.
        """
        run = self.run
        metrics = dict(data.metrics)
        traces = data.traces
        if not traces:
            return no_update(metrics, tokens_forward=0)
        start = start_job(policy, job)
        began = time.perf_counter()
        old_rows, forward_tokens = score_traces(policy, start, run, traces)
        score_seconds = time.perf_counter() - began
        old_of = {id(t): row for t, row in zip(traces, old_rows, strict=True)}

        def micro_step(step_rng: random.Random) -> tuple[torch.Tensor, int, dict[str, float]]:
            picked = draw(step_rng, traces, run.optim.batch_size)
            return self.micro_loss(policy, picked, [old_of[id(t)] for t in picked])

        stats = optimise(policy, start, run, job.lr, job.seed, micro_step, fedprox(run))
        metrics.update(train_metrics(stats, run))
        metrics["training_s"] += score_seconds
        metrics["tokens_forward"] = forward_tokens
        return LocalUpdateResult(finish_update(policy, start), float(data.metrics["prompts"]), metrics)


def _repeat(items: list[Any], times: int) -> list[Any]:
    return [item for item in items for _ in range(times)]
