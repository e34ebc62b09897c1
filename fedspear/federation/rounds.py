"""The round row: what one round of a run produced, as a typed object and as its line of metrics.jsonl.

:class:`FederatedServer <fedspear.federation.server.FederatedServer>` makes one :class:`RoundRow` per round (round 0
is the initial evaluation) and hands it to its observers (:mod:`fedspear.federation.observers`): the metrics.jsonl
writer, the trackers, the console line. The readers of run folders (the report, ``fedspear compare``, ``fedspear
sweep``) parse the rows back with :meth:`RoundRow.from_dict` (:meth:`fedspear.records.RunRecord.read_rows`).

The JSON object of a row (:meth:`RoundRow.to_dict`) has these keys, in this order, each only when set:

- round 0: ``round``, ``eval``, ``time`` (``eval_s``), ``data`` (the data statistics of a new run);
- a training round: ``round``, ``lr``, ``selected_clients``, ``clients`` (one :class:`ClientRow` each),
  ``aggregate`` (the clients' summed counts, :data:`fedspear.metrics.ROUND_COUNTS`, and the ratios derived from
  them), ``aggregation`` (what the server optimizer did; failed, excluded and aggregated clients),
  ``time`` (``round_s``, ``generation_s``, ``feedback_s``, ``training_s``, ``aggregation_s``, ``eval_s``),
  ``resources`` (memory and traffic, :func:`fedspear.federation.resources.round_resources`), ``num_selected``
  (central DP, whose sample is secret: no ids and no client rows), ``privacy`` (DP on), the client runner's own
  keys (:attr:`RoundRow.extra`, e.g. the served clients' interface figures), ``stopped`` (why the run stopped
  after this round) and ``eval`` (on evaluation rounds).

A row read from a file keeps the key order it had, so ``RoundRow.from_dict(d).to_dict() == d`` key for key and
in order, for any JSON object: keys this module does not know stay in :attr:`RoundRow.extra`, and a known key
whose value has another type (an old or hand-edited file) keeps its value for :meth:`RoundRow.to_dict` while its
attribute holds what could be read of it (None, or the well-formed part of a list). Readers therefore never
check types themselves: an attribute is of its declared type or None.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Where the other keys (a row's extra, a client row's details) go in a key order.
_REST = "*"
# A training round's keys, in metrics.jsonl order.
_ROUND_ORDER = ("round", "lr", "selected_clients", "clients", "aggregate", "aggregation", "time", "resources",
                "num_selected", "privacy", _REST, "stopped", "eval", "data")
# Round 0's (the initial evaluation).
_START_ORDER = ("round", "eval", "time", "data", *(k for k in _ROUND_ORDER if k not in ("round", "eval", "time",
                                                                                    "data")))
# A client row's keys, in metrics.jsonl order (details: the front end's own facts, e.g. a Flower node id).
_CLIENT_ORDER = ("client_id", _REST, "bytes_down", "bytes_up", "weight", "error", "metrics")

Parsed = tuple[Any, bool]  # (the attribute's value, whether it is the JSON value itself)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _integer(value: Any) -> Parsed:
    return (value, True) if _is_int(value) else (None, False)


def _number(value: Any) -> Parsed:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return (value, True) if ok else (None, False)


def _mapping(value: Any) -> Parsed:
    return (value, True) if isinstance(value, dict) else (None, False)


def _text(value: Any) -> Parsed:
    if isinstance(value, str):
        return value, True
    return (str(value) if value else None), False


def _ids(value: Any) -> Parsed:
    if not isinstance(value, list):
        return None, False
    ids = [v for v in value if _is_int(v)]
    return ids, len(ids) == len(value)


def _clients(value: Any) -> Parsed:
    if not isinstance(value, list):
        return None, False
    rows = [ClientRow.from_dict(v) for v in value if isinstance(v, dict)]
    return rows, len(rows) == len(value)  # each client row writes back its own malformed values


def _parse(data: Mapping[str, Any], parsers: Mapping[str, Callable[[Any], Parsed]]
           ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(known attributes, other keys, raw JSON values of known keys that did not parse as their type)."""
    known: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    raw: dict[str, Any] = {}
    for key, value in data.items():
        parser = parsers.get(key)
        if parser is None:
            rest[key] = value
            continue
        known[key], exact = parser(value)
        if not exact:
            raw[key] = value
    return known, rest, raw


def _emit(values: dict[str, Any], rest: Mapping[str, Any], order: Iterable[str]) -> dict[str, Any]:
    """``values`` and ``rest`` in ``order`` (``_REST`` = where the ``rest`` keys go); keys the order does not
    name follow at the end, as a dict puts keys added later."""
    out: dict[str, Any] = {}
    for key in order:
        if key == _REST:
            out.update((k, v) for k, v in rest.items() if k not in out)
        elif key in values:
            out[key] = values[key]
        elif key in rest:
            out[key] = rest[key]
    for key, value in (*values.items(), *rest.items()):
        out.setdefault(key, value)
    return out


@dataclass
class ClientRow:
    """One selected client's entry in a round row (``clients``).

    Attributes:
        client_id: the client.
        weight: its aggregation weight (0 without an update or on failure).
        metrics: its scalar metrics (the names its algorithm declares, :mod:`fedspear.metrics`).
        error: why it failed, or None when it succeeded.
        bytes_down: bytes of the global adapter sent to it.
        bytes_up: bytes of the adapter it returned (0 without one).
        details: the front end's own facts about it (a Flower node id, message sizes), between ``client_id`` and
            ``bytes_down`` in the JSON object; they never replace the row's own keys.
    """

    client_id: int | None = None
    weight: float | None = None
    metrics: dict[str, Any] | None = None
    error: str | None = None
    bytes_down: int | None = None
    bytes_up: int | None = None
    details: dict[str, Any] = field(default_factory=dict)
    _keys: tuple[str, ...] | None = field(default=None, init=False, repr=False, compare=False)
    _raw: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def metric(self, name: str) -> Any:
        """``metrics[name]``, or None when the client did not report it."""
        return (self.metrics or {}).get(name)

    def to_dict(self) -> dict[str, Any]:
        """The client's JSON object (keys in metrics.jsonl order; see the module docstring)."""
        values = {k: self._raw[k] if k in self._raw else v for k, v in self._fields().items()
                  if v is not None or k in self._raw}
        rest = {k: v for k, v in self.details.items() if k not in _CLIENT_PARSERS}
        return _emit(values, rest, self._keys or _CLIENT_ORDER)

    def _fields(self) -> dict[str, Any]:
        return {"client_id": self.client_id, "weight": self.weight, "metrics": self.metrics, "error": self.error,
                "bytes_down": self.bytes_down, "bytes_up": self.bytes_up}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClientRow:
        """A client row read from a metrics.jsonl row (any JSON object; see the module docstring)."""
        known, rest, raw = _parse(data, _CLIENT_PARSERS)
        row = cls(**known, details=rest)
        row._keys, row._raw = tuple(data), raw
        return row


_CLIENT_PARSERS: dict[str, Callable[[Any], Parsed]] = {
    "client_id": _integer, "weight": _number, "metrics": _mapping, "error": _text, "bytes_down": _integer,
    "bytes_up": _integer,
}


@dataclass
class RoundRow:
    """One round of a run: the row the server writes to metrics.jsonl and hands to its observers.

    Every attribute but ``round`` may be None: a row holds only what its round produced (round 0 has no
    clients; an evaluation only every ``data.eval_every`` rounds; ``privacy`` only with DP on). The dict-valued
    sections keep the names their producers declare (:mod:`fedspear.metrics`, :mod:`fedspear.privacy`,
    :mod:`fedspear.evaluation`); :meth:`value` reads one entry of any of them.

    Attributes:
        round: the round, 0 = the initial evaluation (None only for a malformed row read from a file).
        lr: the clients' learning rate.
        selected_clients: the sampled client ids (absent under central DP).
        clients: one :class:`ClientRow` per selected client (absent under central DP).
        aggregate: the clients' metrics summed over the round (:func:`~fedspear.federation.server.sum_client_metrics`).
        aggregation: the server optimizer's figures (``num_aggregated``, ``num_failed_clients``, ...).
        time: seconds per phase (``round_s``, ``generation_s``, ..., ``eval_s``).
        resources: memory maxima and adapter traffic (:mod:`fedspear.federation.resources`).
        num_selected: how many clients central DP sampled.
        privacy: the privacy spent so far (:func:`fedspear.privacy.budget`).
        stopped: why the run stopped after this round, or None.
        eval: the evaluation of the global adapter after this round (:func:`fedspear.evaluation.evaluate`).
        data: round 0 of a new run: the data statistics.
        extra: other keys: a client runner's ``fields`` (the served clients' interface figures), or unknown keys of
            a row read from a file.
    """

    round: int | None
    lr: float | None = None
    selected_clients: list[int] | None = None
    clients: list[ClientRow] | None = None
    aggregate: dict[str, Any] | None = None
    aggregation: dict[str, Any] | None = None
    time: dict[str, Any] | None = None
    resources: dict[str, Any] | None = None
    num_selected: int | None = None
    privacy: dict[str, Any] | None = None
    stopped: str | None = None
    eval: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    _keys: tuple[str, ...] | None = field(default=None, init=False, repr=False, compare=False)
    _raw: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def value(self, section: str, key: str) -> Any:
        """``section[key]`` of a dict-valued section (``row.value("eval", "accuracy")``), or None when the section
        or the key is absent."""
        part = getattr(self, section)
        return part.get(key) if isinstance(part, dict) else None

    def merge(self, fields: Mapping[str, Any]) -> None:
        """Add a client runner's keys (its ``fields``): each goes to :attr:`extra`, except that a key naming one of
        the row's own attributes sets it (as a dict's ``update`` would)."""
        own = self._fields()
        for key, value in fields.items():
            if key in own:
                setattr(self, key, value)
            else:
                self.extra[key] = value

    @property
    def errors(self) -> list[str]:
        """The errors of the round's failed clients, in client order."""
        return [c.error for c in self.clients or [] if c.error]

    def to_dict(self) -> dict[str, Any]:
        """The row's JSON object, as metrics.jsonl holds it (key order: see the module docstring)."""
        fields = self._fields()
        values = {k: self._raw[k] if k in self._raw else v for k, v in fields.items()
                  if v is not None or k in self._raw}
        if "clients" in values and "clients" not in self._raw:
            values["clients"] = [c.to_dict() for c in self.clients or []]
        rest = {k: v for k, v in self.extra.items() if k not in fields}
        order = self._keys or (_START_ORDER if self.round == 0 else _ROUND_ORDER)
        return _emit(values, rest, order)

    def _fields(self) -> dict[str, Any]:
        return {"round": self.round, "lr": self.lr, "selected_clients": self.selected_clients,
                "clients": self.clients, "aggregate": self.aggregate, "aggregation": self.aggregation,
                "time": self.time, "resources": self.resources, "num_selected": self.num_selected,
                "privacy": self.privacy, "stopped": self.stopped, "eval": self.eval, "data": self.data}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoundRow:
        """A row read from metrics.jsonl: any JSON object, from this version or an older one, whole or partial
        (see the module docstring); ``from_dict(d).to_dict() == d``, in the same key order."""
        known, rest, raw = _parse(data, _ROUND_PARSERS)
        row = cls(known.pop("round", None), **known, extra=rest)
        row._keys, row._raw = tuple(data), raw
        return row


_ROUND_PARSERS: dict[str, Callable[[Any], Parsed]] = {
    "round": _integer, "lr": _number, "selected_clients": _ids, "clients": _clients, "aggregate": _mapping,
    "aggregation": _mapping, "time": _mapping, "resources": _mapping, "num_selected": _integer,
    "privacy": _mapping, "stopped": _text, "eval": _mapping, "data": _mapping,
}


def as_row(row: RoundRow | Mapping[str, Any]) -> RoundRow:
    """``row`` as a :class:`RoundRow`: itself, or a metrics.jsonl row (a dict) parsed with :meth:`RoundRow.from_dict`."""
    return row if isinstance(row, RoundRow) else RoundRow.from_dict(row)
