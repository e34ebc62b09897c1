"""The client side of a federated run: one client update for every front end, and who holds which rows.

A client update is :func:`client_update`: the job's start state (the round-start global adapter the server sent,
``ClientJob.start_state``) goes into the policy, the algorithm's rollout (generation + feedback, or another
:class:`Rollouts` source such as a served client's trace store) is followed by its local training, and the result
ends in the privacy step (:func:`fedspear.privacy.release_local_update`). The simulator, both Flower ClientApps,
the served federation and ``fedspear train-local`` all run it. Which examples a client holds is
:func:`client_examples` (a piece of the seeded Dirichlet partition of the training rows, or all of a device's
own rows). The simulator can also batch the rollouts of all of a round's clients into one generate call
(:func:`run_clients`, ``fl.batch_clients``): faster on one accelerator, but the sampled completions then
differ from those of clients generating alone (the batched call draws from one stream seeded by the first
client's seed), so only ``fl.batch_clients=false`` reproduces a Flower run exactly.

Every client update adds its memory figures (``peak_rss_mb``, ``update_rss_peak_mb``, ``cuda_peak_mb`` on CUDA;
:mod:`fedspear.federation.resources`) to its metrics.
"""

from __future__ import annotations

import logging
from typing import Any

from fedspear import privacy
from fedspear.algorithms.base import Algorithm, ClientJob, LocalUpdateResult, start_job, start_jobs
from fedspear.config import Config
from fedspear.federation.partition import dirichlet_partition
from fedspear.federation.resources import measured, merge_memory
from fedspear.models import Policy
from fedspear.tasks.base import Example

logger = logging.getLogger("fedspear")


def partition_examples(cfg: Config, train: list[Example]) -> list[list[Example]]:
    """Split the training rows over ``data.num_clients`` clients (seeded Dirichlet, capped per client).

    Args:
        cfg: the run configuration (``data.num_clients``, ``dirichlet_alpha``, ``max_examples_per_client``,
            ``seed``).
        train: all training rows.

    Returns:
        One list of examples per client; the same arguments always give the same split.
    """
    parts = dirichlet_partition([ex.label for ex in train], cfg.data.num_clients, cfg.data.dirichlet_alpha,
                                cfg.data.max_examples_per_client, cfg.data.seed)
    return [[train[i] for i in idx] for idx in parts]


def client_examples(cfg: Config, train: list[Example], partition_id: int | None) -> list[Example]:
    """The examples one client trains on.

    Args:
        cfg: the run configuration.
        train: the training rows this client can read.
        partition_id: the client's piece of the shared partition of ``train`` (every client reads the same
            rows and keeps its piece, as the simulator does), or None when ``train`` is the device's own data:
            then all of it is used, subsampled to ``data.max_examples_per_client`` with the run seed.

    Returns:
        The client's examples.

    Raises:
        ValueError: if ``partition_id`` is outside ``[0, data.num_clients)``.
    """
    if partition_id is None:
        (idx,) = dirichlet_partition([ex.label for ex in train], 1, cfg.data.dirichlet_alpha,
                                     cfg.data.max_examples_per_client, cfg.data.seed)
        return [train[i] for i in idx]
    if not 0 <= partition_id < cfg.data.num_clients:
        raise ValueError(f"partition {partition_id} is outside [0, data.num_clients={cfg.data.num_clients})")
    return partition_examples(cfg, train)[partition_id]


State = dict[str, Any]  # adapter tensors by PEFT state-dict name


class Rollouts:
    """Where a client update's rollouts come from: by default the algorithm's own (generation and feedback).

    A front end whose traces come from elsewhere passes a subclass to :func:`client_update`: the served client's
    trace store (:class:`fedspear.serve.learning.StoreRollouts`), or rollouts already made in one batched call
    (:func:`run_clients`). :meth:`finish` sees the trained result before the privacy step.
    """

    def __call__(self, policy: Policy, algorithm: Algorithm[Any], jobs: list[ClientJob]) -> list[Any]:
        """One rollout per job, all from the policy's round-start adapter."""
        return algorithm.rollout(policy, jobs)

    def finish(self, job: ClientJob, result: LocalUpdateResult) -> None:
        """Called with the trained result (its memory figures included) before :func:`client_update` releases it."""


class _Ready(Rollouts):
    """A rollout made earlier in a batched call for several clients, with that call's memory figures."""

    def __init__(self, data: Any, memory: dict[str, float]) -> None:
        self.data, self.memory = data, memory

    def __call__(self, policy: Policy, algorithm: Algorithm[Any], jobs: list[ClientJob]) -> list[Any]:
        return [self.data]

    def finish(self, job: ClientJob, result: LocalUpdateResult) -> None:
        result.metrics.update(merge_memory(self.memory, result.metrics))  # the shared rollout, then its training


def client_update(policy: Policy, algorithm: Algorithm[Any], job: ClientJob, cfg: Config,
                  rollouts: Rollouts | None = None, release: bool = True) -> LocalUpdateResult:
    """One client job, the same in every front end: from its start state, the rollout, the training, the
    privacy step.

    Args:
        policy: the client's policy.
        algorithm: the algorithm (``Assembly.algorithm``, built with the config fitted to the policy).
        job: the client's job; ``job.start_state`` is the round-start global adapter (:func:`start_job`).
        cfg: the run's config (``dp``: :func:`fedspear.privacy.release_local_update`).
        rollouts: where the rollout comes from (default: the algorithm's own, :class:`Rollouts`).
        release: end in the privacy step (``dp.mode=local`` noises the update before it leaves the client);
            False only where nothing leaves the device (``fedspear train-local``).

    Returns:
        The client's :class:`LocalUpdateResult` (adapter copy or None, weight, scalar metrics with the memory
        figures of :mod:`fedspear.federation.resources`), as released.
    """
    source = rollouts if rollouts is not None else Rollouts()
    start = start_job(policy, job)
    result, memory = measured(lambda: algorithm.train(policy, job, source(policy, algorithm, [job])[0]))
    result.metrics.update(memory)
    source.finish(job, result)
    if not release:
        return result
    return privacy.release_local_update(result, start, cfg, job.round_idx, job.client_id)


def run_clients(policy: Policy, algorithm: Algorithm[Any], jobs: list[ClientJob], cfg: Config,
                batched: bool) -> list[LocalUpdateResult | Exception]:
    """Run several clients in this process with :func:`client_update`; a failing client is isolated.

    Args:
        policy: the policy the clients share.
        algorithm: the algorithm.
        jobs: one job per client, all from the same start state.
        cfg: the run's config.
        batched: one rollout call for all clients (then, if it fails, client by client), each client then
            trained on its rollout; False runs each client's whole update in turn.

    Returns:
        Per job, its released result or the exception it raised.

    Raises:
        ValueError: the jobs start from different adapters (:func:`~fedspear.algorithms.base.start_jobs`).
    """
    out: list[LocalUpdateResult | Exception] = []
    start_jobs(policy, jobs)  # one start state for all (jobs without one: the live adapter now, before any trains)
    if not batched:
        for job in jobs:
            try:
                out.append(client_update(policy, algorithm, job, cfg))
            except Exception as exc:  # noqa: BLE001 - a failing client must not stop the round
                out.append(exc)
        return out
    rollouts, rollout_memory = measured(lambda: _batched_rollouts(policy, algorithm, jobs))
    for job, data in zip(jobs, rollouts, strict=True):
        if isinstance(data, Exception):
            out.append(data)
            continue
        try:
            out.append(client_update(policy, algorithm, job, cfg, rollouts=_Ready(data, rollout_memory)))
        except Exception as exc:  # noqa: BLE001
            out.append(exc)
    return out


def _batched_rollouts(policy: Policy, algorithm: Algorithm[Any], jobs: list[ClientJob]) -> list[Any]:
    """All clients' rollouts in one batched call; on failure, client by client so one bad client is isolated."""
    try:
        return algorithm.rollout(policy, jobs)
    except Exception as exc:  # noqa: BLE001 - a failing client must not stop the round
        logger.warning("batched rollout failed (%s); retrying client by client", exc)
    out: list[Any] = []
    for job in jobs:
        try:
            out.append(algorithm.rollout(policy, [job])[0])
        except Exception as exc:  # noqa: BLE001
            out.append(exc)
    return out
