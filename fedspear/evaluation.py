"""Evaluation of the global model: greedy-generation accuracy, and log-likelihood scoring for multiple choice.

Log-likelihood scoring sums the log-probabilities of each option's continuation tokens after the prompt.
The continuation is ``Task.choice_continuations`` (e.g. " B") tokenized without special tokens, which is the
token sequence the model samples after "Answer:" in training, so training and evaluation score the same tokens.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import torch

from fedspear.algorithms.base import Trace
from fedspear.algorithms.common import completion_logprobs, make_batch
from fedspear.generation import GenSettings, generate, merged_lora
from fedspear.models import Engine
from fedspear.tasks.base import Example


def methods_for(engine: Engine) -> list[str]:
    """Evaluation methods for this task: 'auto' = log-likelihood for MC tasks (as the paper), else generative."""
    method = engine.cfg.data.eval_method
    is_mc = engine.task.kind == "mc"
    if method == "auto":
        return ["log_likelihood"] if is_mc else ["generative"]
    if method == "both":
        return ["log_likelihood", "generative"] if is_mc else ["generative"]
    if method == "log_likelihood" and not is_mc:
        raise ValueError(f"data.eval_method=log_likelihood needs a multiple-choice task; '{engine.task.name}' is not")
    return [method]


def _group_accuracy(examples: list[Example], correct: list[bool]) -> dict[str, float]:
    groups: dict[str, list[bool]] = {}
    for ex, ok in zip(examples, correct):
        group = ex.meta.get("group")
        if group is not None:
            groups.setdefault(str(group), []).append(ok)
    return {g: sum(v) / len(v) for g, v in sorted(groups.items())}


def generative_correct(engine: Engine, examples: list[Example]) -> list[bool]:
    """Decode each prompt (greedy unless ``gen.eval_do_sample``) and verify the declared answer."""
    gen = engine.cfg.gen
    settings = GenSettings(gen.eval_max_new_tokens or gen.max_new_tokens_y0, gen.eval_do_sample,
                           gen.eval_temperature, gen.eval_top_p)
    prompts = [engine.encode(ex.prompt) for ex in examples]
    completions = generate(engine, prompts, settings, seed=engine.cfg.data.seed)
    return [engine.task.is_correct(ex, c.text) for ex, c in zip(examples, completions)]


@torch.no_grad()
def log_likelihood_correct(engine: Engine, examples: list[Example]) -> list[bool]:
    """Score every option's continuation; the prediction is the argmax of the summed log-probabilities."""
    tok, cfg = engine.tokenizer, engine.cfg
    pairs: list[tuple[int, Trace]] = []
    for idx, ex in enumerate(examples):
        x0 = engine.encode(ex.prompt)
        for cont in engine.task.choice_continuations(ex):
            pairs.append((idx, Trace(x0, tok(cont, add_special_tokens=False)["input_ids"])))
    scores: list[list[float]] = [[] for _ in examples]
    was_training = engine.model.training
    engine.model.eval()
    size = cfg.gen.eval_batch_size
    with merged_lora(engine):
        for start in range(0, len(pairs), size):
            chunk = pairs[start : start + size]
            batch = make_batch([t for _, t in chunk], tok.pad_token_id, cfg.model.max_seq_len, engine.device)
            sums = completion_logprobs(engine.model, batch).sum(-1).tolist()
            for (idx, _), s in zip(chunk, sums):
                scores[idx].append(s)
    engine.model.train(was_training)
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return [letters[max(range(len(s)), key=s.__getitem__)] == ex.answer for ex, s in zip(examples, scores)]


def evaluate(engine: Engine, examples: list[Example]) -> dict[str, Any]:
    """Evaluate the live model (its current adapter) on ``examples``.

    Returns:
        {"accuracy", "method", "n", "seconds", "<method>_accuracy" for each method run, "groups": per
        ``Example.meta["group"]`` accuracy of the primary method when groups exist, "correct": the primary
        method's per-item correctness as a string of "1"/"0" in ``examples`` order, "items": a 12-hex-digit
        digest of the ordered example ids (two runs whose digests match scored the same items, so
        ``fedspear sweep`` can pair them item by item)}.
    """
    start = time.perf_counter()
    result: dict[str, Any] = {"n": len(examples)}
    methods = methods_for(engine)
    for method in methods:
        fn = log_likelihood_correct if method == "log_likelihood" else generative_correct
        correct = fn(engine, examples)
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
