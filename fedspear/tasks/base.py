"""What every task provides: examples, a prompt, a verifier and oracle feedback.

A task is data + prompt + verifier + oracle feedback for one benchmark (docs/extending.md, "A task"). The gold
answer lives in :class:`Example` but never enters a model context: only the verifier and the oracle
read it (and OPSD's teacher, which is privileged by design).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class Example:
    """One prompt of a client's stream.

    Attributes:
        id: stable row id.
        prompt: the task prompt x0; ends with the answer cue (e.g. "Answer:").
        answer: the gold answer as the verifier compares it: an option letter, or "yes"/"no".
        label: the class used by the Dirichlet partition (the answer letter, yes/no, a problem type...).
        choices: option texts for multiple choice, in letter order; empty otherwise.
        meta: extra gold data (solution, supporting facts, group tags) for the oracle, OPSD and reports.
    """

    id: str
    prompt: str
    answer: str
    label: str
    choices: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass
class LoadStats:
    """Counts from loading a dataset: what was read, kept, and changed (docs/configuration.md, "Data").

    Attributes:
        read: rows read from the splits used.
        kept: rows converted into examples.
        skipped: rows that could not be used, by reason (malformed rows).
        eval_overlap: evaluation rows dropped because their prompt (normalised: NFKC, case, spacing) is also a
            training prompt.
        long_prompts: prompts longer than the model's prompt budget, per side ("train", "eval"); what happened to
            them is ``long_prompts_action`` (``data.long_prompts``).
        long_prompts_action: "truncate" (cut from the left when encoded), "skip" (rows dropped) or "" (not
            checked yet: the check needs the model's tokenizer).
        prompt_budget: the budget in tokens per side, once checked.
    """

    read: int = 0
    kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    eval_overlap: int = 0
    long_prompts: dict[str, int] = field(default_factory=dict)
    long_prompts_action: str = ""
    prompt_budget: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def as_dict(self) -> dict[str, Any]:
        """The counts as ``data_stats.json`` (and the round-0 metrics row's ``data``) record them."""
        out: dict[str, Any] = {"read": self.read, "kept": self.kept, "skipped": dict(self.skipped),
                               "eval_overlap_dropped": self.eval_overlap}
        if self.long_prompts_action:
            out["long_prompts"] = {"action": self.long_prompts_action, **{side: self.long_prompts.get(side, 0)
                                                                           for side in ("train", "eval")},
                                   "budget_tokens": dict(self.prompt_budget)}
        return out


@dataclass
class TaskData:
    """A loaded task: train and eval examples plus the load statistics."""

    train: list[Example]
    eval: list[Example]
    stats: LoadStats


class DataError(ValueError):
    """Data cannot be used (missing file, empty dataset, unknown format); the message says what to fix."""


class Task:
    """Base class for tasks. Subclasses set the class attributes and implement the abstract methods.

    Class attributes:
        name: the ``data.dataset`` value.
        kind: "mc" (answered by an option letter; log-likelihood eval available) or "reasoning".
        answer_marker: the answer-format marker protected from unlikelihood (e.g. "Answer:").
        answer_format: how the final answer must be written, quoted in revision prompts and feedback.
        hub_id: (path, config name) for ``datasets.load_dataset`` when the hub is reachable.
    """

    name: str = ""
    kind: Literal["mc", "reasoning"] = "mc"
    answer_marker: str = "Answer:"
    answer_format: str = "the option letter only"
    hub_id: tuple[str, str | None] = ("", None)

    # -- data -------------------------------------------------------------------------------------------
    def load(self, cfg: Any) -> TaskData:
        """Load train/eval examples according to ``cfg.data`` (and ``cfg.hf``)."""
        raise NotImplementedError

    # -- verifier ---------------------------------------------------------------------------------------
    def extract(self, completion: str) -> str | None:
        """The final answer the completion declares (a letter, "yes"/"no"), or None."""
        raise NotImplementedError

    def is_correct(self, example: Example, completion: str) -> bool:
        return self.extract(completion) == example.answer

    # -- oracle feedback --------------------------------------------------------------------------------
    def feedback(self, example: Example, completion: str, cfg: Any) -> str:
        """Partial feedback on a wrong completion: never contains the gold letter/answer.

        ``cfg`` is the run's shared settings (:class:`fedspear.algorithms.base.RunSettings`); tasks read
        ``cfg.feedback`` (e.g. ``mc_hint_words``).
        """
        raise NotImplementedError

    # -- prompts for other algorithms / eval -------------------------------------------------------------
    def choice_continuations(self, example: Example) -> list[str]:
        """Continuation strings scored by log-likelihood eval, one per option, e.g. [" A", " B", ...]."""
        return [" " + LETTERS[i] for i in range(len(example.choices))]

    def privileged_context(self, example: Example) -> str:
        """Gold information for OPSD's teacher (answer, plus solution / supporting facts)."""
        raise NotImplementedError

    # -- a served client's people (fedspear serve) -------------------------------------------------------
    def question_prompt(self, question: str) -> str:
        """The task prompt x0 for a question a person typed on the served page.

        ``question`` is stripped and does not already end with the answer cue (text that does is taken as a
        full task prompt before this is asked). The prompt must end with ``answer_marker``, as the task's own
        prompts do. Default: ``Question: ...`` followed by the cue.
        """
        return f"Question: {question}\n{self.answer_marker}"

    def person_feedback(self, prompt: str, previous_answer: str, hint: str) -> str:
        """The feedback section of a revision prompt built from a person's hint, in the form of the oracle's.

        A person gives the verdict (a click) and the hint (typed); the task writes the lines its oracle feedback
        has around the hint (the verdict naming the given answer, the answer format, a request not to repeat),
        so the model reads people's feedback as it was trained on. Nothing is added that the person did not say
        or that the task does not already state.

        Args:
            prompt: the task prompt x0.
            previous_answer: the answer the person marked wrong.
            hint: what the person typed, stripped.

        Returns:
            The feedback text. Default: the verdict naming the extracted answer, the hint, the required format
            (``answer_format``) and "Do not repeat your previous answer."
        """
        given = self.extract(previous_answer)
        verdict = f"Your answer ({given}) is incorrect." if given else "Your answer is incorrect."
        return "\n".join([verdict, hint, f"Required format: {self.answer_format}.", "Do not repeat your previous answer."])
