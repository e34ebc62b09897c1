"""RLTF-SD client update: RL from text feedback via self-distillation (Song et al. 2026, arXiv 2602.02482,
Alg. 1; docs/algorithms.md, "RLTF-SD").

Rollout. Each client-round takes n = min(|D_c|, max(1, P // N)) prompts (P = ``fl.local_rollout_steps``,
N = ``rltf_sd.num_generations``) and samples N first answers y0 per prompt from x0 (sampling forced on, temperature
max(0.7, ``gen.temperature``)); r0 = reward of y0 (``rltf_sd.reward_scale`` * correctness). With
``rltf_sd.early_termination`` a correct y0 gets no feedback and no revision. Every other y0 gets oracle feedback
c0 (cut to ``rltf_sd.feedback_max_chars``), the revision prompt x1 = revision(x0, y0, c0) and ONE revision
y1 ~ pi(. | x1) (``gen.max_new_tokens_y1``) with reward r1.

Objective, per group of the N samples of one prompt (``rltf_sd_advantages``; revised samples only in SD/RL1)::

    R = r0 + gamma * r1 (revised)  or  r0 (not revised)
    A_sd = r1 - mean_N(r0),   A_RL0 = R - mean_N(R),   A_RL1 = r1 - mean_revised(r1)
    L = sd_coeff * L_SD + rl_coeff * (L_RL0 + L_RL1)
    L_SD  = -mean_{revised} A_sd * log pi(y1 | x0)                      (revision scored under the PLAIN prompt)
    L_RL0 =  mean_{all}     -A_RL0 * log pi(y0 | x0) + beta_kl * k3(y0)
    L_RL1 =  mean_{revised} -A_RL1 * log pi(y1 | x1) + beta_kl * k3(y1)

on sequence log-probs (sums over completion tokens), k3 against the round-start global adapter; per
micro-step B samples are drawn from the n * N (with replacement when fewer); S optimizer steps of A micro-steps.
The reference log-probs of (x0, y0) and (x1, y1) are computed once per client-round before training (eval mode,
no grad; ``tokens_forward``, time in ``training_s``).

Aggregation weight n_eff = number of samples n * N. Cost: n * N first answers plus one revision and one feedback
call per revised sample.

Deviations from the authors' reference (docs/deviations.md): a correct first answer that was not revised is counted once (the
reference sets r1 := r0 for it, so R = 2 * r0, and pushes it again through the SD and RL1 terms); log-probs are
sequence sums as in Alg. 1 (the reference uses per-token means); training uses the sampled token ids.
With early termination off, a correct y0 is revised too; its feedback is a fixed "correct" message, since the
task oracle only speaks about wrong answers.

Run: ``fedspear run --config arc_challenge-qwen2.5-1.5b algorithm.name=rltf_sd``.
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
    sampling_settings,
    score_traces,
    split_by_count,
    train_metrics,
)
from fedspear.algorithms.losses import rltf_sd_advantages, rltf_sd_loss, sequence_logprobs
from fedspear.algorithms.settings import RLTFSDSettings
from fedspear.feedback_noise import FeedbackModel, feedback_models
from fedspear.generation import GenStats, generate
from fedspear.models import Policy
from fedspear.tasks.base import Example
from fedspear.tasks.prompts import build_revision_prompt

# Feedback for a correct first answer when early termination is off (the task oracle only handles wrong ones).
CORRECT_FEEDBACK = "The previous answer is correct. Keep the same final answer."


@dataclass
class SDSample:
    """One first answer and, when revised, its revision.

    Attributes:
        rl0: (x0, y0).
        sd: (x0, y1), or None when not revised.
        rl1: (x1, y1), or None when not revised.
        adv_sd, adv_rl0, adv_rl1: the sample's advantages (0 for SD / RL1 when not revised).
        ref_rl0, ref_rl1: sequence log-probs of (x0, y0) and (x1, y1) under the round-start adapter (set by train).
    """

    rl0: Trace
    sd: Trace | None = None
    rl1: Trace | None = None
    adv_sd: float = 0.0
    adv_rl0: float = 0.0
    adv_rl1: float = 0.0
    ref_rl0: float = 0.0
    ref_rl1: float = 0.0

    @property
    def revised(self) -> bool:
        return self.rl1 is not None


@dataclass
class SDRollout:
    """One client's RLTF-SD rollout: n * N samples, group-major, and the rollout metrics."""

    samples: list[SDSample] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


class RLTFSD(Algorithm[SDRollout]):
    """RLTF-SD (module docstring; settings :class:`~fedspear.algorithms.settings.RLTFSDSettings`, section
    ``rltf_sd``)."""

    name = "rltf_sd"
    section = "rltf_sd"
    Settings = RLTFSDSettings
    metrics = ("prompts", "samples_y0", "generations", "tokens_generated", "wins_y0", "y0_accuracy", "needs_revision",
               "revision_successes", "generation_s", "feedback_s", "tokens_forward", "y1_accuracy", "feedback_calls",
               "revision_attempts_#", "revision_successes_#")  # fedspear.metrics; docs/algorithms.md, "Metrics"

    def reward(self, correct: bool) -> float:
        """``rltf_sd.reward_scale * 1[correct]``, clipped to +-``rltf_sd.reward_clip`` when set."""
        return binary_reward(correct, self.settings.reward_scale, self.settings.reward_clip)

    def rollout(self, policy: Policy, jobs: list[ClientJob]) -> list[SDRollout]:
        """First answers (N per prompt), feedback and one revision for every client of the round, batched.

        Args:
            policy: the policy; the jobs' shared start state is loaded first (:func:`start_jobs`).
            jobs: the round's clients.

        Returns:
            One SDRollout per job.
        """
        run, task, settings = self.run, self.task, self.settings
        start_jobs(policy, jobs)
        group = settings.num_generations
        per_client = max(1, run.fl.local_rollout_steps // group)
        # (job index, example, x0) per sample: clients in order, the N samples of a prompt next to each other.
        items = [(j, ex, x0) for j, job in enumerate(jobs) for ex, x0 in choose_prompts(policy, job, per_client)
                 for _ in range(group)]
        seed = jobs[0].seed if jobs else 0
        first_stats, second_stats = GenStats(), GenStats()
        y0s = generate(policy, [x0 for _, _, x0 in items], sampling_settings(run.gen, run.gen.max_new_tokens_y0),
                       seed, first_stats)
        users = feedback_models(task, run, jobs)  # verdicts and hints, through the imperfect-feedback knobs
        kept = [k for p in range(0, len(items), group) if not users[items[p][0]].dropped() for k in range(p, p + group)]
        items, y0s = [items[k] for k in kept], [y0s[k] for k in kept]  # a dropped prompt loses its whole group
        ok0 = [users[j].verdict(ex, y0.text) for (j, ex, _), y0 in zip(items, y0s, strict=True)]
        revise = [k for k, ok in enumerate(ok0) if not (ok and settings.early_termination)]
        start = time.perf_counter()
        x1s = {k: self._revision_prompt(policy, items[k][1], y0s[k].text, ok0[k], users[items[k][0]]) for k in revise}
        feedback_seconds = time.perf_counter() - start
        y1_list = generate(policy, [x1s[k] for k in revise], sampling_settings(run.gen, run.gen.max_new_tokens_y1),
                           seed + 7919, second_stats)
        y1s = dict(zip(revise, y1_list, strict=True))
        ok1 = {k: users[items[k][0]].verdict(items[k][1], y1.text) for k, y1 in y1s.items()}
        owner = [j for j, _, _ in items]
        clients = range(len(jobs))
        gen_s = [a + b for a, b in zip(split_by_count(first_stats.seconds, [owner.count(c) for c in clients]),
                                       split_by_count(second_stats.seconds, [sum(owner[k] == c for k in revise)
                                                                              for c in clients]), strict=True)]
        fb_s = split_by_count(feedback_seconds, [sum(owner[k] == c and not ok0[k] for k in revise) for c in clients])
        out = []
        for c in clients:
            ks = [k for k in range(len(items)) if owner[k] == c]
            samples = []
            for k in ks:
                x0, y0, ok = items[k][2], y0s[k], ok0[k]
                s = SDSample(Trace(x0, y0.ids, reward=self.reward(ok), text=y0.text))
                if k in y1s:
                    r1 = self.reward(ok1[k])
                    s.sd = Trace(x0, y1s[k].ids, reward=r1, text=y1s[k].text)
                    s.rl1 = Trace(x1s[k], y1s[k].ids, reward=r1, text=y1s[k].text)
                samples.append(s)
            self._set_advantages(samples, group)
            metrics = _rollout_metrics(samples, [ok0[k] for k in ks], [ok1.get(k) for k in ks], len(ks) // group)
            metrics.update(users[c].metrics())
            metrics.update(generation_s=gen_s[c], feedback_s=fb_s[c],
                           tokens_generated=sum(len(s.rl0.completion_ids) + (len(s.rl1.completion_ids) if s.revised
                                                                             else 0) for s in samples))
            out.append(SDRollout(samples, metrics))
        return out

    def _revision_prompt(self, policy: Policy, example: Example, answer: str, correct: bool,
                         user: FeedbackModel) -> list[int]:
        """x1 ids: the user's feedback on an answer reported wrong (a fixed message on one reported correct), cut
        to ``rltf_sd.feedback_max_chars``, in the shared revision template."""
        task = self.task
        hint = CORRECT_FEEDBACK if correct else user.feedback(example, answer)
        hint = hint[: self.settings.feedback_max_chars]
        return policy.encode(build_revision_prompt(example.prompt, answer, hint, task.answer_format,
                                                 self.run.gen.revision_template))

    def _set_advantages(self, samples: list[SDSample], group: int) -> None:
        """Fill the advantages of group-major samples (``rltf_sd_advantages``; non-revised ones get 0 for
        SD/RL1)."""
        if not samples:
            return
        r0_BN = torch.tensor([s.rl0.reward for s in samples]).reshape(-1, group)
        r1_BN = torch.tensor([s.rl1.reward if s.revised else 0.0 for s in samples]).reshape(-1, group)
        revised_BN = torch.tensor([s.revised for s in samples]).reshape(-1, group)
        adv = rltf_sd_advantages(r0_BN, r1_BN, self.settings.gamma, revised_BN)
        for s, a_sd, a_rl0, a_rl1 in zip(samples, adv.sd.reshape(-1).tolist(), adv.rl0.reshape(-1).tolist(),
                                         adv.rl1.reshape(-1).tolist(), strict=True):
            s.adv_sd, s.adv_rl0, s.adv_rl1 = a_sd, a_rl0, a_rl1

    def micro_loss(self, policy: Policy, samples: list[SDSample]) -> tuple[torch.Tensor, int, dict[str, float]]:
        """RLTF-SD loss of one micro-batch: RL0 and SD share a forward on x0 prompts, RL1 runs on x1 prompts.

        Args:
            policy: the policy.
            samples: the micro-batch; reference log-probs must be set.

        Returns:
            (loss, forward+backward tokens, loss terms).
        """
        device = policy.device
        pad, max_len = policy.tokenizer.pad_token_id, self.run.max_seq_len
        b = len(samples)
        rev = [i for i, s in enumerate(samples) if s.revised]
        rev_idx = torch.tensor(rev, dtype=torch.long, device=device)
        batch0 = make_batch([s.rl0 for s in samples] + [samples[i].sd for i in rev], pad, max_len, device,
                            policy.bos_id)
        seq0 = sequence_logprobs(completion_logprobs(policy.model, batch0), batch0.mask_BL)  # [b + |rev|]
        tokens = batch0.num_tokens
        rl0_logp_B = seq0[:b]
        sd_logp_B = torch.zeros(b, device=device)
        rl1_logp_B = torch.zeros(b, device=device)
        if rev:
            sd_logp_B = sd_logp_B.index_put((rev_idx,), seq0[b:])
            batch1 = make_batch([samples[i].rl1 for i in rev], pad, max_len, device, policy.bos_id)
            seq1 = sequence_logprobs(completion_logprobs(policy.model, batch1), batch1.mask_BL)
            rl1_logp_B = rl1_logp_B.index_put((rev_idx,), seq1)
            tokens += batch1.num_tokens

        def col(name: str) -> torch.Tensor:
            return torch.tensor([getattr(s, name) for s in samples], dtype=torch.float32, device=device)

        revised_B = torch.tensor([float(s.revised) for s in samples], device=device)
        r = self.settings
        loss, stats = rltf_sd_loss(sd_logp_B, rl0_logp_B, rl1_logp_B, col("ref_rl0"), col("ref_rl1"), col("adv_sd"),
                                   col("adv_rl0"), col("adv_rl1"), revised_B, revised_B, r.sd_coeff, r.rl_coeff,
                                   r.beta_kl)
        terms = {k: float(v) for k, v in stats._asdict().items() if k != "loss"}
        return loss, tokens, terms

    def set_reference_logprobs(self, policy: Policy, start: dict[str, torch.Tensor], samples: list[SDSample]) -> int:
        """Set ``ref_rl0`` / ``ref_rl1``: sequence log-probs of (x0, y0) and (x1, y1) under the round-start
        adapter ``start`` (``job.start_state``).

        Returns:
            The number of forward tokens.
        """
        revised = [s for s in samples if s.revised]
        rows, tokens = score_traces(policy, start, self.run, [s.rl0 for s in samples] + [s.rl1 for s in revised])
        sums = [sum(row) for row in rows]
        for s, v in zip(samples, sums[: len(samples)], strict=True):
            s.ref_rl0 = v
        for s, v in zip(revised, sums[len(samples) :], strict=True):
            s.ref_rl1 = v
        return tokens

    def train(self, policy: Policy, job: ClientJob, data: SDRollout) -> LocalUpdateResult:
        """Reference log-probs under the round-start adapter, then S optimizer steps of A micro-steps.

        Args:
            policy: the policy; the live model is reset to the job's start state first.
            job: the client's round job (lr, seed).
            data: the client's rollout.

        Returns:
            The adapter copy and n_eff = number of samples, or no update (weight 0) when there are none.
        """
        run = self.run
        metrics = dict(data.metrics)
        samples = data.samples
        if not samples:
            return no_update(metrics, tokens_forward=0)
        start = start_job(policy, job)
        began = time.perf_counter()
        forward_tokens = self.set_reference_logprobs(policy, start, samples)
        score_seconds = time.perf_counter() - began

        def micro_step(step_rng: random.Random) -> tuple[torch.Tensor, int, dict[str, float]]:
            return self.micro_loss(policy, draw(step_rng, samples, run.optim.batch_size))

        stats = optimise(policy, start, run, job.lr, job.seed, micro_step, fedprox(run))
        metrics.update(train_metrics(stats, run))
        metrics["training_s"] += score_seconds
        metrics["tokens_forward"] = forward_tokens
        return LocalUpdateResult(finish_update(policy, start), float(len(samples)), metrics)


def _rollout_metrics(samples: list[SDSample], ok0: list[bool], ok1: list[bool | None], prompts: int
                     ) -> dict[str, Any]:
    n = len(samples)
    revised = sum(s.revised for s in samples)
    wrong = [k for k, ok in enumerate(ok0) if not ok]  # every wrong y0 gets feedback and a revision
    fixed = sum(bool(ok1[k]) for k in wrong)
    return {
        "prompts": prompts, "samples_y0": n, "generations": n + revised, "wins_y0": sum(ok0),
        "y0_accuracy": sum(ok0) / n if n else None, "needs_revision": len(wrong),
        "revision_attempts_1": revised, "revision_successes_1": fixed, "revision_successes": fixed,
        "y1_accuracy": sum(bool(ok1[k]) for k in range(n) if ok1[k] is not None) / revised if revised else None,
        "feedback_calls": len(wrong),
    }
