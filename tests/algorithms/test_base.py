"""The job's start state: the round-start adapter an algorithm trains from comes with the job, not the policy."""

from __future__ import annotations

import pytest
import torch
from fixtures.fake_policy import FakePolicy

from fedspear.algorithms.base import ClientJob, start_job, start_jobs


def _job(client_id: int, state: dict[str, torch.Tensor] | None = None) -> ClientJob:
    return ClientJob(client_id, 1, [], 1e-3, client_id, state)


def test_a_job_puts_its_start_state_into_the_live_model():
    policy = FakePolicy({"w": torch.tensor([5.0, 5.0])})
    sent = {"w": torch.tensor([1.0, 2.0])}
    job = _job(0, sent)
    assert start_job(policy, job) is sent
    torch.testing.assert_close(policy.adapter.state["w"], torch.tensor([1.0, 2.0]))


def test_a_job_without_a_start_state_starts_from_a_copy_of_the_live_adapter():
    policy = FakePolicy({"w": torch.tensor([5.0, 6.0])})
    job = _job(0)
    start = start_job(policy, job)
    policy.adapter.set({"w": torch.tensor([0.0, 0.0])})  # training moves the live adapter...
    torch.testing.assert_close(start["w"], torch.tensor([5.0, 6.0]))  # ...not the job's start state
    assert job.start_state is start and start_job(policy, job) is start  # train starts where the rollout did
    torch.testing.assert_close(policy.adapter.state["w"], torch.tensor([5.0, 6.0]))


def test_a_batched_rollout_shares_one_start_state_and_refuses_two():
    policy = FakePolicy({"w": torch.tensor([3.0, 3.0])})
    jobs = [_job(0), _job(1), _job(2)]
    shared = start_jobs(policy, jobs)
    assert all(job.start_state is shared for job in jobs)
    with pytest.raises(ValueError, match="same adapter"):
        start_jobs(policy, [_job(0, {"w": torch.zeros(2)}), _job(1, {"w": torch.zeros(2)})])
    assert start_jobs(policy, []) is None
