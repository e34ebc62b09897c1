"""MATH-MCQA: competition math problems with four lettered options, solved step by step (SPEAR.md section 7).

Hub schema (``stellaathena/math_mcqa``): ``problem``, ``level``, ``type``, ``solution`` (LaTeX with a
``\\boxed{...}`` final answer), ``choices`` (option texts) and ``answer`` (the gold option's 0-based index).

The oracle hint is the first few lines of the gold solution with every ``\\boxed{...}`` removed and every
line that contains the gold option's text, a boxed answer or the gold letter dropped; when no line is
left it falls back to the option-words hint, and to a generic hint when even that would reveal the answer.
"""

from __future__ import annotations

import re
from typing import Any

from fedspear.tasks.base import LETTERS, Example, TaskData
from fedspear.tasks.loaders import MalformedRow, load_task_data, parse_structured, text_field
from fedspear.tasks.multiple_choice import (
    MultipleChoiceTask,
    cut,
    format_options,
    has_token,
    last_declared_letter,
    option_hint_sentence,
    option_words_hint,
)

INSTRUCTION = (
    "Solve the following problem. Reason step by step, then finish with a final line of the form "
    '"Answer: <letter>", where <letter> is the letter of the correct option.'
)
ANSWER_FORMAT = 'a final line "Answer: <letter>" with the letter of the correct option'
HINT_MAX_LINES = 3
HINT_MAX_CHARS = 300


# --------------------------------------------------------------------------- LaTeX helpers


def _boxed_spans(text: str) -> list[tuple[int, int, int]]:
    """(start, content start, end) of every ``\\boxed{...}`` with balanced braces (end is exclusive)."""
    spans = []
    for match in re.finditer(r"\\boxed\s*\{", text):
        depth, pos = 1, match.end()
        while pos < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[pos], 0)
            pos += 1
        spans.append((match.start(), match.end(), pos))
    return spans


def boxed_answers(text: str) -> list[str]:
    """The contents of every ``\\boxed{...}`` in ``text``, in order."""
    return [text[inner:end - 1].strip() for _, inner, end in _boxed_spans(text)]


def remove_boxed(text: str) -> str:
    """``text`` with every ``\\boxed{...}`` (command and contents) removed; an unclosed one runs to the end."""
    out, last = [], 0
    for start, _, end in _boxed_spans(text):
        if start >= last:
            out.append(text[last:start])
            last = end
    out.append(text[last:])
    return re.sub(r"\\boxed\b", "", "".join(out))


def normalize_math(text: str) -> str:
    """A loose form for containment checks: no whitespace, ``$``, ``\\left``/``\\right`` or thin spaces."""
    text = re.sub(r"\\(left|right)\b|\\[,;!]|\$", "", text)
    return re.sub(r"\s+", "", text.replace("\\dfrac", "\\frac"))


def solution_hint(solution: str, secrets: list[str], gold_letter: str) -> str | None:
    """Up to 3 non-empty solution lines (300 characters) that reveal none of ``secrets`` nor the gold letter.

    Args:
        solution: the gold solution.
        secrets: normalized texts that must not appear (the gold option, the boxed answers).
        gold_letter: the correct option's letter.

    Returns:
        The hint text, or None when no line qualifies.
    """
    lines = []
    for line in remove_boxed(solution).splitlines():
        line = line.strip()
        flat = normalize_math(line)
        if not flat or any(s in flat for s in secrets) or has_token(line, gold_letter):
            continue
        lines.append(line)
        if len(lines) == HINT_MAX_LINES:
            break
    text = "\n".join(lines)
    if len(text) > HINT_MAX_CHARS:  # cut at a word boundary: a prefix of a clean line stays clean
        text = text[: HINT_MAX_CHARS - 4].rsplit(None, 1)[0] + " ..."
    return text or None


# --------------------------------------------------------------------------- rows


def _gold_index(value: Any, num_choices: int) -> int:
    """The gold option index from an int, a digit string, or an option letter."""
    if isinstance(value, bool) or value is None:
        raise MalformedRow("missing answer")
    text = str(value).strip()
    if re.fullmatch(r"\d+(\.0)?", text):
        index = int(float(text))
    elif len(text) == 1 and text in LETTERS:
        index = LETTERS.index(text)
    else:
        raise MalformedRow("answer is not an option index")
    if index >= num_choices:
        raise MalformedRow("answer index out of range")
    return index


def math_row_to_example(row: dict[str, Any], row_id: str) -> Example:
    """Convert one math_mcqa row into an Example; raises MalformedRow when unusable."""
    problem = text_field(row, "problem")
    raw = parse_structured(row.get("choices"))
    if not isinstance(raw, list) or len(raw) < 2:
        raise MalformedRow("missing choices")
    if len(raw) > len(LETTERS):
        raise MalformedRow("more options than letters")
    choices = tuple("" if c is None else str(c).strip() for c in raw)
    if not all(choices):
        raise MalformedRow("empty option text")
    answer = LETTERS[_gold_index(row.get("answer"), len(choices))]
    solution = str(row.get("solution") or "").strip()
    prompt = f"{INSTRUCTION}\n\nProblem: {problem}\n\nOptions:\n{format_options(choices)}\n\nSolution:"
    meta = {"solution": solution, "level": str(row.get("level") or ""), "type": str(row.get("type") or ""),
            "boxed": (boxed_answers(solution) or [""])[-1]}
    example_id = str(row.get("id") or "").strip() or row_id
    return Example(id=example_id, prompt=prompt, answer=answer, label=answer, choices=choices, meta=meta)


class MathMCQATask(MultipleChoiceTask):
    """MATH-MCQA: reason step by step, end with "Answer: X"; the verifier takes the last declaration."""

    name = "math_mcqa"
    kind = "reasoning"
    answer_format = ANSWER_FORMAT
    hub_id = ("stellaathena/math_mcqa", None)
    max_options = 4
    generic_hint = "Hint: recheck every step of your work, especially the last computation, against the options."

    def load(self, cfg: Any) -> TaskData:
        return load_task_data(cfg, self.hub_id, math_row_to_example, default_eval=("test", "validation"))

    def extract(self, completion: str, num_options: int | None = None) -> str | None:
        """The letter of the last "Answer: X" declaration, else the last bare option letter."""
        return last_declared_letter(completion, num_options or self.max_options)

    def hint(self, example: Example, cfg: Any) -> str:
        """Solution lines, else the option words, else a generic hint; never the answer or the gold letter."""
        gold_text = example.choices[LETTERS.index(example.answer)]
        solution = str(example.meta.get("solution", ""))
        secrets = [s for s in [normalize_math(gold_text), *map(normalize_math, boxed_answers(solution))] if s]
        lines = solution_hint(solution, secrets, example.answer)
        if lines is not None:
            return f"Hint: part of a correct solution:\n{lines}"
        found = option_words_hint(gold_text, cfg.feedback.mc_hint_words, example.answer)
        if found is not None and not any(s in normalize_math(found[0]) for s in secrets):
            return option_hint_sentence(*found)
        return self.generic_hint

    def privileged_context(self, example: Example, max_chars: int | None = None) -> str:
        """The gold letter and option, then the gold solution, cut to ``max_chars``."""
        gold_text = example.choices[LETTERS.index(example.answer)]
        solution = str(example.meta.get("solution", ""))
        text = f"Correct answer: {example.answer}. {gold_text}"
        return cut(f"{text}\n\nSolution:\n{solution}" if solution else text, max_chars)
