"""Task prompts that do not fit the model: counted, and skipped, cut or refused (``data.long_prompts``).

Every prompt is left-truncated where it is encoded for generation or scoring (:func:`fedspear.models.left_truncate`)
to the room the sequence length leaves: ``model.max_seq_len`` minus the new tokens of that call. A task prompt cut
that way loses its beginning (the instruction, the question, the first options), so this module measures every
task prompt once, after the model's tokenizer is loaded and before round 0, against the same budgets:

- training prompts: ``model.max_seq_len - gen.max_new_tokens_y0`` (first answers; training keeps that room too);
- evaluation prompts: ``model.max_seq_len`` minus ``gen.eval_max_new_tokens`` (or ``gen.max_new_tokens_y0``) for
  generative evaluation, minus the longest option continuation for log-likelihood evaluation (the larger reserve
  when both run).

``data.long_prompts`` decides what happens to the prompts over budget: ``skip`` (the default) drops those rows,
``truncate`` keeps them to be cut from the left as before, ``error`` refuses the run in one line. Either way the
counts go to :class:`~fedspear.tasks.base.LoadStats` (``data_stats.json``: ``long_prompts``) with one warning
(docs/configuration.md, "Data"). Revision prompts (task, previous answer, feedback) are built during rounds and
are still cut from the left when they exceed ``model.max_seq_len - gen.max_new_tokens_y1``.
"""

from __future__ import annotations

import logging
from typing import Any

from fedspear.evaluation import methods_for
from fedspear.tasks.base import DataError, Example, TaskData

logger = logging.getLogger("fedspear")

LONG_PROMPT_ACTIONS = ("skip", "truncate", "error")
_CHUNK = 512


def _templated(encoder: Any) -> bool:
    """Whether ``encoder`` is a :class:`fedspear.models.Policy` whose prompts go through the chat template."""
    return bool(getattr(encoder, "chat_template", False) is True and hasattr(encoder, "tokenizer"))


def prompt_lengths(encoder: Any, prompts: list[str]) -> list[int]:
    """Token counts of ``prompts`` as :meth:`fedspear.models.Policy.encode` makes them (special tokens included;
    under ``model.chat_template`` the template's tokens too).

    Args:
        encoder: the policy, or a bare tokenizer (raw prompts).
        prompts: prompt texts.

    Returns:
        One count per prompt, in order.
    """
    if _templated(encoder):
        return [len(encoder.encode(p)) for p in prompts]
    tokenizer = getattr(encoder, "tokenizer", encoder)
    lengths: list[int] = []
    for start in range(0, len(prompts), _CHUNK):
        encoded = tokenizer(prompts[start : start + _CHUNK], add_special_tokens=True)["input_ids"]
        lengths.extend(len(ids) for ids in encoded)
    return lengths


def prompt_budgets(encoder: Any, cfg: Any, task: Any, eval_set: list[Example]) -> dict[str, int]:
    """The most tokens a training and an evaluation prompt may have without being cut (see the module docstring).

    Args:
        encoder: the policy, or a bare tokenizer (raw prompts).
        cfg: the run's Config, with the policy's (capped) ``model.max_seq_len``.
        task: the task (its evaluation methods and option continuations).
        eval_set: the evaluation examples (their continuations set the log-likelihood reserve).

    Returns:
        ``{"train": tokens, "eval": tokens}``.
    """
    seq, gen = cfg.model.max_seq_len, cfg.gen
    reserve = 0
    methods = methods_for(task, cfg)
    if "generative" in methods:
        reserve = gen.eval_max_new_tokens or gen.max_new_tokens_y0
    if "log_likelihood" in methods:
        tokenizer = getattr(encoder, "tokenizer", encoder)
        shape = encoder.continuation if _templated(encoder) else (lambda c: c)
        continuations = sorted({shape(c) for ex in eval_set for c in task.choice_continuations(ex)})
        if continuations:
            longest = max(len(ids) for ids in tokenizer(continuations, add_special_tokens=False)["input_ids"])
            reserve = max(reserve, longest)
    return {"train": seq - gen.max_new_tokens_y0, "eval": seq - reserve}


def fit_prompts(data: TaskData, encoder: Any, cfg: Any, task: Any) -> TaskData:
    """Count the task prompts over budget and apply ``data.long_prompts`` to them.

    Args:
        data: the loaded task data; its ``stats`` receives ``long_prompts``, ``long_prompts_action`` and
            ``prompt_budget``.
        encoder: the policy (its :meth:`~fedspear.models.Policy.encode` sets the lengths), or a bare tokenizer.
        cfg: the run's Config, with the policy's (capped) ``model.max_seq_len``.
        task: the task.

    Returns:
        The data with the rows over budget removed (``skip``) or kept (``truncate``).

    Raises:
        DataError: ``error`` and some prompt is over budget; or ``skip`` leaves no training or no evaluation row.
    """
    action = cfg.data.long_prompts
    budgets = prompt_budgets(encoder, cfg, task, data.eval)
    sides = {"train": data.train, "eval": data.eval}
    fits = {side: [n <= budgets[side] for n in prompt_lengths(encoder, [ex.prompt for ex in rows])]
            for side, rows in sides.items()}
    long = {side: flags.count(False) for side, flags in fits.items()}
    stats = data.stats
    stats.long_prompts, stats.prompt_budget = long, budgets
    what = (f"{long['train']} of {len(data.train)} training and {long['eval']} of {len(data.eval)} evaluation "
            f"prompts are longer than their budget ({budgets['train']} / {budgets['eval']} tokens: "
            f"model.max_seq_len={cfg.model.max_seq_len} minus the new tokens)")
    if not any(long.values()):
        stats.long_prompts_action = action
        return data
    if action == "error":
        raise DataError(f"{what}; raise model.max_seq_len or lower the gen.*max_new_tokens*, or set "
                        "data.long_prompts=skip (drop them) or data.long_prompts=truncate (cut them from the left)")
    stats.long_prompts_action = action
    if action == "truncate":
        logger.warning("%s; they are cut from the left, losing their beginning (data.long_prompts=truncate; "
                       "data_stats.json: long_prompts)", what)
        return data
    kept = {side: [ex for ex, ok in zip(rows, fits[side], strict=True) if ok] for side, rows in sides.items()}
    for side, name in (("train", "training"), ("eval", "evaluation")):
        if not kept[side]:
            raise DataError(f"{what}: no {name} row is left; raise model.max_seq_len or lower the "
                            "gen.*max_new_tokens*, or set data.long_prompts=truncate to cut them from the left")
    logger.warning("%s; those rows are skipped (data.long_prompts=skip; data_stats.json: long_prompts)", what)
    return TaskData(train=kept["train"], eval=kept["eval"], stats=stats)
