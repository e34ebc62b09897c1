"""Differential privacy of client updates: DP-FedAvg (central) and its local variant, with RDP accounting.

What epsilon covers, what it does not, and the neighbouring relations are in docs/privacy-and-robustness.md.

Central (``dp.mode=central``), DP-FedAvg (McMahan, Ramage, Talwar, Zhang 2018, "Learning Differentially Private
Recurrent Language Models", ICLR, Algorithm 1): each round every client joins independently with probability
``q = min(1, fl.clients_per_round / data.num_clients)`` (Poisson sampling, :func:`sample_round`, drawn from
randomness the run folder does not hold). Each sampled client's update ``delta_i = adapter_i - global`` (the whole
adapter as one vector) is clipped to L2 norm ``C``; the server sums the clipped updates with weight 1 each, adds
Gaussian noise ``N(0, (sigma * C)^2 I)`` and divides by the fixed expected number of clients ``qN =
fl.clients_per_round``, not by the realised count (the paper's fixed-denominator estimator). Adding or removing
one client's data changes the sum by at most C, so a round is a Poisson-subsampled Gaussian mechanism of noise
multiplier sigma, also when no client was sampled (the noise is still added). Clients' wins-based weights are not
used: they would make the sensitivity data-dependent.

Local (``dp.mode=local``): every sampled client releases ``global + clip(delta, C) + N(0, (sigma * C)^2 I)``
(:func:`release_local_update`), also when it has nothing to train on (a zero update plus noise), with weight 1
and no metrics, so the server sees only noised updates and averages them uniformly. Under replacement of one
client's data its release moves by up to 2C, so each participation is a Gaussian mechanism of noise multiplier
sigma / 2. The sample is not secret (the server knows whom it asked), so there is no amplification: a client's
epsilon composes the rounds it took part in.

The budget (epsilon at ``dp.delta``) comes from Google's ``dp-accounting`` RDP accountant (Mironov 2017,
"Renyi Differential Privacy"; Mironov, Talwar, Zhang 2019 for the sampled Gaussian).
"""

from __future__ import annotations

import functools
import math
import secrets
from collections.abc import Iterable
from typing import Any

import torch

from fedspear.config import MAX_NOISE_MULTIPLIER, Config, DPConfig
from fedspear.models import is_finite_state

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
    """The noise (and secret client sample) RNG: fresh OS randomness, or seeded by (``dp.seed``, ``*stream``) when
    ``dp.seed`` is set (reproducible, so then neither the noise nor the sample is secret)."""
    gen = torch.Generator()
    if dp_cfg.seed is None:
        gen.manual_seed(secrets.randbits(63))
    else:
        gen.manual_seed(hash((dp_cfg.seed, *stream)) & (2**63 - 1))
    return gen


# The client sample's stream of noise_generator: (round, SAMPLE_STREAM); the noise uses (round) and (round, client).
SAMPLE_STREAM = -1


def sampling_rate(cfg: Config) -> float:
    """q = min(1, ``fl.clients_per_round / data.num_clients``): each client's chance to take part in a round."""
    return min(1.0, cfg.fl.clients_per_round / cfg.data.num_clients)


def poisson_sample(num_clients: int, rate: float, generator: torch.Generator) -> list[int]:
    """Poisson sampling: each of ``num_clients`` clients is kept independently with probability ``rate``.

    Returns:
        The kept client ids, ascending; may be empty, and its size varies (Binomial(N, rate)).
    """
    keep = torch.rand(num_clients, generator=generator, dtype=torch.float64) < rate
    return [int(i) for i in torch.nonzero(keep).flatten()]


def sample_round(cfg: Config, round_idx: int) -> list[int]:
    """The clients of one round, the one sampling rule of every front end (``FederatedServer.plan_round``).

    Under ``dp.mode=central``: Poisson sampling with q = :func:`sampling_rate` (McMahan et al. 2018, Algorithm
    1), from fresh OS randomness (or ``dp.seed`` when set), so the run folder does not reveal the sample and the
    accountant's amplification by sampling holds. Otherwise exactly ``fl.clients_per_round`` clients without
    replacement, a function of (``data.seed``, round) (:func:`fedspear.sampling.sample_clients`).
    """
    from fedspear.sampling import sample_clients

    if cfg.dp.mode != "central":
        return sample_clients(cfg.data.num_clients, cfg.fl.clients_per_round, cfg.data.seed, round_idx)
    return poisson_sample(cfg.data.num_clients, sampling_rate(cfg),
                          noise_generator(cfg.dp, round_idx, SAMPLE_STREAM))


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
        expected_clients: K = qN, the fixed denominator: the expected number of Poisson-sampled clients
            (``fl.clients_per_round``), not the realised count.
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


def local_dp_state(state: State | None, global_state: State, dp_cfg: DPConfig, generator: torch.Generator) -> State:
    """A client's locally privatized adapter: ``global + clip(state - global, C) + N(0, (sigma C)^2 I)``.

    ``state`` None (the client has nothing to train on) is a zero update: ``global + N(0, (sigma C)^2 I)``.

    Returns:
        New tensors in ``global_state``'s dtypes.
    """
    delta = _delta(state, global_state) if state is not None else {k: torch.zeros(t.shape) for k, t in
                                                                     global_state.items()}
    clipped, _ = clip_update(delta, dp_cfg.clip_norm)
    noised = add_gaussian_noise(clipped, dp_cfg.noise_multiplier * dp_cfg.clip_norm, generator)
    return {k: (t.to("cpu", torch.float32) + noised[k]).to(t.dtype) for k, t in global_state.items()}


def release_local_update(result: Any, global_state: State, cfg: Config, round_idx: int, client_id: int) -> Any:
    """What a client may release under ``dp.mode=local``: called by every client path at the end of its update
    (the simulator, both Flower ClientApps, the served federation) before anything leaves the client.

    The result's adapter becomes :func:`local_dp_state` (a client without an update releases ``global`` plus
    noise), its weight 1 (uniform aggregation) and its metrics empty: wins, losses, norms and timings are not
    covered by the noise, so they stay on the client. Other modes return ``result`` unchanged.

    Args:
        result: a :class:`~fedspear.algorithms.base.LocalUpdateResult` (changed in place and returned).
        global_state: the round-start global adapter the client trained from.
        cfg: the run config (``dp``).
        round_idx: the round (noise stream).
        client_id: the client (noise stream).
    """
    if cfg.dp.mode != "local":
        return result
    gen = noise_generator(cfg.dp, round_idx, client_id)
    result.adapter = local_dp_state(result.adapter, global_state, cfg.dp, gen)
    result.weight = 1.0
    result.metrics = {}
    return result


@functools.lru_cache(maxsize=4096)
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


def local_epsilons(cfg: Config, participations: dict[int, int]) -> dict[int, float]:
    """Each client's epsilon under ``dp.mode=local``: its participations composed, no amplification.

    One release has sensitivity 2C under replacement of the client's data and noise std sigma * C, so each
    participation is a Gaussian mechanism of noise multiplier sigma / 2 (:func:`epsilon` with q = 1).

    Args:
        cfg: the run config (``dp``).
        participations: client id -> rounds it took part in.

    Returns:
        client id -> epsilon at ``dp.delta`` (inf without noise).
    """
    dp = cfg.dp
    return {cid: epsilon(dp.noise_multiplier / 2, 1.0, n, dp.delta) for cid, n in participations.items()}


def count_participations(rows: Iterable[dict[str, Any]]) -> dict[int, int]:
    """client id -> rounds in which it was selected, from metrics rows' ``selected_clients`` (local DP keeps them)."""
    counts: dict[int, int] = {}
    for row in rows:
        for cid in row.get("selected_clients") or []:
            counts[int(cid)] = counts.get(int(cid), 0) + 1
    return counts


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no inf


def budget(cfg: Config, rounds: int, participations: dict[int, int] | None = None) -> dict[str, Any]:
    """The privacy spent after ``rounds`` rounds of ``cfg``: the metrics row's ``privacy`` entry.

    Central: ``rounds`` Poisson-subsampled Gaussian mechanisms (q = :func:`sampling_rate`), for adding or removing
    one client's data. Local: :func:`local_epsilons` of ``participations`` (client id -> rounds taken part in),
    for replacing one client's data; ``epsilon`` is the largest (0 before any participation).

    Returns:
        ``{"mode", "epsilon", "delta", "noise_multiplier", "clip_norm", "sampling_rate", "rounds", "neighbouring",
        "seeded"}``, plus ``sampling`` (central) or ``sensitivity``, ``local_epsilon_max`` and ``local_epsilon``
        ({client id as str: epsilon}) (local); an epsilon is None (JSON has no inf) when sigma is 0.
    """
    dp = cfg.dp
    out: dict[str, Any] = {"mode": dp.mode, "delta": dp.delta, "noise_multiplier": dp.noise_multiplier,
                           "clip_norm": dp.clip_norm, "rounds": rounds, "seeded": dp.seed is not None}
    if dp.mode == "central":
        q = sampling_rate(cfg)
        out.update(epsilon=_finite(epsilon(dp.noise_multiplier, q, rounds, dp.delta)), sampling_rate=q,
                   sampling="poisson", neighbouring="add or remove one client's data")
        return out
    eps = local_epsilons(cfg, participations or {})
    worst = _finite(max(eps.values(), default=0.0))
    out.update(epsilon=worst, sampling_rate=1.0, neighbouring="replace one client's data",
               sensitivity=2 * dp.clip_norm, local_epsilon_max=worst,
               local_epsilon={str(cid): _finite(e) for cid, e in sorted(eps.items())})
    return out


def coverage(mode: str, seeded: bool = False) -> tuple[str, str]:
    """(what epsilon covers, what the run folder and trackers hold that it does not cover) for the report.

    The full statement is docs/privacy-and-robustness.md, section "What epsilon covers".
    """
    if mode == "central":
        covered = ("the sequence of global adapter updates (noised sums of clipped client updates), and what is "
                   "computed from them alone (saved adapters, eval figures), for adding or removing one client's "
                   "whole data; clients are Poisson-sampled from randomness the run folder does not hold")
        uncovered = ("the metrics rows' round totals (aggregate: wins, losses, prompts, tokens, timings), num_selected "
                     "and the aggregation counts (num_aggregated, dp_clipped, failures), the trackers' copies of them, "
                     "the report's totals, console logs, data_stats.json (client sizes) and config.yaml")
    else:
        covered = ("each client's released adapter updates (clipped and noised on the client, one per round it "
                   "took part in), for replacing that client's data; the largest per-client epsilon is shown")
        uncovered = ("which clients were selected and whether each replied or failed (selected_clients, failures, "
                     "timings), the served federation's interface figures, console logs and config.yaml")
    if seeded:
        covered += "; but dp.seed is set: config.yaml reproduces the noise and the sample, so nothing is covered"
    return covered, uncovered


def usable_results(results: list[tuple[State | None, float]]
                   ) -> tuple[list[State], list[float], int, int]:
    """Split client results into the usable ones and the counts of the rest.

    The one filter of both server aggregations: :func:`fedspear.federation.aggregation.aggregate` and
    :func:`central_dp_aggregate` (defined here, below the federation layer that imports both).

    Returns:
        (kept states, their weights, number without an update (None state or weight 0), number excluded as
        non-finite (NaN/inf weight or tensor)).
    """
    kept_states: list[State] = []
    kept_weights: list[float] = []
    num_nonfinite = num_without_update = 0
    for state, weight in results:
        if state is None or weight == 0:
            num_without_update += 1
        elif not math.isfinite(weight) or not is_finite_state(state):
            num_nonfinite += 1
        else:
            kept_states.append(state)
            kept_weights.append(float(weight))
    return kept_states, kept_weights, num_without_update, num_nonfinite


def central_dp_aggregate(global_state: State, results: list[tuple[State | None, float]], cfg: Config,
                         round_idx: int, server_opt: Any = None) -> tuple[State, dict[str, Any]]:
    """The server round under ``dp.mode=central``: :func:`central_dp_mean` over the usable client updates,
    then the server optimizer (FedAdam/FedYogi, post-processing) if any.

    Every round runs it, also one where no client was sampled or none succeeded (noise only): each round is one
    invocation of the mechanism the accountant counts. Clients without an update or with weight 0 add nothing to
    the sum; the denominator is always qN = ``fl.clients_per_round``. Non-finite updates are excluded and counted,
    as in :func:`fedspear.federation.aggregation.aggregate`.

    Returns:
        (new global state, info with ``num_aggregated``, ``num_excluded_nonfinite``, ``num_without_update`` and
        ``dp_clipped``; the clients' pre-clip norms are not reported).
    """
    kept, _, without, nonfinite = usable_results(results)  # central DP weighs every kept client the same
    gen = noise_generator(cfg.dp, round_idx)
    new_state, info = central_dp_mean(global_state, kept, cfg.dp, cfg.fl.clients_per_round, gen)
    info.pop("dp_mean_update_norm")  # raw per-client figures the noise does not cover
    info.update(num_aggregated=len(kept), num_excluded_nonfinite=nonfinite, num_without_update=without)
    if server_opt is not None:
        new_state = server_opt.step(global_state, new_state)
    return new_state, info
