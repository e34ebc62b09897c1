"""Where a client's feedback comes from: the feedback source interface, the oracle (default) and 'none'.

A *feedback source* looks at one example and one answer and returns a :class:`Feedback`: the verdict (is the
answer right?) and, for a wrong answer, a hint that helps revise it without stating the gold answer. In SPEAR
(Lee et al., arXiv 2605.07977, section 3) this is the real-time feedback a client receives; the simulator
stands in for the people with the task's oracle (:class:`OracleFeedback`: the task's verifier and its
``Task.feedback`` hint). ``feedback.provider`` chooses the source: ``oracle``, ``none`` (verdicts only, no
hint, so SPEAR does not revise) or ``module:Class``, a class from the user's own package that is built as
``Class(task, cfg)`` and implements :class:`FeedbackSource` (see ``docs/extending.md``).

With a user's source, the clients train on *its* verdicts and hints (:class:`FeedbackTask` routes the task's
``is_correct`` and ``feedback`` through it), while evaluation keeps the task's own verifier
(:func:`verifier_of`), so accuracy is measured against the gold answers whatever the feedback says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from fedspear.config import ConfigError
from fedspear.tasks.base import Example, Task, TaskData

__all__ = ["BUILTIN_PROVIDERS", "Feedback", "FeedbackSource", "FeedbackTask", "NoFeedback", "OracleFeedback",
           "verifier_of"]


@dataclass(frozen=True)
class Feedback:
    """One verdict on an answer.

    Attributes:
        correct: whether the answer is right.
        hint: for a wrong answer, text that helps revise it (never the gold answer itself); "" for none.
    """

    correct: bool
    hint: str = ""


@runtime_checkable
class FeedbackSource(Protocol):
    """A feedback source: built as ``Source(task, cfg)`` (the task and the run's Config), then asked per answer."""

    def judge(self, example: Example, answer: str) -> Feedback:
        """The verdict and hint on ``answer``, the model's completion for ``example.prompt``."""
        ...


class OracleFeedback:
    """The default source: the task's verifier, and the task's partial oracle feedback on a wrong answer.

    Args:
        task: the task (its ``is_correct`` and ``feedback``).
        cfg: the run Config (``feedback.mc_hint_words``...).
    """

    def __init__(self, task: Task, cfg: Any) -> None:
        self.task, self.cfg = task, cfg

    def judge(self, example: Example, answer: str) -> Feedback:
        if self.task.is_correct(example, answer):
            return Feedback(True)
        return Feedback(False, self.task.feedback(example, answer, self.cfg))


class NoFeedback(OracleFeedback):
    """``feedback.provider=none``: the verifier's verdict and no hint (SPEAR then never revises)."""

    def judge(self, example: Example, answer: str) -> Feedback:
        return Feedback(self.task.is_correct(example, answer))


BUILTIN_PROVIDERS: dict[str, type] = {"oracle": OracleFeedback, "none": NoFeedback}


class FeedbackTask(Task):
    """A task whose verdicts and hints come from a feedback source; everything else is the wrapped task's.

    The client updates call ``is_correct`` (the verdict) and ``feedback`` (the hint) on their task; this wrapper
    answers both from one ``source.judge`` call per (example, answer) (cached, so a wrong answer is judged once).

    Args:
        task: the wrapped task (data, prompts, verifier used by evaluation).
        source: the feedback source.
        name: how the source is named in errors (the ``feedback.provider`` value).
    """

    _CACHE_SIZE = 4096

    def __init__(self, task: Task, source: FeedbackSource, name: str) -> None:
        self.verifier, self.source, self.source_name = task, source, name
        self.name, self.kind = task.name, task.kind
        self.answer_marker, self.answer_format, self.hub_id = task.answer_marker, task.answer_format, task.hub_id
        self._cache: dict[tuple[str, str], Feedback] = {}

    def judge(self, example: Example, answer: str) -> Feedback:
        """The source's :class:`Feedback` on ``answer`` (cached by example id and answer).

        Raises:
            ConfigError: the source returned something other than a :class:`Feedback`.
        """
        key = (example.id, answer)
        if key not in self._cache:
            result = self.source.judge(example, answer)
            if not isinstance(result, Feedback):
                raise ConfigError(f"feedback.provider={self.source_name}: judge() returned {type(result).__name__}, "
                                "expected fedspear.feedback.Feedback(correct, hint)")
            if len(self._cache) >= self._CACHE_SIZE:
                self._cache.clear()
            self._cache[key] = result
        return self._cache[key]

    def is_correct(self, example: Example, completion: str) -> bool:
        return self.judge(example, completion).correct

    def feedback(self, example: Example, completion: str, cfg: Any = None) -> str:
        return self.judge(example, completion).hint

    def load(self, cfg: Any) -> TaskData:
        return self.verifier.load(cfg)

    def extract(self, completion: str) -> str | None:
        return self.verifier.extract(completion)

    def choice_continuations(self, example: Example) -> list[str]:
        return self.verifier.choice_continuations(example)

    def privileged_context(self, example: Example, *args: Any, **kwargs: Any) -> str:
        return self.verifier.privileged_context(example, *args, **kwargs)

    def question_prompt(self, question: str) -> str:
        return self.verifier.question_prompt(question)

    def person_feedback(self, prompt: str, previous_answer: str, hint: str) -> str:
        return self.verifier.person_feedback(prompt, previous_answer, hint)

    def __getattr__(self, name: str) -> Any:  # a task's own extra attributes
        if name == "verifier":
            raise AttributeError(name)
        return getattr(self.verifier, name)


def verifier_of(task: Task) -> Task:
    """The task whose verifier measures accuracy: ``task`` itself, or the task a :class:`FeedbackTask` wraps."""
    return task.verifier if isinstance(task, FeedbackTask) else task
