"""The adapter registry: adapters are checked before they are published, and publishing is serialized."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat

import pytest
import torch

from fedspear.config import ConfigError
from fedspear.serve.adapters import AdapterError, AdapterRegistry, check_adapter

REF = {"m.lora_A.weight": torch.zeros(4, 8), "m.lora_B.weight": torch.zeros(8, 4)}


def _files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize(("state", "match"), [
    ({"m.lora_A.weight": torch.zeros(2, 8), "m.lora_B.weight": torch.zeros(8, 2)}, r"shape \(2, 8\), this model "
                                                                                   r"expects \(4, 8\)"),
    ({"m.lora_A.weight": torch.zeros(4, 8)}, "1 missing tensors"),
    ({**REF, "other.lora_A.weight": torch.zeros(4, 8)}, "1 unexpected"),
    ({**REF, "m.lora_A.weight": torch.zeros(4, 8, dtype=torch.int64)}, "not a float tensor"),
    ({**REF, "m.lora_A.weight": torch.zeros(4, 8, dtype=torch.uint8)}, "not a float tensor"),
    ({**REF, "m.lora_B.weight": torch.full((8, 4), float("nan"))}, "NaN or infinite"),
    ({**REF, "m.lora_B.weight": torch.full((8, 4), float("inf"))}, "NaN or infinite"),
])
def test_an_adapter_that_does_not_fit_is_refused_before_anything_is_written(tmp_path, state, match):
    registry = AdapterRegistry(tmp_path / "adapters")
    registry.publish(REF, "initial", "m@1", reference=REF)
    before = _files(registry.folder)
    with pytest.raises(AdapterError, match=match) as err:
        registry.publish(state, "imported", "m@1", reference=REF)
    assert isinstance(err.value, ConfigError) and "\n" not in str(err.value)  # a one-line user error (exit 2)
    assert _files(registry.folder) == before and registry.current().version == 0


def test_fitting_adapters_pass_and_the_folder_is_owner_only(tmp_path):
    check_adapter({k: v.to(torch.bfloat16) + 1 for k, v in REF.items()}, REF)
    registry = AdapterRegistry(tmp_path / "adapters")
    v = registry.publish(REF, "initial", "m@1", reference=REF)
    assert stat.S_IMODE(os.stat(registry.folder).st_mode) == 0o700
    assert [p.name for p in registry.folder.iterdir() if p.name.endswith(".tmp")] == []  # temporaries renamed
    assert v.file == "v0000.safetensors" and torch.equal(registry.load(v)["m.lora_A.weight"], REF["m.lora_A.weight"])


def _publish_many(folder: str, who: int, n: int) -> list[int]:
    registry = AdapterRegistry(folder)
    out = []
    for i in range(n):
        state = {k: torch.full_like(v, who * 1000 + i) for k, v in REF.items()}
        out.append(registry.publish(state, f"p{who}-{i}", "m@1", reference=REF).version)
    return out


def test_two_processes_publishing_at_once_get_distinct_versions_and_lose_nothing(tmp_path):
    folder, n = str(tmp_path / "adapters"), 12
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.starmap(_publish_many, [(folder, 1, n), (folder, 2, n)])
    versions = sorted(results[0] + results[1])
    assert versions == list(range(2 * n))  # distinct, none skipped
    registry = AdapterRegistry(folder)
    history = registry.history()
    assert sorted(v.version for v in history) == versions and len({v.label for v in history}) == 2 * n
    for v in history:  # every version's file holds what its publisher wrote
        who, i = (int(x) for x in v.label[1:].split("-"))
        assert registry.load(v)["m.lora_B.weight"][0, 0].item() == who * 1000 + i
    assert registry.current().version == 2 * n - 1
    assert json.loads(registry.current_file.read_text())["version"] == 2 * n - 1
    assert [p.name for p in registry.folder.iterdir() if p.name.endswith(".tmp")] == []
