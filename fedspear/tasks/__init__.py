"""Benchmark tasks and the name -> task registry (``data.dataset`` values)."""

from __future__ import annotations

from fedspear.dotted import is_dotted
from fedspear.tasks.arc import ArcChallengeTask
from fedspear.tasks.base import DataError, Example, LoadStats, Task, TaskData
from fedspear.tasks.custom import build_task
from fedspear.tasks.hellaswag import HellaSwagTask
from fedspear.tasks.math_mcqa import MathMCQATask
from fedspear.tasks.strategy_qa import StrategyQATask

TASKS: dict[str, type[Task]] = {
    "arc_challenge": ArcChallengeTask,
    "hellaswag": HellaSwagTask,
    "math_mcqa": MathMCQATask,
    "strategy_qa": StrategyQATask,
}
TASK_NAMES = (*TASKS, "world")

__all__ = ["DataError", "Example", "LoadStats", "Task", "TaskData", "TASKS", "TASK_NAMES", "get_task"]


def get_task(name: str) -> Task:
    """A new task object for a ``data.dataset`` name.

    Args:
        name: one of arc_challenge, hellaswag, math_mcqa, strategy_qa, world; or a user's Task subclass as a
            dotted path ``module:Class`` (:func:`fedspear.tasks.custom.build_task`, ``docs/extending.md``).

    Returns:
        The task. "world" (the built-in synthetic world) is imported only when asked for.

    Raises:
        DataError: unknown name; the message lists the valid ones.
        ConfigError: a dotted path that does not import or is not a usable Task subclass.
    """
    if is_dotted(name):
        return build_task(name)
    if name == "world":
        from fedspear.tasks.world import WorldTask

        return WorldTask()
    if name not in TASKS:
        raise DataError(f"unknown task '{name}'; valid tasks: {', '.join(TASK_NAMES)}")
    return TASKS[name]()
