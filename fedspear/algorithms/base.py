"""The client-update interface every algorithm implements, and the containers it passes around.

An algorithm is a class (one per file: ``spear.py``, ``feedback_sft.py``, ``grpo.py``, ``opsd.py``,
``rltf_sd.py``) deriving from :class:`Algorithm`, registered by name in :mod:`fedspear.algorithms.registry`.
It is built once per run from the task, the shared settings (:class:`RunSettings`) and its own settings
dataclass (its config section), and does a client update in two phases:

    rollout(policy, jobs: list[ClientJob]) -> list[R]
        Generation + feedback for several clients that share the round-start adapter, batched together
        (the simulator passes all of a round's clients; a Flower client passes one).
    train(policy, job: ClientJob, rollout: R) -> LocalUpdateResult
        The local optimisation for one client, from the job's start state, on that client's rollout.

and ``local_update(policy, job) = train(policy, job, rollout(policy, [job])[0])``. The objectives, settings
and how to add an algorithm: ``docs/algorithms.md``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from fedspear.tasks.base import Example

if TYPE_CHECKING:  # torch and the model stack are imported by the algorithm files, not by the interface
    import torch

    from fedspear.config import Config, FeedbackConfig, FLConfig, GenConfig, OptimConfig
    from fedspear.models import Policy
    from fedspear.tasks.base import Task

@dataclass
class Trace:
    """One (prompt, completion) pair as token ids, exactly as sampled (nothing decoded and re-encoded).

    Attributes:
        prompt_ids: the prompt's token ids (with BOS when the tokenizer adds one), length T_p.
        completion_ids: the sampled ids, ending with EOS only where generation emitted it, length T_c.
        confidence: weight c_i of a lose trace (1.0 fixed by revision, 0.5 never fixed); 1.0 for wins.
        reward: scalar reward / advantage where the algorithm uses one.
        text: the decoded completion (for logs and answer-span masks).
    """

    prompt_ids: list[int]
    completion_ids: list[int]
    confidence: float = 1.0
    reward: float = 0.0
    text: str = ""


@dataclass
class ClientJob:
    """What a client needs for one round.

    Attributes:
        client_id: index of the client in the federation.
        round_idx: 1-based round index.
        examples: the client's local prompts.
        lr: the round's learning rate.
        seed: the seed of this (run seed, round, client) triple, collision-free.
        start_state: the round-start global adapter the client trains from, anchors to and scores against (CPU
            tensors): the adapter the server sent. :func:`start_job` puts it into the policy's live model; a job
            without one (an algorithm called directly, e.g. in a notebook) gets the adapter the live model holds
            when the job starts.
    """

    client_id: int
    round_idx: int
    examples: list[Example]
    lr: float
    seed: int
    start_state: dict[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)


@dataclass
class LocalUpdateResult:
    """What a client returns to the server.

    Attributes:
        adapter: adapter tensors (PEFT state-dict names) on CPU, sharing no memory with the live model;
            None when the client has no update (e.g. SPEAR with zero wins).
        weight: aggregation weight (n_eff); 0 when ``adapter`` is None.
        metrics: scalar metrics for metrics.jsonl.
    """

    adapter: dict[str, torch.Tensor] | None
    weight: float
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunSettings:
    """The shared (non-algorithm) settings a client update reads; no algorithm section.

    Attributes:
        fl: rounds, local steps S and rollout budget P, FedProx weight.
        optim: optimiser, batch size B, accumulation A, clipping.
        gen: decoding of rollouts.
        feedback: the feedback source.
        max_seq_len: prompt + completion tokens kept (``model.max_seq_len``).
        seed: the run seed (``data.seed``).
        dedup_draws: compute a trace drawn k times once, weighted by k: ``optim.dedup_draws`` and only with
            ``lora.dropout`` 0 (with dropout each draw gets its own mask, so one weighted pass would be unbiased
            but noisier; every draw is computed instead).
    """

    fl: FLConfig
    optim: OptimConfig
    gen: GenConfig
    feedback: FeedbackConfig
    max_seq_len: int
    seed: int
    dedup_draws: bool = True

    @classmethod
    def from_config(cls, cfg: Config) -> RunSettings:
        """The shared sections of ``cfg`` (the same objects, not copies; nothing here writes them)."""
        return cls(cfg.fl, cfg.optim, cfg.gen, cfg.feedback, cfg.model.max_seq_len, cfg.data.seed,
                   bool(cfg.optim.dedup_draws) and cfg.lora.dropout == 0)


def start_job(policy: Policy, job: ClientJob) -> dict[str, torch.Tensor]:
    """Put the job's round-start adapter (``job.start_state``) into the policy's live model and return it.

    A job without a start state is given a CPU copy of the adapter the live model holds now, recorded on the job,
    so the rollout and the training of one job start from, anchor to and score against one state. A job is one
    client-round: do not reuse one for another round. Several jobs meant to start from one adapter must share it:
    give them the same ``start_state``, or start them together (:func:`start_jobs`,
    :func:`fedspear.federation.client.run_clients`); jobs without one started one after another would each start
    from the adapter the previous one trained. The policy itself keeps no global adapter: the server owns it and
    sends it with each job (docs/architecture.md).
    """
    if job.start_state is None:
        job.start_state = policy.adapter.get()
    policy.adapter.set(job.start_state)
    return job.start_state


def start_jobs(policy: Policy, jobs: list[ClientJob]) -> dict[str, torch.Tensor] | None:
    """:func:`start_job` for the clients of one batched rollout, which must share one start state (the same
    object, or all None: then they all get the live adapter's copy). Returns it (None for no jobs).

    Raises:
        ValueError: the jobs start from different adapters.
    """
    if not jobs:
        return None
    if any(job.start_state is not jobs[0].start_state for job in jobs):
        raise ValueError("a batched rollout needs every job to start from the same adapter")
    state = start_job(policy, jobs[0])
    for job in jobs[1:]:
        job.start_state = state
    return state


R = TypeVar("R")


class Algorithm(ABC, Generic[R]):
    """A client-update algorithm: a rollout over one or more clients' jobs, then training one client.

    Subclasses set ``name`` (``algorithm.name``), ``section`` (the config section holding their settings, or
    None), ``Settings`` (that section's dataclass) and ``metrics`` (the metric names they add, see
    :mod:`fedspear.metrics`), and implement :meth:`rollout` and :meth:`train`. They
    read the task, ``self.run`` and ``self.settings`` only: never another algorithm's section.

    Args:
        task: the run's task (prompts, verifier, feedback).
        run: the shared settings.
        settings: this algorithm's settings (an instance of ``Settings``).
    """

    name: ClassVar[str]
    section: ClassVar[str | None] = None
    Settings: ClassVar[type | None] = None
    # The metric names this class adds to its updates' metrics (fedspear.metrics; docs/algorithms.md, "Metrics");
    # subclasses inherit these and list only what they add. ``*`` stands for 1-40 of [a-z0-9_], ``#`` for 1-2 digits.
    metrics: ClassVar[tuple[str, ...]] = ("steps", "skipped_steps", "tokens_trained", "training_s", "loss_*")

    def __init__(self, task: Task, run: RunSettings, settings: Any = None) -> None:
        self.task, self.run, self.settings = task, run, settings

    @classmethod
    def from_config(cls, cfg: Config, task: Task) -> Algorithm[Any]:
        """Build from a run config: the task, the shared sections and this algorithm's own section."""
        settings = cfg.section(cls.section) if cls.section else None
        return cls(task, RunSettings.from_config(cfg), settings)

    @abstractmethod
    def rollout(self, policy: Policy, jobs: list[ClientJob]) -> list[R]:
        """Generation and feedback for ``jobs`` (clients sharing the round-start adapter); one rollout each."""

    @abstractmethod
    def train(self, policy: Policy, job: ClientJob, data: R) -> LocalUpdateResult:
        """Train one client from the global adapter on its rollout; the adapter copy, weight and metrics."""

    def local_update(self, policy: Policy, job: ClientJob) -> LocalUpdateResult:
        """One client's whole round: its rollout alone, then training."""
        return self.train(policy, job, self.rollout(policy, [job])[0])
