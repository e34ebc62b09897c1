"""What crosses the network between the fedspear ServerApp and ClientApp, and the guard on client replies.

Server -> client (``train``): ``global`` (ArrayRecord, the global adapter) and ``job`` (ConfigRecord: client-id,
round, lr, seed and the run's resolved config as YAML). Server -> client (``query``): ``federation``
(ConfigRecord: num-clients). Server -> client (``evaluate``, only to nodes whose identity says they serve a
page): ``global`` (the global adapter after a round) and ``job`` (that round; lr and seed 0).

Client -> server, and nothing else: ``adapter`` (ArrayRecord, the client's adapter tensors, only when it has an
update), ``metrics`` (MetricRecord: the aggregation weight and the client's scalar metrics) for ``train``, and
``identity`` (MetricRecord: client-id, and serves-page = 1 from a store-backed node) for ``query``, and
``metrics`` (published: 0 or 1) for ``evaluate``. :func:`check_client_content` enforces this on every
reply (:func:`wire_guard`), so prompts, completions, feedback text or any other string never leave a client:
the adapter may hold only the tensor names of the global adapter the server sent, with its shapes and a
floating dtype, and metrics only declared names (:func:`fedspear.metrics.is_declared`, plus
:data:`WIRE_METRICS`; at most :data:`MAX_METRICS`) with finite scalar numbers. A metric name holding text, a list metric (token ids) or a uint8 array (UTF-8 bytes) is refused.
A failing client replies with Flower's Error carrying a fixed code (:data:`CLIENT_FAILED_CODE`,
:data:`WIRE_REFUSED_CODE`) and a fixed reason naming only the exception type; the full message (which may hold
file paths or people's text) stays in the node's local log.

Tensors travel as numpy arrays; dtypes numpy lacks (bfloat16) travel as float32 (exact for bfloat16) and are
cast back to the receiver's adapter dtypes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict

from fedspear.metrics import is_declared, numeric

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

# The wire's own metric keys; every other metric name must be declared where it is made (fedspear.metrics: the
# algorithms' ``metrics`` class attributes, the feedback user model's feedback_* counts).
WIRE_METRICS = frozenset({WEIGHT_KEY, PUBLISHED_KEY})
# At most this many metrics in one record: a reply cannot grow without bound through its metric names.
MAX_METRICS = 512
# Metrics each client record may hold.
RECORD_METRICS: dict[str, frozenset[str] | None] = {METRICS: None, IDENTITY: frozenset({CLIENT_ID_KEY, SERVES_PAGE_KEY})}
FLOAT_DTYPES = frozenset({"float16", "float32", "float64"})  # bfloat16 travels as float32
# Error codes of a failing client's reply (Flower's own ErrorCode values are 0-8).
CLIENT_FAILED_CODE = 100
WIRE_REFUSED_CODE = 101

logger = logging.getLogger("fedspear")

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


def content_nbytes(content: RecordDict) -> int:
    """A message content's size in bytes as Flower counts it: the sum of its records' ``count_bytes()`` (arrays as
    serialised, with their small headers, plus the keys; config and metric values)."""
    return int(sum(record.count_bytes() for record in content.values()))


def known_metric(name: str, record: str = METRICS) -> bool:
    """Whether a client may report a metric called ``name`` in ``record`` (``metrics`` or ``identity``)."""
    allowed = RECORD_METRICS.get(record, frozenset())
    if allowed is not None:
        return name in allowed
    return name in WIRE_METRICS or is_declared(name)


def metrics_to_record(metrics: dict[str, Any], weight: float) -> MetricRecord:
    """The client's metrics as a MetricRecord: unknown names (:func:`known_metric`) and non-scalar values
    (strings, None, NaN, lists, nested) are dropped, the unknown names logged locally."""
    record = {}
    for key, value in metrics.items():
        number = numeric(value)
        if not known_metric(str(key)):
            logger.warning("metric %r is not one the wire carries (declare it where it is made, see "
                           "docs/algorithms.md); dropped", str(key)[:40])
        elif number is not None and len(record) < MAX_METRICS - 1:
            record[str(key)] = number
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
        check_client_content(reply.content, reference)
        metrics = dict(reply.content[METRICS])
        weight = float(metrics.pop(WEIGHT_KEY, 0.0))
        adapter = record_to_state(reply.content[ADAPTER], reference) if ADAPTER in reply.content else None
    except (WireError, KeyError) as exc:
        return ClientReport.failure(client_id, f"malformed reply: {exc}")
    return ClientReport(client_id, adapter, weight if adapter is not None else 0.0, metrics)


def _layout(reference: ArrayRecord | State | None) -> dict[str, tuple[int, ...]] | None:
    """Tensor name -> shape of the adapter a reply may carry (the global adapter the server sent)."""
    if reference is None:
        return None
    if isinstance(reference, ArrayRecord):
        return {k: tuple(a.shape) for k, a in reference.items()}
    return {k: tuple(t.shape) for k, t in reference.items()}


def check_client_content(content: RecordDict, reference: ArrayRecord | State | None = None) -> None:
    """Refuse a client reply holding anything but the records in :data:`CLIENT_RECORDS`, checked by name.

    Args:
        content: the reply's content.
        reference: the global adapter the server sent (its ArrayRecord, or the state): an ``adapter`` must hold
            exactly its tensor names and shapes, in a floating dtype. None: the reply may hold no adapter.

    Raises:
        WireError: an unknown record name or type; an adapter with other names, shapes or a non-float dtype (or
            none expected); a metric of an unknown name, or whose value is not one finite number.
    """
    layout = _layout(reference)
    for name, record in content.items():
        expected = CLIENT_RECORDS.get(name)
        if expected is None:
            raise WireError(f"a client reply may only hold {sorted(CLIENT_RECORDS)}, not '{str(name)[:40]}'")
        if not isinstance(record, expected):
            raise WireError(f"'{name}' must be a {expected.__name__}, got {type(record).__name__}")
        if isinstance(record, ArrayRecord):
            if layout is None:
                raise WireError("an adapter in a reply to a message that sent no global adapter")
            if set(record.keys()) != set(layout):
                raise WireError(f"adapter tensor names differ from the global adapter's ({len(record)} tensors, "
                                f"expected {len(layout)})")
            for key, array in record.items():
                if array.dtype not in FLOAT_DTYPES:
                    raise WireError(f"adapter tensor '{key}' has dtype {array.dtype}, not a float")
                if tuple(array.shape) != layout[key]:
                    raise WireError(f"adapter tensor '{key}' has shape {tuple(array.shape)}, expected {layout[key]}")
        if isinstance(record, MetricRecord):
            if len(record) > MAX_METRICS:
                raise WireError(f"'{name}' holds {len(record)} metrics, more than {MAX_METRICS}")
            for key, value in record.items():
                if not known_metric(key, name):
                    raise WireError(f"'{name}' may not hold a metric of that name ({len(key)} characters)")
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise WireError(f"metric '{key}' is not one finite number: {type(value).__name__}")


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

    The reply's adapter is checked against the ``global`` adapter of the message it answers. A reply that fails
    the check, or a ClientApp that raises, becomes an Error reply with a fixed code and reason (the exception's
    type only): the full message, which may name files or quote people's text, is only logged on the node.

    With the environment variable ``FEDSPEAR_FLOWER_WIRE_LOG`` set to a file path, each reply's
    :func:`describe_message` (plus the node's config) is appended to that file as one JSON line.
    """
    try:
        reply = call_next(msg, context)
        if reply.has_content():
            reference = msg.content[GLOBAL] if msg.has_content() and GLOBAL in msg.content else None
            check_client_content(reply.content, reference)
    except WireError as exc:
        logger.error("refused to send a reply: %s", exc)
        reply = Message(Error(code=WIRE_REFUSED_CODE, reason="the reply held data the wire does not carry; "
                                                             "see the node's log"), reply_to=msg)
    except Exception as exc:  # noqa: BLE001 - the reason leaves the node, the details stay in its log
        logger.exception("the client update failed")
        reply = Message(Error(code=CLIENT_FAILED_CODE, reason=f"the client failed ({type(exc).__name__}); see the "
                                                              "node's log"), reply_to=msg)
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
