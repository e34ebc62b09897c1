"""A Flower ClientApp backed by a served client's trace store: the SuperNode of a device people use.

Where :mod:`fedspear.flower.client_app` rolls out its task examples with the oracle, this ClientApp trains
from what people taught the device's ``fedspear serve`` page: :func:`fedspear.serve.learning.update_from_store`
on the client's state folder. The received global adapter is published to the folder's adapter registry first,
so the running page answers with it from its next answer on (no restart). The reply holds the adapter tensors
and scalar metrics only (checked by :func:`fedspear.flower.wire.wire_guard`); no question, answer, hint or
token id leaves the device.

The node tells the server it serves a page (``serves-page`` in its ``query`` reply), and the server then sends
it every new global adapter right after each round (an ``evaluate`` message), whether or not it was sampled:
:func:`publish_content` publishes it to the page, which answers with it from then on.

Run a device's SuperNode with this app and its state folder::

    fedspear serve --state ~/fedspear-client &                       # the page people use
    flower-supernode ... --node-config "client-id=3 state-dir='~/fedspear-client'"

with the Flower app's ``clientapp`` component set to ``fedspear.flower.served_client_app:app`` (the ServerApp is
fedspear's own). ``query`` is :func:`fedspear.flower.client_app.query`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedspear.flower import client_app as oracle_client_app
from fedspear.flower.app_config import NodeSettings
from fedspear.flower.wire import (
    CLIENT_ID_KEY,
    GLOBAL,
    IDENTITY,
    JOB,
    METRICS,
    PUBLISHED_KEY,
    SERVES_PAGE_KEY,
    record_to_state,
    train_reply_content,
    wire_guard,
)

logger = logging.getLogger("fedspear")

STATE_DIR_KEY = "state-dir"

app = ClientApp(mods=[wire_guard])

_ASSEMBLIES: dict[str, Any] = {}


def _assembly(cfg: Any, policy: Any = None) -> Any:
    """The device's run for ``cfg`` (:func:`fedspear.federation.assembly.assemble`: the policy, the fitted config, the
    task; no rows: people teach this client), assembled once per process (keyed by the resolved config) unless
    a policy is given."""
    from fedspear.federation.assembly import assemble

    if policy is not None:
        return assemble(cfg, policy=policy, data=False, oracle=False)
    key = cfg.to_yaml()
    if key not in _ASSEMBLIES:
        _ASSEMBLIES.clear()
        _ASSEMBLIES[key] = assemble(cfg, data=False, oracle=False)
    return _ASSEMBLIES[key]


def _state_dir(node_config: dict[str, Any]) -> Path:
    from fedspear.config import ConfigError
    from fedspear.serve.security import secure_state

    if STATE_DIR_KEY not in node_config:
        raise ConfigError(f"a store-backed SuperNode needs --node-config \"{STATE_DIR_KEY}='<fedspear serve --state "
                          "folder>'\"")
    state = Path(str(node_config[STATE_DIR_KEY])).expanduser()
    secure_state(state)  # owner-only (the node reaches the store directly, as its owner)
    return state


def _job_config(content: RecordDict, node_config: dict[str, Any]) -> tuple[Any, int, int]:
    """(config with the node's overrides, client id, round) of a message's ``job`` record, checked for this node."""
    import yaml

    from fedspear.config import config_from_dict

    job = content[JOB]
    node = NodeSettings.from_node_config(node_config)
    cfg = node.apply(config_from_dict(yaml.safe_load(str(job["config"]))))
    node.check(cfg.data.num_clients)
    client_id, round_idx = int(job[CLIENT_ID_KEY]), int(job["round"])
    if client_id != node.client_id:
        raise ValueError(f"this node is client {node.client_id}, but the job is for client {client_id}")
    return cfg, client_id, round_idx


def publish_content(content: RecordDict, node_config: dict[str, Any], policy: Any = None) -> RecordDict:
    """Publish the global adapter of an ``evaluate`` message to the node's page; reply ``metrics`` {published}.

    Args:
        content: ``global`` (the global adapter after the round in ``job``) and ``job`` (as for ``train``).
        node_config: the SuperNode's node config (``state-dir``, ``client-id``).
        policy: a policy for the job's config (None = load or reuse this process's).

    Returns:
        ``metrics`` with ``published`` = 1 when the page got a new version, 0 when it already served it.
    """
    from fedspear.serve.adapters import AdapterRegistry
    from fedspear.serve.learning import publish_global
    from fedspear.serve.runtime import ADAPTERS_DIR

    state = _state_dir(node_config)
    cfg, _, round_idx = _job_config(content, node_config)
    policy = policy if policy is not None else _assembly(cfg).policy
    registry = AdapterRegistry(state / ADAPTERS_DIR)
    before = registry.current()
    version = publish_global(registry, policy, record_to_state(content[GLOBAL], policy.adapter.params),
                             f"global after server round {round_idx}")
    fresh = before is None or version.version != before.version
    logger.info("global adapter after server round %d: %s", round_idx,
                f"published as v{version.version}" if fresh else "already served")
    return RecordDict({METRICS: MetricRecord({PUBLISHED_KEY: int(fresh)})})


def train_content(content: RecordDict, node_config: dict[str, Any], policy: Any = None) -> RecordDict:
    """The reply content of one ``train`` message, from the client's trace store.

    Args:
        content: the message content: ``global`` (ArrayRecord) and ``job`` (ConfigRecord: client-id, round, lr,
            seed, config).
        node_config: the SuperNode's node config: ``state-dir`` plus :class:`~fedspear.flower.app_config.NodeSettings`.
        policy: a policy for the job's config (None = load or reuse this process's).

    Returns:
        ``adapter`` (when the store held a win; always under ``dp.mode=local``, noised by
        :func:`fedspear.privacy.release_local_update`, with no metrics but the weight) and ``metrics`` records.

    Raises:
        ConfigError: no ``state-dir``, or the node does not fit the federation.
        ValueError: the job is for another client.
    """
    from fedspear.algorithms.base import ClientJob
    from fedspear.serve.adapters import AdapterRegistry
    from fedspear.serve.learning import publish_global, update_from_store
    from fedspear.serve.runtime import ADAPTERS_DIR, STORE_FILE
    from fedspear.serve.store import TraceStore

    state = _state_dir(node_config)
    cfg, client_id, round_idx = _job_config(content, node_config)
    job = content[JOB]
    run = _assembly(cfg, policy)
    policy = run.policy
    start = record_to_state(content[GLOBAL], policy.adapter.params)
    publish_global(AdapterRegistry(state / ADAPTERS_DIR), policy, start, f"global of server round {round_idx}")
    with TraceStore(state / STORE_FILE) as store:
        client_job = ClientJob(client_id, round_idx, [], float(job["lr"]), int(job["seed"]), start)
        result = update_from_store(policy, run.task, run.cfg, store, client_job,  # dp.mode=local: noised there
                                   label=f"server round {round_idx}")
    policy.adapter.set(start)  # the global adapter stays in the live model
    logger.info("client %d round %d from the store: weight %.1f", client_id, round_idx, result.weight)
    return train_reply_content(result)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """The oracle ClientApp's identity reply plus ``serves-page`` = 1: send this node every new global adapter."""
    reply = oracle_client_app.query(msg, context)
    reply.content[IDENTITY][SERVES_PAGE_KEY] = 1
    return reply


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Publish the global adapter the server sent after a round to this device's page (see :func:`publish_content`)."""
    return Message(publish_content(msg.content, dict(context.node_config)), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One client update from the people's feedback in the node's state folder (see :func:`train_content`)."""
    return Message(train_content(msg.content, dict(context.node_config)), reply_to=msg)
