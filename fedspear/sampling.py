"""Seeded random streams and the fixed-K client sample of a round.

Every random choice of the federation's plan is drawn from a numpy ``Generator`` seeded by
``SeedSequence((run seed, purpose tag, ...))`` (:func:`seeded_rng`), so the partition
(:func:`fedspear.federation.partition.dirichlet_partition`) and the client schedule (:func:`sample_clients`) use
independent streams that depend only on the run seed, never on call order. The sampler sits at the bottom of the
layers because two layers draw a round's clients with it: the server's plan and, when differential privacy does
not replace it with Poisson sampling, :func:`fedspear.privacy.sample_round`.
"""

from __future__ import annotations

import numpy as np

# Purpose tags keep the random streams of the partition and of client sampling apart for the same seed.
PARTITION_TAG = 0x5041
SAMPLING_TAG = 0x5341
_MASK64 = 0xFFFFFFFFFFFFFFFF


def seeded_rng(seed: int, *words: int) -> np.random.Generator:
    """A generator for ``(seed, *words)``; the seed is taken modulo 2**64 so negative seeds work too."""
    return np.random.default_rng(np.random.SeedSequence([seed & _MASK64, *words]))


def sample_clients(num_clients: int, k: int, seed: int, round_idx: int) -> list[int]:
    """The clients taking part in one round: ``k`` of ``num_clients`` without replacement.

    Args:
        num_clients: federation size N.
        k: clients per round K; K >= N selects everyone.
        seed: run seed.
        round_idx: round index; the draw depends only on (seed, round_idx).

    Returns:
        ``min(k, num_clients)`` distinct client ids, sorted ascending.

    Raises:
        ValueError: if ``num_clients < 1`` or ``k < 1``.
    """
    if num_clients < 1 or k < 1:
        raise ValueError(f"need num_clients >= 1 and clients_per_round >= 1, got N={num_clients}, K={k}")
    if k >= num_clients:
        return list(range(num_clients))
    chosen = seeded_rng(seed, SAMPLING_TAG, round_idx).choice(num_clients, size=k, replace=False)
    return sorted(int(c) for c in chosen)
