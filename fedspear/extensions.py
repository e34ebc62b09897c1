"""Users' own tasks and feedback sources, named in the config by a dotted path ``module:attr``.

``data.dataset=my_pkg.tasks:MyTask`` and ``feedback.provider=my_pkg.fb:MyFeedback`` (as TRL accepts reward
functions by dotted path) load a class from the user's package (on ``sys.path``: installed, or on
``PYTHONPATH``) without editing fedspear. Each is checked when the config is loaded and again where it is used;
a path that does not import, or a class that does not fit the interface, is a :class:`~fedspear.config.ConfigError`
naming the key and the fix (``fedspear: error: ...``, exit 2). See ``docs/extending.md``.
"""

from __future__ import annotations

import inspect

from fedspear import (
    feedback,  # the modules, not their names: each imports tasks.base, so they may still be loading
    feedback_noise,
)
from fedspear.config import Config, ConfigError
from fedspear.dotted import describe, is_dotted, load_object  # noqa: F401 - also importable from here
from fedspear.tasks.base import Example, Task
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
