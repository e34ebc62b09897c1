"""What crosses the network between the fedspear ServerApp and ClientApp, and the guard on client replies.

Server -> client (``train``): ``global`` (ArrayRecord, the global adapter) and ``job`` (ConfigRecord: client-id,
round, lr, seed and the run's resolved config as YAML). Server -> client (``query``): ``federation``
(ConfigRecord: num-clients). Server -> client (``evaluate``, only to nodes whose identity says they serve a
page): ``global`` (the global adapter after a round) and ``job`` (that round; lr and seed 0).

Client -> server, and nothing else: ``adapter`` (ArrayRecord, the client's adapter tensors, only when it has an
update), ``metrics`` (MetricRecord: the aggregation weight and the client's scalar metrics) for ``train``, and
``identity`` (MetricRecord: client-id, and serves-page = 1 from a store-backed node) for ``query``, and
``metrics`` (published: 0 or 1) for ``evaluate``. :func:`check_client_content` enforces this on every
reply (:func:`wire_guard`), so prompts, completions, feedback text or any other string never leave a client.
A failing client replies with Flower's Error (an error code and a one-line reason).

Tensors travel as numpy arrays; dtypes numpy lacks (bfloat16) travel as float32 (exact for bfloat16) and are
cast back to the receiver's adapter dtypes.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

if TYPE_CHECKING:  # torch and the server module are imported where used, so a `query` reply stays cheap
    import torch

    from fedspear.algorithms.base import LocalUpdateResult
    from fedspear.federation.server import ClientReport

GLOBAL = "global"
JOB = "job"
FEDERATION = "federation"
ADAPTER = "adapter"
METRICS = "metrics"
IDENTITY = "identity"
WEIGHT_KEY = "weight"
CLIENT_ID_KEY = "client-id"
SERVES_PAGE_KEY = "serves-page"  # in ``identity``: the node serves a page, send it every new global adapter
PUBLISHED_KEY = "published"  # in an ``evaluate`` reply's ``metrics``: 1 when the page got a new version
# Client replies may hold exactly these records: name -> record type.
CLIENT_RECORDS: dict[str, type] = {ADAPTER: ArrayRecord, METRICS: MetricRecord, IDENTITY: MetricRecord}
# Setting this environment variable on a SuperNode makes its ClientApp append one JSON line per reply.
WIRE_LOG_ENV = "FEDSPEAR_FLOWER_WIRE_LOG"

State = dict[str, "torch.Tensor"]


class WireError(ValueError):
    """A message does not have the shape the fedspear apps exchange."""


def state_to_record(state: State) -> ArrayRecord:
    """An adapter state as an ArrayRecord (CPU numpy copies; bfloat16 as float32)."""
    import torch

    arrays = {}
    for key, tensor in state.items():
        t = tensor.detach().to("cpu")
        if t.dtype == torch.bfloat16:
            t = t.to(torch.float32)
        arrays[key] = Array.from_numpy_ndarray(t.numpy().copy())
    return ArrayRecord(arrays)


def record_to_state(record: ArrayRecord, reference: State) -> State:
    """An ArrayRecord as an adapter state laid out like ``reference`` (same keys, shapes and dtypes).

    Raises:
        WireError: keys or shapes differ from ``reference``.
    """
    import torch

    if set(record.keys()) != set(reference):
        extra, missing = sorted(set(record.keys()) - set(reference)), sorted(set(reference) - set(record.keys()))
        raise WireError(f"adapter keys differ from this model's (unexpected {extra[:2]}, missing {missing[:2]})")
    state: State = {}
    for key, ref in reference.items():
        tensor = torch.from_numpy(np.array(record[key].numpy(), copy=True))
        if tuple(tensor.shape) != tuple(ref.shape):
            raise WireError(f"'{key}' has shape {tuple(tensor.shape)}, expected {tuple(ref.shape)}")
        state[key] = tensor.to(ref.dtype)
    return state


def _scalar(value: Any) -> int | float | list[int] | list[float] | None:
    """A MetricRecord value for ``value``: numbers (bool as int), uniform number lists; None for anything else."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)) and value:
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return list(value)
        if all(isinstance(v, float) and math.isfinite(v) for v in value):
            return list(value)
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item) and getattr(value, "ndim", 0) == 0:
        return _scalar(item())
    return None


def metrics_to_record(metrics: dict[str, Any], weight: float) -> MetricRecord:
    """The client's metrics as a MetricRecord: non-scalar values (strings, None, NaN, nested) are dropped."""
    record = {k: v for k, v in ((str(k), _scalar(v)) for k, v in metrics.items()) if v is not None}
    record[WEIGHT_KEY] = float(weight)
    return MetricRecord(record)


def train_reply_content(result: LocalUpdateResult) -> RecordDict:
    """The content of a client's ``train`` reply: its adapter (when it has one) and its scalar metrics."""
    content = RecordDict({METRICS: metrics_to_record(result.metrics, result.weight if result.adapter else 0.0)})
    if result.adapter is not None:
        content[ADAPTER] = state_to_record(result.adapter)
    return content


def report_from_reply(client_id: int, reply: Message, reference: State) -> ClientReport:
    """The server's view of a ``train`` reply: a report with the adapter cast like ``reference``, or a failure."""
    from fedspear.federation.server import ClientReport

    if reply.has_error():
        return ClientReport.failure(client_id, f"client error {reply.error.code}: {reply.error.reason}")
    try:
        check_client_content(reply.content)
        metrics = dict(reply.content[METRICS])
        weight = float(metrics.pop(WEIGHT_KEY, 0.0))
        adapter = record_to_state(reply.content[ADAPTER], reference) if ADAPTER in reply.content else None
    except (WireError, KeyError) as exc:
        return ClientReport.failure(client_id, f"malformed reply: {exc}")
    return ClientReport(client_id, adapter, weight if adapter is not None else 0.0, metrics)


def check_client_content(content: RecordDict) -> None:
    """Refuse a client reply holding anything but the records in :data:`CLIENT_RECORDS`.

    Raises:
        WireError: an unknown record name, a record of the wrong type, or a metric that is not a number.
    """
    for name, record in content.items():
        expected = CLIENT_RECORDS.get(name)
        if expected is None:
            raise WireError(f"a client reply may only hold {sorted(CLIENT_RECORDS)}, not '{name}'")
        if not isinstance(record, expected):
            raise WireError(f"'{name}' must be a {expected.__name__}, got {type(record).__name__}")
        if isinstance(record, MetricRecord):
            for key, value in record.items():
                values = value if isinstance(value, list) else [value]
                if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                    raise WireError(f"metric '{key}' is not a number: {type(value).__name__}")


def describe_message(msg: Message) -> dict[str, Any]:
    """A JSON-able description of a message: its type and, per record, its kind, keys, dtypes and shapes."""
    out: dict[str, Any] = {"message_type": msg.metadata.message_type, "time": time.time()}
    if msg.has_error():
        out["error"] = {"code": msg.error.code, "reason": msg.error.reason}
        return out
    records: dict[str, Any] = {}
    for name, record in msg.content.items():
        if isinstance(record, ArrayRecord):
            records[name] = {"kind": "arrays", "arrays": {k: {"dtype": a.dtype, "shape": list(a.shape)}
                                                          for k, a in record.items()}}
        elif isinstance(record, MetricRecord):
            records[name] = {"kind": "metrics", "values": {k: type(v).__name__ for k, v in record.items()}}
        else:
            records[name] = {"kind": type(record).__name__, "keys": sorted(record.keys())}
    out["records"] = records
    return out


def wire_guard(msg: Message, context: Context, call_next: Any) -> Message:
    """ClientApp mod: check every reply with :func:`check_client_content` before it leaves the node.

    With the environment variable ``FEDSPEAR_FLOWER_WIRE_LOG`` set to a file path, each reply's
    :func:`describe_message` (plus the node's config) is appended to that file as one JSON line.
    """
    reply = call_next(msg, context)
    if reply.has_content():
        check_client_content(reply.content)
    log_path = os.environ.get(WIRE_LOG_ENV)
    if log_path:
        entry = describe_message(reply)
        entry["node_config"] = {k: v for k, v in context.node_config.items() if isinstance(v, (int, float, str))}
        with open(log_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
    return reply


def job_record(client_id: int, round_idx: int, lr: float, seed: int, config_yaml: str) -> ConfigRecord:
    """The ``job`` record of a ``train`` message."""
    return ConfigRecord({CLIENT_ID_KEY: int(client_id), "round": int(round_idx), "lr": float(lr), "seed": int(seed),
                         "config": config_yaml})
