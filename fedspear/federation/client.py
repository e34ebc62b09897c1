"""The client side of a federated run, shared by the in-process simulator and the Flower ClientApp.

A client update is the algorithm's rollout (generation + feedback) followed by its local training, both from
the global adapter in ``engine.global_state``: :func:`client_update`. Which examples a client holds is
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

from fedspear.algorithms.base import Algorithm, ClientJob, LocalUpdateResult
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


def client_update(engine: Policy, examples: list[Example], client_id: int, round_idx: int, lr: float, seed: int,
                  algorithm: Algorithm[Any]) -> LocalUpdateResult:
    """One client's round: the algorithm's rollout then its training, from ``engine.global_state``.

    Args:
        engine: the policy; its ``global_state`` must hold the round-start global adapter.
        examples: the client's local examples.
        client_id: the client's id.
        round_idx: 1-based round index.
        lr: the round's learning rate.
        seed: the client's seed for this round (``client_seed(data.seed, round_idx, client_id)``).
        algorithm: the algorithm (``build_algorithm(cfg, task)``, with the config the policy was fitted to).

    Returns:
        The client's :class:`LocalUpdateResult` (adapter copy or None, weight, scalar metrics with the memory
        figures of :mod:`fedspear.federation.resources`).
    """
    job = ClientJob(client_id, round_idx, examples, lr, seed)
    result, memory = measured(lambda: algorithm.train(engine, job, algorithm.rollout(engine, [job])[0]))
    result.metrics.update(memory)
    return result


def run_clients(engine: Policy, algorithm: Algorithm[Any], jobs: list[ClientJob],
                batched: bool) -> list[LocalUpdateResult | Exception]:
    """Run several clients in this process, each from the global adapter; a failing client is isolated.

    Args:
        engine: the policy holding the global adapter.
        algorithm: the algorithm.
        jobs: one job per client.
        batched: one rollout call for all clients (then, if it fails, client by client); False runs
            :func:`client_update` for each client in turn.

    Returns:
        Per job, its result or the exception it raised.
    """
    if not batched:
        out: list[LocalUpdateResult | Exception] = []
        for job in jobs:
            try:
                out.append(client_update(engine, job.examples, job.client_id, job.round_idx, job.lr, job.seed,
                                         algorithm))
            except Exception as exc:  # noqa: BLE001 - a failing client must not stop the round
                out.append(exc)
        return out
    rollouts, rollout_memory = measured(lambda: _batched_rollouts(engine, algorithm, jobs))
    results: list[LocalUpdateResult | Exception] = []
    for job, data in zip(jobs, rollouts, strict=True):
        if isinstance(data, Exception):
            results.append(data)
            continue
        try:
            result, memory = measured(lambda job=job, data=data: algorithm.train(engine, job, data))
            result.metrics.update(merge_memory(rollout_memory, memory))  # the shared rollout, then its training
            results.append(result)
        except Exception as exc:  # noqa: BLE001
            results.append(exc)
    return results


def _batched_rollouts(engine: Policy, algorithm: Algorithm[Any], jobs: list[ClientJob]) -> list[Any]:
    """All clients' rollouts in one batched call; on failure, client by client so one bad client is isolated."""
    try:
        return algorithm.rollout(engine, jobs)
    except Exception as exc:  # noqa: BLE001 - a failing client must not stop the round
        logger.warning("batched rollout failed (%s); retrying client by client", exc)
    out: list[Any] = []
    for job in jobs:
        try:
            out.append(algorithm.rollout(engine, [job])[0])
        except Exception as exc:  # noqa: BLE001
            out.append(exc)
    return out
