"""Imperfect feedback: the user model between a task's oracle and the algorithms that learn from it.

The task's oracle (``Task.is_correct`` and ``Task.feedback``) is exact: every verdict is right and every hint
points to the truth. Real users are not. :class:`FeedbackModel` wraps the oracle for one client-round and
corrupts what it returns with seeded probabilities (``cfg.feedback.*``, all 0 by default = the oracle exactly):

- ``false_accept_rate``: a wrong answer is reported correct (a false win: SPEAR and feedback-SFT train on it,
  GRPO and RLTF-SD reward it).
- ``false_reject_rate``: a right answer is reported wrong, and its feedback hints toward a wrong value.
- ``misleading_hint_rate``: the feedback on a wrong answer hints toward another wrong value.
- ``no_hint_rate``: the feedback on a wrong answer is a bare "incorrect", no hint.
- ``drop_rate``: the user never answers: the interaction (a prompt with all its samples) is dropped.

A hint is either bare (probability ``no_hint_rate``), misleading (``misleading_hint_rate``) or the oracle's
(the rest), so the two rates must sum to at most 1. Misleading hints and false rejects need a task that can
hint toward a wrong value (``Task.misleading_feedback(example, completion, rng)``; the built-in world has it);
a bare hint uses ``Task.bare_feedback(example, completion)`` when the task has it, else a fixed sentence.
No corrupted hint ever names the gold answer.

Every algorithm that uses verdicts or hints (SPEAR, feedback-SFT, RLTF-SD; GRPO, whose reward is the verdict)
asks :func:`feedback_models` for one model per client job and calls ``dropped``/``verdict``/``feedback`` where it
called the task's oracle; ``metrics()`` says per client-round how many verdicts and hints were corrupted.
Randomness comes from one ``random.Random`` per client job, seeded by the job's seed, drawn only for knobs
that are on: with every knob at 0 the oracle's exact verdicts and texts pass through.
"""

from __future__ import annotations

import random
from typing import Any

from fedspear.config import ConfigError
from fedspear.tasks.base import Example, Task

KNOBS = ("false_accept_rate", "false_reject_rate", "misleading_hint_rate", "no_hint_rate", "drop_rate")
BARE_FEEDBACK = "Your answer is incorrect."
# The user model's per client-round counters (FeedbackModel.metrics reports each as feedback_<counter>).
COUNTERS = ("verdicts", "false_accepts", "false_rejects", "hints", "hints_bare", "hints_misleading",
            "hints_after_false_reject", "interactions", "dropped")
# The metric names FeedbackModel.metrics emits: its declaration in the metric registry (fedspear.metrics).
METRICS = (*(f"feedback_{c}" for c in COUNTERS), "feedback_corrupted_verdicts", "feedback_corrupted_hints")


def check_feedback_noise(feedback_cfg: Any, task: Task | type[Task] | None = None) -> None:
    """Raise ConfigError for noise settings no run could use.

    The one capability check of the imperfect-feedback knobs: it runs where a run's task is assembled
    (:func:`fedspear.extensions.task_with_feedback`, before round 0; :func:`fedspear.extensions.check` for a
    user's ``module:Class`` task at config load) and in every :class:`FeedbackModel`.

    Args:
        feedback_cfg: ``cfg.feedback`` (the knobs of :data:`KNOBS`).
        task: the task (or its class), when known: misleading hints and false rejects need
            ``task.misleading_feedback``, whatever the task is called.

    Raises:
        ConfigError: a rate outside [0, 1], ``misleading_hint_rate + no_hint_rate > 1``, or a knob the task
            cannot serve.
    """
    for knob in KNOBS:
        value = getattr(feedback_cfg, knob, 0.0)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"feedback.{knob}: must be in [0, 1], got {value}")
    misleading, no_hint = (getattr(feedback_cfg, k, 0.0) for k in ("misleading_hint_rate", "no_hint_rate"))
    if misleading + no_hint > 1.0:
        raise ConfigError("feedback.misleading_hint_rate + feedback.no_hint_rate: must be <= 1 (a hint is bare, "
                          "misleading or the oracle's)")
    wrong_hints = misleading > 0 or getattr(feedback_cfg, "false_reject_rate", 0.0) > 0
    if task is not None and wrong_hints and not hasattr(task, "misleading_feedback"):
        raise ConfigError(f"feedback.misleading_hint_rate / feedback.false_reject_rate: task "
                          f"'{getattr(task, 'name', task)}' cannot hint toward a wrong value (it has no "
                          "misleading_feedback(example, completion, rng)); set them to 0 or use such a task, e.g. "
                          "data.dataset=world")


class FeedbackModel:
    """The verdicts and hints one client gets in one round, from the oracle through the noise knobs.

    Args:
        task: the task whose oracle is wrapped.
        cfg: the run's Config (``cfg.feedback`` holds the knobs; passed on to ``task.feedback``).
        seed: the client job's seed (the same seed gives the same corruptions for the same calls).
    """

    def __init__(self, task: Task, cfg: Any, seed: int) -> None:
        self.task, self.cfg = task, cfg
        self.rates = {k: float(getattr(cfg.feedback, k, 0.0)) for k in KNOBS}
        check_feedback_noise(cfg.feedback, task)
        self.rng = random.Random(f"feedback-noise|{seed}")
        self.counts = dict.fromkeys(COUNTERS, 0)
        self._rejected: set[tuple[str, str]] = set()

    @property
    def is_oracle(self) -> bool:
        """True when every knob is 0 (verdicts and hints are the oracle's, unchanged)."""
        return not any(self.rates.values())

    def _hit(self, knob: str) -> bool:
        rate = self.rates[knob]
        return rate > 0 and self.rng.random() < rate

    def dropped(self) -> bool:
        """Whether the user ignores this interaction (call once per prompt, before its verdicts)."""
        self.counts["interactions"] += 1
        if self._hit("drop_rate"):
            self.counts["dropped"] += 1
            return True
        return False

    def verdict(self, example: Example, completion: str) -> bool:
        """The reported correctness of ``completion``: the oracle's, flipped by false accept / false reject."""
        self.counts["verdicts"] += 1
        correct = self.task.is_correct(example, completion)
        if correct and self._hit("false_reject_rate"):
            self.counts["false_rejects"] += 1
            self._rejected.add((example.id, completion))
            return False
        if not correct and self._hit("false_accept_rate"):
            self.counts["false_accepts"] += 1
            return True
        return correct

    def feedback(self, example: Example, completion: str) -> str:
        """The feedback on a completion reported wrong: the oracle's hint, a bare verdict or a wrong-value hint.

        A completion that :meth:`verdict` falsely rejected always gets a hint toward a wrong value.
        """
        self.counts["hints"] += 1
        if (example.id, completion) in self._rejected:
            self.counts["hints_after_false_reject"] += 1
            return self.task.misleading_feedback(example, completion, self.rng)  # type: ignore[attr-defined]
        bare, misleading = self.rates["no_hint_rate"], self.rates["misleading_hint_rate"]
        u = self.rng.random() if bare or misleading else 1.0
        if u < bare:
            self.counts["hints_bare"] += 1
            bare_fn = getattr(self.task, "bare_feedback", None)
            return bare_fn(example, completion) if bare_fn else BARE_FEEDBACK
        if u < bare + misleading:
            self.counts["hints_misleading"] += 1
            return self.task.misleading_feedback(example, completion, self.rng)  # type: ignore[attr-defined]
        return self.task.feedback(example, completion, self.cfg)

    def metrics(self) -> dict[str, int]:
        """Per client-round counts: ``feedback_<count>`` for each counter, plus the corrupted totals
        ``feedback_corrupted_verdicts`` (false accepts + false rejects) and ``feedback_corrupted_hints``
        (bare + misleading + wrong-value hints after a false reject)."""
        c = self.counts
        out = {f"feedback_{k}": v for k, v in c.items()}
        out["feedback_corrupted_verdicts"] = c["false_accepts"] + c["false_rejects"]
        out["feedback_corrupted_hints"] = c["hints_bare"] + c["hints_misleading"] + c["hints_after_false_reject"]
        return out


def feedback_models(task: Task, cfg: Any, jobs: list[Any]) -> list[FeedbackModel]:
    """One :class:`FeedbackModel` per client job of a round (seeded by ``job.seed``), over ``task``.

    Args:
        task: the run's task (its oracle verdicts and hints).
        cfg: anything with a ``feedback`` section (the run Config, or an algorithm's ``RunSettings``); it is also
            what ``task.feedback`` receives.
        jobs: the round's client jobs.
    """
    return [FeedbackModel(task, cfg, job.seed) for job in jobs]
