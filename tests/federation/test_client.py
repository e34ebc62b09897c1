"""run_clients: every client of a round starts from the same adapter, batched or one after another."""

from __future__ import annotations

import pytest
import torch
from fixtures.fake_policy import FakePolicy

from fedspear.algorithms.base import Algorithm, ClientJob, LocalUpdateResult, start_job, start_jobs
from fedspear.config import load_config
from fedspear.federation.client import run_clients


class AddOne(Algorithm):
    """Trains by adding 1 to every adapter entry, from the job's start state."""

    name = "add_one"

    def rollout(self, policy, jobs):
        start_jobs(policy, jobs)
        return [None for _ in jobs]

    def train(self, policy, job, data):
        start = start_job(policy, job)
        policy.adapter.set({k: v + 1 for k, v in start.items()})
        return LocalUpdateResult(policy.adapter.get(), 1.0, {})


@pytest.mark.parametrize("batched", [True, False])
def test_clients_without_a_start_state_all_start_from_the_adapter_before_the_round(batched):
    cfg = load_config(None, [])
    policy = FakePolicy({"w": torch.zeros(2)})
    jobs = [ClientJob(c, 1, [], 1e-3, c) for c in range(3)]
    results = run_clients(policy, AddOne(None, None), jobs, cfg, batched)
    # each client trained once from zeros (not from the previous client's result: 1, 2, 3)
    assert [r.adapter["w"].tolist() for r in results] == [[1.0, 1.0]] * 3
    assert all(job.start_state is jobs[0].start_state for job in jobs)


def test_clients_from_different_adapters_are_refused():
    cfg = load_config(None, [])
    jobs = [ClientJob(c, 1, [], 1e-3, c, {"w": torch.zeros(2)}) for c in range(2)]
    with pytest.raises(ValueError, match="same adapter"):
        run_clients(FakePolicy(), AddOne(None, None), jobs, cfg, batched=False)
