"""Local readers, hub loading, split selection, eval carving and capping (fedspear/tasks/loaders.py)."""

from __future__ import annotations

import bz2
import csv
import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from fedspear.config import Config
from fedspear.tasks.base import DataError, Example
from fedspear.tasks.loaders import (
    MalformedRow,
    build_task_data,
    cap_examples,
    carve_eval,
    load_task_data,
    parse_structured,
    read_hub,
    read_local,
    split_of_filename,
)


def _convert(row: dict[str, Any], row_id: str) -> Example:
    """A minimal task row: {"q": text, "a": answer}."""
    if not row.get("q"):
        raise MalformedRow("missing q")
    return Example(id=str(row.get("id") or row_id), prompt=str(row["q"]), answer=str(row["a"]), label=str(row["a"]))


def _rows(n: int, prefix: str = "r") -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i}", "q": f"{prefix} question {i}", "a": "A"} for i in range(n)]


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cfg(path: Path | None, **data: Any) -> Config:
    cfg = Config()
    cfg.data.path = None if path is None else str(path)
    for key, value in data.items():
        setattr(cfg.data, key, value)
    return cfg


def _load(path: Path, default_eval: tuple[str, ...] = ("test", "validation"), **data: Any):
    return load_task_data(_cfg(path, **data), ("unused/hub", None), _convert, default_eval)


# --------------------------------------------------------------------------- names and values


@pytest.mark.parametrize(
    ("name", "split"),
    [("ARC-Challenge-Train.jsonl", "train"), ("ARC-Challenge-Dev.jsonl", "validation"),
     ("ARC-Challenge-Test.jsonl", "test"), ("hellaswag_val_full.txt.bz2", "validation"),
     ("validation.csv", "validation"), ("train-00000-of-00001.parquet", "train"),
     ("contest.jsonl", None), ("data.json", None)],
)
def test_split_of_filename(name, split):
    assert split_of_filename(name) == split


def test_parse_structured_decodes_csv_cells():
    assert parse_structured('["a", "b"]') == ["a", "b"]
    assert parse_structured("{'text': ['x'], 'label': ['A']}") == {"text": ["x"], "label": ["A"]}
    assert parse_structured("['a' 'b c']") == ["a", "b c"]  # numpy array repr written by pandas
    assert parse_structured("plain text") == "plain text"
    assert parse_structured(["x"]) == ["x"]


# --------------------------------------------------------------------------- file formats


def test_jsonl_json_csv_parquet_and_compressed_files_read_the_same_rows(tmp_path):
    rows = _rows(3)
    _write_jsonl(tmp_path / "a.jsonl", rows)
    (tmp_path / "b.json").write_text(json.dumps(rows))
    _write_jsonl(tmp_path / "c.json", rows)  # JSON Lines under .json, as datasets' to_json writes
    with bz2.open(tmp_path / "d.jsonl.bz2", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    with gzip.open(tmp_path / "e.json.gz", "wt") as f:
        f.write(json.dumps({"data": rows}))
    with open(tmp_path / "f.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "q", "a"])
        writer.writeheader()
        writer.writerows(rows)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "g.parquet")
    for name in ("a.jsonl", "b.json", "c.json", "d.jsonl.bz2", "e.json.gz", "f.csv", "g.parquet"):
        assert read_local(tmp_path / name) == {"train": rows}, name


def test_unknown_format_is_a_data_error(tmp_path):
    (tmp_path / "rows.xml").write_text("<rows/>")
    with pytest.raises(DataError, match="unknown data format"):
        read_local(tmp_path / "rows.xml")


def test_folder_files_are_assigned_to_splits_by_name(tmp_path):
    _write_jsonl(tmp_path / "set-train.jsonl", _rows(4, "t"))
    _write_jsonl(tmp_path / "set-dev.jsonl", _rows(2, "d"))
    _write_jsonl(tmp_path / "set-test.jsonl", _rows(3, "x"))
    (tmp_path / "README.md").write_text("not data")
    splits = read_local(tmp_path)
    assert {k: len(v) for k, v in splits.items()} == {"train": 4, "validation": 2, "test": 3}

    data = _load(tmp_path)  # default eval: test first
    assert [e.id for e in data.train] == ["t0", "t1", "t2", "t3"]
    assert [e.id for e in data.eval] == ["x0", "x1", "x2"]
    assert data.stats.read == 7 and data.stats.kept == 7
    assert [e.id for e in _load(tmp_path, eval_split="dev").eval] == ["d0", "d1"]
    assert [e.id for e in _load(tmp_path, default_eval=("validation",)).eval] == ["d0", "d1"]
    with pytest.raises(DataError, match="data.eval_split 'nope' not found"):
        _load(tmp_path, eval_split="nope")
    with pytest.raises(DataError, match="data.split 'extra' not found"):
        _load(tmp_path, split="extra")


def test_save_to_disk_folders(tmp_path):
    import datasets

    datasets.Dataset.from_list(_rows(5)).save_to_disk(str(tmp_path / "one"))
    assert read_local(tmp_path / "one") == {"train": _rows(5)}
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(_rows(4, "t")),
                               "validation": datasets.Dataset.from_list(_rows(2, "v"))})
    dd.save_to_disk(str(tmp_path / "dict"))
    data = _load(tmp_path / "dict")
    assert [e.id for e in data.train] == ["t0", "t1", "t2", "t3"]
    assert [e.id for e in data.eval] == ["v0", "v1"]


# --------------------------------------------------------------------------- carving and capping


def _examples(n: int) -> list[Example]:
    return [Example(id=str(i), prompt=f"p{i}", answer="A", label="A") for i in range(n)]


def test_single_split_eval_is_carved_seeded_and_disjoint(tmp_path):
    _write_jsonl(tmp_path / "all.jsonl", _rows(100))
    data = _load(tmp_path / "all.jsonl", eval_fraction=0.05, seed=7)
    train_ids, eval_ids = [e.id for e in data.train], [e.id for e in data.eval]
    assert len(eval_ids) == 5 and len(train_ids) == 95  # round(0.05 * 100)
    assert not set(train_ids) & set(eval_ids)
    assert set(train_ids) | set(eval_ids) == {f"r{i}" for i in range(100)}
    assert train_ids == sorted(train_ids, key=lambda s: int(s[1:]))  # pool order is kept
    assert [e.id for e in _load(tmp_path / "all.jsonl", eval_fraction=0.05, seed=7).eval] == eval_ids
    other_seeds = {tuple(e.id for e in _load(tmp_path / "all.jsonl", eval_fraction=0.05, seed=s).eval)
                   for s in (1, 2, 3)}
    assert len(other_seeds | {tuple(eval_ids)}) > 1


def test_carve_gives_at_least_one_eval_row_and_keeps_one_train_row():
    train, held = carve_eval(_examples(10), fraction=0.001, seed=0)
    assert len(held) == 1 and len(train) == 9
    train, held = carve_eval(_examples(2), fraction=0.9, seed=0)
    assert len(held) == 1 and len(train) == 1
    with pytest.raises(DataError, match="cannot carve"):
        carve_eval(_examples(1), fraction=0.5, seed=0)


def test_eval_cap_is_a_seeded_ordered_subsample(tmp_path):
    _write_jsonl(tmp_path / "train.jsonl", _rows(5, "t"))
    _write_jsonl(tmp_path / "test.jsonl", _rows(20, "x"))
    capped = [e.id for e in _load(tmp_path, max_eval_examples=6, seed=3).eval]
    assert len(capped) == 6 and len(set(capped)) == 6
    assert capped == sorted(capped, key=lambda s: int(s[1:]))
    assert capped == [e.id for e in _load(tmp_path, max_eval_examples=6, seed=3).eval]
    assert cap_examples(_examples(4), 10, seed=0) == _examples(4)


# --------------------------------------------------------------------------- malformed rows and errors


def test_malformed_rows_are_skipped_and_counted_by_reason(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"q": "one", "a": "A"}\n{not json\n\n{"a": "B"}\n[1, 2]\n{"q": "two", "a": "C"}\n')
    data = _load(path)
    assert data.stats.read == 5
    assert data.stats.kept == 2
    assert data.stats.skipped == {"unparseable JSON line": 1, "missing q": 1, "JSON line is not an object": 1}
    assert data.stats.num_skipped == 3
    assert len(data.train) + len(data.eval) == 2


def test_missing_or_empty_data_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        _load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no data file"):
        _load(tmp_path / "empty")
    (tmp_path / "blank.jsonl").write_text("\n")
    with pytest.raises(DataError, match="holds no rows"):
        _load(tmp_path / "blank.jsonl")
    _write_jsonl(tmp_path / "bad.jsonl", [{"a": "A"}, {"a": "B"}])
    with pytest.raises(DataError, match=r"no usable row in split 'train'.*missing q"):
        _load(tmp_path / "bad.jsonl")


def test_build_task_data_rejects_an_eval_split_with_no_usable_rows():
    splits = {"train": _rows(3), "test": [{"a": "A"}]}
    with pytest.raises(DataError, match="no usable row in eval split 'test'"):
        build_task_data(splits, _cfg(None), _convert, ("test",), "memory")


# --------------------------------------------------------------------------- hub


def test_read_hub_passes_the_cache_dir_and_normalizes_split_names(tmp_path, monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name, kwargs))
        return datasets.DatasetDict({"train": datasets.Dataset.from_list(_rows(2)),
                                     "dev": datasets.Dataset.from_list(_rows(1, "d"))})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = _cfg(None)
    cfg.hf.dataset_cache_dir = str(tmp_path)
    splits = read_hub(("org/set", "cfg"), cfg.hf)
    assert calls == [("org/set", "cfg", {"cache_dir": str(tmp_path)})]
    assert splits == {"train": _rows(2), "validation": _rows(1, "d")}
    data = load_task_data(cfg, ("org/set", "cfg"), _convert, ("test", "validation"))
    assert [e.id for e in data.eval] == ["d0"]


def test_read_hub_offline_without_a_cache_is_a_data_error(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub.constants

    # read_hub switches these on; monkeypatch restores them after the test.
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", datasets.config.HF_HUB_OFFLINE)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", huggingface_hub.constants.HF_HUB_OFFLINE)
    cfg = _cfg(None)
    cfg.hf.offline = True
    cfg.hf.dataset_cache_dir = str(tmp_path)
    with pytest.raises(DataError, match=r"fedspear-test/absent.*offline.*set data.path"):
        read_hub(("fedspear-test/absent", None), cfg.hf)


def test_corrupt_files_are_data_errors(tmp_path):
    (tmp_path / "bad.jsonl.bz2").write_bytes(b"not bzip2 at all")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    (tmp_path / "bad.csv").write_bytes(b"q,a\n\xff\xfe,A\n")
    for name in ("bad.jsonl.bz2", "bad.parquet", "bad.csv"):
        with pytest.raises(DataError, match="cannot read it as"):
            read_local(tmp_path / name)


# --------------------------------------------------------------------------- byte-order marks


def test_a_utf8_byte_order_mark_keeps_the_first_jsonl_row_and_the_csv_header(tmp_path):
    rows = _rows(3)
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in rows).encode())
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(rows).encode())
    (tmp_path / "bom.csv").write_bytes("\ufeffid,q,a\nr0,r question 0,A\nr1,r question 1,A\nr2,r question 2,A\n"
                                       .encode())
    with gzip.open(tmp_path / "bom.jsonl.gz", "wb") as f:
        f.write(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in rows).encode())
    for name in ("bom.jsonl", "bom.json", "bom.csv", "bom.jsonl.gz"):
        assert read_local(tmp_path / name) == {"train": rows}, name
    assert list(read_local(tmp_path / "bom.csv")["train"][0]) == ["id", "q", "a"]  # not "\ufeffid"
    data = _load(tmp_path / "bom.jsonl", eval_fraction=0.34)
    assert data.stats.read == 3 and data.stats.skipped == {}


# --------------------------------------------------------------------------- train/eval overlap


def test_eval_rows_whose_prompt_is_a_training_prompt_are_dropped_and_counted(tmp_path, caplog):
    train = _rows(6, "t")
    test = _rows(10, "x")
    for i in range(4):  # 4 of the 10 eval questions are training questions, spelled with other case and spacing
        test[i]["q"] = "  " + train[i]["q"].upper().replace(" ", "\u3000 ")  # NFKC folds the ideographic space
    _write_jsonl(tmp_path / "train.jsonl", train)
    _write_jsonl(tmp_path / "test.jsonl", test)
    with caplog.at_level("WARNING", logger="fedspear"):
        data = _load(tmp_path)
    assert [e.id for e in data.eval] == [f"x{i}" for i in range(4, 10)]
    assert len(data.train) == 6
    assert data.stats.eval_overlap == 4
    assert data.stats.as_dict()["eval_overlap_dropped"] == 4
    train_keys = {" ".join(e.prompt.casefold().split()) for e in data.train}
    assert not any(" ".join(e.prompt.casefold().split()) in train_keys for e in data.eval)
    assert sum("dropped 4 of 10 evaluation rows" in r.getMessage() for r in caplog.records) == 1


def test_a_carved_eval_set_holds_no_training_prompt(tmp_path):
    rows = _rows(10)
    rows += [dict(r, id=f"dup{i}", q=r["q"].upper()) for i, r in enumerate(rows)]  # every question twice
    _write_jsonl(tmp_path / "all.jsonl", rows)
    data = _load(tmp_path / "all.jsonl", eval_fraction=0.3, seed=0)
    # 3 of the 10 questions are carved out with both of their copies; nothing is dropped
    assert len(data.eval) == 6 and len(data.train) == 14 and data.stats.eval_overlap == 0
    eval_questions = sorted(e.id for e in data.eval if e.id.startswith("r"))
    assert sorted(e.id for e in data.eval) == sorted(eval_questions + ["dup" + i[1:] for i in eval_questions])
    train_keys = {e.prompt.casefold() for e in data.train}
    assert not any(e.prompt.casefold() in train_keys for e in data.eval)
    with pytest.raises(DataError, match="only 1 distinct prompt"):
        carve_eval([Example(id=str(i), prompt="same", answer="A", label="A") for i in range(5)], 0.5, 0)


def test_an_eval_split_made_only_of_training_prompts_is_a_data_error(tmp_path):
    _write_jsonl(tmp_path / "train.jsonl", _rows(3, "t"))
    _write_jsonl(tmp_path / "test.jsonl", _rows(2, "t"))
    with pytest.raises(DataError, match="every evaluation prompt .* is also a training prompt"):
        _load(tmp_path)
