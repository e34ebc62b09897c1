"""The name -> task registry (fedspear/tasks/__init__.py)."""

from __future__ import annotations

import sys
import types

import pytest

from fedspear import config
from fedspear.tasks import TASK_NAMES, DataError, get_task
from fedspear.tasks.arc import ArcChallengeTask
from fedspear.tasks.hellaswag import HellaSwagTask
from fedspear.tasks.math_mcqa import MathMCQATask
from fedspear.tasks.strategy_qa import StrategyQATask


@pytest.mark.parametrize(
    ("name", "cls"),
    [("arc_challenge", ArcChallengeTask), ("hellaswag", HellaSwagTask), ("math_mcqa", MathMCQATask),
     ("strategy_qa", StrategyQATask)],
)
def test_get_task_returns_the_named_task(name, cls):
    task = get_task(name)
    assert type(task) is cls and task.name == name


def test_registry_names_match_the_config_choices():
    assert set(TASK_NAMES) == set(config.TASKS)


def test_world_is_imported_lazily(monkeypatch):
    fake = types.ModuleType("fedspear.tasks.world")

    class WorldTask:
        name = "world"

    fake.WorldTask = WorldTask
    monkeypatch.setitem(sys.modules, "fedspear.tasks.world", fake)
    assert isinstance(get_task("world"), WorldTask)


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(DataError, match="unknown task 'arc'; valid tasks: arc_challenge, hellaswag, math_mcqa, "
                                        "strategy_qa, world"):
        get_task("arc")
