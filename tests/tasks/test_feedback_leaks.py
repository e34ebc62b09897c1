"""The oracle feedback never reveals the answer, checked over every offline row (SPEAR.md section 7).

For each row a wrong answer is simulated and the feedback is searched for the gold letter as a standalone
token (``\\bB\\b``, case-sensitive). The verdict line names the model's letter, which is never the gold one
for a wrong answer, so the whole text is searched. StrategyQA's feedback must be the same text whether
the gold answer is yes or no, and must not contain the gold word outside the answer-format line (which
names both words). Math uses hand-written rows: neither the boxed answer nor the gold option may appear.
Each checker is also run on a deliberately leaky feedback to show that it can fail.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from fedspear.config import Config
from fedspear.tasks.arc import ArcChallengeTask
from fedspear.tasks.base import LETTERS, Example
from fedspear.tasks.hellaswag import HellaSwagTask
from fedspear.tasks.math_mcqa import MathMCQATask, boxed_answers, math_row_to_example, normalize_math
from fedspear.tasks.multiple_choice import MultipleChoiceTask
from fedspear.tasks.strategy_qa import StrategyQATask

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"offline benchmark data not found at {DATA}")


def _cfg(path: Path | None = None, hint_words: int = 3) -> Config:
    cfg = Config()
    cfg.data.path = None if path is None else str(path)
    cfg.feedback.mc_hint_words = hint_words
    return cfg


def letter_leaks(task: MultipleChoiceTask, examples: list[Example], cfg: Config) -> list[str]:
    """Sorted unique ids of examples whose feedback on a wrong letter, or on no letter, contains the gold letter."""
    leaks = []
    for ex in examples:
        wrong = next(letter for letter in LETTERS[: len(ex.choices)] if letter != ex.answer)
        for completion in (f" {wrong}", " I am not sure."):
            assert not task.is_correct(ex, completion)
            if re.search(rf"\b{ex.answer}\b", task.feedback(ex, completion, cfg)):
                leaks.append(ex.id)
    return sorted(set(leaks))


class _ReferenceHintArc(ArcChallengeTask):
    """The reference's hint: the first words of the gold option, unguarded (reference-notes 4.9)."""

    def hint(self, example: Example, cfg: Config) -> str:
        words = example.choices[LETTERS.index(example.answer)].split()[: cfg.feedback.mc_hint_words]
        return "Hint: " + " ".join(words)


class _ReferenceHintHellaSwag(HellaSwagTask):
    hint = _ReferenceHintArc.hint


# --------------------------------------------------------------------------- ARC and HellaSwag


def _arc_sources() -> list[Path]:
    return [*sorted((DATA / "arc_challenge").glob("*.jsonl")), DATA / "arc_challenge_hf_validation"]


@needs_data
def test_arc_feedback_never_contains_the_gold_letter():
    task = ArcChallengeTask()
    total = 0
    for source in _arc_sources():
        data = task.load(_cfg(source))
        examples = data.train + data.eval
        total += len(examples)
        for hint_words in (3, 10):
            assert letter_leaks(task, examples, _cfg(source, hint_words)) == [], source
    assert total == 1119 + 299 + 1172 + 299


@needs_data
def test_hellaswag_feedback_never_contains_the_gold_letter():
    task = HellaSwagTask()
    source = DATA / "hellaswag"
    data = task.load(_cfg(source))
    examples = data.train + data.eval
    assert len(examples) == 10042
    assert letter_leaks(task, examples, _cfg(source)) == []


@needs_data
def test_letter_checker_catches_the_reference_hint():
    # Unguarded 3-word hints name the gold letter on some real rows (e.g. an option starting "A ..." for A).
    arc = _ReferenceHintArc()
    source = DATA / "arc_challenge" / "ARC-Challenge-Train.jsonl"
    data = arc.load(_cfg(source))
    assert letter_leaks(arc, data.train + data.eval, _cfg(source))
    hs = _ReferenceHintHellaSwag()
    data = hs.load(_cfg(DATA / "hellaswag"))
    assert letter_leaks(hs, data.train + data.eval, _cfg(DATA / "hellaswag"))


# --------------------------------------------------------------------------- StrategyQA


def yes_no_leaks(task: StrategyQATask, examples: list[Example], cfg: Config) -> list[str]:
    """Ids whose feedback depends on the gold answer, or names the gold word outside the format line."""
    format_line = f"Required format: {task.answer_format}."
    leaks = []
    for ex in examples:
        flipped = dataclasses.replace(ex, answer="no" if ex.answer == "yes" else "yes")
        for reasoning in ("Some reasoning.\nAnswer: {}", "I cannot decide."):
            wrong_for_ex = reasoning.format(flipped.answer)
            wrong_for_flipped = reasoning.format(ex.answer)
            text = task.feedback(ex, wrong_for_ex, cfg)
            if text != task.feedback(flipped, wrong_for_flipped, cfg):
                leaks.append(ex.id)
            elif re.search(rf"\b{ex.answer}\b", text.replace(format_line, ""), re.IGNORECASE):
                leaks.append(ex.id)
    return sorted(set(leaks))


class _NamingStrategyQA(StrategyQATask):
    """The reference's wording: names the model's word in a request not to repeat it."""

    def feedback(self, example: Example, completion: str, cfg: Config) -> str:
        return super().feedback(example, completion, cfg) + f"\nDo not repeat {self.extract(completion)}."


class _FactsWithAnswer(StrategyQATask):
    """A hint that appends the gold word to the facts."""

    def feedback(self, example: Example, completion: str, cfg: Config) -> str:
        return super().feedback(example, completion, cfg) + f"\nHint: {example.answer}."


@needs_data
def test_strategyqa_feedback_never_reveals_yes_or_no():
    task = StrategyQATask()
    examples = []
    for name in ("train.json", "dev.json"):
        data = task.load(_cfg(DATA / "strategyqa" / name))
        examples += data.train + data.eval
    assert len(examples) == 2290
    assert yes_no_leaks(task, examples, _cfg()) == []
    # The checker fails on leaky wordings.
    assert len(yes_no_leaks(_NamingStrategyQA(), examples[:50], _cfg())) == 50
    assert len(yes_no_leaks(_FactsWithAnswer(), examples[:50], _cfg())) == 50


# --------------------------------------------------------------------------- MATH-MCQA (hand-written rows)

MATH_ROWS = [
    {"problem": "What is $\\frac{1}{2}+\\frac{1}{4}$?", "level": "Level 1", "type": "Prealgebra",
     "solution": "Write both over 4:\n$\\frac{2}{4}+\\frac{1}{4}$.\nSo the sum is $\\boxed{\\frac{3}{4}}$.",
     "choices": ["$\\frac{1}{2}$", "$\\frac{3}{4}$", "$\\frac{2}{3}$", "$1$"], "answer": 1},
    {"problem": "Solve $2x+3=11$.", "level": "Level 2", "type": "Algebra",
     "solution": "Subtract 3 from both sides to get $2x=8$, so $x=\\boxed{4}$.",
     "choices": ["$3$", "$5$", "$4$", "$8$"], "answer": 2},
    {"problem": "In triangle $ABC$, angle $A$ is $90^\\circ$ and $AB=3$, $AC=4$. Find $BC$.", "level": "Level 2",
     "type": "Geometry",
     "solution": "Angle A is the right angle.\nBy Pythagoras, $BC^2 = 3^2 + 4^2 = 25$.\nHence $BC = \\boxed{5}$.",
     "choices": ["$5$", "$7$", "$6$", "$12$"], "answer": 0},
    {"problem": "How many positive divisors does 12 have?", "level": "Level 2", "type": "Number Theory",
     "solution": "The divisors are 1, 2, 3, 4, 6 and 12.\nCounting them gives $\\boxed{6}$.",
     "choices": ["6", "4", "5", "12"], "answer": 0},
    {"problem": "Compute $\\sqrt{49}$.", "level": "Level 1", "type": "Prealgebra",
     "solution": "$\\sqrt{49} = \\boxed{7}$", "choices": ["$6$", "$8$", "$9$", "$7$"], "answer": 3},
    {"problem": "Simplify $(x+1)^2 - x^2$.", "level": "Level 3", "type": "Algebra",
     "solution": "Expand the square: $x^2 + 2x + 1 - x^2$.\nThe $x^2$ terms cancel.\n"
                 "We are left with \\boxed{2x+1}.",
     "choices": ["$2x$", "$2x + 1$", "$x + 1$", "$1$"], "answer": 1},
    {"problem": "Which point is the midpoint of $D=(0,0)$ and $E=(4,2)$?", "level": "Level 2", "type": "Algebra",
     "solution": "Average the coordinates of D and E.\nThe midpoint is $\\left(2, 1\\right)$, so the answer is "
                 "$\\boxed{(2,1)}$.",
     "choices": ["$(1,2)$", "$(2,1)$", "$(4,2)$", "$(2,2)$"], "answer": 1},
]


def math_leaks(task: MathMCQATask, examples: list[Example], cfg: Config) -> list[str]:
    """Ids whose feedback contains the gold letter, a boxed answer or the gold option text."""
    leaks = []
    for ex in examples:
        wrong = next(letter for letter in LETTERS[: len(ex.choices)] if letter != ex.answer)
        for completion in (f"Some work.\nAnswer: {wrong}", "no idea"):
            text = task.feedback(ex, completion, cfg)
            secrets = [normalize_math(s) for s in boxed_answers(ex.meta["solution"])]
            secrets.append(normalize_math(ex.choices[LETTERS.index(ex.answer)]))
            flat = normalize_math(text)
            if re.search(rf"\b{ex.answer}\b", text) or any(s and s in flat for s in secrets):
                leaks.append(ex.id)
    return sorted(set(leaks))


class _UnfilteredSolutionMath(MathMCQATask):
    """The first three solution lines with only \\boxed{...} removed (no line filter)."""

    def hint(self, example: Example, cfg: Config) -> str:
        return "\n".join(re.sub(r"\\boxed\{[^}]*\}", "", example.meta["solution"]).splitlines()[:3])


def test_math_feedback_never_contains_the_boxed_answer_or_gold_letter():
    task = MathMCQATask()
    examples = [math_row_to_example(row, f"m{i}") for i, row in enumerate(MATH_ROWS)]
    for hint_words in (3, 10):
        assert math_leaks(task, examples, _cfg(hint_words=hint_words)) == []
    # Without the line filter the answer shows up: "Angle A" (gold A), the divisor list holds 6, the expansion
    # holds "2x + 1", and the midpoint line states "(2, 1)".
    assert math_leaks(_UnfilteredSolutionMath(), examples, _cfg()) == ["m2", "m3", "m5", "m6"]
