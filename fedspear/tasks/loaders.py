"""Reading benchmark rows from the hub or from local files, and turning splits into train/eval sets.

Readers return raw rows (plain dicts) per split; each task module converts a row into an
:class:`~fedspear.tasks.base.Example` and raises :class:`MalformedRow` for rows it cannot use, which
:func:`load_task_data` skips and counts in :class:`~fedspear.tasks.base.LoadStats` by reason.

Local formats (``data.path`` may be a file or a folder):

- JSON Lines (``.jsonl``), a JSON array (``.json``; JSON Lines in a ``.json`` file also works), CSV with a
  header row, Parquet; each may be compressed (``.bz2``, ``.gz``, ``.xz``) except Parquet.
- HellaSwag's 6-line plain-text records (``.txt``, possibly compressed; a bare ``.bz2`` is read as text):
  ``activity_label: ctx``, the gold index, then the four endings.
- ``datasets`` ``save_to_disk`` folders (one ``Dataset`` or a ``DatasetDict``).

In a folder, a file name containing ``train``, ``dev``/``validation``/``val``/``valid`` or ``test`` (as a
word, e.g. ``ARC-Challenge-Dev.jsonl``) assigns the file to that split; files without one count as
``train``; several files of one split are concatenated in name order. Text files are read as ``utf-8-sig`` (a
byte-order mark is dropped).

No evaluation prompt is a training prompt: an eval set carved out of one split is split by distinct prompt
(:func:`carve_eval`), and rows of a separate eval split whose prompt is a training prompt are dropped and counted
(:func:`drop_train_prompts`; docs/configuration.md, "Data").
"""

from __future__ import annotations

import ast
import bz2
import csv
import gzip
import io
import itertools
import json
import logging
import lzma
import os
import re
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fedspear.tasks.base import DataError, Example, LoadStats, TaskData

logger = logging.getLogger("fedspear")

# A reader puts this key in a row it could not parse, so that the row is counted as skipped (by the
# reason stored under the key) in the splits that are actually used, like any other malformed row.
MALFORMED_KEY = "__malformed__"

_SPLIT_ALIASES = {"train": "train", "dev": "validation", "validation": "validation", "val": "validation",
                  "valid": "validation", "test": "test"}
_COMPRESSIONS = {".bz2": bz2.open, ".gz": gzip.open, ".xz": lzma.open}
_DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".txt", ".parquet")
# Purpose tags keep the eval carve-out and the eval cap on independent random streams for one seed.
_CARVE_TAG = 0x4556
_CAP_TAG = 0x4341

Rows = list[dict[str, Any]]
Converter = Callable[[dict[str, Any], str], Example]


class MalformedRow(ValueError):
    """A row a task cannot use; ``str(exc)`` is the reason counted in :class:`LoadStats`."""


# --------------------------------------------------------------------------- split names


def normalize_split(name: str) -> str:
    """Map split aliases to one name: dev/val/valid -> validation; other names are lower-cased."""
    key = name.strip().lower()
    return _SPLIT_ALIASES.get(key, key)


def split_of_filename(name: str) -> str | None:
    """The split a file name marks (``ARC-Challenge-Dev.jsonl`` -> "validation"), or None."""
    for word in re.split(r"[^a-z0-9]+", name.lower()):
        if word in _SPLIT_ALIASES:
            return _SPLIT_ALIASES[word]
    return None


# --------------------------------------------------------------------------- value helpers


_NUMPY_ARRAY = re.compile(r"\barray\((\[.*?\])(?:,\s*dtype=\w+)?\)", re.DOTALL)
_QUOTED = re.compile(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"")


def parse_structured(value: Any) -> Any:
    """Decode a list/dict that a CSV cell stores as text (JSON, Python repr, or the numpy reprs pandas writes).

    Args:
        value: a cell value; non-strings are returned unchanged.

    Returns:
        The decoded list/dict, or ``value`` unchanged when it is not such a text.
    """
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text or text[0] not in "[{":
        return value
    try:
        return json.loads(text)
    except ValueError:
        pass
    items = _numpy_repr_items(text)
    if items is not None:
        return items
    try:  # pandas writes a struct of lists as "{'text': array(['a', 'b'], dtype=object), ...}"
        return ast.literal_eval(_NUMPY_ARRAY.sub(r"\1", text))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return value


def _numpy_repr_items(text: str) -> list[str] | None:
    """The items of a numpy string-array repr ``['a' 'b c']`` (quoted items separated by blanks only), else None.

    Python would read that text as ONE string (``'a' 'b c'`` is implicit concatenation), so it is
    recognized before ``ast.literal_eval`` is tried.
    """
    if not (text.startswith("[") and text.endswith("]")):
        return None
    matches = list(_QUOTED.finditer(text))
    if len(matches) < 2:
        return None
    edges = [text[1:matches[0].start()], text[matches[-1].end():-1]]
    gaps = [text[a.end():b.start()] for a, b in itertools.pairwise(matches)]
    if any(part.strip() for part in edges + gaps):
        return None
    return [ast.literal_eval(m.group(0)) for m in matches]


def text_field(row: dict[str, Any], key: str) -> str:
    """The stripped string in ``row[key]``; raises MalformedRow("missing KEY") when absent or empty."""
    value = row.get(key)
    if value is None or (isinstance(value, float) and value != value):  # None or a CSV NaN
        raise MalformedRow(f"missing {key}")
    text = str(value).strip()
    if not text:
        raise MalformedRow(f"empty {key}")
    return text


# --------------------------------------------------------------------------- local readers


def _open_text(path: Path) -> io.TextIOBase:
    """The file as text; ``utf-8-sig`` drops a UTF-8 byte-order mark (Windows editors and Excel write one), which
    would otherwise make a JSON Lines file's first row unparseable and a CSV file's first header name wrong."""
    opener = _COMPRESSIONS.get(path.suffix.lower())
    if opener is not None:
        return opener(path, "rt", encoding="utf-8-sig")
    return open(path, encoding="utf-8-sig")


def _format_suffix(path: Path) -> str:
    """The data format of a file name: ``x.jsonl.bz2`` -> ".jsonl"; a bare ``x.bz2`` -> ".txt"."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSIONS:
        suffixes = suffixes[:-1]
        if not suffixes or suffixes[-1] not in _DATA_SUFFIXES:
            return ".txt"
    return suffixes[-1] if suffixes else ""


def _json_lines(lines: Iterator[str]) -> Rows:
    rows: Rows = []
    for line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            rows.append({MALFORMED_KEY: "unparseable JSON line"})
            continue
        rows.append(row if isinstance(row, dict) else {MALFORMED_KEY: "JSON line is not an object"})
    return rows


def _read_jsonl(path: Path) -> Rows:
    with _open_text(path) as f:
        return _json_lines(iter(f.read().splitlines()))


def _read_json(path: Path) -> Rows:
    with _open_text(path) as f:
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return _json_lines(iter(text.splitlines()))  # JSON Lines stored as .json (datasets' to_json does this)
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if isinstance(data, dict):
        return [data]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of rows, got {type(data).__name__}")
    return [row if isinstance(row, dict) else {MALFORMED_KEY: "JSON item is not an object"} for row in data]


def _read_csv(path: Path) -> Rows:
    with _open_text(path) as f:
        return [dict(row) for row in csv.DictReader(f)]


def _read_hellaswag_text(path: Path) -> Rows:
    """HellaSwag 6-line records: ``activity_label: ctx``, gold index, four endings."""
    with _open_text(path) as f:
        lines = f.read().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    rows: Rows = []
    for start in range(0, len(lines), 6):
        record = lines[start:start + 6]
        if len(record) < 6:
            rows.append({MALFORMED_KEY: "incomplete 6-line record"})
            continue
        head, label, *endings = record
        activity, sep, ctx = head.partition(": ")
        if not sep:
            activity, ctx = "", head
        rows.append({"activity_label": activity, "ctx": ctx, "label": label.strip(), "endings": endings})
    return rows


def _read_parquet(path: Path) -> Rows:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def read_file(path: Path) -> Rows:
    """Read the rows of one data file, choosing the reader by its name (see the module docstring).

    Args:
        path: the file.

    Returns:
        Raw rows; a line that cannot be parsed becomes ``{MALFORMED_KEY: reason}``.
    """
    fmt = _format_suffix(path)
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".txt": _read_hellaswag_text,
               ".parquet": _read_parquet}
    if fmt not in readers:
        raise DataError(f"{path}: unknown data format '{fmt or path.name}'; use .jsonl, .json, .csv, .parquet, "
                        "HellaSwag .txt (optionally .bz2/.gz/.xz), or a datasets save_to_disk folder")
    try:
        return readers[fmt](path)
    except DataError:
        raise
    except (OSError, EOFError, ValueError, csv.Error) as exc:  # ValueError covers bad UTF-8 and bad Parquet
        raise DataError(f"{path}: cannot read it as {fmt} ({exc})") from None


def _is_saved_dataset(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def _read_saved_dataset(folder: Path) -> dict[str, Rows]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(folder))
    except (OSError, ValueError, FileNotFoundError) as exc:
        raise DataError(f"{folder}: not a readable datasets save_to_disk folder ({exc})") from None
    if isinstance(loaded, datasets.DatasetDict):
        return {normalize_split(name): ds.to_list() for name, ds in loaded.items()}
    split = loaded.split if loaded.split is not None else "train"
    return {normalize_split(str(split)): loaded.to_list()}


def read_local(path: str | Path) -> dict[str, Rows]:
    """Read ``data.path``: a data file, a save_to_disk folder, or a folder of split files.

    Args:
        path: file or folder.

    Returns:
        ``{split: rows}`` with normalized split names (train / validation / test / other).

    Raises:
        DataError: the path is missing, or a folder holds no data file.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"data.path {path} does not exist; point data.path at a data file or folder, "
                        "or set it to null to load the task from the Hugging Face hub")
    if path.is_file():
        return {split_of_filename(path.name) or "train": read_file(path)}
    if _is_saved_dataset(path):
        return _read_saved_dataset(path)
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                   and _format_suffix(p) in _DATA_SUFFIXES)
    if not files:
        found = ", ".join(sorted(p.name for p in path.iterdir())[:10]) or "nothing"
        raise DataError(f"data.path {path} holds no data file (.jsonl/.json/.csv/.parquet/.txt[.bz2]) and is not "
                        f"a datasets save_to_disk folder; found: {found}")
    splits: dict[str, Rows] = {}
    for file in files:
        splits.setdefault(split_of_filename(file.name) or "train", []).extend(read_file(file))
    return splits


# --------------------------------------------------------------------------- hub


def read_hub(hub_id: tuple[str, str | None], hf_cfg: Any) -> dict[str, Rows]:
    """Load every split of a hub dataset with ``datasets.load_dataset``, honouring ``cfg.hf``.

    Args:
        hub_id: (dataset path, config name or None).
        hf_cfg: ``cfg.hf`` (offline flag and cache folders).

    Returns:
        ``{split: rows}`` with normalized split names.

    Raises:
        DataError: the dataset cannot be loaded (offline without a cache, no network, unknown id).
    """
    if hf_cfg.hf_home:
        os.environ.setdefault("HF_HOME", hf_cfg.hf_home)
    if hf_cfg.hub_cache_dir:
        os.environ.setdefault("HF_HUB_CACHE", hf_cfg.hub_cache_dir)
    if hf_cfg.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    import datasets

    if hf_cfg.offline:  # the flag is read at import time; set it too in case datasets was imported already
        import huggingface_hub.constants

        datasets.config.HF_HUB_OFFLINE = True
        huggingface_hub.constants.HF_HUB_OFFLINE = True
    path, name = hub_id
    try:
        loaded = datasets.load_dataset(path, name, cache_dir=hf_cfg.dataset_cache_dir)
    except Exception as exc:  # noqa: BLE001 - any hub/cache failure becomes one actionable message
        mode = "offline (hf.offline=true) and not in the cache" if hf_cfg.offline else "unreachable or unknown"
        raise DataError(f"cannot load hub dataset {path}{'/' + name if name else ''}: {mode} "
                        f"({type(exc).__name__}: {exc}); set data.path to a local copy") from None
    return {normalize_split(str(split)): ds.to_list() for split, ds in loaded.items()}


# --------------------------------------------------------------------------- train / eval sets


def _convert(rows: Rows, split: str, convert: Converter, stats: LoadStats) -> list[Example]:
    examples: list[Example] = []
    for index, row in enumerate(rows):
        stats.read += 1
        if MALFORMED_KEY in row:
            stats.skip(str(row[MALFORMED_KEY]))
            continue
        try:
            examples.append(convert(row, f"{split}-{index}"))
        except MalformedRow as exc:
            stats.skip(str(exc))
    stats.kept += len(examples)
    return examples


def _seeded_rng(seed: int, tag: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFFFFFFFFFF, tag]))


def carve_eval(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Split one pool into (train, eval) by prompt: a seeded random ``fraction`` (at least 1) of the distinct
    prompts (:func:`prompt_key`) goes to eval with every row that repeats it, so no evaluation prompt is also a
    training prompt.

    Both parts keep the pool's order, are disjoint, and together hold every row. A pool without repeated prompts
    is split exactly as row by row.

    Raises:
        DataError: fewer than 2 distinct prompts, so there is nothing left to train on.
    """
    groups: dict[str, list[int]] = {}
    for index, ex in enumerate(examples):
        groups.setdefault(prompt_key(ex.prompt), []).append(index)
    if len(groups) < 2:
        raise DataError(f"only {len(groups)} distinct prompt(s) in {len(examples)} usable row(s): cannot carve an "
                        "eval set out of a single split; add rows or give a separate eval split")
    members = list(groups.values())
    n_eval = min(len(members) - 1, max(1, round(fraction * len(members))))
    picked = _seeded_rng(seed, _CARVE_TAG).choice(len(members), size=n_eval, replace=False).tolist()
    chosen = {index for group in picked for index in members[group]}
    train = [ex for i, ex in enumerate(examples) if i not in chosen]
    held_out = [ex for i, ex in enumerate(examples) if i in chosen]
    return train, held_out


def prompt_key(prompt: str) -> str:
    """A prompt in the form compared for train/eval overlap: NFKC, casefolded, whitespace runs as one space."""
    return " ".join(unicodedata.normalize("NFKC", prompt).casefold().split())


def drop_train_prompts(train: list[Example], held_out: list[Example], stats: LoadStats) -> list[Example]:
    """``held_out`` without the rows whose prompt (:func:`prompt_key`) is also a training prompt.

    A held-out score must not measure prompts the model trains on, so the evaluation side loses them and the
    training side keeps every row. The count goes to ``stats.eval_overlap`` (``data_stats.json``:
    ``eval_overlap_dropped``), with one warning.
    """
    seen = {prompt_key(ex.prompt) for ex in train}
    kept = [ex for ex in held_out if prompt_key(ex.prompt) not in seen]
    dropped = len(held_out) - len(kept)
    if dropped:
        stats.eval_overlap += dropped
        logger.warning("dropped %d of %d evaluation rows whose prompt is also a training prompt "
                       "(data_stats.json: eval_overlap_dropped)", dropped, len(held_out))
    return kept


def cap_examples(examples: list[Example], cap: int, seed: int) -> list[Example]:
    """A seeded random subsample of ``cap`` rows in their original order (all rows when fewer)."""
    if len(examples) <= cap:
        return examples
    keep = np.sort(_seeded_rng(seed, _CAP_TAG).choice(len(examples), size=cap, replace=False))
    return [examples[i] for i in keep.tolist()]


def _pick_eval_split(splits: dict[str, Rows], train_split: str, cfg_eval: str | None,
                     default_eval: tuple[str, ...], source: str) -> str | None:
    """The eval split to use, or None when eval rows must be carved out of the train split."""
    if cfg_eval is not None:
        wanted = normalize_split(cfg_eval)
        if wanted not in splits:
            raise DataError(f"data.eval_split '{cfg_eval}' not found in {source}; splits: {', '.join(sorted(splits))}")
        return None if wanted == train_split else wanted
    return next((s for s in default_eval if s in splits and s != train_split), None)


def build_task_data(splits: dict[str, Rows], cfg: Any, convert: Converter, default_eval: tuple[str, ...],
                    source: str) -> TaskData:
    """Choose the train and eval splits, convert their rows, carve and cap the eval set.

    Args:
        splits: ``{split: raw rows}`` from a reader.
        cfg: the full Config (``cfg.data.split``, ``eval_split``, ``eval_fraction``, ``seed``, ``max_eval_examples``).
        convert: the task's row -> Example conversion; raises MalformedRow for unusable rows.
        default_eval: eval split names to try in order when ``cfg.data.eval_split`` is None.
        source: where the rows came from, for error messages.

    Returns:
        TaskData. When only one split exists, or no eval split is found, the eval set is carved out of the
        train rows (``data.eval_fraction``, seeded by ``data.seed``).

    Raises:
        DataError: no rows, a missing split, or no usable row after skipping malformed ones.
    """
    data = cfg.data
    splits = {name: rows for name, rows in splits.items() if rows}
    if not splits:
        raise DataError(f"{source} holds no rows")
    stats = LoadStats()
    if len(splits) == 1:  # a single split (whatever its name) is the pool both sets come from
        train_split = next(iter(splits))
    else:
        train_split = normalize_split(data.split)
        if train_split not in splits:
            raise DataError(f"data.split '{data.split}' not found in {source}; splits: {', '.join(sorted(splits))}")
    eval_split = _pick_eval_split(splits, train_split, data.eval_split, default_eval, source)
    train = _convert(splits[train_split], train_split, convert, stats)
    if not train:
        raise DataError(f"no usable row in split '{train_split}' of {source}; skipped: {stats.skipped}")
    if eval_split is None:
        train, held_out = carve_eval(train, data.eval_fraction, data.seed)
    else:
        held_out = _convert(splits[eval_split], eval_split, convert, stats)
        if not held_out:
            raise DataError(f"no usable row in eval split '{eval_split}' of {source}; skipped: {stats.skipped}")
    held_out = drop_train_prompts(train, held_out, stats)
    if not held_out:
        raise DataError(f"every evaluation prompt of {source} is also a training prompt; give an eval split "
                        "with other questions (data.eval_split) or remove the repeated rows")
    return TaskData(train=train, eval=cap_examples(held_out, data.max_eval_examples, data.seed), stats=stats)


def load_task_data(cfg: Any, hub_id: tuple[str, str | None], convert: Converter,
                   default_eval: tuple[str, ...]) -> TaskData:
    """Read the task's rows (``cfg.data.path`` or the hub) and build its train/eval sets.

    Args:
        cfg: the full Config.
        hub_id: (dataset path, config name) used when ``cfg.data.path`` is None.
        convert: the task's row -> Example conversion.
        default_eval: eval split names to try in order when ``cfg.data.eval_split`` is None.

    Returns:
        TaskData with the load statistics of the splits used.
    """
    if cfg.data.path is not None:
        source = f"data.path {cfg.data.path}"
        splits = read_local(cfg.data.path)
    else:
        source = f"hub dataset {hub_id[0]}"
        splits = read_hub(hub_id, cfg.hf)
    return build_task_data(splits, cfg, convert, default_eval, source)
