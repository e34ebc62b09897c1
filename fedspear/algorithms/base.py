"""The client-update interface every algorithm implements, and the containers it passes around.

Each algorithm module (``spear.py``, ``feedback_sft.py``, ``grpo.py``, ``opsd.py``, ``rltf_sd.py``)
exposes two functions with the same signatures:

    rollout(engine, jobs: list[ClientJob]) -> list[Any]
        Generation + feedback for several clients that share the round-start adapter, batched
        together (the simulator passes all of a round's clients; a Flower client passes one).
    train(engine, job: ClientJob, rollout: Any) -> LocalUpdateResult
        The local optimisation for one client, from the global adapter, on that client's rollout.

and ``local_update(engine, job) = train(engine, job, rollout(engine, [job])[0])``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from fedspear.tasks.base import Example


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
    """

    client_id: int
    round_idx: int
    examples: list[Example]
    lr: float
    seed: int


@dataclass
class LocalUpdateResult:
    """What a client returns to the server.

    Attributes:
        adapter: adapter tensors (PEFT state-dict names) on CPU, sharing no memory with the live model;
            None when the client has no update (e.g. SPEAR with zero wins).
        weight: aggregation weight (n_eff); 0 when ``adapter`` is None.
        metrics: scalar metrics (SPEAR.md section 5) for metrics.jsonl.
    """

    adapter: dict[str, torch.Tensor] | None
    weight: float
    metrics: dict[str, Any] = field(default_factory=dict)
