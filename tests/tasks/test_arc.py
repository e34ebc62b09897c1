"""ARC-Challenge rows, prompts, verifier, feedback and loading (fedspear/tasks/arc.py)."""

from __future__ import annotations

import collections
import csv
import json
from pathlib import Path

import pytest

from fedspear.config import Config
from fedspear.tasks.arc import ArcChallengeTask, arc_row_to_example
from fedspear.tasks.loaders import MalformedRow

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"offline benchmark data not found at {DATA}")

AI2_ROW = {"id": "Q1", "question": {"stem": "Which gas do plants take in?", "choices": [
    {"text": "oxygen", "label": "A"}, {"text": "carbon dioxide from the air", "label": "B"},
    {"text": "helium", "label": "C"}]}, "answerKey": "B"}
HUB_ROW = {"id": "Q1", "question": "Which gas do plants take in?",
           "choices": {"text": ["oxygen", "carbon dioxide from the air", "helium"], "label": ["A", "B", "C"]},
           "answerKey": "B"}


def _cfg(path: Path | str | None = None, **data) -> Config:
    cfg = Config()
    cfg.data.path = None if path is None else str(path)
    for key, value in data.items():
        setattr(cfg.data, key, value)
    return cfg


def test_ai2_and_hub_rows_give_the_same_example():
    ex = arc_row_to_example(AI2_ROW, "train-0")
    assert ex == arc_row_to_example(HUB_ROW, "train-0")
    assert ex.prompt == (
        "Answer the following science question with the letter of the correct option only.\n\n"
        "Question: Which gas do plants take in?\n"
        "A. oxygen\nB. carbon dioxide from the air\nC. helium\nAnswer:"
    )
    assert (ex.id, ex.answer, ex.label) == ("Q1", "B", "B")
    assert ex.choices == ("oxygen", "carbon dioxide from the air", "helium")


def test_numeric_labels_and_five_options_map_to_letters():
    row = {"id": "N", "question": {"stem": "Pick", "choices": [
        {"text": t, "label": str(i + 1)} for i, t in enumerate(["v", "w", "x", "y", "z"])]}, "answerKey": "5"}
    ex = arc_row_to_example(row, "r")
    assert ex.answer == "E" and ex.prompt.endswith("D. y\nE. z\nAnswer:")
    task = ArcChallengeTask()
    assert task.is_correct(ex, " E")
    assert task.choice_continuations(ex) == [" A", " B", " C", " D", " E"]
    three = arc_row_to_example(AI2_ROW, "r")
    assert not task.is_correct(three, " D") and task.extract(" D", 3) is None


@pytest.mark.parametrize(
    ("change", "reason"),
    [({"answerKey": "E"}, "answer key not among labels"), ({"answerKey": None}, "answer key not among labels"),
     ({"question": {"stem": " ", "choices": AI2_ROW["question"]["choices"]}}, "empty stem"),
     ({"question": {"choices": AI2_ROW["question"]["choices"]}}, "missing stem"),
     ({"question": {"stem": "Q", "choices": "none"}}, "missing choices"),
     ({"question": {"stem": "Q", "choices": [{"text": "", "label": "A"}, {"text": "b", "label": "B"}]},
       "answerKey": "A"}, "empty option text")],
)
def test_malformed_rows_raise_with_a_reason(change, reason):
    with pytest.raises(MalformedRow, match=reason):
        arc_row_to_example({**AI2_ROW, **change}, "r")


def test_hub_schema_csv_and_jsonl_files(tmp_path):
    with open(tmp_path / "arc_train.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(HUB_ROW))
        writer.writeheader()
        for i in range(3):
            writer.writerow({**HUB_ROW, "id": f"c{i}", "choices": repr(HUB_ROW["choices"])})
        writer.writerow({**HUB_ROW, "id": "bad", "choices": repr(HUB_ROW["choices"]), "answerKey": "Z"})
    test_row = {**HUB_ROW, "id": "j0", "question": "Which gas do animals breathe out?"}  # not a training question
    (tmp_path / "arc_test.jsonl").write_text(json.dumps(test_row) + "\n")
    data = ArcChallengeTask().load(_cfg(tmp_path))
    assert [e.id for e in data.train] == ["c0", "c1", "c2"] and [e.id for e in data.eval] == ["j0"]
    assert data.train[0] == arc_row_to_example({**HUB_ROW, "id": "c0"}, "x")
    assert data.stats.skipped == {"answer key not among labels": 1}


def test_feedback_names_the_wrong_letter_gives_a_short_hint_and_the_format():
    ex = arc_row_to_example(AI2_ROW, "r")
    cfg = _cfg()
    text = ArcChallengeTask().feedback(ex, " A. oxygen", cfg)
    assert text == (
        "Your answer (A) is incorrect.\n"
        'Hint: the correct option begins with "carbon dioxide from ...". '
        "Think about the scientific principle behind the question.\n"
        "Required format: the option letter only.\n"
        "Do not choose option A again."
    )
    cfg.feedback.mc_hint_words = 10  # more words than the option: at most half of its 5 words
    assert 'begins with "carbon dioxide ..."' in ArcChallengeTask().feedback(ex, "nothing", cfg)


def test_feedback_falls_back_to_a_generic_hint_when_the_option_is_the_letter():
    row = {"id": "L", "question": {"stem": "Which vitamin?", "choices": [
        {"text": "A", "label": "A"}, {"text": "C", "label": "B"}]}, "answerKey": "A"}
    text = ArcChallengeTask().feedback(arc_row_to_example(row, "r"), " B", _cfg())
    assert "Hint: compare every option" in text and "(B)" in text


def test_privileged_context_is_the_gold_letter_and_text_cut_to_length():
    ex = arc_row_to_example(AI2_ROW, "r")
    assert ArcChallengeTask().privileged_context(ex) == "Correct answer: B. carbon dioxide from the air"
    assert ArcChallengeTask().privileged_context(ex, max_chars=17) == "Correct answer: B"


def test_task_attributes():
    task = ArcChallengeTask()
    assert (task.name, task.kind, task.answer_marker, task.hub_id) == (
        "arc_challenge", "mc", "Answer:", ("ai2_arc", "ARC-Challenge"))


@needs_data
def test_offline_folder_uses_the_test_split_for_eval():
    data = ArcChallengeTask().load(_cfg(DATA / "arc_challenge"))
    assert (len(data.train), len(data.eval)) == (1119, 1172)
    assert data.stats.read == 1119 + 1172 and data.stats.num_skipped == 0
    sizes = collections.Counter(len(e.choices) for e in data.train)
    assert (sizes[3], sizes[5]) == (1, 1)  # README: Train has one 3-option and one 5-option row
    sizes = collections.Counter(len(e.choices) for e in data.eval)
    assert (sizes[3], sizes[5]) == (4, 3)
    assert all(e.answer in "ABCDE"[: len(e.choices)] for e in data.train + data.eval)
    numeric = next(e for e in data.train if e.id == "NYSEDREGENTS_2004_8_31")  # labels 1-4, answerKey "2"
    assert numeric.answer == "B" and "\nB. bubbles when acid is placed on it\n" in numeric.prompt
    dev = ArcChallengeTask().load(_cfg(DATA / "arc_challenge", eval_split="validation"))
    assert len(dev.eval) == 299


@needs_data
def test_save_to_disk_folder_matches_the_dev_jsonl():
    saved = ArcChallengeTask().load(_cfg(DATA / "arc_challenge_hf_validation", eval_fraction=0.1, seed=1))
    assert len(saved.eval) == 30 and len(saved.train) == 269  # one split: round(0.1 * 299) carved out
    dev = ArcChallengeTask().load(_cfg(DATA / "arc_challenge" / "ARC-Challenge-Dev.jsonl"))
    assert sorted(saved.train + saved.eval, key=lambda e: e.id) == sorted(dev.train + dev.eval, key=lambda e: e.id)


def test_hub_schema_written_by_datasets_to_csv_and_to_json(tmp_path):
    import datasets

    second = {**HUB_ROW, "id": "Q2", "answerKey": "C", "question": "Which gas do animals breathe out?"}
    ds = datasets.Dataset.from_list([HUB_ROW, second])  # two questions: a carved eval set needs two prompts
    ds.to_csv(str(tmp_path / "arc.csv"))  # choices become "{'text': array([...], dtype=object), ...}"
    ds.to_json(str(tmp_path / "arc.json"))
    for name in ("arc.csv", "arc.json"):
        data = ArcChallengeTask().load(_cfg(tmp_path / name))
        examples = sorted(data.train + data.eval, key=lambda e: e.id)
        assert examples[0] == arc_row_to_example(AI2_ROW, "x"), name
        assert examples[1].answer == "C", name


# --------------------------------------------------------------------------- option texts that look like markers

MARKER_ROW = {"id": "M1", "question": "Which one conducts electricity?",
              "choices": {"text": ["C. a copper wire carries current", "a glass\nD. rod", "a rubber band", "dry wood"],
                          "label": ["A", "B", "C", "D"]}, "answerKey": "A"}


def test_a_newline_inside_an_option_text_shows_no_fake_option_line():
    ex = arc_row_to_example(MARKER_ROW, "r")
    assert ex.choices[1] == "a glass D. rod"
    lines = ex.prompt.splitlines()
    assert lines[-5:] == ["A. C. a copper wire carries current", "B. a glass D. rod", "C. a rubber band",
                          "D. dry wood", "Answer:"]


def test_an_option_text_with_a_letter_marker_is_never_a_hint_to_that_letter():
    ex = arc_row_to_example(MARKER_ROW, "r")
    text = ArcChallengeTask().feedback(ex, " B", _cfg())
    # before: 'the correct option begins with "C. a copper ..."', which points at option C
    assert text.splitlines()[1] == ('Hint: the correct option contains the words "a copper". '
                                    "Think about the scientific principle behind the question.")
    glass = {**MARKER_ROW, "answerKey": "B"}  # gold B = "a glass D. rod": 3 hint words would end with "D."
    assert ArcChallengeTask().feedback(arc_row_to_example(glass, "r"), " A", _cfg()).splitlines()[1].startswith(
        'Hint: the correct option contains the words "a glass".')


@pytest.mark.parametrize(
    ("completion", "given", "correct"),
    [("A. C. a copper wire carries current", "A", True),  # the option line copied whole: option A
     ("C. a copper wire carries current", None, False),  # option A's own text: its "C." is not the model's letter
     ("I pick C. a copper wire carries current", None, False),
     (" C", "C", False), ("C. a rubber band", "C", False), (" A", "A", True)],
)
def test_the_verifier_does_not_read_an_option_texts_marker_as_the_answer(completion, given, correct):
    ex = arc_row_to_example(MARKER_ROW, "r")
    task = ArcChallengeTask()
    assert task.extract_for(ex, completion) == given
    assert task.is_correct(ex, completion) is correct
    if not correct:
        verdict = task.feedback(ex, completion, _cfg()).splitlines()[0]
        assert verdict == ("Your answer is incorrect: no valid option letter was found in it." if given is None
                           else f"Your answer ({given}) is incorrect.")
