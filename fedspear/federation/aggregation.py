"""Server aggregation of client adapters: FedAvg, and FedAdam / FedYogi on top of it (docs/architecture.md, "One round"),
and the Byzantine-robust rules coordinate-wise median, trimmed mean and (multi-)Krum.

States are adapter state dicts ``dict[str, Tensor]`` (PEFT names, CPU tensors, the same keys and shapes
for every client). Every function returns freshly allocated tensors: nothing returned shares memory with
an input, so a client state can never alias the global adapter or another client (the reference's FedAvg
returns the last client's adapter because its states alias the live weights; docs/deviations.md, section 4 item 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from fedspear.config import FLConfig
from fedspear.dotted import describe, is_dotted, load_object
from fedspear.models import is_finite_state
from fedspear.privacy import usable_results  # the one filter of both aggregations (also importable from here)

State = dict[str, torch.Tensor]

SERVER_OPTIMIZERS = ("fedadam", "fedyogi")
ROBUST_RULES = ("median", "trimmed_mean", "krum", "multi_krum")
TENSOR_PREFIX = "server_opt."


def _check_same_layout(reference: State, other: State, what: str) -> None:
    if reference.keys() != other.keys():
        missing = sorted(set(reference) ^ set(other))[:3]
        raise ValueError(f"{what}: adapter keys differ (e.g. {missing}); all states must come from the same adapter")
    for key, tensor in reference.items():
        if other[key].shape != tensor.shape:
            raise ValueError(f"{what}: '{key}' has shape {tuple(other[key].shape)}, expected {tuple(tensor.shape)}")


def fedavg(states: list[State | None], weights: list[float]) -> State | None:
    """Weighted mean of client adapters over the clients that sent one with a positive weight.

    ``avg[k] = sum_i w_i * state_i[k] / sum_i w_i`` over the clients with ``w_i > 0`` and a non-None state,
    accumulated in float64 and cast back to each tensor's input dtype.

    Args:
        states: one adapter state per client, or None for a client without an update.
        weights: one aggregation weight (n_eff) per client, >= 0.

    Returns:
        The averaged state (new tensors), or None when no client contributed; the caller then keeps the
        global adapter unchanged.

    Raises:
        ValueError: on mismatched lengths, a negative or non-finite weight, or states with different layouts.
    """
    if len(states) != len(weights):
        raise ValueError(f"fedavg: {len(states)} states but {len(weights)} weights")
    used: list[tuple[State, float]] = []
    for state, weight in zip(states, weights, strict=True):
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"fedavg: aggregation weights must be finite and >= 0, got {weight}")
        if state is not None and weight > 0:
            used.append((state, float(weight)))
    if not used:
        return None
    first = used[0][0]
    for state, _ in used[1:]:
        _check_same_layout(first, state, "fedavg")
    total = sum(weight for _, weight in used)
    averaged: State = {}
    for key, tensor in first.items():
        acc = torch.zeros(tensor.shape, dtype=torch.float64, device=tensor.device)
        for state, weight in used:
            acc.add_(state[key].to(device=acc.device, dtype=torch.float64), alpha=weight / total)
        averaged[key] = acc.to(tensor.dtype)  # acc is new memory; .to() on it never aliases an input
    return averaged


def _stacked(states: list[State], key: str) -> torch.Tensor:
    """``[n, *shape]`` float64 stack of one tensor across clients."""
    return torch.stack([state[key].to(device="cpu", dtype=torch.float64) for state in states])


def _checked(states: list[State], what: str) -> State:
    if not states:
        raise ValueError(f"{what}: no client states to aggregate")
    for state in states[1:]:
        _check_same_layout(states[0], state, what)
    return states[0]


def coordinate_median(states: list[State]) -> State:
    """Coordinate-wise median of client adapters (Yin et al. 2018, "Byzantine-Robust Distributed Learning:
    Towards Optimal Statistical Rates", ICML, Definition 1).

    ``med[k][j] = median_i state_i[k][j]``; for an even number of clients the mean of the two middle values.
    Client weights are not used. Computed in float64, returned in each tensor's input dtype.

    Args:
        states: n >= 1 adapter states with one layout (tensors of any shape ``[*shape]``).

    Returns:
        The median state (new tensors, same keys and shapes).

    Raises:
        ValueError: no states, or states with different layouts.
    """
    first = _checked(states, "median")
    n = len(states)
    out: State = {}
    for key, tensor in first.items():
        ordered = _stacked(states, key).sort(dim=0).values
        out[key] = ((ordered[(n - 1) // 2] + ordered[n // 2]) / 2).to(tensor.dtype)
    return out


def trimmed_mean(states: list[State], trim_ratio: float) -> State:
    """Coordinate-wise trimmed mean (Yin et al. 2018, ICML, Definition 2).

    Per coordinate, the ``b = floor(trim_ratio * n)`` largest and ``b`` smallest client values are dropped and
    the remaining ``n - 2b`` averaged (b is lowered to ``(n - 1) // 2`` so at least one value is left).
    Client weights are not used.

    Args:
        states: n >= 1 adapter states with one layout.
        trim_ratio: beta in [0, 0.5): the share of clients dropped at each end.

    Returns:
        The trimmed-mean state (new tensors in the input dtypes).

    Raises:
        ValueError: trim_ratio outside [0, 0.5), no states, or different layouts.
    """
    if not 0 <= trim_ratio < 0.5:
        raise ValueError(f"trimmed_mean: trim_ratio must be in [0, 0.5), got {trim_ratio}")
    first = _checked(states, "trimmed_mean")
    n = len(states)
    b = min(int(math.floor(trim_ratio * n)), (n - 1) // 2)
    out: State = {}
    for key, tensor in first.items():
        ordered = _stacked(states, key).sort(dim=0).values
        out[key] = ordered[b : n - b].mean(dim=0).to(tensor.dtype)
    return out


def krum_scores(states: list[State], f: int) -> list[float]:
    """Krum score of each client (Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine Tolerant
    Gradient Descent", NeurIPS, Section 4).

    ``score(i) = sum of ||V_i - V_j||^2 over the n - f - 2 clients j != i closest to i``, with V the client's
    whole adapter flattened (float64).

    Args:
        states: n > 2f + 2 adapter states with one layout.
        f: the number of Byzantine clients tolerated.

    Returns:
        One score per client, in input order (lower = more central).

    Raises:
        ValueError: n <= 2f + 2, f < 0, or different layouts.
    """
    first = _checked(states, "krum")
    n = len(states)
    if f < 0 or n <= 2 * f + 2:
        raise ValueError(f"krum: needs more than 2f + 2 = {2 * f + 2} client updates (got {n}, f={f})")
    flat = torch.stack([torch.cat([s[k].reshape(-1).to("cpu", torch.float64) for k in first]) for s in states])
    dist = torch.cdist(flat, flat).pow(2)  # [n, n]
    scores = []
    for i in range(n):
        others = torch.cat([dist[i, :i], dist[i, i + 1 :]])
        scores.append(float(others.sort().values[: n - f - 2].sum()))
    return scores


def multi_krum(states: list[State], f: int, m: int | None = None) -> tuple[State, list[int]]:
    """(Multi-)Krum (Blanchard et al. 2017, NeurIPS, Section 4): the mean of the m clients with the lowest
    :func:`krum_scores`; ``m = 1`` is Krum itself (the selected client's adapter).

    Args:
        states: n > 2f + 2 adapter states with one layout.
        f: the number of Byzantine clients tolerated.
        m: clients averaged, 1 <= m <= n - f; None = n - f.

    Returns:
        (aggregated state as new tensors in the input dtypes, indices of the selected clients ascending).

    Raises:
        ValueError: as :func:`krum_scores`, or m out of range.
    """
    scores = krum_scores(states, f)
    n = len(states)
    m = n - f if m is None else m
    if not 1 <= m <= n - f:
        raise ValueError(f"multi_krum: m must be in [1, n - f = {n - f}], got {m}")
    chosen = sorted(sorted(range(n), key=lambda i: (scores[i], i))[:m])
    avg = fedavg([states[i] for i in chosen], [1.0] * m)
    assert avg is not None
    return avg, chosen


def robust_aggregate(states: list[State], fl_cfg: FLConfig) -> tuple[State, dict[str, Any]]:
    """The robust rule ``fl.aggregation`` names over the clients' adapters (weights are not used).

    Krum and multi-Krum need more than ``2 * fl.krum_f + 2`` updates; with fewer (failed clients) the round
    falls back to the coordinate-wise median, and ``info["aggregation_rule"]`` says so.

    Returns:
        (new state, info with ``aggregation_rule`` and, for Krum, ``krum_selected`` = indices into ``states``).
    """
    rule = fl_cfg.aggregation
    n, f = len(states), fl_cfg.krum_f
    if rule in ("krum", "multi_krum") and n <= 2 * f + 2:
        rule = "median"
        info: dict[str, Any] = {"aggregation_rule": f"median ({fl_cfg.aggregation} needs > {2 * f + 2} updates, got {n})"}
    else:
        info = {"aggregation_rule": rule}
    if rule == "median":
        return coordinate_median(states), info
    if rule == "trimmed_mean":
        return trimmed_mean(states, fl_cfg.trim_ratio), info
    m = 1 if rule == "krum" else (fl_cfg.multi_krum_m if fl_cfg.multi_krum_m is not None else n - f)
    state, chosen = multi_krum(states, f, min(m, n - f))
    info["krum_selected"] = chosen
    return state, info


def user_rule(fl_cfg: FLConfig | None) -> Callable[..., Any] | None:
    """The user's aggregation rule when ``fl.aggregation`` is a dotted path ``module:function`` (docs/extending.md,
    "Your own aggregation rule"), else None (a built-in name)."""
    if fl_cfg is None or not is_dotted(fl_cfg.aggregation):
        return None
    return load_object(fl_cfg.aggregation, "fl.aggregation")


def apply_user_rule(rule: Callable[..., Any], states: list[State], weights: list[float],
                    fl_cfg: FLConfig) -> tuple[State, dict[str, Any]]:
    """Call a user's rule as ``rule(states, weights, fl_cfg)`` on the usable client updates.

    Args:
        rule: the function ``fl.aggregation`` names.
        states: the finite client adapters with an update (same keys and shapes).
        weights: their aggregation weights (n_eff, > 0), in the same order.
        fl_cfg: the ``fl`` section (the rule may read its own settings from it).

    Returns:
        (new state as fresh tensors in each key's input dtype, info with ``aggregation_rule`` = the dotted path and
        whatever dict the rule returned as the second item of a pair).

    Raises:
        ValueError: the rule returned something other than a state or (state, dict), or a state whose keys or
            shapes differ from the clients'.
    """
    out = rule([{k: t.clone() for k, t in s.items()} for s in states], list(weights), fl_cfg)
    extra: dict[str, Any] = {}
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict):
        out, extra = out
    if not isinstance(out, dict) or not all(isinstance(t, torch.Tensor) for t in out.values()):
        raise ValueError(f"fl.aggregation={fl_cfg.aggregation}: {describe(rule)} must return the new adapter state "
                         "(dict of tensors) or (state, dict of figures)")
    _check_same_layout(states[0], out, f"fl.aggregation={fl_cfg.aggregation}")
    state = {k: out[k].detach().to(dtype=states[0][k].dtype, device="cpu").clone() for k in states[0]}
    return state, {**extra, "aggregation_rule": fl_cfg.aggregation}


class ServerOptimizer:
    """FedAdam / FedYogi server optimizer (Reddi et al. 2020, "Adaptive Federated Optimization").

    Each round, with the pseudo-gradient ``delta = avg - global``:
        m = beta1 * m + (1 - beta1) * delta
        v = beta2 * v + (1 - beta2) * delta**2                          (FedAdam)
        v = v - (1 - beta2) * delta**2 * sign(v - delta**2)               (FedYogi)
        new = global + lr * m / (sqrt(v) + tau)
    with m starting at 0 and v at tau**2, no bias correction (as in the paper's algorithm). m and v are
    float32 tensors keyed like the adapter, created at the first step.

    Args:
        kind: "fedadam" or "fedyogi".
        lr: server learning rate (``fl.server_lr``).
        beta1: first-moment decay (``fl.server_beta1``).
        beta2: second-moment decay (``fl.server_beta2``).
        tau: adaptivity / initial sqrt(v) (``fl.server_tau``).
    """

    def __init__(self, kind: str, lr: float, beta1: float, beta2: float, tau: float) -> None:
        if kind not in SERVER_OPTIMIZERS:
            raise ValueError(f"server optimizer must be one of {SERVER_OPTIMIZERS}, got '{kind}'")
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1 and tau > 0 and lr > 0):
            raise ValueError(
                f"{kind}: need 0 <= beta1, beta2 < 1, tau > 0, lr > 0 (got {beta1}, {beta2}, {tau}, {lr})"
            )
        self.kind = kind
        self.lr = float(lr)
        self.beta1 = float(beta1)
        self.beta2 = float(beta2)
        self.tau = float(tau)
        self.num_steps = 0
        self.m: State = {}
        self.v: State = {}

    @classmethod
    def from_config(cls, fl_cfg: FLConfig) -> ServerOptimizer:
        """The optimizer ``fl.aggregation`` names (must be fedadam or fedyogi), with ``fl.server_*`` settings."""
        return cls(fl_cfg.aggregation, fl_cfg.server_lr, fl_cfg.server_beta1, fl_cfg.server_beta2, fl_cfg.server_tau)

    def step(self, global_state: State, avg_state: State) -> State:
        """One server update of the global adapter towards the clients' average.

        Args:
            global_state: the round-start global adapter.
            avg_state: the FedAvg of the clients' adapters (same layout).

        Returns:
            The new global adapter: new tensors in ``global_state``'s dtypes; updates m and v in place.
        """
        _check_same_layout(global_state, avg_state, self.kind)
        if not self.m:
            self.m = {k: torch.zeros(t.shape, dtype=torch.float32) for k, t in global_state.items()}
            self.v = {k: torch.full(t.shape, self.tau**2, dtype=torch.float32) for k, t in global_state.items()}
        else:
            _check_same_layout(self.m, global_state, f"{self.kind} state")
        new_state: State = {}
        for key, global_t in global_state.items():
            delta = avg_state[key].to(device="cpu", dtype=torch.float32) - global_t.to(
                device="cpu", dtype=torch.float32
            )
            delta_sq = delta * delta
            m, v = self.m[key], self.v[key]
            m.mul_(self.beta1).add_(delta, alpha=1 - self.beta1)
            if self.kind == "fedadam":
                v.mul_(self.beta2).add_(delta_sq, alpha=1 - self.beta2)
            else:
                v.sub_(delta_sq * torch.sign(v - delta_sq), alpha=1 - self.beta2)
            update = m / (v.sqrt() + self.tau)
            new_t = global_t.to(device="cpu", dtype=torch.float32) + self.lr * update
            new_state[key] = new_t.to(device=global_t.device, dtype=global_t.dtype)
        self.num_steps += 1
        return new_state

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue identically (tensors are copies)."""
        return {
            "kind": self.kind,
            "num_steps": self.num_steps,
            "m": {k: t.clone() for k, t in self.m.items()},
            "v": {k: t.clone() for k, t in self.v.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (hyperparameters come from the config, the kind must match)."""
        if state["kind"] != self.kind:
            raise ValueError(f"saved server optimizer is '{state['kind']}' but the config asks for '{self.kind}'")
        if state["m"].keys() != state["v"].keys():
            raise ValueError("server optimizer state: m and v have different keys")
        self.num_steps = int(state["num_steps"])
        self.m = {k: t.detach().to("cpu", torch.float32).clone() for k, t in state["m"].items()}
        self.v = {k: t.detach().to("cpu", torch.float32).clone() for k, t in state["v"].items()}

    def to_tensors(self, prefix: str = TENSOR_PREFIX) -> State:
        """The state as a flat tensor dict for ``safetensors.torch.save_file``.

        Keys: ``{prefix}num_steps`` (int64, shape [1]), ``{prefix}m.{adapter key}`` and ``{prefix}v.{adapter key}``.
        """
        tensors: State = {f"{prefix}num_steps": torch.tensor([self.num_steps], dtype=torch.int64)}
        for key in self.m:
            tensors[f"{prefix}m.{key}"] = self.m[key].clone().contiguous()
            tensors[f"{prefix}v.{key}"] = self.v[key].clone().contiguous()
        return tensors

    def from_tensors(self, tensors: State, prefix: str = TENSOR_PREFIX) -> ServerOptimizer:
        """Load a state written by :meth:`to_tensors`; keys without ``prefix`` are ignored.

        Returns:
            self, so ``ServerOptimizer.from_config(cfg.fl).from_tensors(loaded)`` works.
        """
        steps_key = f"{prefix}num_steps"
        if steps_key not in tensors:
            raise ValueError(f"no server optimizer state in the tensors (missing '{steps_key}')")
        m = {k[len(prefix) + 2 :]: t for k, t in tensors.items() if k.startswith(f"{prefix}m.")}
        v = {k[len(prefix) + 2 :]: t for k, t in tensors.items() if k.startswith(f"{prefix}v.")}
        self.load_state_dict({"kind": self.kind, "num_steps": int(tensors[steps_key][0]), "m": m, "v": v})
        return self


def build_server_optimizer(fl_cfg: FLConfig) -> ServerOptimizer | None:
    """The server optimizer for ``fl.aggregation``, or None for plain FedAvg and the robust rules."""
    if fl_cfg.aggregation not in SERVER_OPTIMIZERS:
        return None
    return ServerOptimizer.from_config(fl_cfg)


def aggregate(
    global_state: State, results: list[tuple[State | None, float]], server_opt: ServerOptimizer | None,
    fl_cfg: FLConfig | None = None,
) -> tuple[State, dict[str, Any]]:
    """One server round: drop non-finite updates, FedAvg the rest, then apply the server optimizer if any.

    Args:
        global_state: the round-start global adapter.
        results: (adapter state or None, weight) per selected client.
        server_opt: FedAdam/FedYogi optimizer, or None for plain FedAvg (the average becomes the new global).
        fl_cfg: when its ``aggregation`` is a robust rule (:data:`ROBUST_RULES`), that rule replaces FedAvg
            (unweighted, see :func:`robust_aggregate`); a dotted path ``module:function`` is a user's rule
            (:func:`apply_user_rule`); None or any other value = FedAvg.

    Returns:
        (new global state, info). The new state is always new memory; when nothing was aggregated it is a
        copy of ``global_state`` (and the server optimizer does not step). info holds ``num_aggregated``,
        ``num_excluded_nonfinite`` (updates with NaN/inf tensors or a non-finite weight),
        ``num_without_update`` (None state or weight 0) and ``total_weight`` of the aggregated clients.
        An aggregate that is itself not finite (overflow in the average or the server optimizer) is refused
        like a non-finite client update: the global adapter and the server optimizer's state stay as they
        were and info gets ``refused_nonfinite_aggregate: True``.
    """
    kept_states, kept_weights, num_without_update, num_nonfinite = usable_results(results)
    robust_info: dict[str, Any] = {}
    rule = user_rule(fl_cfg)
    if rule is not None and kept_states:
        assert fl_cfg is not None
        avg, robust_info = apply_user_rule(rule, kept_states, kept_weights, fl_cfg)
    elif fl_cfg is not None and fl_cfg.aggregation in ROBUST_RULES and kept_states:
        avg, robust_info = robust_aggregate(kept_states, fl_cfg)
    else:
        avg = fedavg(kept_states, kept_weights)
    info: dict[str, Any] = {
        "num_aggregated": len(kept_states),
        "num_excluded_nonfinite": num_nonfinite,
        "num_without_update": num_without_update,
        "total_weight": float(sum(kept_weights)),
        **robust_info,
    }
    if avg is None:
        return {k: t.clone() for k, t in global_state.items()}, info
    if server_opt is None:
        new_state = avg
    else:
        saved = server_opt.state_dict()
        new_state = server_opt.step(global_state, avg)
    if not is_finite_state(new_state):
        if server_opt is not None:
            server_opt.load_state_dict(saved)
        info["refused_nonfinite_aggregate"] = True
        return {k: t.clone() for k, t in global_state.items()}, info
    return new_state, info
