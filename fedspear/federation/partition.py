"""Non-IID data partition, per-(round, client) seeds and client sampling (docs/configuration.md, "Sections": ``data``, ``fl``).

Every random choice is drawn from a numpy ``Generator`` seeded by ``SeedSequence((run seed, purpose tag,
...))`` (:func:`fedspear.sampling.seeded_rng`), so the partition, the client schedule and the client updates use
independent streams that depend only on the run seed, never on call order. The client sampler
(:func:`sample_clients`) lives in :mod:`fedspear.sampling`, below the privacy layer that also draws with it; it
is importable from here too.
"""

from __future__ import annotations

import heapq

import numpy as np

from fedspear.sampling import PARTITION_TAG, sample_clients, seeded_rng  # noqa: F401 - sample_clients: also from here

# client_seed packs (round, client) into 62 bits: 30 for the round, 32 for the client.
_SEED_BITS = 62
_MASK62 = (1 << _SEED_BITS) - 1
MAX_SEED_ROUND = (1 << 30) - 1
MAX_SEED_CLIENT = (1 << 32) - 1


def dirichlet_partition(
    labels: list[str], num_clients: int, alpha: float, max_per_client: int, seed: int
) -> list[list[int]]:
    """Split example indices over clients with a per-class Dirichlet(alpha) draw, then cap each client.

    For each distinct label (in sorted order), that label's indices are shuffled and cut into
    ``num_clients`` consecutive pieces whose sizes follow proportions drawn from Dirichlet(alpha, ..., alpha);
    small alpha gives each client few classes, large alpha approaches an IID split. Every index goes to
    exactly one client. When there are at least ``num_clients`` examples, an empty client then receives
    one random index from the currently largest client, until no client is empty. Finally a client with
    more than ``max_per_client`` indices keeps a seeded random subsample of that size, drawn across all of
    its classes (the reference keeps the first classes instead; docs/deviations.md, section 4 item 7).

    Args:
        labels: the partition class of each example (``Example.label``), one per example index.
        num_clients: number of clients N (1 = centralized: one client with all indices, capped).
        alpha: Dirichlet concentration, > 0.
        max_per_client: cap on indices per client; 0 or less means no cap.
        seed: run seed; the same arguments always give the same partition.

    Returns:
        ``num_clients`` lists of example indices, each sorted ascending (callers shuffle per round
        with :func:`client_seed`). Clients are disjoint; with fewer examples than clients some are empty.

    Raises:
        ValueError: if ``num_clients < 1`` or ``alpha <= 0``.
    """
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if not alpha > 0:
        raise ValueError(f"dirichlet alpha must be > 0, got {alpha}")
    rng = seeded_rng(seed, PARTITION_TAG)
    clients: list[list[int]] = [[] for _ in range(num_clients)]
    if num_clients == 1:
        clients[0] = list(range(len(labels)))
    else:
        by_label: dict[str, list[int]] = {}
        for idx, label in enumerate(labels):
            by_label.setdefault(label, []).append(idx)
        for label in sorted(by_label):
            idxs = np.array(by_label[label])
            rng.shuffle(idxs)
            proportions = rng.dirichlet(np.full(num_clients, float(alpha)))
            cuts = np.floor(np.cumsum(proportions)[:-1] * len(idxs)).astype(int)
            for cid, piece in enumerate(np.split(idxs, cuts)):
                clients[cid].extend(int(i) for i in piece)
        _fill_empty_clients(clients, rng)
    return [_cap(client, max_per_client, rng) for client in clients]


def _fill_empty_clients(clients: list[list[int]], rng: np.random.Generator) -> None:
    """Give each empty client one random index from the largest client (ties: lowest id), while that one has more
    than one. The largest client comes from a heap, so this is O(N log N) in the number of clients N (a linear
    scan per empty client made a 10,000-client partition quadratic)."""
    heap = [(-len(c), cid) for cid, c in enumerate(clients) if c]
    heapq.heapify(heap)
    for cid in range(len(clients)):
        if clients[cid]:
            continue
        if not heap or -heap[0][0] <= 1:
            return  # fewer examples than clients: nothing left to move
        _, largest = heapq.heappop(heap)
        donor = clients[largest]
        clients[cid].append(donor.pop(int(rng.integers(len(donor)))))
        heapq.heappush(heap, (-len(donor), largest))
        heapq.heappush(heap, (-1, cid))


def _cap(indices: list[int], max_per_client: int, rng: np.random.Generator) -> list[int]:
    """Sorted indices, subsampled uniformly at random (without replacement) to at most ``max_per_client``."""
    if 0 < max_per_client < len(indices):
        indices = [int(i) for i in rng.choice(np.array(indices), size=max_per_client, replace=False)]
    return sorted(indices)


def _mix62(x: int) -> int:
    """A bijection of [0, 2**62) that scrambles neighbouring inputs.

    Each step is invertible modulo 2**62: an xor with the value shifted right, or a product with an odd
    constant.
    """
    x &= _MASK62
    x ^= x >> 31
    x = (x * 0x3F58476D1CE4E5B9) & _MASK62
    x ^= x >> 29
    x = (x * 0x14D049BB133111EB) & _MASK62
    x ^= x >> 32
    return x


def client_seed(seed: int, round_idx: int, client_id: int) -> int:
    """The seed of one client update, distinct for every (round, client) pair of a run.

    The pair is packed into 62 bits (round in the high 30, client in the low 32), xor-ed with a key derived
    from the run seed and scrambled by a bijective 62-bit mix. Packing, xor with a constant and the mix
    are all one-to-one, so for a fixed run seed two different pairs never share a seed (the reference's
    seed + round + client collides; docs/architecture.md, "One round"). The result is below 2**62, leaving room for
    small offsets (``seed + 1``) within what ``torch.manual_seed``, ``random.Random`` and
    ``numpy.random.default_rng`` accept; the legacy ``numpy.random.seed`` (32-bit only) does not take it.

    Args:
        seed: run seed (``data.seed``); only its value modulo 2**62 matters.
        round_idx: round index, in [0, 2**30).
        client_id: client index, in [0, 2**32); ids past the federation size (e.g. 10**6) may serve as
            extra, still collision-free streams such as the server's.

    Returns:
        The seed, an int in [0, 2**62).

    Raises:
        ValueError: if ``round_idx`` or ``client_id`` is outside its range.
    """
    if not 0 <= round_idx <= MAX_SEED_ROUND:
        raise ValueError(f"round_idx must be in [0, {MAX_SEED_ROUND}] for a collision-free seed, got {round_idx}")
    if not 0 <= client_id <= MAX_SEED_CLIENT:
        raise ValueError(f"client_id must be in [0, {MAX_SEED_CLIENT}] for a collision-free seed, got {client_id}")
    key = _mix62((seed & _MASK62) ^ 0x1E3779B97F4A7C15)
    return _mix62(((round_idx << 32) | client_id) ^ key)
