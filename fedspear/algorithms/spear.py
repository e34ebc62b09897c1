"""SPEAR client update (Lee et al., arXiv 2605.07977; docs/algorithms.md, "SPEAR").

Objective, per micro-step of B wins W and B losses U (drawn with replacement when fewer):

    L = λ_win · L_win + λ_lose · L_lose + λ_anchor · Σ_k mean((θ_k − θ_global,k)²)  [+ μ/2 · ‖θ − θ_global‖²]

    L_win  = − Σ_{i∈W} Σ_t log p_θ(y_t | x0_i, y_<t) / Σ_{i∈W} |y_i|           (tokens incl. EOS if emitted)
    L_lose = Σ_{i∈U} c_i Σ_{t∈M_i} −log(1 − p_θ(y_t | x0_i, y_<t)) · 1[p > μ] / Σ_{i∈U} |M_i|

Wins are correct first answers (x0, y0) and feedback-guided revisions trained under the ORIGINAL prompt
(x0, y'); losses are wrong first answers (x0, y0) with confidence c = 1.0 when a revision fixed them and 0.5
when none did. M_i = completion positions minus every stop id and the answer marker's token sequences (plus the
math-structure list under ``ul_skip_math_ops``), restricted to the last ``ul_tail_tokens`` positions (> 0) or to the
tokens after the final answer marker (``ul_answer_only``); see :mod:`fedspear.algorithms.lose_mask`.

Deviations from the authors' reference (docs/deviations.md): training uses the sampled token ids (no
re-tokenisation; EOS only where emitted); a client with no wins returns no update (weight 0); the returned
adapter is a copy, so FedAvg sees distinct client updates.

Run: ``fedspear run --config arc_challenge-qwen2.5-1.5b``.
"""

from __future__ import annotations

import random
import time

import torch

from fedspear.algorithms.base import Algorithm, ClientJob, LocalUpdateResult, RunSettings, Trace, start_job, start_jobs
from fedspear.algorithms.common import (
    Regulariser,
    collapse,
    completion_logprobs,
    draw,
    fedprox,
    finish_update,
    kept_completion,
    l2_to_global,
    make_batch,
    optimise,
    right_align,
    train_metrics,
)
from fedspear.algorithms.lose_mask import (
    MATH_PROTECTED,
    final_answer_span,
    marker_texts,
    token_sequences,
    unlikelihood_mask,
)
from fedspear.algorithms.losses import spear_loss
from fedspear.algorithms.settings import SpearSettings
from fedspear.algorithms.traces import FeedbackRollout, add_chain, outcome_metrics
from fedspear.feedback_noise import feedback_models
from fedspear.generation import GenSettings, GenStats, eos_ids, rollout_settings
from fedspear.models import Policy
from fedspear.rollout_queue import Request, run_requests
from fedspear.tasks.base import Task
from fedspear.tasks.prompts import build_revision_prompt


class Spear(Algorithm[FeedbackRollout]):
    """SPEAR: likelihood on wins, confidence-weighted unlikelihood on losses (module docstring; settings
    :class:`~fedspear.algorithms.settings.SpearSettings`, section ``spear``)."""

    name = "spear"
    section = "spear"
    Settings = SpearSettings
    # Rollout counts (fedspear.metrics; docs/algorithms.md, "Metrics"); store_interactions: training from people's
    # feedback (fedspear.serve.learning).
    metrics = ("prompts", "wins_y0", "needs_revision", "y0_accuracy", "wins_revision", "revision_successes",
               "revision_attempts_#", "revision_successes_#", "losses_fixed", "losses_unfixed", "generations",
               "tokens_generated", "generation_s", "feedback_s", "wins", "losses", "losses_used", "skipped_no_wins",
               "store_interactions")

    def __init__(self, task: Task, run: RunSettings, settings: SpearSettings) -> None:
        super().__init__(task, run, settings)
        self._protected: dict[int, tuple[set, set]] = {}  # id(tokenizer) -> (marker, protected) sequences

    def regularisers(self) -> list[Regulariser]:
        """SPEAR's anchor (``spear.lambda_anchor``, mean per tensor) then FedProx."""
        anchor = [l2_to_global(self.settings.lambda_anchor, "mean")] if self.settings.lambda_anchor > 0 else []
        return anchor + fedprox(self.run)

    def _gen_settings(self, revision: bool) -> GenSettings:
        return rollout_settings(self.run.gen, revision)

    def rollout(self, policy: Policy, jobs: list[ClientJob]) -> list[FeedbackRollout]:
        """Rollout + verification + feedback-guided revision for several clients at once (docs/algorithms.md, "SPEAR").

        All clients share the round-start adapter, so their prompts go through one request queue
        (:mod:`fedspear.rollout_queue`, ``gen.scheduler``): each wrong answer's hint and revision prompt become a
        follow-up request, up to ``gen.num_revisions`` attempts. Verdicts and hints are drawn in the order the
        prompts were sampled within each wave, whatever the scheduler.
        """
        run, task = self.run, self.task
        start_jobs(policy, jobs)
        users = feedback_models(task, run, jobs)  # the oracle, through the imperfect-feedback knobs
        rollouts = [FeedbackRollout(metrics={"prompts": 0, "wins_y0": 0, "needs_revision": 0}) for _ in jobs]
        gen_stats = GenStats()
        # (job index, example, x0 ids) for every sampled prompt, in job order.
        items = []
        for j, job in enumerate(jobs):
            rng = random.Random(job.seed)
            chosen = rng.sample(job.examples, min(len(job.examples), run.fl.local_rollout_steps))
            items.extend((j, ex, policy.encode(ex.prompt)) for ex in chosen)
        seed = jobs[0].seed if jobs else 0
        chain = _RevisionChain(self, policy, users, rollouts, items)
        first_settings = self._gen_settings(False)
        requests = [Request(x0, first_settings, (i, ())) for i, (_, _, x0) in enumerate(items)]
        run_requests(policy, requests, chain.on_done, seed, gen_stats, run.gen.scheduler)
        for r, user in zip(rollouts, users, strict=True):
            r.metrics.update(user.metrics())
        _finish_metrics(rollouts, items, gen_stats, chain.feedback_s)
        _split_tokens(rollouts, chain.first, items, gen_stats)
        return rollouts

    def protected_sequences(self, policy: Policy) -> tuple[set[tuple[int, ...]], set[tuple[int, ...]]]:
        """(answer-marker token sequences, every protected token sequence) for ``policy``'s tokenizer: the task's
        answer marker, plus :data:`~fedspear.algorithms.lose_mask.MATH_PROTECTED` with ``spear.ul_skip_math_ops``.
        Cached per tokenizer."""
        tok = policy.tokenizer
        cached = self._protected.get(id(tok))
        if cached is None:
            markers = token_sequences(tok, marker_texts(self.task.answer_marker))
            protected = set(markers)
            if self.settings.ul_skip_math_ops:
                protected |= token_sequences(tok, MATH_PROTECTED)
            cached = self._protected[id(tok)] = (markers, protected)
        return cached

    def lose_masks(self, policy: Policy, losses: list[Trace]) -> list[list[float]]:
        """Penalised positions of each lose trace, cut like its trained completion (docs/algorithms.md, "SPEAR").

        The answer marker (and, under ``spear.ul_skip_math_ops``, the math-structure list) is protected where its
        token sequence occurs; with ``spear.ul_answer_only`` the span starts after the last answer marker; every
        stop id of generation is excluded. The mask is computed on the whole sampled completion (so the final
        answer and the tail are those of what the model wrote) and then cut to the completion tokens
        :func:`~fedspear.algorithms.common.make_batch` trains, so it stays aligned when ``model.max_seq_len``
        truncated the completion.

        Returns:
            One 0/1 list per trace, as long as its trained completion.
        """
        settings = self.settings
        markers, protected = self.protected_sequences(policy)
        stop = eos_ids(policy)
        masks = []
        for t in losses:
            span = final_answer_span(t.completion_ids, markers) if settings.ul_answer_only else None
            keep = unlikelihood_mask(t.completion_ids, protected, settings.ul_tail_tokens, span, stop)
            kept = len(kept_completion(t.completion_ids, self.run.max_seq_len))
            masks.append([float(k) for k in keep[:kept]])
        return masks

    def train(self, policy: Policy, job: ClientJob, data: FeedbackRollout) -> LocalUpdateResult:
        """Train the client's adapter on its wins (likelihood) and losses (unlikelihood) (docs/algorithms.md).

        Args:
            policy: the policy; the live model is reset to the job's start state first.
            job: the client's round job (lr, seed).
            data: the client's rollout.

        Returns:
            The adapter copy and n_eff = number of wins, or no update when there are no wins. With
            ``spear.lambda_lose == 0`` (feedback-SFT) the losses are dropped.
        """
        run, settings = self.run, self.settings
        start = start_job(policy, job)
        metrics = dict(data.metrics)
        wins, losses = data.wins, data.losses if settings.lambda_lose > 0 else []
        metrics.update(wins=len(wins), losses=len(losses))
        if not wins:
            metrics.update(skipped_no_wins=1, steps=0, tokens_trained=0, training_s=0.0)
            return LocalUpdateResult(None, 0.0, metrics)
        rng = random.Random(job.seed + 1)
        cap = int(settings.max_lose_ratio * len(wins))
        if len(losses) > cap:
            losses = rng.sample(losses, cap)
        metrics["losses_used"] = len(losses)
        mask_of = dict(zip(map(id, losses), self.lose_masks(policy, losses)))
        pad, max_len, device, bsz = policy.tokenizer.pad_token_id, run.max_seq_len, policy.device, run.optim.batch_size

        dedup = run.dedup_draws

        def micro_step(step_rng: random.Random) -> tuple[torch.Tensor, int, dict[str, float]]:
            w, w_count = collapse(draw(step_rng, wins, bsz), dedup)
            u, u_count = collapse(draw(step_rng, losses, bsz), dedup)
            batch = make_batch(w + u, pad, max_len, device, policy.bos_id)  # one forward for wins and losses
            logp_BL = completion_logprobs(policy.model, batch)
            # A trace drawn k times counts k times in both losses' numerators and denominators, and in tokens_trained.
            counts_B = torch.tensor(w_count + u_count, dtype=torch.float32, device=device)
            mask_BL = batch.mask_BL * counts_B[:, None]
            tokens = int((batch.attention_BT.sum(-1).to(counts_B.dtype) * counts_B).sum())
            nw, length = len(w), mask_BL.shape[1]
            lose_logp = lose_mask = conf_B = None
            if u:
                lose_logp = logp_BL[nw:]
                lose_mask = right_align([mask_of[id(t)] for t in u], length, device) * mask_BL[nw:]
                conf_B = torch.tensor([t.confidence for t in u], device=device)
            loss, stats = spear_loss(logp_BL[:nw], mask_BL[:nw], lose_logp, lose_mask, conf_B, settings)
            terms = {k: float(v) for k, v in stats._asdict().items()}
            return loss, tokens, terms

        stats = optimise(policy, start, run, job.lr, job.seed, micro_step, self.regularisers())
        metrics.update(train_metrics(stats, run))
        return LocalUpdateResult(finish_update(policy, start, settings.ema_decay), float(len(wins)), metrics)


class _RevisionChain:
    """SPEAR's per-prompt chain as a request-queue callback: verify an answer, close its chain
    (:func:`~fedspear.algorithms.traces.add_chain`) or ask for the next revision with the user's hint. Keys are
    ``(item index, the chain's answers so far)``."""

    def __init__(self, algorithm: Spear, policy: Policy, users: list, rollouts: list[FeedbackRollout],
                 items: list) -> None:
        self.algorithm, self.policy, self.users, self.rollouts, self.items = algorithm, policy, users, rollouts, items
        self.first: list = []  # first completions in item order (token attribution)
        self.feedback_s = 0.0
        self.max_attempts = algorithm.run.gen.num_revisions if algorithm.run.feedback.provider != "none" else 0
        self.revision_settings = algorithm._gen_settings(True)

    def close(self, i: int, answers: tuple, accepted: bool) -> None:
        """Item ``i``'s chain is over: its wins and losses (the trace builder shared with the served clients)."""
        j, _, x0 = self.items[i]
        add_chain(self.rollouts[j], self.algorithm.settings, x0, [(c.ids, c.text) for c in answers],
                  [False] * (len(answers) - 1) + [accepted])

    def on_done(self, finished: list) -> list[Request]:
        """Verdicts for ``finished`` (in order), then hints and revision requests for the still-wrong ones."""
        still = []
        for request, comp in finished:
            i, answers = request.key
            j, ex, _ = self.items[i]
            answers = (*answers, comp)
            if len(answers) == 1:
                self.first.append(comp)
                if self.users[j].dropped():
                    continue
            if self.users[j].verdict(ex, comp.text):
                self.close(i, answers, True)
            else:
                still.append((i, answers))
        requests = []
        start = time.perf_counter()
        for i, answers in still:
            j, ex, _ = self.items[i]
            attempt = len(answers) - 1
            if attempt >= self.max_attempts:
                self.close(i, answers, False)
                continue
            hint = self.users[j].feedback(ex, answers[-1].text)
            prompt = build_revision_prompt(ex.prompt, answers[-1].text, hint, self.algorithm.task.answer_format,
                                           self.algorithm.run.gen.revision_template)
            requests.append(Request(self.policy.encode(prompt), self.revision_settings, (i, answers),
                                    chain=i, last_in_chain=attempt + 1 >= self.max_attempts))
        self.feedback_s += time.perf_counter() - start
        return requests


def _finish_metrics(rollouts: list[FeedbackRollout], items: list, gen_stats: GenStats, feedback_s: float) -> None:
    """Per-client rollout metrics; batched work is shared by the clients in proportion to their prompts."""
    share = 1.0 / max(1, len(items))
    for j, r in enumerate(rollouts):
        n = sum(1 for item in items if item[0] == j)
        m = r.metrics
        outcome_metrics(m, len(r.losses))  # dropped prompts are not counted
        # Batched work is shared by the clients: each is charged its share of the round's prompts.
        m["generation_s"] = gen_stats.seconds * n * share
        m["feedback_s"] = feedback_s * n * share
        m["generations"] = n + sum(v for k, v in m.items() if k.startswith("revision_attempts_"))


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


