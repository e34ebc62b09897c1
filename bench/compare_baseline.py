"""Compare two run folders of the same config: metrics except times bit-identical, adapter tensors equal.

Used to show that a refactor leaves behaviour unchanged: run the same short world run on the old and the new
code, then ``python bench/compare_baseline.py OLD_RUN NEW_RUN`` (exit 0 = identical, 1 = a difference, printed).
Timing fields (any key ending in ``_s``, ``seconds``, the ``time`` block) differ run to run and are dropped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file


def strip_times(value: Any) -> Any:
    """``value`` with every timing field removed (recursively)."""
    if isinstance(value, dict):
        return {k: strip_times(v) for k, v in value.items()
                if not (k == "time" or k == "seconds" or k.endswith("_s"))}
    if isinstance(value, list):
        return [strip_times(v) for v in value]
    return value


def compare_metrics(old: Path, new: Path) -> list[str]:
    """Differences between the two runs' metrics.jsonl rows, timing fields ignored."""
    rows_old = [strip_times(json.loads(line)) for line in (old / "metrics.jsonl").read_text().splitlines()]
    rows_new = [strip_times(json.loads(line)) for line in (new / "metrics.jsonl").read_text().splitlines()]
    if len(rows_old) != len(rows_new):
        return [f"metrics.jsonl: {len(rows_old)} rows vs {len(rows_new)}"]
    return [f"metrics.jsonl row {i}: {a} != {b}" for i, (a, b) in enumerate(zip(rows_old, rows_new)) if a != b]


def compare_adapters(old: Path, new: Path) -> list[str]:
    """Differences between the saved adapters of every round (tensor names, shapes and values, exactly)."""
    names_old = sorted(p.relative_to(old) for p in old.glob("adapters/*/adapter_model.safetensors"))
    names_new = sorted(p.relative_to(new) for p in new.glob("adapters/*/adapter_model.safetensors"))
    if names_old != names_new or not names_old:
        return [f"adapter files differ: {names_old} vs {names_new}"]
    out = []
    for name in names_old:
        a, b = load_file(str(old / name)), load_file(str(new / name))
        if a.keys() != b.keys():
            out.append(f"{name}: tensor names differ")
            continue
        out.extend(f"{name}: {k} differs (max |diff| {float((a[k] - b[k]).abs().max()):.3g})"
                   for k in a if a[k].shape != b[k].shape or not torch.equal(a[k], b[k]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    args = parser.parse_args(argv)
    problems = compare_metrics(args.old, args.new) + compare_adapters(args.old, args.new)
    for p in problems:
        print(p)
    rounds = len(list(args.old.glob("adapters/*/adapter_model.safetensors")))
    print(f"{args.old} vs {args.new}: " + ("IDENTICAL" if not problems else f"{len(problems)} differences")
          + f" (metrics without times, {rounds} adapters)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
