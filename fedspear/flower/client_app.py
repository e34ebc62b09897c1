"""The fedspear ClientApp: a thin shell around :func:`fedspear.federation.client.client_update`.

``query`` answers which client this SuperNode is (its ``client-id``, from ``--node-config``); ``train`` reads the
global adapter and the job (round, lr, seed, the run's config) from the message, applies the node's own
overrides (where its data is, how its device runs the model), runs the same client update as the simulator
and replies with the adapter tensors and scalar metrics only (checked by :func:`~fedspear.flower.wire.wire_guard`).

The node's run is assembled as every front end assembles one (:func:`fedspear.federation.assembly.assemble`, with
this node's piece of the rows) and cached in the process: the policy keyed by the config, the rest by config and
node, so a simulation (whose ClientApps live in long-running Ray workers) loads the model once; a deployment
SuperNode starts a fresh process per message and assembles it each time.
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

# config digest -> the policy loaded for it; (config digest, node settings) -> the node's assembly. Cleared when the
# config changes.
_POLICIES: dict[str, Any] = {}
_ASSEMBLIES: dict[tuple[str, str], Any] = {}


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _assembly(cfg: Any, node: NodeSettings) -> Any:
    """The node's run (:func:`fedspear.federation.assembly.assemble`: its rows, the policy, the fitted config, the
    algorithm), assembled once per process and node; the policy is loaded once per config."""
    from fedspear.federation.assembly import OWN_ROWS, assemble

    digest = _digest(cfg.to_yaml())
    key = (digest, repr(node))
    if key not in _ASSEMBLIES:
        if digest not in _POLICIES:
            _POLICIES.clear()
            _ASSEMBLIES.clear()
        run = assemble(cfg, policy=_POLICIES.get(digest), evaluation=False,
                       partition=OWN_ROWS if node.partition_id is None else node.partition_id)
        _POLICIES[digest] = run.policy
        _ASSEMBLIES[key] = run
    return _ASSEMBLIES[key]


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

    from fedspear.algorithms.base import ClientJob
    from fedspear.config import config_from_dict
    from fedspear.federation.client import client_update

    job = msg.content[JOB]
    node = NodeSettings.from_node_config(context.node_config)
    cfg = node.apply(config_from_dict(yaml.safe_load(str(job["config"]))))
    node.check(cfg.data.num_clients)
    client_id = int(job[CLIENT_ID_KEY])
    if client_id != node.client_id:
        raise ValueError(f"this node is client {node.client_id}, but the job is for client {client_id}")
    run = _assembly(cfg, node)
    start = record_to_state(msg.content[GLOBAL], run.policy.adapter.params)
    client_job = ClientJob(client_id, int(job["round"]), run.clients[0], float(job["lr"]), int(job["seed"]), start)
    result = client_update(run.policy, run.algorithm, client_job, run.cfg)  # dp.mode=local: noised there
    logger.info("client %d round %s: weight %.1f", client_id, job["round"], result.weight)
    return Message(train_reply_content(result), reply_to=msg)
