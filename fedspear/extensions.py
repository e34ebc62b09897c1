"""Users' own tasks and feedback sources, named in the config by a dotted path ``module:attr``.

``data.dataset=my_pkg.tasks:MyTask`` and ``feedback.provider=my_pkg.fb:MyFeedback`` (as TRL accepts reward
functions by dotted path) load a class from the user's package (on ``sys.path``: installed, or on
``PYTHONPATH``) without editing fedspear. Each is checked when the config is loaded and again where it is used;
a path that does not import, or a class that does not fit the interface, is a :class:`~fedspear.config.ConfigError`
naming the key and the fix (``fedspear: error: ...``, exit 2). See ``docs/extending.md``.
"""

from __future__ import annotations

import inspect
from typing import Any

from fedspear import (
    feedback,  # the modules, not their names: each imports tasks.base, so they may still be loading
    feedback_noise,
)
from fedspear.config import Config, ConfigError
from fedspear.dotted import describe, is_dotted, load_object  # noqa: F401 - also importable from here
from fedspear.tasks.base import DataError, Example, Task, TaskData
from fedspear.tasks.custom import TASK_METHODS, build_task, load_task_class  # noqa: F401 - also importable from here


def load_feedback_class(provider: str) -> type:
    """The feedback source class of ``feedback.provider``: a built-in name or ``module:Class``.

    Raises:
        ConfigError: an unknown name, a path that does not import, or a class without a ``judge`` method.
    """
    if not is_dotted(provider):
        if provider not in feedback.BUILTIN_PROVIDERS:
            raise ConfigError(f"feedback.provider: '{provider}' is not one of {', '.join(feedback.BUILTIN_PROVIDERS)} "
                              "or a dotted path module:Class")
        return feedback.BUILTIN_PROVIDERS[provider]
    cls = load_object(provider, "feedback.provider")
    if not inspect.isclass(cls) or not callable(getattr(cls, "judge", None)):
        raise ConfigError(f"feedback.provider={provider}: {describe(cls)} is not a class with a judge(example, answer) "
                          "method returning fedspear.feedback.Feedback (see docs/extending.md)")
    return cls


def task_with_feedback(task: Task, cfg: Config, probe: Example | None = None) -> Task:
    """The task the client updates use: ``task`` itself for the built-in providers (the algorithms call its
    verifier and oracle directly), else a :class:`~fedspear.feedback.FeedbackTask` over the user's source.

    Args:
        task: the run's task.
        cfg: the run's Config (``feedback.provider``).
        probe: an example to judge once with an empty answer before the run starts, so a source that fails or
            returns the wrong type stops the run here instead of failing every client in every round.

    Raises:
        ConfigError: the imperfect-feedback knobs ask for a capability ``task`` lacks
            (:func:`fedspear.feedback_noise.check_feedback_noise`); the provider does not load, its constructor ``Source(task, cfg)`` fails, the object it
            builds does not implement :class:`~fedspear.feedback.FeedbackSource`, or judging ``probe`` fails.
    """
    feedback_noise.check_feedback_noise(cfg.feedback, task)  # the task's capabilities, before round 0
    provider = cfg.feedback.provider
    cls = load_feedback_class(provider)
    if cls in feedback.BUILTIN_PROVIDERS.values():
        return task
    try:
        source = cls(task, cfg)
    except Exception as exc:
        raise ConfigError(f"feedback.provider={provider}: {cls.__name__}(task, cfg) failed: "
                          f"{type(exc).__name__}: {exc}") from None
    if not isinstance(source, feedback.FeedbackSource):
        raise ConfigError(f"feedback.provider={provider}: {cls.__name__} instances have no judge(example, answer)")
    wrapped = feedback.FeedbackTask(task, source, provider)
    if probe is not None:
        try:
            wrapped.judge(probe, "")
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(f"feedback.provider={provider}: judge(example, '') failed on {probe.id}: "
                              f"{type(exc).__name__}: {exc}") from None
    return wrapped


def _task_label(task: Task, cfg: Config) -> str:
    return f"data.dataset={cfg.data.dataset}: {type(task).__name__}"


def load_task_data(task: Task, cfg: Config) -> TaskData:
    """``task.load(cfg)``, checked to be a :class:`~fedspear.tasks.base.TaskData` of :class:`Example` lists.

    A user's task (``data.dataset=module:Class``) that raises anything other than a :class:`DataError`,
    ``FileNotFoundError`` or :class:`ConfigError` is reported in one line naming its class.

    Raises:
        ConfigError: ``load`` raised, or returned something else than TaskData(train=[Example...],
            eval=[Example...], stats=LoadStats(...)); the message names the task class and what it must return.
    """
    label = _task_label(task, cfg)
    try:
        data = task.load(cfg)
    except (DataError, ConfigError, FileNotFoundError):
        raise
    except Exception as exc:
        if not is_dotted(cfg.data.dataset):
            raise
        raise ConfigError(f"{label}.load(cfg) failed: {type(exc).__name__}: {exc}") from None
    must = ("it must return fedspear.tasks.base.TaskData(train=[Example, ...], eval=[Example, ...], "
            "stats=LoadStats(...)) (see docs/extending.md)")
    if not isinstance(data, TaskData):
        raise ConfigError(f"{label}.load(cfg) returned {_describe_value(data)}; {must}")
    for part in ("train", "eval"):
        rows = getattr(data, part)
        if not isinstance(rows, (list, tuple)):
            raise ConfigError(f"{label}.load(cfg) returned TaskData.{part} = {_describe_value(rows)}; {must}")
        wrong = next((row for row in rows if not isinstance(row, Example)), None)
        if wrong is not None:
            raise ConfigError(f"{label}.load(cfg) returned a TaskData.{part} row that is {_describe_value(wrong)}, "
                              f"not an Example; {must}")
    if not hasattr(data.stats, "num_skipped"):
        raise ConfigError(f"{label}.load(cfg) returned TaskData.stats = {_describe_value(data.stats)}; {must}")
    return data


def _describe_value(value: Any) -> str:
    text = repr(value)
    return f"a {type(value).__name__} ({text if len(text) <= 60 else text[:57] + '...'})"


def probe_task(task: Task, cfg: Config, example: Example, settings: Any) -> None:
    """Call a user's task's verifier and oracle once on ``example`` before the run, so a broken ``extract`` or
    ``feedback`` stops the run in one line instead of failing every client in every round (built-in tasks are
    not probed).

    ``extract`` is called on an empty completion and on ``"<answer_marker> <gold answer>"``, and must return a
    str or None; ``feedback`` on ``example`` with an empty completion and ``settings`` (what a client update
    passes: :class:`fedspear.algorithms.base.RunSettings`), and must return a str.

    Raises:
        ConfigError: either raised or returned another type; the message names the task class and the method.
    """
    if not is_dotted(cfg.data.dataset):
        return
    label = _task_label(task, cfg)
    calls = [("extract", lambda: task.extract(""), "a str or None", (str, type(None))),
             ("extract", lambda: task.extract(f"{task.answer_marker} {example.answer}"), "a str or None",
              (str, type(None))),
             ("feedback", lambda: task.feedback(example, "", settings), "a str", (str,))]
    for method, call, kind, types in calls:
        try:
            value = call()
        except Exception as exc:
            raise ConfigError(f"{label}.{method} failed on row {example.id}: {type(exc).__name__}: {exc} "
                              "(see docs/extending.md)") from None
        if not isinstance(value, types):
            raise ConfigError(f"{label}.{method} returned {_describe_value(value)} on row {example.id}; it must "
                              f"return {kind} (see docs/extending.md)")


def check(cfg: Config) -> None:
    """Load the user's task and feedback classes the config names (no-op for built-in names); a user's task is
    also checked for the capabilities the imperfect-feedback knobs need.

    Raises:
        ConfigError: as :func:`load_task_class`, :func:`load_feedback_class` and
            :func:`fedspear.feedback_noise.check_feedback_noise`.
    """
    if is_dotted(cfg.data.dataset):
        feedback_noise.check_feedback_noise(cfg.feedback, load_task_class(cfg.data.dataset))
    load_feedback_class(cfg.feedback.provider)
