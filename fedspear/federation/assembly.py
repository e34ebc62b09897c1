"""The parts of a run, assembled the same way for every front end: :func:`assemble`.

A run needs its task (and the feedback source its clients hear), its rows (loaded, checked, fitted to the
model's prompt budget and split over the clients), the policy, the config fitted to the policy (its capped
``model.max_seq_len``) and the algorithm. The simulator, the Flower ServerApp and both ClientApps, the served
federation, ``fedspear serve`` and ``fedspear train-local`` all build them here; they differ only in which rows
they need (every client's, one client's, the evaluation rows only, none) and in whether their clients' feedback
comes from ``feedback.provider`` (the oracle or a user's source) or from people.

The steps run in one order: the task, its rows, the probe of a user's task and feedback source on the first
training row, the policy, the fitted config, the prompt budget (``data.long_prompts``), the partition, the
algorithm. Every random choice in them is seeded by the run seed, so two front ends given the same config
assemble the same rows and the same initial adapter.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from fedspear.config import Config
from fedspear.tasks.base import Example, Task

logger = logging.getLogger("fedspear")

EVERY_CLIENT = "every client"  # partition: the rows of every client of the federation (simulator, served federation)
OWN_ROWS = "own rows"  # partition: all training rows are this device's own (a SuperNode without a partition id)
NO_CLIENTS = "no clients"  # partition: no client's rows are needed (the Flower ServerApp evaluates only)


@dataclass(frozen=True)
class Assembly:
    """The assembled parts of a run.

    Attributes:
        cfg: the config to run with: a copy carrying the policy's (capped) ``model.max_seq_len`` when that differs
            (:func:`fedspear.models.fit_config`); the caller's config is never changed.
        policy: the model (tokenizer, LoRA adapter handle, sequence limit).
        task: the task the clients' rollouts ask for verdicts and hints: wrapped in the ``feedback.provider`` source
            when that is a user's (:func:`fedspear.extensions.task_with_feedback`), else the task itself.
        algorithm: the client update (``algorithm.name``), built from ``cfg`` and ``task``.
        clients: the training rows by client: every client's (``partition=EVERY_CLIENT``), or one list, the
            node's piece or its own rows; empty when no training rows were asked for.
        eval_set: the evaluation rows (empty when none were asked for).
        stats: what the loader and the prompt budget counted (``data_stats.json``), with the row counts and, for
            every client's rows, ``client_sizes``; empty when no rows were loaded.
    """

    cfg: Config
    policy: Any
    task: Task
    algorithm: Any
    clients: list[list[Example]] = field(default_factory=list)
    eval_set: list[Example] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def verifier(self) -> Task:
        """The task without a user's feedback source: its own verifier (evaluation, the served page)."""
        from fedspear.feedback import verifier_of

        return verifier_of(self.task)


def assemble(cfg: Config, *, policy: Any = None, data: bool = True, evaluation: bool = True,
             partition: str | int = EVERY_CLIENT, oracle: bool = True) -> Assembly:
    """Build the parts of a run from its config.

    Args:
        cfg: the run configuration (not changed).
        policy: a policy already loaded for ``cfg`` (a Flower process keeps one per config, a served federation
            loads one per client); None loads it (:func:`fedspear.models.load_policy`).
        data: read the task's rows; False for a device that learns from its trace store (``fedspear serve``,
            ``train-local``, the store-backed ClientApp): then no rows, no probe, no prompt budget.
        evaluation: the run evaluates: refuse a task without evaluation rows (a Flower client does not).
        partition: whose training rows: :data:`EVERY_CLIENT` (the seeded Dirichlet partition over
            ``data.num_clients``), a partition id (that client's piece of the same partition), :data:`OWN_ROWS`
            (every row is this device's own, subsampled to ``data.max_examples_per_client``) or :data:`NO_CLIENTS`
            (none: the task may then have no training rows).
        oracle: the clients' feedback comes from ``feedback.provider`` (its task is probed once and wrapped);
            False where it comes from people or where nothing trains (the served clients, the ServerApp).

    Returns:
        The :class:`Assembly`.

    Raises:
        DataError: no training rows (when clients need them), no evaluation rows (``evaluation``), or the prompt
            budget leaves none (:func:`fedspear.prompt_budget.fit_prompts`).
        ConfigError: an unknown algorithm, a user's task or feedback source that fails its probe, imperfect
            feedback the task cannot give, or a model that cannot be loaded.
    """
    from fedspear import feedback_noise
    from fedspear.algorithms.base import RunSettings
    from fedspear.algorithms.registry import algorithm_class
    from fedspear.extensions import load_task_data, probe_task, task_with_feedback
    from fedspear.federation.client import client_examples, partition_examples
    from fedspear.models import fit_config, load_policy
    from fedspear.prompt_budget import fit_prompts
    from fedspear.tasks import get_task
    from fedspear.tasks.base import DataError

    algorithm_cls = algorithm_class(cfg.algorithm.name)  # an unknown name fails before any work
    task = get_task(cfg.data.dataset)
    rows = load_task_data(task, cfg) if data else None
    training = data and partition != NO_CLIENTS
    if training and not rows.train:
        where = "" if partition == EVERY_CLIENT else " on this node"
        raise DataError(f"task '{cfg.data.dataset}' has no training rows{where}; check data.path / data.split")
    if data and evaluation and not rows.eval:
        raise DataError(f"task '{cfg.data.dataset}' has no evaluation rows; check data.eval_split / data.path")
    probe = rows.train[0] if rows is not None and rows.train else None
    if probe is not None:
        probe_task(task, cfg, probe, RunSettings.from_config(cfg))  # a broken extract/feedback fails here
    if oracle:
        task = task_with_feedback(task, cfg, probe=probe)  # clients hear feedback.provider
    else:
        feedback_noise.check_feedback_noise(cfg.feedback, task)  # the task's capabilities, before round 0
    policy = policy if policy is not None else load_policy(cfg)
    cfg = fit_config(cfg, policy)  # a copy with the policy's capped model.max_seq_len
    clients: list[list[Example]] = []
    eval_set: list[Example] = []
    stats: dict[str, Any] = {}
    if rows is not None:
        rows = fit_prompts(rows, policy, cfg, task)  # data.long_prompts: count, then skip/truncate/refuse
        if partition == EVERY_CLIENT:
            clients = partition_examples(cfg, rows.train)
        elif training:
            clients = [client_examples(cfg, rows.train, None if partition == OWN_ROWS else int(partition))]
        eval_set = rows.eval
        stats = {**rows.stats.as_dict(), "train": len(rows.train), "eval": len(rows.eval)}
        if partition == EVERY_CLIENT:
            stats["client_sizes"] = [len(c) for c in clients]
        if rows.stats.num_skipped:
            logger.warning("skipped %d malformed rows: %s", rows.stats.num_skipped, rows.stats.skipped)
    return Assembly(cfg, policy, task, algorithm_cls.from_config(cfg, task), clients, eval_set, stats)
