"""The fedspear ClientApp: a thin shell around :func:`fedspear.federation.client.client_update`.

``query`` answers which client this SuperNode is (its ``client-id``, from ``--node-config``); ``train`` reads the
global adapter and the job (round, lr, seed, the run's config) from the message, applies the node's own
overrides (where its data is, how its device runs the model), runs the same client update as the simulator
and replies with the adapter tensors and scalar metrics only (checked by :func:`~fedspear.flower.wire.wire_guard`).

The engine (model) and the client's examples are cached in the process, keyed by the config, so a simulation
(whose ClientApps live in long-running Ray workers) loads the model once; a deployment SuperNode starts a fresh
process per message and loads them each time.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedspear.flower.app_config import NodeSettings
from fedspear.flower.wire import (
    CLIENT_ID_KEY,
    FEDERATION,
    GLOBAL,
    IDENTITY,
    JOB,
    record_to_state,
    train_reply_content,
    wire_guard,
)

logger = logging.getLogger("fedspear")

app = ClientApp(mods=[wire_guard])

# config digest -> (Policy, its fitted Config, Algorithm); (config digest, node settings) -> examples. Cleared when the config changes.
_ENGINES: dict[str, Any] = {}
_EXAMPLES: dict[tuple[str, str], Any] = {}


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _engine(cfg: Any) -> tuple[Any, Any, Any]:
    """(policy, the config fitted to it, the algorithm) for ``cfg``, loaded once per process."""
    from fedspear.algorithms.registry import build_algorithm
    from fedspear.extensions import task_with_feedback
    from fedspear.models import load_policy
    from fedspear.tasks import get_task

    key = _digest(cfg.to_yaml())
    if key not in _ENGINES:
        _ENGINES.clear()
        _EXAMPLES.clear()
        policy, fitted = load_policy(cfg)  # fitted: a copy with the policy's capped model.max_seq_len
        task = task_with_feedback(get_task(cfg.data.dataset), fitted)
        _ENGINES[key] = (policy, fitted, build_algorithm(fitted, task))
    return _ENGINES[key]


def _examples(cfg: Any, node: NodeSettings, policy: Any, fitted: Any, task: Any) -> Any:
    from fedspear.extensions import load_task_data
    from fedspear.federation.client import client_examples
    from fedspear.prompt_budget import fit_prompts
    from fedspear.tasks import get_task
    from fedspear.tasks.base import DataError

    key = (_digest(cfg.to_yaml()), repr(node))
    if key not in _EXAMPLES:
        data = load_task_data(get_task(cfg.data.dataset), cfg)  # a user's task's wrong return type in one line
        if not data.train:
            raise DataError(f"client {node.client_id} has no training rows; check data.path on this node")
        data = fit_prompts(data, policy, fitted, task)  # the rows the simulator's clients keep
        _EXAMPLES[key] = client_examples(cfg, data.train, node.partition_id)
    return _EXAMPLES[key]


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Reply with this node's client id (checked against the federation size the server sent)."""
    node = NodeSettings.from_node_config(context.node_config)
    node.check(int(msg.content[FEDERATION]["num-clients"]))
    return Message(RecordDict({IDENTITY: MetricRecord({CLIENT_ID_KEY: node.client_id})}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One client update from the received global adapter; replies with the adapter and scalar metrics."""
    import yaml

    from fedspear.config import config_from_dict
    from fedspear.federation.client import client_update

    job = msg.content[JOB]
    node = NodeSettings.from_node_config(context.node_config)
    cfg = node.apply(config_from_dict(yaml.safe_load(str(job["config"]))))
    node.check(cfg.data.num_clients)
    client_id = int(job[CLIENT_ID_KEY])
    if client_id != node.client_id:
        raise ValueError(f"this node is client {node.client_id}, but the job is for client {client_id}")
    engine, fitted, algorithm = _engine(cfg)
    examples = _examples(cfg, node, engine, fitted, algorithm.task)
    cfg = fitted  # a copy with the policy's capped model.max_seq_len
    from fedspear.privacy import release_local_update

    engine.global_state = start = record_to_state(msg.content[GLOBAL], engine.global_state)
    result = client_update(engine, examples, client_id, int(job["round"]), float(job["lr"]), int(job["seed"]),
                           algorithm)
    result = release_local_update(result, start, cfg, int(job["round"]), client_id)  # dp.mode=local: noise here
    logger.info("client %d round %s: weight %.1f", client_id, job["round"], result.weight)
    return Message(train_reply_content(result), reply_to=msg)
