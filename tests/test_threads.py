"""fedspear.threads: the thread count model.torch_threads gives, why, and where a run shows it."""

from __future__ import annotations

import logging

import pytest
import torch

from fedspear import threads
from fedspear.config import ConfigError, load_config


@pytest.mark.parametrize(("cores", "load", "env", "expected"), [
    (2, 0.1, None, (1, "load 0.1 on 2 cores")),  # idle 2 cores: one kept for the rest of the machine
    (2, 3.0, None, (1, "load 3.0 on 2 cores")),  # three busy processes: never below one
    (1, 0.0, None, (1, "load 0.0 on 1 cores")),
    (4, 0.2, None, (3, "load 0.2 on 4 cores")),  # idle: all cores but one
    (4, 1.4, None, (3, "load 1.4 on 4 cores")),  # floor(4 - 1.4 + 0.5) = 3
    (4, 2.6, None, (1, "load 2.6 on 4 cores")),  # floor(1.9) = 1
    (64, 0.0, None, (8, "load 0.0 on 64 cores")),  # capped at MAX_AUTO_THREADS
    (2, None, None, (1, "2 cores, no load average")),
    (6, None, None, (5, "6 cores, no load average")),
    (2, 0.0, "3", (3, "OMP_NUM_THREADS=3")),  # the user's environment wins
    (2, 3.0, "x", (1, "load 3.0 on 2 cores")),  # a malformed OMP_NUM_THREADS is ignored
])
def test_auto_threads_uses_the_cores_others_leave_free(cores, load, env, expected):
    assert threads.auto_threads(cores, load, env) == expected


def test_a_number_is_taken_as_is_and_auto_is_judged_once_per_process(monkeypatch):
    assert threads.choose_threads("3") == (3, "model.torch_threads")
    assert threads.choose_threads(1) == (1, "model.torch_threads")
    monkeypatch.setattr(threads, "_chosen", None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "cpu_cores", lambda: 4)
    monkeypatch.setattr(threads, "load_average", lambda: 0.2)
    assert threads.choose_threads("auto") == (3, "load 0.2 on 4 cores")
    monkeypatch.setattr(threads, "load_average", lambda: 5.0)  # e.g. this process's own earlier run
    assert threads.choose_threads("AUTO") == (3, "load 0.2 on 4 cores")
    with pytest.raises(ValueError, match="neither auto nor a positive integer"):
        threads.choose_threads("0")


def test_apply_threads_sets_torch_and_one_interop_thread():
    before = torch.get_num_threads()
    try:
        assert threads.apply_threads("2") == (2, "model.torch_threads")
        assert torch.get_num_threads() == 2
        assert threads.apply_threads("1") == (1, "model.torch_threads") and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", ""])
def test_config_refuses_anything_but_auto_or_a_positive_integer(value):
    with pytest.raises(ConfigError, match=r"^model.torch_threads: .* is neither auto nor a positive integer; write "
                                          r"e.g. model.torch_threads=1$"):
        load_config(None, [f"model.torch_threads={value}"])
    assert load_config(None, ["model.torch_threads=4"]).model.torch_threads == "4"
    assert load_config(None, []).model.torch_threads == "auto"


def test_describe_names_the_source_and_the_override():
    assert threads.describe(1, "load 3.2 on 2 cores", "cpu") == (
        "torch threads 1 (auto: load 3.2 on 2 cores; set model.torch_threads=N to choose)")
    assert threads.describe(4, "model.torch_threads", "cuda") == (
        "torch threads 4 (model.torch_threads; set model.torch_threads=N to choose), on cuda")
    assert threads.describe(3, "OMP_NUM_THREADS=3", "cpu").startswith("torch threads 3 (OMP_NUM_THREADS=3;")


def test_the_start_line_shows_the_choice(tiny_qwen, caplog):
    from fedspear.models import build_policy

    before = torch.get_num_threads()
    cfg = load_config(None, [f"model.model_name={tiny_qwen}", "model.dtype=fp32", "model.device_map=cpu",
                             "model.torch_threads=1", "model.max_seq_len=1024"])
    try:
        with caplog.at_level(logging.INFO, logger="fedspear"):
            build_policy(cfg)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert (f"model {tiny_qwen} on cpu (fp32); torch threads 1 (model.torch_threads; set model.torch_threads=N to "
            "choose)") in caplog.text
