"""Evaluation of the global model: greedy-generation accuracy, and log-likelihood scoring for multiple choice.

Log-likelihood scoring sums the log-probabilities of each option's continuation tokens after the prompt.
The continuation is ``Task.choice_continuations`` (e.g. " B") tokenized without special tokens, which is the
token sequence the model samples after "Answer:" in training, so training and evaluation score the same tokens.

A diverged model never gets an accuracy: when the adapter or the model's scores hold NaN/inf, the result has
``accuracy: None``, ``diverged: True`` and ``diverged_reason`` (an argmax over NaN scores would otherwise pick
the first option for every question and report the share of gold answers that are option A).
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import Any

import torch

from fedspear.algorithms.base import Trace
from fedspear.algorithms.common import completion_logits, completion_logprobs, make_batch
from fedspear.config import Config
from fedspear.feedback import verifier_of
from fedspear.generation import eval_settings, generate, merged_lora
from fedspear.models import Policy, is_finite_state
from fedspear.tasks.base import Example, Task


class Diverged(Exception):
    """The model's scores are not finite, so no accuracy can be computed; the message says what was seen."""


def methods_for(task: Task, cfg: Config) -> list[str]:
    """Evaluation methods for this task: 'auto' = log-likelihood for MC tasks (as the paper), else generative."""
    method = cfg.data.eval_method
    is_mc = task.kind == "mc"
    if method == "auto":
        return ["log_likelihood"] if is_mc else ["generative"]
    if method == "both":
        return ["log_likelihood", "generative"] if is_mc else ["generative"]
    if method == "log_likelihood" and not is_mc:
        raise ValueError(f"data.eval_method=log_likelihood needs a multiple-choice task; '{task.name}' is not")
    return [method]


def _group_accuracy(examples: list[Example], correct: list[bool]) -> dict[str, float]:
    groups: dict[str, list[bool]] = {}
    for ex, ok in zip(examples, correct):
        group = ex.meta.get("group")
        if group is not None:
            groups.setdefault(str(group), []).append(ok)
    return {g: sum(v) / len(v) for g, v in sorted(groups.items())}


def generative_correct(policy: Policy, task: Task, cfg: Config, examples: list[Example]) -> list[bool]:
    """Decode each prompt (greedy unless ``gen.eval_do_sample``) and verify the declared answer."""
    gen = cfg.gen
    settings = eval_settings(gen)
    prompts = [policy.encode(ex.prompt) for ex in examples]
    check_finite_logits(policy, cfg, prompts[: gen.eval_batch_size])
    completions = generate(policy, prompts, settings, seed=cfg.data.seed)
    verifier = verifier_of(task)  # the task's own verifier, even when a feedback source judges training
    return [verifier.is_correct(ex, c.text) for ex, c in zip(examples, completions)]


@torch.no_grad()
def check_finite_logits(policy: Policy, cfg: Config, prompts: list[list[int]]) -> None:
    """One forward over ``prompts`` (each predicting its last token); raise :class:`Diverged` when any logit of
    those positions is NaN/inf (greedy decoding would silently pick token 0 from such logits)."""
    prompts = [p for p in prompts if len(p) >= 2]
    if not prompts:
        return
    batch = make_batch([Trace(p[:-1], p[-1:]) for p in prompts], policy.tokenizer.pad_token_id,
                       cfg.model.max_seq_len, policy.device, policy.bos_id)
    was_training = policy.model.training
    policy.model.eval()
    finite = bool(torch.isfinite(completion_logits(policy.model, batch)).all())
    policy.model.train(was_training)
    if not finite:
        raise Diverged(f"the model's logits are NaN/inf on {len(prompts)} evaluation prompts")


@torch.no_grad()
def log_likelihood_correct(policy: Policy, task: Task, cfg: Config, examples: list[Example]) -> list[bool]:
    """Score every option's continuation; the prediction is the argmax of the summed log-probabilities.

    Raises:
        Diverged: some option's score is NaN/inf (no prediction can be made from it).
    """
    tok = policy.tokenizer
    pairs: list[tuple[int, Trace]] = []
    for idx, ex in enumerate(examples):
        x0 = policy.encode(ex.prompt)
        for cont in task.choice_continuations(ex):
            pairs.append((idx, Trace(x0, tok(policy.continuation(cont), add_special_tokens=False)["input_ids"])))
    scores: list[list[float]] = [[] for _ in examples]
    was_training = policy.model.training
    policy.model.eval()
    size = cfg.gen.eval_batch_size
    with merged_lora(policy):
        for start in range(0, len(pairs), size):
            chunk = pairs[start : start + size]
            batch = make_batch([t for _, t in chunk], tok.pad_token_id, cfg.model.max_seq_len, policy.device,
                               policy.bos_id)
            sums = completion_logprobs(policy.model, batch).sum(-1).tolist()
            for (idx, _), s in zip(chunk, sums):
                scores[idx].append(s)
    policy.model.train(was_training)
    bad = sum(1 for s in scores for v in s if not math.isfinite(v))
    if bad:
        raise Diverged(f"{bad} of {len(pairs)} option log-likelihoods are NaN/inf")
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return [letters[max(range(len(s)), key=s.__getitem__)] == ex.answer for ex, s in zip(examples, scores)]


def evaluate(policy: Policy, task: Task, cfg: Config, examples: list[Example]) -> dict[str, Any]:
    """Evaluate the live model (its current adapter) on ``examples`` of ``task`` (``cfg``: ``data.eval_method``,
    ``data.seed`` and the ``gen.eval_*`` settings).

    Returns:
        {"accuracy", "method", "n", "seconds", "<method>_accuracy" for each method run, "groups": per
        ``Example.meta["group"]`` accuracy of the primary method when groups exist}. When the model diverged
        (non-finite adapter, logits or scores) the accuracies are None and ``diverged: True`` and
        ``diverged_reason`` are added.
        ``Example.meta["group"]`` accuracy of the primary method when groups exist, "correct": the primary
        method's per-item correctness as a string of "1"/"0" in ``examples`` order, "items": a 12-hex-digit
        digest of the ordered example ids (two runs whose digests match scored the same items, so
        ``fedspear sweep`` can pair them item by item)}.
    """
    start = time.perf_counter()
    result: dict[str, Any] = {"n": len(examples)}
    methods = methods_for(task, cfg)
    for method in methods:
        fn = log_likelihood_correct if method == "log_likelihood" else generative_correct
        try:
            if not is_finite_state(policy.adapter.get()):
                raise Diverged("the adapter holds NaN/inf")
            correct = fn(policy, task, cfg, examples)
        except Diverged as exc:
            result.update({f"{m}_accuracy": None for m in methods}, accuracy=None, method=methods[0],
                          diverged=True, diverged_reason=str(exc))
            break
        result[f"{method}_accuracy"] = sum(correct) / max(1, len(correct))
        if method == methods[0]:
            result["accuracy"] = result[f"{method}_accuracy"]
            result["method"] = method
            result["correct"] = "".join("1" if ok else "0" for ok in correct)
            result["items"] = hashlib.sha256("\n".join(ex.id for ex in examples).encode()).hexdigest()[:12]
            groups = _group_accuracy(examples, correct)
            if groups:
                result["groups"] = groups
    result["seconds"] = time.perf_counter() - start
    return result
