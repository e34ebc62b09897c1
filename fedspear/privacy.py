"""Differential privacy of client updates: DP-FedAvg (central) and its local variant, with RDP accounting.

DP-FedAvg (McMahan, Ramage, Talwar, Zhang 2018, "Learning Differentially Private Recurrent Language Models",
ICLR, Algorithm 1): each selected client's update ``delta_i = adapter_i - global`` (the whole adapter as one
vector) is clipped to L2 norm ``C``; the server sums the clipped updates with weight 1 each, adds Gaussian noise
``N(0, (sigma * C)^2 I)`` and divides by the fixed expected number of clients ``K = fl.clients_per_round`` (the
paper's fixed-denominator estimator). One client changes the sum by at most C, so the noisy sum is a Gaussian
mechanism of noise multiplier sigma, and a round with client sampling rate ``q = K / N`` is its sampled version.
Clients' wins-based weights are not used: they would make the sensitivity data-dependent.

Local variant (``dp.mode=local``): each client clips its own update and adds ``N(0, (sigma * C)^2 I)`` before it
leaves the client, so the server sees only noised updates; the server averages them uniformly.

The budget (epsilon at ``dp.delta``) comes from Google's ``dp-accounting`` RDP accountant (Mironov 2017,
"Renyi Differential Privacy"; Mironov, Talwar, Zhang 2019 for the sampled Gaussian). Central: a
Poisson-sampled Gaussian with q = K/N per round (client sampling here draws exactly K clients, the usual
approximation TensorFlow Federated and Flower make too). Local: a client's release is not amplified by
sampling (the server knows who was selected), so each round counts as a full Gaussian mechanism, the worst case
of a client selected every round.
"""

from __future__ import annotations

import math
import secrets
from typing import Any

import torch

from fedspear.config import MAX_NOISE_MULTIPLIER, Config, DPConfig

State = dict[str, torch.Tensor]

# Integer RDP orders (fractional ones make dp-accounting warn about series that fail to converge) and large ones
# for small sigma.
RDP_ORDERS = [float(a) for a in range(2, 64)] + [80.0, 128.0, 256.0, 512.0, 1024.0]


def update_norm(update: State) -> float:
    """Global L2 norm of an update: ``sqrt(sum_k ||update[k]||_2^2)`` over all tensors, in float64."""
    return math.sqrt(sum(float(t.detach().to("cpu", torch.float64).pow(2).sum()) for t in update.values()))


def clip_update(update: State, clip_norm: float) -> tuple[State, float]:
    """Scale an update to L2 norm at most ``clip_norm`` (McMahan et al. 2018, Algorithm 1, ClipFn flat clipping).

    ``clipped = update * min(1, C / ||update||)`` with the norm over all tensors together.

    Args:
        update: ``{name: tensor}`` of any shapes (the client adapter minus the global adapter).
        clip_norm: C > 0.

    Returns:
        (clipped update as new float32 tensors, the norm before clipping).

    Raises:
        ValueError: clip_norm <= 0 or a non-finite norm.
    """
    if not clip_norm > 0:
        raise ValueError(f"clip_norm must be > 0, got {clip_norm}")
    norm = update_norm(update)
    if not math.isfinite(norm):
        raise ValueError("the update has a non-finite norm (NaN/inf entries); it cannot be clipped")
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return {k: t.detach().to("cpu", torch.float32) * scale for k, t in update.items()}, norm


def add_gaussian_noise(update: State, std: float, generator: torch.Generator) -> State:
    """``update + N(0, std^2)`` independently per entry (new float32 tensors, same keys and shapes)."""
    return {k: t.to("cpu", torch.float32) + std * torch.randn(t.shape, generator=generator, dtype=torch.float32)
            for k, t in update.items()}


def noise_generator(dp_cfg: DPConfig, *stream: int) -> torch.Generator:
    """The noise RNG: fresh OS randomness, or seeded by (``dp.seed``, ``*stream``) when ``dp.seed`` is set."""
    gen = torch.Generator()
    if dp_cfg.seed is None:
        gen.manual_seed(secrets.randbits(63))
    else:
        gen.manual_seed(hash((dp_cfg.seed, *stream)) & (2**63 - 1))
    return gen


def _delta(state: State, global_state: State) -> State:
    return {k: state[k].to("cpu", torch.float64) - global_state[k].to("cpu", torch.float64) for k in global_state}


def central_dp_mean(global_state: State, states: list[State], dp_cfg: DPConfig, expected_clients: int,
                    generator: torch.Generator) -> tuple[State, dict[str, Any]]:
    """DP-FedAvg's server step (McMahan et al. 2018, Algorithm 1, fixed-denominator estimator).

    ``new = global + (sum_i clip(state_i - global, C) + N(0, (sigma C)^2 I)) / K``.

    Args:
        global_state: the round-start global adapter.
        states: the adapters of the clients that sent one (weights ignored: each counts once).
        dp_cfg: ``dp.clip_norm`` (C) and ``dp.noise_multiplier`` (sigma).
        expected_clients: K, the fixed denominator (``fl.clients_per_round``).
        generator: the noise RNG.

    Returns:
        (new global state in ``global_state``'s dtypes, info with ``dp_clipped`` = clients whose update was
        scaled down and ``dp_mean_update_norm`` = their mean norm before clipping).
    """
    total = {k: torch.zeros(t.shape, dtype=torch.float32) for k, t in global_state.items()}
    norms = []
    for state in states:
        clipped, norm = clip_update(_delta(state, global_state), dp_cfg.clip_norm)
        norms.append(norm)
        for k in total:
            total[k] += clipped[k]
    noised = add_gaussian_noise(total, dp_cfg.noise_multiplier * dp_cfg.clip_norm, generator)
    new_state = {k: (t.to("cpu", torch.float32) + noised[k] / expected_clients).to(t.dtype)
                 for k, t in global_state.items()}
    info = {"dp_clipped": sum(1 for n in norms if n > dp_cfg.clip_norm),
            "dp_mean_update_norm": sum(norms) / len(norms) if norms else None}
    return new_state, info


def local_dp_state(state: State, global_state: State, dp_cfg: DPConfig, generator: torch.Generator) -> State:
    """A client's locally privatized adapter: ``global + clip(state - global, C) + N(0, (sigma C)^2 I)``.

    Returns:
        New tensors in ``global_state``'s dtypes.
    """
    clipped, _ = clip_update(_delta(state, global_state), dp_cfg.clip_norm)
    noised = add_gaussian_noise(clipped, dp_cfg.noise_multiplier * dp_cfg.clip_norm, generator)
    return {k: (t.to("cpu", torch.float32) + noised[k]).to(t.dtype) for k, t in global_state.items()}


def privatize_result(cfg: Config, result: Any, global_state: State, round_idx: int, client_id: int) -> Any:
    """Client side of ``dp.mode=local``: replace the result's adapter by :func:`local_dp_state` (weight 1).

    A result without an adapter (or any other mode) is returned unchanged. Called by the simulator's clients and
    the Flower ClientApp before the update leaves the client.
    """
    if cfg.dp.mode != "local" or getattr(result, "adapter", None) is None:
        return result
    gen = noise_generator(cfg.dp, round_idx, client_id)
    result.adapter = local_dp_state(result.adapter, global_state, cfg.dp, gen)
    result.weight = 1.0
    return result


def epsilon(noise_multiplier: float, sampling_rate: float, rounds: int, delta: float) -> float:
    """Epsilon at ``delta`` after ``rounds`` Poisson-sampled Gaussian mechanisms (dp-accounting's RdpAccountant).

    Args:
        noise_multiplier: sigma (noise std / sensitivity); 0 gives inf; above the config's bound
            (``fedspear.config.MAX_NOISE_MULTIPLIER``) the epsilon at the bound is returned (an upper bound).
        sampling_rate: q in (0, 1] (1 = no sampling).
        rounds: compositions, >= 0 (0 gives 0).
        delta: in (0, 1).

    Returns:
        epsilon (float; inf without noise).
    """
    from dp_accounting import dp_event
    from dp_accounting.rdp import rdp_privacy_accountant

    if rounds <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    # More noise only lowers epsilon, so the value at the config's bound is a valid (upper) bound for a larger
    # sigma, and the accountant's sigma^2 never overflows (OverflowError near sigma = 1e154).
    noise_multiplier = min(noise_multiplier, MAX_NOISE_MULTIPLIER)
    event: Any = dp_event.GaussianDpEvent(noise_multiplier)
    if sampling_rate < 1:
        event = dp_event.PoissonSampledDpEvent(sampling_rate, event)
    accountant = rdp_privacy_accountant.RdpAccountant(RDP_ORDERS)
    accountant.compose(dp_event.SelfComposedDpEvent(event, rounds))
    return float(accountant.get_epsilon(delta))


def budget(cfg: Config, rounds: int) -> dict[str, Any]:
    """The privacy spent after ``rounds`` rounds of ``cfg``: the metrics row's ``privacy`` entry.

    Returns:
        ``{"mode", "epsilon", "delta", "noise_multiplier", "clip_norm", "sampling_rate", "rounds"}``; epsilon is
        None (JSON has no inf) when sigma is 0 (no guarantee).
    """
    dp = cfg.dp
    q = cfg.fl.clients_per_round / cfg.data.num_clients if dp.mode == "central" else 1.0
    eps = epsilon(dp.noise_multiplier, q, rounds, dp.delta)
    return {"mode": dp.mode, "epsilon": eps if math.isfinite(eps) else None, "delta": dp.delta,
            "noise_multiplier": dp.noise_multiplier, "clip_norm": dp.clip_norm, "sampling_rate": q,
            "rounds": rounds}


def central_dp_aggregate(global_state: State, results: list[tuple[State | None, float]], cfg: Config,
                         round_idx: int, server_opt: Any = None) -> tuple[State, dict[str, Any]]:
    """The server round under ``dp.mode=central``: :func:`central_dp_mean` over the usable client updates,
    then the server optimizer (FedAdam/FedYogi, post-processing) if any.

    Clients without an update or with weight 0 add nothing to the sum (they still count in the denominator K);
    non-finite updates are excluded and counted, as in :func:`fedspear.federation.aggregation.aggregate`.

    Returns:
        (new global state, info with ``num_aggregated``, ``num_excluded_nonfinite``, ``num_without_update``,
        ``dp_clipped``, ``dp_mean_update_norm``).
    """
    from fedspear.federation.aggregation import usable_results

    kept, _, without, nonfinite = usable_results(results)  # central DP weighs every kept client the same
    gen = noise_generator(cfg.dp, round_idx)
    new_state, info = central_dp_mean(global_state, kept, cfg.dp, cfg.fl.clients_per_round, gen)
    info.update(num_aggregated=len(kept), num_excluded_nonfinite=nonfinite, num_without_update=without)
    if server_opt is not None:
        new_state = server_opt.step(global_state, new_state)
    return new_state, info
