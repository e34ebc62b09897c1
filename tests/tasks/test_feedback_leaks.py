"""The oracle feedback never reveals the answer, checked over every offline row (docs/extending.md, "A task").

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
import unicodedata
from pathlib import Path

import pytest

from fedspear.config import Config
from fedspear.tasks.arc import ArcChallengeTask, arc_row_to_example
from fedspear.tasks.base import LETTERS, Example
from fedspear.tasks.hellaswag import HellaSwagTask
from fedspear.tasks.math_mcqa import (
    MathMCQATask,
    answer_spellings,
    boxed_answers,
    math_row_to_example,
    normalize_math,
    remove_boxed,
    states_answer,
)
from fedspear.tasks.multiple_choice import MultipleChoiceTask
from fedspear.tasks.strategy_qa import StrategyQATask, strategy_row_to_example

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"offline benchmark data not found at {DATA}")


def _cfg(path: Path | None = None, hint_words: int = 3) -> Config:
    cfg = Config()
    cfg.data.path = None if path is None else str(path)
    cfg.feedback.mc_hint_words = hint_words
    return cfg


def _fold(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def letter_leaks(task: MultipleChoiceTask, examples: list[Example], cfg: Config) -> list[str]:
    """Sorted unique ids of examples whose feedback on a wrong letter, or on no letter, names the gold letter
    (``\\bB\\b`` after NFKC, so also full-width ``Ｂ``; or ``(b)``), or whose hint contains the whole gold option
    in any case or width (the verdict's fixed words may coincide with an option: "incorrect.")."""
    leaks = []
    for ex in examples:
        wrong = next(letter for letter in LETTERS[: len(ex.choices)] if letter != ex.answer)
        gold = _fold(ex.choices[LETTERS.index(ex.answer)])
        for completion in (f" {wrong}", " I am not sure."):
            assert not task.is_correct(ex, completion)
            text = unicodedata.normalize("NFKC", task.feedback(ex, completion, cfg))
            if (re.search(rf"\b{ex.answer}\b|\({ex.answer.lower()}\)", text)
                    or re.search(rf"(?<!\w){re.escape(gold)}(?!\w)", _fold(task.hint(ex, cfg)))):
                leaks.append(ex.id)
    return sorted(set(leaks))


class _ReferenceHintArc(ArcChallengeTask):
    """The reference's hint: the first words of the gold option, unguarded (docs/deviations.md, section 4, item 9)."""

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


def _arc_row(i: int, texts: list[str], key: str) -> dict:
    return {"id": f"h{i}", "question": f"Question {i}?", "answerKey": key,
            "choices": {"text": texts, "label": list("ABCD")[: len(texts)]}}


# Gold options that the former guards let through: a one-word option given whole, a full-width letter, a
# lower-case option label, and an option the ARC nudge states in another case.
MC_ROWS = [
    _arc_row(0, ["Respiration", "Photosynthesis", "Digestion", "Erosion"], "B"),
    _arc_row(1, ["red dwarfs", "white dwarfs", "Ｃ-type stars are the hottest", "brown dwarfs"], "C"),
    _arc_row(2, ["a frog", "a fish", "a bird", "(d) all of these animals"], "D"),
    _arc_row(3, ["Scientific Principle", "a guess", "an opinion", "a rumour"], "A"),
]


class _FormerGuardArc(ArcChallengeTask):
    """The former hint: option words minus words holding the gold letter as \\bB\\b (case-sensitive, no NFKC)."""

    def hint(self, example: Example, cfg: Config) -> str:
        words = example.choices[LETTERS.index(example.answer)].split()
        count = min(cfg.feedback.mc_hint_words, len(words))
        count = max(1, len(words) // 2) if count >= len(words) else count
        kept = [w for w in words[:count] if not re.search(rf"\b{example.answer}\b", w)]
        return f"Hint: the correct option begins with \"{' '.join(kept)} ...\". {self.hint_nudge}"


def test_mc_hints_never_state_the_gold_letter_or_option_in_another_case_or_width():
    examples = [arc_row_to_example(row, row["id"]) for row in MC_ROWS]
    assert letter_leaks(ArcChallengeTask(), examples, _cfg()) == []
    assert letter_leaks(_FormerGuardArc(), examples, _cfg()) == ["h0", "h1", "h2", "h3"]


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
            elif re.search(rf"\b{ex.answer}\b", unicodedata.normalize("NFKC", text.replace(format_line, "")),
                           re.IGNORECASE):
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


def test_strategyqa_facts_with_yes_or_no_in_another_case_or_width_are_left_out():
    facts = ["Ｙｅｓ, penguins are birds.", "Penguins cannot fly.", "NO bird is a fish.", "Birds lay eggs."]
    rows = [{"qid": f"q{i}", "question": "Is a penguin a bird?", "answer": answer, "facts": facts}
            for i, answer in enumerate((True, False))]
    task = StrategyQATask()
    examples = [strategy_row_to_example(row, row["qid"]) for row in rows]
    assert yes_no_leaks(task, examples, _cfg()) == []
    assert "Hint: facts that matter here:\n- Penguins cannot fly.\n- Birds lay eggs." in task.feedback(
        examples[0], "Answer: no", _cfg())


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
    """Ids whose feedback names the gold letter, or has a line stating a boxed answer or the gold option in any
    spelling: canonical forms (normalize_math) compared as whole numbers / expressions (states_answer)."""
    leaks = []
    for ex in examples:
        wrong = next(letter for letter in LETTERS[: len(ex.choices)] if letter != ex.answer)
        secrets = [s for text in [*boxed_answers(ex.meta["solution"]), ex.choices[LETTERS.index(ex.answer)]]
                   for s in answer_spellings(text)]
        for completion in (f"Some work.\nAnswer: {wrong}", "no idea"):
            text = task.feedback(ex, completion, cfg)
            lines = [normalize_math(line) for line in text.splitlines()]
            if re.search(rf"\b{ex.answer}\b", unicodedata.normalize("NFKC", text)) or any(
                    states_answer(line, secrets) for line in lines):
                leaks.append(ex.id)
    return sorted(set(leaks))


# Rows whose solutions restate the answer in another spelling than the option's (all must be filtered).
SPELLING_ROWS = [
    {"problem": "What fraction is shaded?", "solution": "Three of four parts: 3/4 of the square.\n"
     "Count the parts.\nThat is $\\dfrac34$.\nSo \\boxed{\\tfrac{3}{4}}.",
     "choices": ["$\\frac{1}{4}$", "$\\frac{3}{4}$", "$\\frac{1}{2}$", "$1$"], "answer": 1},
    {"problem": "Find angle $C$.", "solution": "Angles sum to 180.\nSo $C = 90$ degrees.\nThat is $90°$.\n"
     "Answer $\\boxed{90^{\\circ}}$.", "choices": ["$45^\\circ$", "$60^\\circ$", "$90^\\circ$", "$120^\\circ$"],
     "answer": 2},
    {"problem": "Solve $x+5=2$.", "solution": "Subtract five.\nWe get $x = \\minus 3$.\nOr x = −3.\n$x=\\boxed{-3}$",
     "choices": ["$3$", "$-3$", "$7$", "$-7$"], "answer": 1},
    {"problem": "Side of the triangle?", "solution": "Use the height.\nThe side is 2√3.\nIt is $2\\sqrt 3$.\n"
     "$\\boxed{2\\sqrt{3}}$", "choices": ["$2\\sqrt{3}$", "$3\\sqrt{2}$", "$4$", "$6$"], "answer": 0},
    {"problem": "Evaluate.", "solution": "Multiply out.\nIt equals 5.0 exactly.\nOr $５$.\n\\boxed{5}",
     "choices": ["$4$", "$6$", "$5$", "$7$"], "answer": 2},
    {"problem": "Midpoint?", "solution": "Average both coordinates.\nWe get $\\left( 2,\\, 1 \\right)$.\n(2, 1) it is.\n"
     "$\\boxed{(2,1)}$", "choices": ["$(1,2)$", "$(2,1)$", "$(4,2)$", "$(2,2)$"], "answer": 1},
    {"problem": "How many?", "solution": "Multiply the counts.\nThat is 1{,}000 in all.\nOr 1,000.\n$\\boxed{1000}$",
     "choices": ["$100$", "$1000$", "$10$", "$10000$"], "answer": 1},
    {"problem": "What share?", "solution": "Divide and scale.\nIt is 50 percent.\nOr $50\\%$.\n\\boxed{50\\%}",
     "choices": ["$25\\%$", "$50\\%$", "$75\\%$", "$100\\%$"], "answer": 1},
    {"problem": "Circumference of a unit circle over its radius?", "solution": "Use the formula.\nThat gives 2π.\n"
     "$\\boxed{2\\pi}$", "choices": ["$\\pi$", "$2\\pi$", "$4$", "$\\pi^2$"], "answer": 1},
    {"problem": "Solve for x.", "solution": "Isolate x.\nSo 4 works.\n$\\boxed{x=4}$",
     "choices": ["$x=3$", "$x=4$", "$x=5$", "$x=6$"], "answer": 1},
    {"problem": "Which label?", "solution": "Check each option.\nThe answer is Ｃ.\nOption (c) fits.\n\\boxed{7}",
     "choices": ["$1$", "$2$", "$7$", "$9$"], "answer": 2},
]


def _literal_normalize(text: str) -> str:
    """The filter's former comparison form: no whitespace, $, \\left/\\right or thin spaces; \\dfrac = \\frac."""
    text = re.sub(r"\\(left|right)\b|\\[,;!]|\$", "", text)
    return re.sub(r"\s+", "", text.replace("\\dfrac", "\\frac"))


class _LiteralFilterMath(MathMCQATask):
    """The former line filter: literal containment after _literal_normalize, and \\bB\\b for the letter."""

    def hint(self, example: Example, cfg: Config) -> str:
        solution = example.meta["solution"]
        secrets = [_literal_normalize(s) for s in [example.choices[LETTERS.index(example.answer)],
                                                   *boxed_answers(solution)]]
        lines = [line.strip() for line in remove_boxed(solution).splitlines()]
        kept = [line for line in lines if line and not any(s in _literal_normalize(line) for s in secrets)
                and not re.search(rf"\b{example.answer}\b", line)]
        return "Hint:\n" + "\n".join(kept[:3])


def test_math_feedback_never_restates_the_answer_in_another_spelling():
    rows = [dict(row, level="Level 1", type="Algebra") for row in SPELLING_ROWS]
    examples = [math_row_to_example(row, f"s{i}") for i, row in enumerate(rows)]
    for hint_words in (3, 10):
        assert math_leaks(MathMCQATask(), examples, _cfg(hint_words=hint_words)) == []
    # Every row but s5 leaked through the former literal filter (an equivalent spelling on a kept line); its
    # "\\left( 2,\\, 1 \\right)" and "(2, 1)" were already folded by the former comparison form.
    assert math_leaks(_LiteralFilterMath(), examples, _cfg()) == sorted(f"s{i}" for i in range(len(rows)) if i != 5)


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
