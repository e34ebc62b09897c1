"""MATH-MCQA: competition math problems with four lettered options, solved step by step (docs/extending.md, "A task").

Hub schema (``stellaathena/math_mcqa``): ``problem``, ``level``, ``type``, ``solution`` (LaTeX with a
``\\boxed{...}`` final answer), ``choices`` (option texts) and ``answer`` (the gold option's 0-based index).

The oracle hint is the first few lines of the gold solution with every ``\\boxed{...}`` removed and every
line dropped that states the gold option or a boxed answer in any equivalent spelling (compared in the canonical
form of :func:`normalize_math`: ``\\dfrac34`` = ``3/4``, ``90^\\circ`` = ``90 degrees``, ...), or states its value
as a number in another spelling (compared as exact fractions by :func:`numeric_values`: ``0.5`` = ``\\frac{1}{2}``,
``1/4`` = ``0.25``, ``50\\%`` = ``0.5``), or names the gold letter, or holds a word shaped like an option marker
(``C.``, ``(B)``); when no line is left it falls back to the option-words hint, and to a generic hint when even
that would reveal the answer.
"""

from __future__ import annotations

import re
import unicodedata
from fractions import Fraction
from typing import Any

from fedspear.tasks.base import LETTERS, Example, TaskData
from fedspear.tasks.loaders import MalformedRow, load_task_data, parse_structured, text_field
from fedspear.tasks.multiple_choice import (
    MultipleChoiceTask,
    cut,
    format_options,
    is_marker_word,
    last_declared_letter,
    names_letter,
    option_hint_sentence,
    option_text,
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


# Spellings folded by normalize_math, applied in order (after NFKC and before whitespace is dropped).
_DROP_COMMANDS = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)[lr]?\b|\\displaystyle\b|\\limits\b")
_TEXT_COMMANDS = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mathit|mbox|operatorname)\s*\{([^{}]*)\}")
_UNITS = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ\b|\\degree\b|°|\bdegrees?\b|\\%|%|\bpercent\b", re.IGNORECASE)
_SYMBOLS = (("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\minus", "-"), ("−", "-"), ("–", "-"), ("\\cdot", "*"),
            ("\\times", "*"), ("×", "*"), ("·", "*"), ("\\div", "/"), ("÷", "/"), ("\\leq", "<="), ("\\le", "<="),
            ("≤", "<="), ("\\geq", ">="), ("\\ge", ">="), ("≥", ">="), ("\\neq", "!="), ("\\ne", "!="), ("≠", "!="),
            ("\\pi", "π"), ("\\infty", "∞"), ("√", "\\sqrt"), ("\\{", "{"), ("\\}", "}"), ("{,}", ""))
_GROUP = r"\{([^{}]*)\}"
_SQRT = re.compile(r"\\sqrt\s*(?:" + _GROUP + r"|\(([^()]*)\)|(\w))")
_ATOM_IN_PARENS = re.compile(r"\(([\w.π∞]+)\)")


def normalize_math(text: str) -> str:
    r"""A canonical spelling of a math answer or solution line, for "does this line state the answer" checks.

    Folds the equivalent spellings people use for the same answer: Unicode width (NFKC) and case; ``$``,
    ``\(``/``\)``, ``\[``/``\]``; ``\left``/``\right`` and ``\big`` sizes; thin and other spaces (``\!``, ``\,``,
    ``\;``, ``\:``, ``~``, ``\quad``) and all whitespace; ``\text{..}``/``\mathrm{..}``/... (the contents stay);
    ``\dfrac``/``\tfrac``/``\frac{a}{b}``/``\frac ab`` -> ``a/b``; ``\sqrt{2}``/``\sqrt2``/``√2``/``sqrt(2)`` ->
    ``sqrt2``; degrees (``^\circ``, ``^{\circ}``, ``°``, ``degrees``) and percent signs dropped; ``\minus``,
    U+2212 and en dash -> ``-``; ``\cdot``/``\times`` -> ``*``; ``\le``/``\ge``/``\ne`` spellings; ``\pi`` -> ``π``;
    trailing zeros (``5.0``, ``5.50``) and thousands separators (``1{,}000``, ``1,000``); braces and parentheses
    around a single number or name. Numeric equivalence (``0.5`` = ``1/2``) is :func:`numeric_values`' job.

    Args:
        text: LaTeX or plain text.

    Returns:
        The canonical form (no whitespace); "" for text with no content.
    """
    text = unicodedata.normalize("NFKC", text)
    text = re.sub(r"\\[()\[\]]|\$", " ", text)
    text = _DROP_COMMANDS.sub("", text)
    for _ in range(3):  # nested \text{\textbf{..}}
        text = _TEXT_COMMANDS.sub(r"\1", text)
    text = _UNITS.sub("", text)
    text = re.sub(r"\\[,;:! ]|~|\\q?quad\b", " ", text)
    for old, new in _SYMBOLS:
        text = text.replace(old, new)
    for _ in range(3):  # \sqrt{..} / \sqrt2 / \sqrt x / √(2) / sqrt(2) -> sqrt(..), innermost first
        text = _SQRT.sub(lambda m: f"sqrt({next(g for g in m.groups() if g is not None)})", text)
    text = re.sub(r"\bsqrt\s*\(", "sqrt(", text)
    text = re.sub(r"\\frac\s*(\w)\s*(\w)", r"\\frac{\1}{\2}", text)  # \frac12
    for _ in range(3):  # nested fractions, innermost first
        text = re.sub(r"\\frac\s*" + _GROUP + r"\s*" + _GROUP, r"((\1)/(\2))", text)
    text = re.sub(r"\s+", "", text).casefold()
    text = text.replace("{", "(").replace("}", ")").replace("\\", "")
    text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)
    text = re.sub(r"(\d\.\d*?)0+(?!\d)", r"\1", text)
    text = re.sub(r"(\d)\.(?!\d)", r"\1", text)
    for _ in range(4):  # ((1)/(2)) -> (1/2) -> ...
        text = _ATOM_IN_PARENS.sub(r"\1", re.sub(r"\(\(([^()]*)\)\)", r"(\1)", text))
    text = re.sub(r"^\((.*)\)$", lambda m: m.group(1) if _balanced(m.group(1)) else m.group(0), text)
    return text.rstrip(".,;")


def _balanced(text: str) -> bool:
    """Whether the parentheses of ``text`` never close more than they opened."""
    depth = 0
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0


def answer_spellings(text: str) -> list[str]:
    """Canonical forms that state the answer ``text``: the whole, and what follows its last top-level ``=``."""
    flat = normalize_math(text)
    out = [flat] if flat else []
    if "=" in flat:
        rhs = flat.rsplit("=", 1)[1]
        if rhs and rhs not in out and "<" not in flat[-len(rhs) - 2 :] and ">" not in flat[-len(rhs) - 2 :]:
            out.append(rhs)
    return out


def states_answer(flat: str, secrets: list[str]) -> bool:
    """Whether the canonical text ``flat`` contains any canonical secret as a whole number or expression.

    A secret that starts (ends) with a digit does not match inside a longer number: "4" is not in "24" or "4.5",
    but is in "x=4" and "4/5".
    """
    for secret in secrets:
        if not secret:
            continue
        before = r"(?<![\d.])" if secret[0].isdigit() else ""
        after = r"(?!\d|\.\d)" if secret[-1].isdigit() else ""
        if re.search(before + re.escape(secret) + after, flat):
            return True
    return False


# The canonical form has no spaces, so a number may touch letters ("x=0.5ofthetank"); only digits bound it.
_NUMBER = re.compile(r"(?<![\d.])(-?)(\d+(?:\.\d+)?)(?:/(\d+(?:\.\d+)?))?(?!\d|\.\d)")
_ONE_NUMBER = re.compile(r"-?\(?-?\d+(?:\.\d+)?(?:/\d+(?:\.\d+)?)?\)?")
_PERCENT = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)\s*(?:\\%|%|percent\b)", re.IGNORECASE)


def numeric_values(flat: str, raw: str = "") -> set[Fraction]:
    """The exact values of the numbers in the canonical text ``flat`` (:func:`normalize_math`): integers, decimals
    and fractions ``a/b`` (``\\frac{a}{b}`` after normalising), with a leading ``-`` or ``-(``; a number followed by a
    percent sign in ``raw`` (the text before normalising) also counts as its hundredth (``50\\%`` -> 50 and 1/2).

    Args:
        flat: canonical text.
        raw: the original text, read only for percent signs.

    Returns:
        The set of values (empty when no number is found; a zero denominator is skipped).
    """
    values: set[Fraction] = set()
    for match in _NUMBER.finditer(flat):
        negative = bool(match.group(1)) or flat[max(0, match.start() - 2) : match.start()] == "-("
        denominator = Fraction(match.group(3)) if match.group(3) else Fraction(1)
        if denominator:
            value = Fraction(match.group(2)) / denominator
            values.add(-value if negative else value)
    values.update(Fraction(m.group(1)) / 100 for m in _PERCENT.finditer(raw))
    return values


def answer_values(texts: list[str]) -> set[Fraction]:
    """The values of those answer texts (the gold option, the boxed answers) that are one number, also after the last
    ``=`` (:func:`answer_spellings`), with a stated percent also as its hundredth: what no hint line may state."""
    values: set[Fraction] = set()
    for text in texts:
        for spelling in answer_spellings(text):
            if _ONE_NUMBER.fullmatch(spelling):
                values |= numeric_values(spelling, text if _PERCENT.search(text) else "")
    return values


def solution_hint(solution: str, secrets: list[str], gold_letter: str, num_options: int = 4,
                  values: set[Fraction] | None = None) -> str | None:
    """Up to 3 non-empty solution lines (300 characters) that reveal none of ``secrets`` nor the gold letter, and
    hold no word shaped like an option marker (``C.``, ``(B)``) of the ``num_options`` letters, which would point
    the model at that option.

    Args:
        solution: the gold solution.
        secrets: canonical texts that must not appear (:func:`answer_spellings` of the gold option and the
            boxed answers), compared with :func:`states_answer`.
        gold_letter: the correct option's letter.
        num_options: how many options the problem has.
        values: answer values no line may state in any spelling (:func:`answer_values`), compared with
            :func:`numeric_values`.

    Returns:
        The hint text, or None when no line qualifies.
    """
    lines = []
    for line in remove_boxed(solution).splitlines():
        line = line.strip()
        flat = normalize_math(line)
        if (not flat or states_answer(flat, secrets) or names_letter(line, gold_letter)
                or (values and numeric_values(flat, line) & values)
                or any(is_marker_word(word, LETTERS[:num_options]) for word in line.split())):
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
    choices = tuple(option_text(c) for c in raw)
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
    matches_option_text = False  # a solution that starts with "3 apples..." is reasoning, not option "3"

    def load(self, cfg: Any) -> TaskData:
        return load_task_data(cfg, self.hub_id, math_row_to_example, default_eval=("test", "validation"))

    def extract(self, completion: str, num_options: int | None = None,
                choices: tuple[str, ...] | list[str] = ()) -> str | None:
        """The letter of the last "Answer: X" declaration, else the last bare option letter (a reasoning task:
        the options are not matched by text, ``choices`` is accepted for the multiple-choice interface)."""
        return last_declared_letter(completion, num_options or len(choices) or self.max_options)

    def hint(self, example: Example, cfg: Any) -> str:
        """Solution lines, else the option words, else a generic hint; never the answer or the gold letter."""
        gold_text = example.choices[LETTERS.index(example.answer)]
        solution = str(example.meta.get("solution", ""))
        answers = [gold_text, *boxed_answers(solution)]
        secrets = [s for text in answers for s in answer_spellings(text)]
        values = answer_values(answers)
        lines = solution_hint(solution, secrets, example.answer, len(example.choices), values)
        if lines is not None:
            return f"Hint: part of a correct solution:\n{lines}"
        found = option_words_hint(gold_text, cfg.feedback.mc_hint_words, example.answer)
        if found is not None and not (states_answer(normalize_math(found[0]), secrets)
                                      or numeric_values(normalize_math(found[0]), found[0]) & values):
            return option_hint_sentence(*found)
        return self.generic_hint

    def privileged_context(self, example: Example, max_chars: int | None = None) -> str:
        """The gold letter and option, then the gold solution, cut to ``max_chars``."""
        gold_text = example.choices[LETTERS.index(example.answer)]
        solution = str(example.meta.get("solution", ""))
        text = f"Correct answer: {example.answer}. {gold_text}"
        return cut(f"{text}\n\nSolution:\n{solution}" if solution else text, max_chars)
