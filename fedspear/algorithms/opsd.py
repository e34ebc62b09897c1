"""OPSD client update: on-policy self-distillation from a privileged teacher (docs/algorithms.md, "OPSD").

Objective. Each client-round samples P = min(|D_c|, ``fl.local_rollout_steps``) prompts and one answer y0 per
prompt from the plain task prompt x0 (``gen`` decoding settings). The teacher is the ROUND-START global adapter,
frozen, reading the privileged context c (``task.privileged_context``: the gold answer, plus the solution for
math or the supporting facts for StrategyQA, cut to ``distill.priv_max_chars``) before x0, followed by the same
sampled ids y0. Per micro-step of B traces drawn from the P (with replacement when fewer), with T =
``distill.temperature``::

    L = T^2 * sum_{i,t} KL( softmax(z_teacher(c, x0_i, y0_i,<t) / T) || softmax(z_theta(x0_i, y0_i,<t) / T) )
        / sum_i |y0_i|

over the full vocabulary at every completion position of y0 (forward KL, teacher first). S optimizer steps of
A micro-steps. Correctness is never used in training (y0 accuracy is only recorded).

The teacher forward. The teacher's logits are computed per micro-step (storing them for all traces would take
``traces x tokens x vocab`` floats: 24 GB for 160 traces of 256 tokens with a 150k vocabulary). The teacher pass
runs the live model with the round-start adapter tensors substituted for the LoRA parameters through
``torch.func.functional_call`` (eval mode, no grad): no weight copies, no second PEFT adapter (which would also
be written by ``save_pretrained``), and the trained parameters are untouched.

Aggregation weight n_eff = number of traces (P). Cost: P generations; S * A * B teacher forwards (no grad,
``tokens_forward``) and S * A * B student forward+backward passes (``tokens_trained``).

Deviations from the authors' reference (docs/deviations.md): the teacher is frozen at the round start (the
reference's teacher is the adapter being trained), logits are computed only on completion positions, and
training uses the sampled token ids.

Run: ``fedspear run --config arc_challenge-qwen2.5-1.5b algorithm.name=opsd``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch

from fedspear.algorithms.base import Algorithm, ClientJob, LocalUpdateResult, Trace, start_job, start_jobs
from fedspear.algorithms.common import (
    SeqBatch,
    choose_prompts,
    completion_logits,
    draw,
    fedprox,
    finish_update,
    make_batch,
    no_update,
    optimise,
    split_by_count,
    train_metrics,
)
from fedspear.algorithms.losses import distill_kl
from fedspear.algorithms.settings import OPSDSettings
from fedspear.generation import GenStats, generate, rollout_settings
from fedspear.models import Policy
from fedspear.tasks.base import Example


@dataclass
class DistillPair:
    """One sampled answer seen by the student and by the teacher.

    Attributes:
        student: (x0, y0) as sampled.
        teacher: (teacher prompt, the same y0 ids).
    """

    student: Trace
    teacher: Trace


@dataclass
class DistillRollout:
    """One client's OPSD rollout: the pairs and the rollout metrics."""

    pairs: list[DistillPair] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)



def format_teacher_prompt(privileged: str, prompt: str) -> str:
    """The teacher's prompt text: a privileged-information section, then the unchanged task prompt x0 (the world's
    base model is pretrained on this format: :mod:`fedspear.world_base`)."""
    return ("### Verified reference (known to be correct)\n"
            f"{privileged.strip()}\n\n"
            "### Task\n"
            f"{prompt}")

class OPSD(Algorithm[DistillRollout]):
    """On-policy self-distillation from the round-start privileged teacher (module docstring; settings
    :class:`~fedspear.algorithms.settings.OPSDSettings`, section ``distill``)."""

    name = "opsd"
    section = "distill"
    Settings = OPSDSettings
    metrics = ("prompts", "samples_y0", "generations", "tokens_generated", "wins_y0", "y0_accuracy", "needs_revision",
               "revision_successes", "generation_s", "feedback_s", "tokens_forward",
               "teacher_prompts_truncated")  # fedspear.metrics; docs/algorithms.md, "Metrics"

    def teacher_prompt(self, example: Example) -> str:
        """The teacher's prompt for ``example``: :func:`format_teacher_prompt` of its capped privileged context."""
        privileged = self.task.privileged_context(example)[: self.settings.priv_max_chars]
        return format_teacher_prompt(privileged, example.prompt)

    def rollout(self, policy: Policy, jobs: list[ClientJob]) -> list[DistillRollout]:
        """P prompts per client, one y0 each from x0 (all clients in one batched generation), paired with the
        teacher's prompt.

        Args:
            policy: the policy; the jobs' shared start state is loaded first (:func:`start_jobs`).
            jobs: the round's clients.

        Returns:
            One DistillRollout per job.
        """
        run, task = self.run, self.task
        start_jobs(policy, jobs)
        chosen = [choose_prompts(policy, job, run.fl.local_rollout_steps) for job in jobs]
        settings = rollout_settings(run.gen)
        gen_stats = GenStats()
        seed = jobs[0].seed if jobs else 0
        completions = generate(policy, [x0 for items in chosen for _, x0 in items], settings, seed, gen_stats)
        gen_seconds = split_by_count(gen_stats.seconds, [len(items) for items in chosen])
        out, pos = [], 0
        for items, seconds in zip(chosen, gen_seconds, strict=True):
            comps = completions[pos : pos + len(items)]
            pos += len(items)
            pairs, correct, truncated = [], 0, 0
            for (ex, x0), comp in zip(items, comps, strict=True):
                tp = policy.encode(self.teacher_prompt(ex))
                truncated += len(tp) + len(comp.ids) > run.max_seq_len  # privileged text would be cut first
                correct += task.is_correct(ex, comp.text)
                pairs.append(DistillPair(Trace(x0, comp.ids, text=comp.text), Trace(tp, comp.ids, text=comp.text)))
            n = len(items)
            metrics = {
                "prompts": n, "samples_y0": n, "generations": n, "tokens_generated": sum(len(c.ids) for c in comps),
                "wins_y0": correct, "y0_accuracy": correct / n if n else None,
                "needs_revision": 0, "revision_successes": 0,  # OPSD asks for no feedback
                "teacher_prompts_truncated": truncated, "generation_s": seconds, "feedback_s": 0.0,
            }
            out.append(DistillRollout(pairs, metrics))
        return out

    def micro_loss(self, policy: Policy, params: dict[str, torch.Tensor], pairs: list[DistillPair]
                   ) -> tuple[torch.Tensor, int, int, dict[str, float]]:
        """Distillation loss of one micro-batch.

        Returns:
            (loss, student forward+backward tokens, teacher forward tokens, loss terms).
        """
        pad, max_len, device = policy.tokenizer.pad_token_id, self.run.max_seq_len, policy.device
        student = make_batch([p.student for p in pairs], pad, max_len, device, policy.bos_id)
        teacher = make_batch([p.teacher for p in pairs], pad, max_len, device, policy.bos_id)
        if not torch.equal(student.mask_BL, teacher.mask_BL):
            raise RuntimeError("student and teacher batches disagree on completion positions")
        teacher_BLV = teacher_logits(policy, params, teacher)
        student_BLV = completion_logits(policy.model, student)
        keep_BL = student.mask_BL > 0
        # Only real completion positions: [1, N, V] rows instead of the padded [B, L, V].
        student_NV, teacher_NV = student_BLV[keep_BL][None], teacher_BLV[keep_BL][None]
        ones = torch.ones(student_NV.shape[:2], device=device)
        loss, stats = distill_kl(student_NV, teacher_NV, ones, self.settings.temperature)
        terms = {"distill": float(stats.loss), "kl": float(stats.kl)}
        return loss, student.num_tokens, teacher.num_tokens, terms

    def train(self, policy: Policy, job: ClientJob, data: DistillRollout) -> LocalUpdateResult:
        """S optimizer steps of A micro-steps of the distillation loss toward the frozen round-start teacher.

        Args:
            policy: the policy; the live model is reset to the job's start state first.
            job: the client's round job (lr, seed).
            data: the client's rollout.

        Returns:
            The adapter copy and n_eff = number of traces, or no update (weight 0) when there are none.
        """
        run = self.run
        metrics = dict(data.metrics)
        pairs = data.pairs
        if not pairs:
            return no_update(metrics, tokens_forward=0)
        start = start_job(policy, job)
        params = teacher_parameters(policy, start)
        forward_tokens = 0

        def micro_step(step_rng: random.Random) -> tuple[torch.Tensor, int, dict[str, float]]:
            nonlocal forward_tokens
            loss, trained, forward, terms = self.micro_loss(policy, params, draw(step_rng, pairs, run.optim.batch_size))
            forward_tokens += forward
            return loss, trained, terms

        stats = optimise(policy, start, run, job.lr, job.seed, micro_step, fedprox(run))
        metrics.update(train_metrics(stats, run))
        metrics["tokens_forward"] = forward_tokens
        return LocalUpdateResult(finish_update(policy, start), float(len(pairs)), metrics)


def teacher_parameters(policy: Policy, start: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The round-start adapter ``start`` (``job.start_state``) on the model's device, keyed by the live parameter
    names."""
    names = {id(p): name for name, p in policy.model.named_parameters()}
    return {names[id(p)]: start[key].to(device=p.device, dtype=p.dtype)
            for key, p in policy.adapter.params.items()}


@torch.no_grad()
def teacher_logits(policy: Policy, params: dict[str, torch.Tensor], batch: SeqBatch) -> torch.Tensor:
    """Logits ``[B, L, V]`` on the completion positions with ``params`` in place of the live LoRA tensors.

    Runs in eval mode (no dropout) and restores the previous mode; the live parameters are never written.
    """
    model = policy.model
    was_training = model.training
    model.eval()
    length = batch.targets_BL.shape[1]
    kwargs = {"input_ids": batch.input_ids_BT, "attention_mask": batch.attention_BT,
              "position_ids": batch.position_ids_BT, "logits_to_keep": length + 1, "use_cache": False}
    out = torch.func.functional_call(model, params, args=(), kwargs=kwargs, strict=False)
    model.train(was_training)
    return out.logits[:, :length, :]
