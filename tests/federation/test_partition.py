"""Dirichlet partition, per-(round, client) seeds and client sampling."""

from __future__ import annotations

import pytest

from fedspear.federation.partition import client_seed, dirichlet_partition, sample_clients


def _labels(per_class: int, classes: str = "ABCD") -> list[str]:
    # class-ordered: all "A" first, then all "B", ... (the layout that exposes first-classes truncation)
    return [c for c in classes for _ in range(per_class)]


def test_every_index_goes_to_exactly_one_client():
    labels = _labels(50)  # 200 examples
    parts = dirichlet_partition(labels, num_clients=10, alpha=0.5, max_per_client=0, seed=3)
    assert len(parts) == 10
    flat = [i for part in parts for i in part]
    assert sorted(flat) == list(range(200))  # a disjoint cover
    assert all(part == sorted(part) for part in parts)
    assert all(len(part) >= 1 for part in parts)


def test_deterministic_in_seed():
    labels = _labels(30)
    a = dirichlet_partition(labels, 6, 1.0, 0, seed=7)
    assert a == dirichlet_partition(labels, 6, 1.0, 0, seed=7)
    assert a != dirichlet_partition(labels, 6, 1.0, 0, seed=8)


def _mean_top_class_share(parts: list[list[int]], labels: list[str]) -> float:
    shares = []
    for part in parts:
        counts = {}
        for i in part:
            counts[labels[i]] = counts.get(labels[i], 0) + 1
        shares.append(max(counts.values()) / len(part))
    return sum(shares) / len(shares)


def test_small_alpha_is_non_iid_and_large_alpha_is_near_iid():
    labels = _labels(250)  # 1000 examples, 4 classes
    skewed = dirichlet_partition(labels, 10, alpha=0.05, max_per_client=0, seed=0)
    mixed = dirichlet_partition(labels, 10, alpha=1000.0, max_per_client=0, seed=0)
    # IID clients hold ~25% of each class; alpha 0.05 clients are dominated by one class
    assert _mean_top_class_share(mixed, labels) < 0.35
    assert _mean_top_class_share(skewed, labels) > 0.7


def test_each_client_gets_one_example_when_there_are_enough():
    labels = _labels(3, "AB") + ["C"] * 4  # 10 examples, 10 clients, tiny alpha -> many empty before the fix-up
    parts = dirichlet_partition(labels, 10, alpha=0.01, max_per_client=0, seed=1)
    assert sorted(len(p) for p in parts) == [1] * 10
    assert sorted(i for p in parts for i in p) == list(range(10))


def test_fewer_examples_than_clients_leaves_some_empty():
    parts = dirichlet_partition(["A", "B", "A"], 5, alpha=1.0, max_per_client=0, seed=0)
    assert sorted(len(p) for p in parts) == [0, 0, 1, 1, 1]
    assert sorted(i for p in parts for i in p) == [0, 1, 2]


def test_single_client_gets_everything():
    assert dirichlet_partition(_labels(5), 1, alpha=0.3, max_per_client=0, seed=0) == [list(range(20))]


def test_cap_subsamples_across_classes_not_the_first_ones():
    labels = _labels(100)  # 400 class-ordered examples; the first 40 indices are all "A"
    (part,) = dirichlet_partition(labels, 1, alpha=1.0, max_per_client=40, seed=0)
    assert len(part) == 40 and len(set(part)) == 40 and part == sorted(part)
    assert {labels[i] for i in part} == {"A", "B", "C", "D"}
    assert part != list(range(40))


def test_cap_only_shrinks_clients_above_it():
    labels = _labels(100)
    uncapped = dirichlet_partition(labels, 8, alpha=0.5, max_per_client=0, seed=5)
    capped = dirichlet_partition(labels, 8, alpha=0.5, max_per_client=30, seed=5)
    assert any(len(p) > 30 for p in uncapped)  # the cap really acts in this setting
    for before, after in zip(uncapped, capped, strict=True):
        if len(before) <= 30:
            assert after == before
        else:
            assert len(after) == 30 and set(after) <= set(before)


def test_partition_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_clients"):
        dirichlet_partition(["A"], 0, 1.0, 0, 0)
    with pytest.raises(ValueError, match="alpha"):
        dirichlet_partition(["A"], 2, 0.0, 0, 0)


def test_client_seed_has_no_collisions_on_a_grid():
    seeds = {client_seed(42, r, c) for r in range(300) for c in range(200)}
    assert len(seeds) == 300 * 200
    # the reference's seed + round + client collides here: 42 + 1 + 2 == 42 + 2 + 1
    assert client_seed(42, 1, 2) != client_seed(42, 2, 1)


def test_client_seed_range_edges_and_run_seed_dependence():
    edge = [client_seed(0, r, c) for r in (0, 2**30 - 1) for c in (0, 10**6, 2**32 - 1)]
    assert len(set(edge)) == 6
    assert all(0 <= s < 2**62 for s in edge)
    assert client_seed(1, 3, 4) != client_seed(2, 3, 4)
    assert client_seed(7, 3, 4) == client_seed(7, 3, 4)
    with pytest.raises(ValueError, match="round_idx"):
        client_seed(0, 2**30, 0)
    with pytest.raises(ValueError, match="client_id"):
        client_seed(0, 0, -1)
    with pytest.raises(ValueError, match="client_id"):
        client_seed(0, 0, 2**32)


def test_sample_clients_k_of_n_without_replacement():
    picks = [sample_clients(50, 5, seed=42, round_idx=r) for r in range(1, 201)]
    for pick in picks:
        assert len(pick) == 5 and len(set(pick)) == 5 and pick == sorted(pick)
        assert all(0 <= c < 50 for c in pick)
    assert picks[0] == sample_clients(50, 5, seed=42, round_idx=1)  # depends only on (seed, round)
    assert len({tuple(p) for p in picks}) > 150  # rounds differ
    assert {c for p in picks for c in p} == set(range(50))  # 1000 draws reach every client
    assert sample_clients(50, 5, seed=43, round_idx=1) != picks[0] or sample_clients(50, 5, 43, 2) != picks[1]


def test_sample_clients_all_when_k_covers_n():
    assert sample_clients(3, 5, seed=0, round_idx=1) == [0, 1, 2]
    assert sample_clients(1, 1, seed=0, round_idx=9) == [0]
    with pytest.raises(ValueError):
        sample_clients(3, 0, seed=0, round_idx=1)


def _fill_by_scan(clients, rng):
    """The definition _fill_empty_clients implements with a heap: each empty client, in id order, takes one random
    index from the currently largest client (ties: lowest id), while that client has more than one."""
    for cid in range(len(clients)):
        if clients[cid]:
            continue
        largest = max(range(len(clients)), key=lambda c: (len(clients[c]), -c))
        if len(clients[largest]) <= 1:
            return
        donor = clients[largest]
        clients[cid].append(donor.pop(int(rng.integers(len(donor)))))


def test_heap_filling_of_empty_clients_equals_the_linear_scan(monkeypatch):
    """The O(N log N) filling gives exactly the partition of the O(N^2) definition, over 300 seeded cases with
    few rows per client (many empty clients), several alphas and caps."""
    import random

    from fedspear.federation import partition

    for trial in range(300):
        r = random.Random(trial)
        n = r.choice([2, 3, 5, 10, 50, 200])
        args = ([r.choice("ABCD") for _ in range(r.randint(0, 3 * n))], n, r.choice([0.1, 0.5, 1.0, 10.0]),
                r.choice([0, 3, 100]), r.randint(0, 99))
        fast = partition.dirichlet_partition(*args)
        with monkeypatch.context() as m:
            m.setattr(partition, "_fill_empty_clients", _fill_by_scan)
            assert partition.dirichlet_partition(*args) == fast, trial
