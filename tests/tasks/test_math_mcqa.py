"""MATH-MCQA rows, prompts, verifier, solution hint and privileged context (fedspear/tasks/math_mcqa.py)."""

from __future__ import annotations

import csv
import json
from fractions import Fraction

import pytest

from fedspear.config import Config
from fedspear.tasks.loaders import MalformedRow
from fedspear.tasks.math_mcqa import (
    MathMCQATask,
    answer_spellings,
    answer_values,
    boxed_answers,
    math_row_to_example,
    normalize_math,
    numeric_values,
    remove_boxed,
    solution_hint,
    states_answer,
)

ROW = {"problem": "Solve $2x+3=11$.", "level": "Level 2", "type": "Algebra",
       "solution": "Subtract 3 from both sides.\nThen $2x=8$ and $x=\\boxed{4}$.",
       "choices": ["$3$", "$5$", "$4$", "$8$"], "answer": 2}


def _cfg(path=None, hint_words: int = 10) -> Config:
    cfg = Config()
    cfg.data.path = None if path is None else str(path)
    cfg.feedback.mc_hint_words = hint_words
    return cfg


def test_row_to_example_prompt_answer_and_meta():
    ex = math_row_to_example(ROW, "train-3")
    assert ex.prompt == (
        'Solve the following problem. Reason step by step, then finish with a final line of the form '
        '"Answer: <letter>", where <letter> is the letter of the correct option.\n\n'
        "Problem: Solve $2x+3=11$.\n\nOptions:\nA. $3$\nB. $5$\nC. $4$\nD. $8$\n\nSolution:"
    )
    assert (ex.id, ex.answer, ex.label) == ("train-3", "C", "C")
    assert ex.meta == {"solution": ROW["solution"], "level": "Level 2", "type": "Algebra", "boxed": "4"}


@pytest.mark.parametrize(("answer", "letter"), [(0, "A"), ("3", "D"), ("B", "B"), (1.0, "B")])
def test_answer_index_forms(answer, letter):
    assert math_row_to_example({**ROW, "answer": answer}, "r").answer == letter


@pytest.mark.parametrize(
    ("change", "reason"),
    [({"answer": 4}, "answer index out of range"), ({"answer": None}, "missing answer"),
     ({"answer": "x"}, "answer is not an option index"), ({"answer": True}, "missing answer"),
     ({"problem": ""}, "empty problem"), ({"choices": None}, "missing choices"),
     ({"choices": ["1", " ", "3", "4"]}, "empty option text")],
)
def test_malformed_rows(change, reason):
    with pytest.raises(MalformedRow, match=reason):
        math_row_to_example({**ROW, **change}, "r")


@pytest.mark.parametrize(
    ("text", "letter"),
    [("2x = 8 so x = 4.\nAnswer: C", "C"), ("Answer: A\nNo wait.\nAnswer: D.", "D"), ("I pick B, not C", "C"),
     ("**Answer: (B)**", "B"), ("", None), ("x=4", None)],
)
def test_extract_takes_the_last_declaration(text, letter):
    assert MathMCQATask().extract(text) == letter


def test_boxed_helpers_handle_nested_braces():
    text = "so $\\boxed{\\frac{1}{2}}$ and \\boxed {x^{2}}."
    assert boxed_answers(text) == ["\\frac{1}{2}", "x^{2}"]
    assert remove_boxed(text) == "so $$ and ."


def test_solution_hint_keeps_three_clean_lines_within_300_characters():
    solution = "Line one.\n\nThe answer 4 is here.\nLine two.\nPoint C lies on it.\nLine three.\nLine four."
    assert solution_hint(solution, ["4"], "C") == "Line one.\nLine two.\nLine three."
    long = ("word " * 100).strip()
    hint = solution_hint(long, ["zzz"], "C")
    assert len(hint) <= 300 and hint.endswith(" ...") and hint.startswith("word word")
    assert solution_hint("so 4\n4 again\n\\boxed{4}", ["4"], "C") is None  # the box alone leaves an empty line


def test_feedback_uses_solution_lines_without_the_answer():
    ex = math_row_to_example(ROW, "r")
    assert MathMCQATask().feedback(ex, "Answer: A", _cfg()) == (
        "Your answer (A) is incorrect.\n"
        "Hint: part of a correct solution:\nSubtract 3 from both sides.\nThen $2x=8$ and $x=$.\n"
        'Required format: a final line "Answer: <letter>" with the letter of the correct option.\n'
        "Do not choose option A again."
    )


def test_feedback_falls_back_to_option_words_then_to_a_generic_hint():
    # Every solution line states the answer 4, so no line is left.
    row = {**ROW, "solution": "Since 4 works, $x=\\boxed{4}$.", "choices": ["1", "2", "x equals four exactly", "3"]}
    text = MathMCQATask().feedback(math_row_to_example(row, "r"), "Answer: B", _cfg(hint_words=10))
    assert 'Hint: the correct option begins with "x equals ...".' in text
    row_one_word = {**ROW, "solution": "It is 4: $x=\\boxed{4}$."}  # the only option word is the answer itself
    text = MathMCQATask().feedback(math_row_to_example(row_one_word, "r"), "Answer: B", _cfg())
    assert "Hint: recheck every step" in text and "4" not in text


def test_privileged_context_has_the_answer_and_the_solution():
    ex = math_row_to_example(ROW, "r")
    task = MathMCQATask()
    assert task.privileged_context(ex) == f"Correct answer: C. $4$\n\nSolution:\n{ROW['solution']}"
    assert task.privileged_context(ex, max_chars=20) == "Correct answer: C. $"
    assert (task.name, task.kind, task.answer_marker) == ("math_mcqa", "reasoning", "Answer:")


def test_loads_hub_schema_jsonl_and_csv(tmp_path):
    (tmp_path / "math_train.jsonl").write_text("".join(json.dumps({**ROW, "answer": i % 4}) + "\n" for i in range(4)))
    test_row = {**ROW, "problem": "Solve $2x+5=13$."}  # an eval prompt that is not a training prompt
    with open(tmp_path / "math_test.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(ROW))
        writer.writeheader()
        writer.writerow({**test_row, "choices": str(ROW["choices"])})
        writer.writerow({**test_row, "choices": str(ROW["choices"]), "answer": "9"})
    data = MathMCQATask().load(_cfg(tmp_path))
    assert [e.answer for e in data.train] == ["A", "B", "C", "D"]
    assert [e.choices for e in data.eval] == [("$3$", "$5$", "$4$", "$8$")]
    assert data.stats.skipped == {"answer index out of range": 1}


def test_hub_schema_written_by_datasets_to_csv(tmp_path):
    import datasets

    other = {**ROW, "answer": 0, "problem": "Solve $2x+5=13$."}  # a carved eval set needs a second prompt
    datasets.Dataset.from_list([ROW, other]).to_csv(str(tmp_path / "math.csv"))
    data = MathMCQATask().load(_cfg(tmp_path / "math.csv"))
    examples = data.train + data.eval
    assert sorted(e.answer for e in examples) == ["A", "C"]
    assert {e.prompt for e in examples} == {math_row_to_example(ROW, "x").prompt, math_row_to_example(other, "x").prompt}


# Each group: spellings of one answer that must share one canonical form (normalize_math).
SAME = [
    ["$\\frac{3}{4}$", "\\dfrac{3}{4}", "\\tfrac34", "3/4", "\\frac 3 4", "$\\left(\\frac{3}{4}\\right)$"],
    ["(2,1)", "\\left(2, 1\\right)", "$( 2 ,\\! 1 )$", "\\left( 2,\\,1 \\right)"],
    ["90", "$90^\\circ$", "90^{\\circ}", "90°", "90 degrees", "\\text{90 Degrees}"],
    ["-3", "$-3$", "\\minus 3", "−3", "– 3", "$-\\!3$"],
    ["2\\sqrt{3}", "2\\sqrt3", "2√3", "2 sqrt(3)", "2\\sqrt{(3)}", "2 \\sqrt 3"],
    ["\\frac{\\sqrt{3}}{2}", "\\sqrt{3}/2", "√3/2", "\\dfrac{\\sqrt 3}{2}"],
    ["5", "5.0", "5.00", "\\boxed5".replace("\\boxed", ""), "\\mathrm{5}", "\\textbf{5}", "５"],
    ["2.5", "2.50", "$2.5$"],
    ["1000", "1,000", "1{,}000"],
    ["50", "50\\%", "50%", "50 percent"],
    ["2\\pi", "2π", "$2 \\pi$"],
    ["\\frac{x+1}{2}", "(x+1)/2", "\\dfrac{x + 1}{2}"],
    ["x \\le 3", "x\\leq 3", "x ≤ 3", "x<=3"],
    ["3 \\cdot 4", "3\\times4", "3 × 4", "3*4"],
]
DIFFERENT = [("3/4", "4/3"), ("2,1", "1,2"), ("-3", "3"), ("2\\sqrt{3}", "2\\sqrt{2}"), ("5.5", "5"), ("25", "5")]


@pytest.mark.parametrize("group", SAME, ids=[g[0] for g in SAME])
def test_equivalent_latex_spellings_share_one_canonical_form(group):
    assert len({normalize_math(text) for text in group}) == 1, [normalize_math(text) for text in group]


@pytest.mark.parametrize(("a", "b"), DIFFERENT)
def test_different_answers_stay_different(a, b):
    assert normalize_math(a) != normalize_math(b)


def test_states_answer_matches_whole_numbers_and_expressions():
    secrets = answer_spellings("$x = 4$")
    assert secrets == ["x=4", "4"]  # the right-hand side states the answer too
    assert states_answer(normalize_math("so $x=4.0$"), secrets)
    assert states_answer(normalize_math("hence 4/5 of them"), secrets)
    assert not states_answer(normalize_math("24 apples"), secrets)  # a different number
    assert not states_answer(normalize_math("about 4.5"), secrets)
    assert states_answer(normalize_math("the angle is $90$ degrees"), answer_spellings("$90^\\circ$"))


def test_solution_lines_with_an_equivalent_spelling_of_the_answer_are_dropped():
    row = dict(ROW, choices=["$3$", "$\\frac{3}{4}$", "$4$", "$8$"], answer=1,
               solution="Divide both sides by 4.\nThis gives 3/4 of the whole.\nOr $\\dfrac34$.\nSo \\boxed{\\tfrac{3}{4}}.")
    ex = math_row_to_example(row, "r")
    assert MathMCQATask().hint(ex, _cfg()) == "Hint: part of a correct solution:\nDivide both sides by 4.\nSo ."


@pytest.mark.parametrize(
    ("option", "stated"),
    [("$0.5$", "so $x = \\frac{1}{2}$ of the tank."), ("$\\frac{1}{2}$", "so x = 0.5 of the tank."),
     ("$1/4$", "so x = 0.25 of the tank."), ("$0.25$", "so $x = 1/4$ of the tank."),
     ("$\\dfrac{3}{4}$", "so x = 0.75 of the tank."), ("$50\\%$", "so x = 0.5 of the tank."),
     ("$0.5$", "so x is 50% of the tank."), ("$-\\frac{1}{2}$", "so x = -0.5 of the tank.")],
)
def test_a_solution_line_stating_the_gold_value_in_another_spelling_is_redacted(option, stated):
    row = dict(ROW, choices=["$3$", option, "$4$", "$8$"], answer=1,
               solution=f"Set up the ratio.\n{stated}\nCheck the units.")
    hint = MathMCQATask().hint(math_row_to_example(row, "r"), _cfg())
    assert hint == "Hint: part of a correct solution:\nSet up the ratio.\nCheck the units."


def test_other_values_and_the_gold_values_sign_stay_in_the_hint():
    row = dict(ROW, choices=["$3$", "$\\frac{1}{2}$", "$4$", "$8$"], answer=1,
               solution="Halve 0.75 first.\nThen x = -0.5 is rejected.\nSo 2/4 remains.")
    hint = MathMCQATask().hint(math_row_to_example(row, "r"), _cfg())
    assert hint == "Hint: part of a correct solution:\nHalve 0.75 first.\nThen x = -0.5 is rejected."
    assert numeric_values(normalize_math("x = \\frac{1}{4} + 0.25"), "") == {Fraction(1, 4)}
    assert answer_values(["$x = 0.5$", "\\text{blue}"]) == {Fraction(1, 2)}


def test_an_option_newline_is_one_space_and_a_marker_line_is_no_hint():
    row = dict(ROW, choices=["$3$", "$5$\n\nD. $4$", "$4$", "$8$"], answer=2,
               solution="Option (B) is too big.\nSubtract 3 from both sides.\nThen $x=\\boxed{4}$.")
    ex = math_row_to_example(row, "r")
    assert ex.choices[1] == "$5$ D. $4$"
    assert "B. $5$ D. $4$\nC. $4$\nD. $8$\n" in ex.prompt
    assert MathMCQATask().hint(ex, _cfg()) == ("Hint: part of a correct solution:\nSubtract 3 from both sides.\n"
                                               "Then $x=$.")  # "Option (B) is too big." would point at B
