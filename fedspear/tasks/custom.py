"""A user's own task class named by ``data.dataset=module:Class``: imported and checked to be a usable
:class:`~fedspear.tasks.base.Task` (docs/extending.md, "A task"). ``fedspear.tasks.get_task`` builds it; it
lives in the tasks package so the package needs nothing above it (docs/architecture.md).
"""

from __future__ import annotations

import inspect

from fedspear.config_sections import ConfigError
from fedspear.dotted import describe, load_object
from fedspear.tasks.base import Task

# What a task class must implement itself (the base class only raises NotImplementedError).
TASK_METHODS = ("load", "extract", "feedback")


def load_task_class(spec: str) -> type[Task]:
    """The task class ``data.dataset=module:Class`` names, checked to be a usable :class:`Task` subclass.

    Raises:
        ConfigError: it does not import, is not a Task subclass, or leaves ``load``/``extract``/``feedback`` to
            the base class.
    """
    cls = load_object(spec, "data.dataset")
    if not (inspect.isclass(cls) and issubclass(cls, Task)):
        raise ConfigError(f"data.dataset={spec}: {describe(cls)} is not a subclass of fedspear.tasks.base.Task")
    missing = [m for m in TASK_METHODS if getattr(cls, m) is getattr(Task, m)]
    if missing:
        raise ConfigError(f"data.dataset={spec}: {cls.__name__} does not implement {', '.join(missing)} "
                          "(see docs/extending.md)")
    return cls


def build_task(spec: str) -> Task:
    """A new instance of the task class ``spec`` names (constructed without arguments).

    Raises:
        ConfigError: as :func:`load_task_class`, or the constructor fails.
    """
    cls = load_task_class(spec)
    try:
        return cls()
    except Exception as exc:
        raise ConfigError(f"data.dataset={spec}: {cls.__name__}() failed: {type(exc).__name__}: {exc}") from None
