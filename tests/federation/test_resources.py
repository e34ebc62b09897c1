"""fedspear.federation.resources: adapter bytes, peak memory of a client update, the round's resource figures."""

from __future__ import annotations

import pytest
import torch

from fedspear.federation import resources
from fedspear.federation.resources import MemoryProbe, client_bytes, merge_memory, round_resources, state_nbytes


def test_state_nbytes_is_numel_times_element_size():
    state = {"a": torch.zeros(4, 8), "b": torch.zeros(8, 2, dtype=torch.bfloat16), "c": torch.zeros(3, dtype=torch.float64)}
    assert state_nbytes(state) == 4 * 8 * 4 + 8 * 2 * 2 + 3 * 8 == 184
    assert state_nbytes(None) == 0 and state_nbytes({}) == 0
    assert client_bytes(state, None) == {"bytes_down": 184, "bytes_up": 0}
    assert client_bytes(state, {"a": torch.zeros(4, 8)}) == {"bytes_down": 184, "bytes_up": 128}


def test_round_resources_takes_memory_maxima_and_traffic_sums_and_means():
    rows = [
        {"metrics": {"peak_rss_mb": 500.0, "update_rss_peak_mb": 420.5}, "bytes_down": 100, "bytes_up": 100},
        {"metrics": {"peak_rss_mb": 510.0, "update_rss_peak_mb": 410.0}, "bytes_down": 100, "bytes_up": 0},
        {"metrics": {}, "error": "boom", "bytes_down": 100, "bytes_up": 0},
    ]
    assert round_resources(rows) == {"peak_rss_mb_max": 510.0, "update_rss_peak_mb_max": 420.5,
                                     "bytes_down": 300, "bytes_down_per_client": 100.0,
                                     "bytes_up": 100, "bytes_up_per_client": 100 / 3}
    rows[0].update(wire_bytes_down=150, wire_bytes_up=140)
    rows[1].update(wire_bytes_down=150, wire_bytes_up=40)
    out = round_resources(rows)
    assert (out["wire_bytes_down"], out["wire_bytes_up"]) == (300, 180)
    assert round_resources([]) == {"bytes_down": 0, "bytes_down_per_client": 0.0, "bytes_up": 0,
                                   "bytes_up_per_client": 0.0}


def test_merge_memory_keeps_the_larger_of_a_shared_rollout_and_a_training():
    assert merge_memory({"peak_rss_mb": 5.0, "update_rss_peak_mb": 9.0}, {"peak_rss_mb": 6.0, "update_rss_peak_mb": 3.0}
                        ) == {"peak_rss_mb": 6.0, "update_rss_peak_mb": 9.0}


def test_memory_probe_sees_the_peak_inside_and_only_inside():
    if not resources.reset_peak_rss():
        pytest.skip("this system cannot reset the resident-set high-water mark (/proc/self/clear_refs)")
    base = resources.current_rss_bytes() / resources.MB
    with MemoryProbe() as probe:
        blob = b"\x01" * 150_000_000  # 150 MB written, then freed before the probe ends
        del blob
    first = probe.metrics()
    assert first["update_rss_peak_mb"] >= base + 140  # the kernel's peak catches a block freed before the end
    assert first["peak_rss_mb"] >= first["update_rss_peak_mb"]
    with MemoryProbe() as probe:
        small = b"\x01" * 1_000_000
        del small
    second = probe.metrics()
    assert second["update_rss_peak_mb"] < first["update_rss_peak_mb"] - 100  # reset at the start of each update
    assert second["peak_rss_mb"] >= first["update_rss_peak_mb"]  # the process lifetime figure is kept
    assert "cuda_peak_mb" not in second  # CPU only


def test_memory_probe_samples_where_the_kernel_peak_cannot_be_reset(monkeypatch):
    monkeypatch.setattr(resources, "reset_peak_rss", lambda: False)
    with MemoryProbe(interval_s=0.01) as probe:
        assert probe._thread is not None and probe._thread.is_alive()
    assert not probe._thread.is_alive()
    assert probe.metrics()["update_rss_peak_mb"] > 0
