"""Trackers start before round 0 (issue 23, class 2): one that cannot start is one ConfigError line naming it and
the fix, and those already started are closed."""

from __future__ import annotations

import pytest

from fedspear import tracking
from fedspear.config import ConfigError, load_config
from fedspear.tracking import Trackers


class _Started:
    aborted: list[str] = []

    def __init__(self, cfg, run_dir) -> None:
        pass

    def abort(self, reason: str) -> None:
        _Started.aborted.append(reason)


class _NoLogin:
    def __init__(self, cfg, run_dir) -> None:
        raise RuntimeError("No API key configured. Use `wandb login` to log in.")


def test_a_tracker_that_cannot_start_is_one_config_error_and_closes_the_others(tmp_path, monkeypatch):
    monkeypatch.setattr(tracking, "_BACKENDS", {"tensorboard": _Started, "wandb": _NoLogin})
    _Started.aborted = []
    cfg = load_config(None, ["logging.report_to=[tensorboard,wandb]", "logging.wandb_mode=online"])
    with pytest.raises(ConfigError) as caught:
        Trackers(cfg, tmp_path).open()
    assert str(caught.value) == ("logging.report_to: wandb could not start (RuntimeError: No API key configured. Use "
                                 "`wandb login` to log in.); log in first (`wandb login`, or set WANDB_API_KEY), or "
                                 "set logging.wandb_mode=offline (no network; `wandb sync` later)")
    assert _Started.aborted == ["logging.report_to: wandb failed to start"]


def test_open_without_trackers_does_nothing(tmp_path):
    trackers = Trackers(load_config(None, []), tmp_path)
    trackers.open()
    assert trackers.backends is None and list(tmp_path.iterdir()) == []
