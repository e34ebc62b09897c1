"""A served client without the web layer: policy, trace store, live adapter and the interaction steps.

:class:`ClientRuntime` answers questions (streamed), records verdicts and hints, and generates revisions
from the revision prompt built exactly as in training (:func:`fedspear.tasks.prompts.build_revision_prompt`
on the task prompt x0, the latest answer and the feedback), the feedback being the person's hint framed as
the oracle frames its hints (:func:`person_feedback`). Each step that changes anything commits it
to the :class:`~fedspear.serve.store.TraceStore` before it returns (or, when streaming, before its final
``done`` event), so what the page has been told is on disk. One answer is generated at a time (``lock``);
before each, the live adapter is brought up to the registry's current version.

Steps are split in two so that the web layer can refuse a request with a status code before streaming:
``prepare_*`` validates and raises (:class:`ValueError` for bad input, ``LookupError`` for an unknown
example, store errors for unknown interactions or a wrong state); ``run`` then yields events::

    {"event": "start", "attempt": k, "adapter": {...}}
    {"event": "token", "text": "..."}                 (any number)
    {"event": "done", "attempt": k, "adapter": {...}, "interaction": {...}, "latency": {...}}
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fedspear.config import Config
from fedspear.generation import GenSettings, rollout_settings
from fedspear.models import Policy
from fedspear.serve.adapters import ADAPTERS_DIR, AdapterRegistry, LiveAdapter
from fedspear.serve.learning import update_from_store
from fedspear.serve.security import secure_state
from fedspear.serve.store import AWAITING_HINT, STORE_FILE, Interaction, NewAttempt, StateError, TraceStore
from fedspear.serve.streaming import StreamResult, stream_answer
from fedspear.tasks.base import DataError, Example, Task
from fedspear.tasks.prompts import build_revision_prompt

logger = logging.getLogger("fedspear")



HINT_ROOM_TOKENS = 16  # tokens kept free for the person's hint when a question is asked (docs/serving.md)


@dataclass(frozen=True)
class Limits:
    """Input limits (characters); prompts must also fit ``model.max_seq_len`` with the answer's tokens, and a
    question must leave room for a revision prompt around it (:meth:`ClientRuntime.prepare_ask`)."""

    max_question_chars: int = 2000
    max_hint_chars: int = 500


@dataclass
class Plan:
    """A validated generation request, ready to run.

    Attributes:
        attempt: 0 for a first answer, k for the k-th revision.
        prompt: the prompt text given to the model (x0, or the revision prompt).
        prompt_ids: its token ids.
        settings: decoding settings.
        question: what the person asked (first answers).
        example_id: the task item asked (first answers), else None.
        session: the asking page's session id.
        interaction_id: the interaction being revised (revisions).
        feedback: the person's hint (revisions).
    """

    attempt: int
    prompt: str
    prompt_ids: list[int]
    settings: GenSettings
    question: str = ""
    example_id: str | None = None
    session: str = ""
    interaction_id: int | None = None
    feedback: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def question_prompt(task: Task, text: str) -> str:
    """The task prompt x0 for a free-text question.

    Text that already ends with the task's answer cue (``Answer:``) is taken as a full task prompt. Otherwise the
    task wraps it (:meth:`fedspear.tasks.base.Task.question_prompt`: the built-in world like its reasoning
    questions, other tasks as ``Question: ...`` followed by the cue).
    """
    text = text.strip()
    if text.endswith(task.answer_marker):
        return text
    return task.question_prompt(text)


def person_feedback(task: Task, prompt: str, previous_answer: str, hint: str) -> str:
    """The feedback section of a revision prompt from a person's hint, in the oracle's structure.

    The oracle's feedback is a verdict naming the given answer, one hint, the required format and a request not
    to repeat the answer (docs/deviations.md, section 5). A person gives the verdict (a click) and the hint (typed);
    the task writes the other lines around the hint (:meth:`fedspear.tasks.base.Task.person_feedback`), so the
    model reads people's feedback in the form it was trained on.

    Args:
        task: the task.
        prompt: the task prompt x0 (multiple choice when it lists lettered options).
        previous_answer: the answer the person marked wrong.
        hint: what the person typed.

    Returns:
        The feedback text.
    """
    return task.person_feedback(prompt, previous_answer, hint.strip())


class ClientRuntime:
    """A served client: the policy, its state folder (store + adapters) and the steps of an interaction.

    Args:
        policy: a loaded policy (model, tokenizer, adapter).
        task: the served task (prompts, answer format, verifier).
        cfg: the client's config, with the policy's (capped) ``model.max_seq_len`` (``models.fit_config``).
        state_dir: the client's state folder; holds ``traces.sqlite`` and ``adapters/`` (made owner-only,
            :func:`fedspear.serve.security.secure_state`; the page's secret lives in the app, never here).
        limits: input limits.
        token_delay_s: pause after each generated token (demos and crash tests).
        initial_adapter: adapter tensors to publish and serve at start (``fedspear serve --adapter``).
        initial_label: their label.
        seed: seeds the answers' samplers (None = fresh randomness per answer).
    """

    def __init__(self, policy: Policy, task: Task, cfg: Config, state_dir: str | Path,
                 limits: Limits | None = None, token_delay_s: float = 0.0, initial_adapter: dict | None = None, initial_label: str = "",
                 seed: int | None = None) -> None:
        self.policy, self.cfg, self.task = policy, cfg, task
        self.state_dir = Path(state_dir)
        self.limits = limits or Limits()
        self.token_delay_s = token_delay_s
        self.lock = threading.Lock()
        secure_state(self.state_dir)  # owner-only folder
        self.store = TraceStore(self.state_dir / STORE_FILE)
        self.registry = AdapterRegistry(self.state_dir / ADAPTERS_DIR)
        self.live = LiveAdapter(policy, self.registry)
        self.live.start(initial_adapter, initial_label)
        self.fingerprint = self.live.fingerprint
        self._rng: random.Random = random.Random(seed) if seed is not None else random.SystemRandom()
        self._examples: dict[str, Example] | None = None
        self._labels: tuple[tuple[int, int], dict[int, str]] | None = None
        self.examples_error: str | None = None

    def close(self) -> None:
        self.store.close()

    def adapter_labels(self) -> dict[int, str]:
        """Version -> label of every published adapter (re-read only when the history file changed)."""
        path = self.registry.folder / "history.jsonl"
        try:
            stamp = (path.stat().st_mtime_ns, path.stat().st_size)
        except FileNotFoundError:
            return {}
        if self._labels is None or self._labels[0] != stamp:
            self._labels = (stamp, {v.version: v.label for v in self.registry.history()})
        return self._labels[1]

    # ------------------------------------------------------------------------------------------ examples

    @property
    def examples(self) -> dict[str, Example]:
        """The task's training items by id (loaded on first use; empty when the task's data is missing)."""
        if self._examples is None:
            try:
                data = self.task.load(self.cfg)
                self._examples = {ex.id: ex for ex in data.train}
            except (DataError, FileNotFoundError, OSError) as exc:
                self.examples_error = str(exc)
                self._examples = {}
        return self._examples

    def list_examples(self, limit: int, offset: int = 0, group: str | None = None,
                      kind: str | None = None) -> list[dict[str, Any]]:
        """Task items a person can ask: id, prompt, kind, group and options, never the gold answer."""
        out = []
        for ex in self.examples.values():
            ex_kind = ex.meta.get("kind", self.task.kind)
            if (group is None or ex.meta.get("group") == group) and (kind is None or ex_kind == kind):
                out.append({"id": ex.id, "prompt": ex.prompt, "kind": ex_kind, "group": ex.meta.get("group"),
                            "choices": list(ex.choices)})
        return out[offset : offset + limit]

    # ------------------------------------------------------------------------------------------ settings

    def settings(self, revision: bool) -> GenSettings:
        """Decoding settings of first answers / revisions (``gen.*``, as in SPEAR's rollout)."""
        return rollout_settings(self.cfg.gen, revision)

    def _encode(self, prompt: str, settings: GenSettings, what: str, fix: str = "") -> list[int]:
        ids = self.policy.encode(prompt)
        room = self.cfg.model.max_seq_len - settings.max_new_tokens
        if len(ids) > room:
            raise ValueError(f"{what} is too long: {len(ids)} tokens, at most {room} fit this model{fix}")
        return ids

    def _check_revision_room(self, prompt: str, prompt_tokens: int) -> None:
        """Refuse a question whose answers could never be revised: with the longest first answer
        (``gen.max_new_tokens_y0`` tokens) and a short hint (:data:`HINT_ROOM_TOKENS`), its revision prompt plus
        the revision's ``gen.max_new_tokens_y1`` new tokens must fit ``model.max_seq_len``.

        The revision prompt is built as :meth:`prepare_revise` builds it (the configured
        ``gen.revision_template``), with an empty answer and a one-letter hint whose tokens are then added.

        Raises:
            ValueError: the question leaves no such room; the message says by how many tokens to shorten it.
        """
        gen = self.cfg.gen
        if gen.num_revisions < 1:
            return  # this client never revises
        skeleton = build_revision_prompt(prompt, "", person_feedback(self.task, prompt, "", "x"),
                                         self.task.answer_format, gen.revision_template)
        needed = len(self.policy.encode(skeleton)) + gen.max_new_tokens_y0 \
            + HINT_ROOM_TOKENS
        room = self.cfg.model.max_seq_len - gen.max_new_tokens_y1
        if needed > room:
            most = max(0, prompt_tokens - (needed - room))
            raise ValueError(
                f"the question is too long to be revised after a wrong answer: its prompt is {prompt_tokens} tokens, "
                f"at most {most} leave room for a revision prompt (instructions, the question, an answer of up to "
                f"{gen.max_new_tokens_y0} tokens and a short hint: {needed - prompt_tokens} tokens more) and its "
                f"{gen.max_new_tokens_y1} new tokens within model.max_seq_len={self.cfg.model.max_seq_len}; "
                f"shorten the question by at least {prompt_tokens - most} tokens")

    # ------------------------------------------------------------------------------------------ steps

    def prepare_ask(self, question: str | None = None, example_id: str | None = None, session: str = "") -> Plan:
        """Validate a question (free text, or a task item's id) and build its prompt.

        Raises:
            ValueError: neither or both given, empty, too long, or too long to leave room for a revision
                prompt (:meth:`_check_revision_room`).
            LookupError: unknown example id.
        """
        if (question is None) == (example_id is None):
            raise ValueError("give either a question or an example_id")
        if example_id is not None:
            example = self.examples.get(example_id)
            if example is None:
                raise LookupError(f"no task item '{example_id}'")
            question, prompt = example.prompt, example.prompt
        else:
            question = _clean_text(question or "", self.limits.max_question_chars, "question")
            prompt = question_prompt(self.task, question)
        settings = self.settings(revision=False)
        ids = self._encode(prompt, settings, "the question")
        self._check_revision_room(prompt, len(ids))
        return Plan(0, prompt, ids, settings, question=question, example_id=example_id, session=session)

    def prepare_revise(self, interaction_id: int, hint: str) -> Plan:
        """Validate a hint on an interaction awaiting one and build the revision prompt.

        Raises:
            ValueError: empty or too long hint.
            NotFoundError: unknown interaction.
            StateError: the interaction does not await a hint.
        """
        hint = _clean_text(hint, self.limits.max_hint_chars, "hint")
        interaction = self.store.get(interaction_id)
        if interaction.state != AWAITING_HINT:
            raise StateError(f"interaction {interaction_id} is {interaction.state}, not awaiting a hint")
        feedback = person_feedback(self.task, interaction.prompt, interaction.latest.text, hint)
        prompt = build_revision_prompt(interaction.prompt, interaction.latest.text, feedback, self.task.answer_format,
                                       self.cfg.gen.revision_template)
        settings = self.settings(revision=True)
        ids = self._encode(prompt, settings, "the revision prompt (question, answer and hint)",
                           "; shorten the hint")
        return Plan(len(interaction.attempts), prompt, ids, settings, interaction_id=interaction_id, feedback=hint)

    def run(self, plan: Plan, cancel: threading.Event | None = None) -> Iterator[dict[str, Any]]:
        """Generate the planned answer, store it, and yield the start / token / done events.

        Nothing is stored when generation is cancelled (the page was never answered).

        Raises:
            NotFoundError, StateError: (revisions) the interaction changed meanwhile, e.g. in another tab.
        """
        with self.lock:
            self.live.refresh()
            version = self.live.loaded
            seed = self._rng.getrandbits(62)
            yield {"event": "start", "attempt": plan.attempt, "adapter": version.to_dict() if version else None}
            result: StreamResult | None = None
            for item in stream_answer(self.policy, plan.prompt_ids, plan.settings, seed, cancel, self.token_delay_s):
                if isinstance(item, StreamResult):
                    result = item
                else:
                    yield {"event": "token", "text": item}
            assert result is not None
            if result.cancelled:
                return
            comp = result.completion
            attempt = NewAttempt(plan.prompt, comp.prompt_ids, comp.ids, comp.text, comp.finished,
                                 version.version if version else 0, seed, result.seconds,
                                 result.first_token_seconds, plan.feedback)
            if plan.interaction_id is None:
                interaction = self.store.create_interaction(
                    session=plan.session, question=plan.question, prompt=plan.prompt, model=self.fingerprint,
                    max_revisions=self.cfg.gen.num_revisions, first=attempt, example_id=plan.example_id)
            else:
                interaction = self.store.add_revision(plan.interaction_id, attempt)
        latency = {"seconds": result.seconds, "first_token_seconds": result.first_token_seconds,
                   "tokens": len(comp.ids)}
        yield {"event": "done", "attempt": plan.attempt, "adapter": version.to_dict() if version else None,
               "interaction": interaction_view(interaction, self), "latency": latency}

    def run_to_end(self, plan: Plan) -> dict[str, Any]:
        """Run a plan without streaming; returns the ``done`` event."""
        done: dict[str, Any] = {}
        for event in self.run(plan):
            if event["event"] == "done":
                done = event
        return done

    def verdict(self, interaction_id: int, attempt: int, correct: bool) -> Interaction:
        """The person's verdict on the latest attempt (committed)."""
        return self.store.set_verdict(interaction_id, attempt, correct)

    def close_interaction(self, interaction_id: int) -> Interaction:
        """The person gives up on an interaction (committed)."""
        return self.store.close_interaction(interaction_id)

    def train_from_store(self, job: Any) -> Any:
        """One SPEAR update from this client's store on its own policy, between answers (holds the lock).

        The policy trains from the job's start state (``job.start_state``; None: the adapter the page serves);
        afterwards the served adapter is back in the live model. This is the in-process path for a Flower client
        or a simulation; ``fedspear train-local`` trains in its own process instead.

        Args:
            job: the round's :class:`~fedspear.algorithms.base.ClientJob`.

        Returns:
            The :class:`~fedspear.algorithms.base.LocalUpdateResult` of
            :func:`fedspear.serve.learning.update_from_store`.
        """
        with self.lock:
            self.live.refresh()
            try:
                if job.start_state is None:
                    job = replace(job, start_state=self.live.state)
                return update_from_store(self.policy, self.task, self.cfg, self.store, job)
            finally:
                self.live.restore()

    def status(self) -> dict[str, Any]:
        """Model, served and published adapter versions, store counts, limits and decoding settings."""
        if self.lock.acquire(blocking=False):  # pick up a new adapter now unless an answer is being generated
            try:
                self.live.refresh()
            finally:
                self.lock.release()
        published = self.registry.current()
        gen = self.cfg.gen
        return {
            "model": self.cfg.model.model_name, "fingerprint": self.fingerprint, "task": self.task.name,
            "adapter": self.live.loaded.to_dict() if self.live.loaded else None,
            "published_adapter": published.to_dict() if published else None,
            "counts": self.store.counts(self.fingerprint),
            "num_revisions": gen.num_revisions,
            "limits": {"max_question_chars": self.limits.max_question_chars,
                       "max_hint_chars": self.limits.max_hint_chars},
            "generation": {"do_sample": gen.do_sample, "temperature": gen.temperature, "top_p": gen.top_p,
                           "max_new_tokens_y0": gen.max_new_tokens_y0, "max_new_tokens_y1": gen.max_new_tokens_y1},
            "examples_available": len(self.examples), "examples_error": self.examples_error,
        }


def interaction_view(interaction: Interaction, runtime: ClientRuntime | None = None) -> dict[str, Any]:
    """The page's view of an interaction: no token ids; each attempt with its adapter label when known."""
    out = interaction.to_dict(with_ids=False)
    labels = runtime.adapter_labels() if runtime is not None else {}
    for a, attempt in zip(out["attempts"], interaction.attempts, strict=True):
        a["tokens"] = len(attempt.completion_ids)
        a["adapter_label"] = labels.get(attempt.adapter_version, "")
    return out


def _clean_text(text: str, max_chars: int, what: str) -> str:
    """Strip; refuse empty, too long, or control characters other than newline and tab."""
    if not isinstance(text, str):
        raise ValueError(f"the {what} must be text")
    text = text.strip()
    if not text:
        raise ValueError(f"the {what} is empty")
    if len(text) > max_chars:
        raise ValueError(f"the {what} is too long: {len(text)} characters, at most {max_chars}")
    bad = next((c for c in text if (ord(c) < 32 and c not in "\n\t") or 0xD800 <= ord(c) <= 0xDFFF or ord(c) == 127),
               None)
    if bad is not None:
        raise ValueError(f"the {what} contains a control character (U+{ord(bad):04X})")
    return text
