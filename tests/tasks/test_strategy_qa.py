"""StrategyQA rows, prompts, verifier, feedback and privileged context (fedspear/tasks/strategy_qa.py)."""

from __future__ import annotations

import collections
import csv
from pathlib import Path

import pytest

from fedspear.config import Config
from fedspear.tasks.loaders import MalformedRow
from fedspear.tasks.strategy_qa import StrategyQATask, facts_hint, strategy_row_to_example

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"offline benchmark data not found at {DATA}")

ROW = {"qid": "q1", "question": "Can a cat outrun a cheetah?", "answer": False,
       "facts": ["Cheetahs run 110 km/h.", "House cats run about 48 km/h.", "Cats sleep a lot.", "Speed varies."]}


def _cfg(path: Path | str | None = None) -> Config:
    cfg = Config()
    cfg.data.path = None if path is None else str(path)
    return cfg


def test_row_to_example():
    ex = strategy_row_to_example(ROW, "r")
    assert ex.prompt == (
        'Answer the following yes/no question. Reason step by step, then finish with a final line '
        '"Answer: yes" or "Answer: no".\n\nQuestion: Can a cat outrun a cheetah?\nReasoning:'
    )
    assert (ex.id, ex.answer, ex.label, ex.choices) == ("q1", "no", "no", ())
    assert ex.meta["facts"] == ROW["facts"]


@pytest.mark.parametrize(("value", "answer"), [(True, "yes"), ("False", "no"), ("yes", "yes"), ("0", "no")])
def test_answer_forms(value, answer):
    assert strategy_row_to_example({**ROW, "answer": value}, "r").answer == answer


@pytest.mark.parametrize(
    ("change", "reason"),
    [({"answer": "maybe"}, "answer is not yes/no"), ({"answer": None}, "answer is not yes/no"),
     ({"question": None}, "missing question"), ({"facts": 3}, "facts are not a list")],
)
def test_malformed_rows(change, reason):
    with pytest.raises(MalformedRow, match=reason):
        strategy_row_to_example({**ROW, **change}, "r")


def test_facts_given_as_one_text_are_split_into_sentences():
    ex = strategy_row_to_example({**ROW, "facts": "Cheetahs are fast. Cats are not! Is that so? Yes."}, "r")
    assert ex.meta["facts"] == ["Cheetahs are fast.", "Cats are not!", "Is that so?", "Yes."]


@pytest.mark.parametrize(
    ("text", "answer"),
    [("Cats are slow.\nAnswer: No", "no"), ("Answer: yes\nHmm.\nanswer: NO.", "no"), ("No, but yes", "yes"),
     ("**Answer:** Yes", "yes"), ("Norway is cold", None), ("", None), ("yesterday", None)],
)
def test_extract(text, answer):
    assert StrategyQATask().extract(text) == answer


def test_facts_hint_is_the_first_half_without_yes_no_words():
    assert facts_hint(ROW["facts"]) == "Hint: facts that matter here:\n- Cheetahs run 110 km/h.\n- House cats run about 48 km/h."
    assert facts_hint(["One fact.", "Two.", "Three."]) == "Hint: facts that matter here:\n- One fact."
    assert facts_hint(["Only one."]) == "Hint: facts that matter here:\n- Only one."
    assert facts_hint(["There is no cure.", "Yes, it rains.", "Rain is wet."]) == "Hint: facts that matter here:\n- Rain is wet."
    assert facts_hint([]) is None


def test_feedback_never_names_the_models_word():
    ex = strategy_row_to_example(ROW, "r")
    text = StrategyQATask().feedback(ex, "Cats are fast.\nAnswer: yes", _cfg())
    assert text == (
        "Your answer is incorrect.\n"
        "Hint: facts that matter here:\n- Cheetahs run 110 km/h.\n- House cats run about 48 km/h.\n"
        'Required format: a final line "Answer: yes" or "Answer: no".\n'
        "Rethink the question from the start instead of repeating your previous reasoning."
    )
    no_facts = strategy_row_to_example({**ROW, "facts": []}, "r")
    text = StrategyQATask().feedback(no_facts, "hmm", _cfg())
    assert text.startswith("Your answer is incorrect: it does not end with a final answer")
    assert "Hint: split the question" in text


def test_privileged_context():
    ex = strategy_row_to_example(ROW, "r")
    task = StrategyQATask()
    assert task.privileged_context(ex) == "Correct answer: no\n\nSupporting facts:\n- " + "\n- ".join(ROW["facts"])
    assert task.privileged_context(ex, max_chars=18) == "Correct answer: no"
    assert (task.name, task.kind, task.hub_id) == ("strategy_qa", "reasoning", ("ChilleD/StrategyQA", None))


def test_csv_in_hub_schema(tmp_path):
    with open(tmp_path / "sqa_train.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(ROW))
        writer.writeheader()
        writer.writerow({**ROW, "answer": "True", "facts": str(ROW["facts"])})
        writer.writerow({**ROW, "qid": "q2", "answer": "False", "facts": str(ROW["facts"]),
                         "question": "Can a snail outrun a cheetah?"})  # a carved eval set needs two prompts
        writer.writerow({**ROW, "qid": "q3", "answer": ""})
    data = StrategyQATask().load(_cfg(tmp_path / "sqa_train.csv"))
    assert sorted((e.id, e.answer) for e in data.train + data.eval) == [("q1", "yes"), ("q2", "no")]
    assert data.stats.skipped == {"answer is not yes/no": 1}
    assert data.train[0].meta["facts"] == ROW["facts"]


@needs_data
def test_offline_folder_uses_dev_for_eval():
    data = StrategyQATask().load(_cfg(DATA / "strategyqa"))
    assert (len(data.train), len(data.eval)) == (2061, 229)
    assert collections.Counter(e.answer for e in data.train + data.eval) == {"no": 1219, "yes": 1071}
    first = next(e for e in data.train if e.id == "2bc9c4f9c19c167187f2")
    assert first.answer == "yes" and first.meta["facts"][0] == "Julius Caesar had three children."


def test_hub_schema_written_by_datasets_to_csv(tmp_path):
    import datasets

    other = {**ROW, "qid": "q2", "answer": True, "question": "Can a cheetah outrun a cat?"}  # a second prompt
    datasets.Dataset.from_list([ROW, other]).to_csv(str(tmp_path / "sqa.csv"))
    data = StrategyQATask().load(_cfg(tmp_path / "sqa.csv"))
    examples = sorted(data.train + data.eval, key=lambda e: e.id)
    assert [(e.id, e.answer) for e in examples] == [("q1", "no"), ("q2", "yes")]
    assert examples[0].meta["facts"] == ROW["facts"]
