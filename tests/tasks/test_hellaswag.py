"""HellaSwag rows, the 6-line text format, prompts and feedback (fedspear/tasks/hellaswag.py)."""

from __future__ import annotations

import bz2
import collections
import json
from pathlib import Path

import pytest

from fedspear.config import Config
from fedspear.tasks.hellaswag import HellaSwagTask, clean_text, hellaswag_row_to_example
from fedspear.tasks.loaders import MalformedRow

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"offline benchmark data not found at {DATA}")

RECORD = "Baking: A woman cracks eggs. she\n2\nsings.\nflies away.\nwhisks them in a bowl.\nleaves the room.\n"
PROMPT = (
    "Choose the ending that best continues the passage below. Answer with the letter of the correct option only."
    "\n\nBaking: A woman cracks eggs. she\n"
    "A. sings.\nB. flies away.\nC. whisks them in a bowl.\nD. leaves the room.\nAnswer:"
)


def _cfg(path: Path | str | None = None, **data) -> Config:
    cfg = Config()
    cfg.data.path = None if path is None else str(path)
    for key, value in data.items():
        setattr(cfg.data, key, value)
    return cfg


def test_six_line_text_records_plain_and_bz2(tmp_path):
    (tmp_path / "hs_train.txt").write_text(RECORD * 2 + "Cut off: x\n1\n")
    with bz2.open(tmp_path / "hs_val.txt.bz2", "wt") as f:
        f.write(RECORD.replace("cracks eggs", "beats eggs"))  # an eval prompt that is not a training prompt
    data = HellaSwagTask().load(_cfg(tmp_path))
    assert [e.prompt for e in data.train] == [PROMPT, PROMPT]
    assert [e.id for e in data.train] == ["train-0", "train-1"]
    assert [(e.answer, e.label) for e in data.eval] == [("C", "C")]
    assert data.stats.skipped == {"incomplete 6-line record": 1}


def test_hub_row_with_split_context_and_wikihow_markup():
    row = {"ind": 7, "activity_label": "Cooking", "ctx_a": "[header] Make tea [title] Boil water.", "ctx_b": "then",
           "endings": ["pour it [step] slowly.", "eat it.", "sing.", "run."], "label": "0"}
    ex = hellaswag_row_to_example(row, "r")
    assert ex.id == "7" and ex.answer == "A"
    assert ex.prompt.endswith("\n\nCooking: Make tea. Boil water. then\nA. pour it slowly.\nB. eat it.\nC. sing.\n"
                              "D. run.\nAnswer:")
    assert clean_text("Make tea. Boil water. then") == "Make tea. Boil water. then"  # cleaning is idempotent


@pytest.mark.parametrize(
    ("change", "reason"),
    [({"label": ""}, "missing label"), ({"label": "4"}, "answer key not among labels"),
     ({"ctx": " ", "ctx_a": None}, "missing ctx"), ({"endings": None}, "missing endings"),
     ({"endings": ["a", "", "c", "d"]}, "empty option text")],
)
def test_malformed_rows(change, reason):
    row = {"activity_label": "X", "ctx": "c", "endings": ["a", "b", "c", "d"], "label": "1", **change}
    with pytest.raises(MalformedRow, match=reason):
        hellaswag_row_to_example(row, "r")


def test_hub_schema_jsonl_with_endings_as_text(tmp_path):
    row = {"activity_label": "Baking", "ctx": "A woman cracks eggs. she", "label": 2,
           "endings": json.dumps(["sings.", "flies away.", "whisks them in a bowl.", "leaves the room."])}
    other = {**row, "ctx": "A woman beats eggs. she"}  # a carved eval set needs a second prompt
    (tmp_path / "rows.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(other) + "\n")
    data = HellaSwagTask().load(_cfg(tmp_path / "rows.jsonl"))
    assert sorted(e.prompt for e in data.train + data.eval) == [PROMPT.replace("cracks", "beats"), PROMPT]


def test_feedback_and_privileged_context():
    ex = hellaswag_row_to_example({"activity_label": "Baking", "ctx": "A woman cracks eggs. she", "label": "2",
                                   "endings": ["sings.", "flies away.", "whisks them in a bowl.", "leaves."]}, "r")
    task = HellaSwagTask()
    assert task.feedback(ex, " D", _cfg()) == (
        "Your answer (D) is incorrect.\n"
        'Hint: the correct option begins with "whisks them in ...". '
        "Pick the ending that continues the scene most naturally.\n"
        "Required format: the option letter only.\n"
        "Do not choose option D again."
    )
    assert task.privileged_context(ex) == "Correct answer: C. whisks them in a bowl."
    assert (task.name, task.kind, task.hub_id) == ("hellaswag", "mc", ("hellaswag", None))


@needs_data
def test_offline_validation_file_loads_every_record():
    data = HellaSwagTask().load(_cfg(DATA / "hellaswag"))
    examples = data.train + data.eval
    assert len(examples) == 10042 and len(data.eval) == 201  # one split: round(0.02 * 10042) carved out
    assert collections.Counter(e.answer for e in examples) == {"A": 2515, "B": 2485, "C": 2584, "D": 2458}
    first = next(e for e in examples if e.id == "validation-0")
    assert first.answer == "D"
    assert first.prompt.endswith("\n\nRoof shingle removal: A man is sitting on a roof. he\n"
                                 "A. is using wrap to wrap a pair of skis.\nB. is ripping level tiles off.\n"
                                 "C. is holding a rubik's cube.\nD. starts pulling up roofing on a roof.\nAnswer:")
    capped = HellaSwagTask().load(_cfg(DATA / "hellaswag", max_eval_examples=50))
    assert len(capped.eval) == 50 and {e.id for e in capped.eval} <= {e.id for e in data.eval}


def test_hub_schema_written_by_datasets_to_csv(tmp_path):
    import datasets

    row = {"ind": 5, "activity_label": "Baking", "ctx": "A woman cracks eggs. she", "label": "2",
           "endings": ["sings.", "flies away.", "whisks them in a bowl.", "leaves the room."]}
    other = {**row, "ind": 6, "ctx": "A woman beats eggs. she"}  # a carved eval set needs a second prompt
    datasets.Dataset.from_list([row, other]).to_csv(str(tmp_path / "hs.csv"))  # endings: ['a' 'b']
    data = HellaSwagTask().load(_cfg(tmp_path / "hs.csv"))
    assert sorted((e.id, e.prompt) for e in data.train + data.eval) == [("5", PROMPT),
                                                                        ("6", PROMPT.replace("cracks", "beats"))]
