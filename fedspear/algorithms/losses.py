"""Every training loss of SPEAR and its baselines, as pure tensor functions (docs/algorithms.md).

Inputs are per-token quantities already gathered on the completion positions: ``logp_BT`` is the log-probability
of the sampled (target) token at each of ``T`` positions of ``B`` sequences, ``mask_BT`` is 1.0 on the positions
that count and 0 elsewhere (padding, or positions a term excludes). Every loss returns ``(loss, stats)``: a scalar
tensor that is differentiable in its log-prob / logit inputs, and a NamedTuple of detached 0-d tensors (no device
sync; call ``float()`` to log). Advantages, confidences, old and reference log-probs are treated as constants.
An empty mask gives a loss of 0 that is still part of the graph, so ``backward()`` always works.

Objectives as implemented:

- SFT (wins): ``L_win = -sum_t m_t logp_t / sum_t m_t``, token mean over the micro-batch.
- Unlikelihood (losses): ``u_t = -log(1 - p_t)`` counted where ``p_t > margin``;
  ``L_lose = sum_i c_i sum_t u_it [p_it > margin] m_it / sum_i sum_t m_it``. The denominator counts every penalised
  position, including those below the margin.
- Anchor: ``sum_k mean((theta_k - theta_global_k)^2)``; with ``reduction="sum"`` it is the squared L2 distance that
  FedProx scales by ``mu / 2``.
- GRPO: PPO-clip per token against the sampling-time log-probs, the min of clipped and unclipped for both signs of
  the advantage (the reference takes the max for negative advantages; docs/deviations.md), plus ``beta * k3`` to
  the round-start adapter; token mean within each sequence, then mean over sequences.
- OPSD: ``T^2 * KL(softmax(z_teacher / T) || softmax(z_student / T))`` per position, mean over masked positions.
- RLTF-SD (Song et al. 2026, Alg. 1): ``sd_coeff * L_SD + rl_coeff * (L_RL0 + L_RL1)`` on sequence log-probs
  (sums over completion tokens, as in Alg. 1; the reference uses per-token means). Correct first answers that were
  not revised are counted once (see :func:`rltf_sd_advantages`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from fedspear.algorithms.settings import SpearSettings

# Elements (rows x vocab) per float32 chunk in gather_token_logprobs: 2**26 floats = 256 MiB.
_CHUNK_ELEMENTS = 2**26
# 1 - p is floored at this value in the unlikelihood term, so u <= -log(1e-6) ~= 13.8 and never inf/NaN.
UL_MIN_ONE_MINUS_P = 1e-6
# k3 log-ratios are clamped to +-10 before exp (e^10 ~= 2.2e4): bounded value and gradient for outliers.
K3_MAX_LOG_RATIO = 10.0
# PPO log-ratios are clamped to +-20 before exp so a stale or corrupt old log-prob cannot give inf * A.
PPO_MAX_LOG_RATIO = 20.0


def _masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """``sum(x * mask)`` where masked-out entries are exactly 0 even when ``x`` is inf or NaN there."""
    masked = torch.where(mask > 0, x * mask, torch.zeros((), dtype=x.dtype, device=x.device))
    return masked.sum() if dim is None else masked.sum(dim)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the masked entries (0 when the mask is empty)."""
    return _masked_sum(x, mask) / mask.sum().clamp_min(1)


# --------------------------------------------------------------------------- token log-probs


class _TargetLogProb(torch.autograd.Function):
    """``logits[target] - logsumexp(logits)`` per row, in chunks, saving only the logits and the logsumexp.

    The backward pass rebuilds the softmax chunk by chunk, so no full-vocabulary float32 tensor is kept between
    forward and backward (F.log_softmax / F.cross_entropy keep one).
    """

    @staticmethod
    def forward(ctx, logits_BTV: torch.Tensor, targets_BT: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(logits_BTV.dtype, torch.float32)
        b, t, v = logits_BTV.shape
        rows = max(1, _CHUNK_ELEMENTS // max(1, v))
        logp_BT = torch.empty((b, t), dtype=dtype, device=logits_BTV.device)
        lse_BT = torch.empty((b, t), dtype=dtype, device=logits_BTV.device)
        for i in range(b):
            for s in range(0, t, rows):
                x_RV = logits_BTV[i, s : s + rows].to(dtype)
                lse_R = torch.logsumexp(x_RV, dim=-1)
                tgt_R = x_RV.gather(-1, targets_BT[i, s : s + rows, None]).squeeze(-1)
                logp_BT[i, s : s + rows] = tgt_R - lse_R
                lse_BT[i, s : s + rows] = lse_R
        ctx.save_for_backward(logits_BTV, targets_BT, lse_BT)
        return logp_BT

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_BT: torch.Tensor) -> tuple[torch.Tensor, None]:
        logits_BTV, targets_BT, lse_BT = ctx.saved_tensors
        b, t, v = logits_BTV.shape
        rows = max(1, _CHUNK_ELEMENTS // max(1, v))
        grad_BTV = torch.empty((b, t, v), dtype=logits_BTV.dtype, device=logits_BTV.device)
        for i in range(b):
            for s in range(0, t, rows):
                x_RV = logits_BTV[i, s : s + rows].to(lse_BT.dtype)
                g_R1 = grad_BT[i, s : s + rows, None].to(lse_BT.dtype)
                # d(logp)/d(logits) = onehot(target) - softmax(logits)
                d_RV = (x_RV - lse_BT[i, s : s + rows, None]).exp_().mul_(-g_R1)
                d_RV.scatter_add_(-1, targets_BT[i, s : s + rows, None], g_R1)
                grad_BTV[i, s : s + rows] = d_RV.to(grad_BTV.dtype)
        return grad_BTV, None


def gather_token_logprobs(logits_BTV: torch.Tensor, targets_BT: torch.Tensor) -> torch.Tensor:
    """Log-softmax probability of each target token, without a full-vocabulary log-softmax tensor.

    Computes ``logits[target] - logsumexp(logits)`` in float32 (float64 stays float64) chunk by chunk, so bf16
    logits lose no precision in the normaliser. Slices such as ``logits[:, :-1]`` are read in place (no copy).
    The caller aligns positions (logits at position t predict the token at t + 1) and masks padding.

    Args:
        logits_BTV: logits ``[B, T, V]`` (or ``[T, V]``), any float dtype.
        targets_BT: target token ids ``[B, T]`` (or ``[T]``), every entry a valid id in ``[0, V)``; give padding
            positions any valid id (e.g. the pad id) and mask them out afterwards.

    Returns:
        logp_BT: ``[B, T]`` (or ``[T]``) log-probabilities, float32 (float64 for float64 logits), differentiable
        in ``logits_BTV``.
    """
    if logits_BTV.dim() == 2:
        return gather_token_logprobs(logits_BTV[None], targets_BT[None])[0]
    if logits_BTV.dim() != 3 or targets_BT.shape != logits_BTV.shape[:2]:
        raise ValueError(f"expected logits [B, T, V] and targets [B, T], got {tuple(logits_BTV.shape)} and "
                         f"{tuple(targets_BT.shape)}")
    return _TargetLogProb.apply(logits_BTV, targets_BT.long())


def sequence_logprobs(logp_BT: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
    """Sequence log-probability ``log pi(y | x) = sum_t m_t logp_t`` per sequence: ``[B]``."""
    return _masked_sum(logp_BT, mask_BT, dim=-1)


# --------------------------------------------------------------------------- SPEAR


class SFTStats(NamedTuple):
    """loss: the token-mean NLL; n_tokens: number of counted tokens."""

    loss: torch.Tensor
    n_tokens: torch.Tensor


def sft_loss(logp_BT: torch.Tensor, mask_BT: torch.Tensor) -> tuple[torch.Tensor, SFTStats]:
    """Token-level cross-entropy ``-sum(logp * mask) / sum(mask)``, averaged over all tokens of the micro-batch.

    Args:
        logp_BT: log-probs of the target tokens ``[B, T]``.
        mask_BT: 1.0 on the win completion tokens (plus EOS where the completion ended with it), 0 elsewhere.

    Returns:
        (loss, SFTStats). An empty mask gives 0 (still a graph).
    """
    n_tokens = mask_BT.sum()
    loss = -_masked_sum(logp_BT, mask_BT) / n_tokens.clamp_min(1)
    return loss, SFTStats(loss.detach(), n_tokens.detach())


class UnlikelihoodStats(NamedTuple):
    """loss; n_above: penalised positions with p > margin; n_positions: all penalised positions (the
    denominator); mean_p: mean probability over the penalised positions."""

    loss: torch.Tensor
    n_above: torch.Tensor
    n_positions: torch.Tensor
    mean_p: torch.Tensor


def unlikelihood_loss(
    logp_BT: torch.Tensor, mask_BT: torch.Tensor, confidence_B: torch.Tensor, margin: float
) -> tuple[torch.Tensor, UnlikelihoodStats]:
    """Confidence-weighted unlikelihood on lose traces (docs/algorithms.md, "SPEAR").

    ``u_it = -log(1 - p_it)``, counted only where ``p_it > margin`` and ``mask_it``;
    ``L = sum_i c_i sum_t u_it / sum_i |M_i|`` with ``|M_i| = sum_t mask_it`` (all penalised positions, also those
    below the margin). ``1 - p`` is computed as ``-expm1(logp)`` and floored at ``UL_MIN_ONE_MINUS_P`` (1e-6), so
    ``p -> 1`` (even ``logp >= 0`` from rounding) gives ``u <= 13.8`` with zero gradient in the floored region
    instead of inf/NaN. Below the margin the gradient is exactly zero.

    Args:
        logp_BT: log-probs of the lose completion tokens ``[B, T]``.
        mask_BT: 1.0 on penalised positions (see :func:`fedspear.algorithms.lose_mask.unlikelihood_mask`).
        confidence_B: c_i per trace ``[B]`` (1.0 fixed by revision, 0.5 never fixed).
        margin: the threshold mu on p; 0 penalises every position.

    Returns:
        (loss, UnlikelihoodStats). An empty mask gives 0 (still a graph).
    """
    p_BT = logp_BT.detach().exp()
    above_BT = (p_BT > margin) & (mask_BT > 0)
    one_minus_p_BT = (-torch.expm1(logp_BT)).clamp_min(UL_MIN_ONE_MINUS_P)
    u_BT = -torch.log(one_minus_p_BT)
    weight_BT = confidence_B.detach().to(u_BT.dtype)[:, None] * mask_BT
    n_positions = mask_BT.sum()
    loss = _masked_sum(u_BT, weight_BT * above_BT) / n_positions.clamp_min(1)
    stats = UnlikelihoodStats(loss.detach(), above_BT.sum().to(loss.dtype), n_positions.detach(),
                              _masked_mean(p_BT, mask_BT))
    return loss, stats


class AnchorStats(NamedTuple):
    """loss: the anchor value (mean or sum of squared differences over all tensors)."""

    loss: torch.Tensor


def anchor_loss(
    params: Mapping[str, torch.Tensor], anchor: Mapping[str, torch.Tensor], reduction: str = "mean"
) -> tuple[torch.Tensor, AnchorStats]:
    """L2 pull toward the round-start adapter: ``sum_k mean((theta_k - anchor_k)^2)`` or ``sum_k sum(...)``.

    ``reduction="mean"`` is SPEAR's ``L_anchor`` (scaled by ``lambda_anchor``); ``"sum"`` is the squared distance
    ``||theta - theta_global||^2`` that FedProx scales by ``mu / 2``. Computed in float32; the anchor is a constant.
    Keep the anchor tensors on the parameters' device: ``.to`` is then free.

    Args:
        params: live adapter tensors by name.
        anchor: the global adapter tensors, with at least every key of ``params``.
        reduction: "mean" (per tensor) or "sum".

    Returns:
        (loss, AnchorStats); 0 for an empty ``params``.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    missing = [k for k in params if k not in anchor]
    if missing:
        raise KeyError(f"anchor has no tensor for {missing[:3]} ({len(missing)} missing)")
    terms = []
    for name, theta in params.items():
        ref = anchor[name].detach().to(device=theta.device, dtype=torch.float32)
        sq = (theta.float() - ref).pow(2)
        terms.append(sq.mean() if reduction == "mean" else sq.sum())
    loss = torch.stack(terms).sum() if terms else torch.zeros(())
    return loss, AnchorStats(loss.detach())


class SpearStats(NamedTuple):
    """loss: lambda_win * win + lambda_lose * lose; win / lose: the unweighted terms; the rest as in
    SFTStats / UnlikelihoodStats (zeros when there are no lose traces)."""

    loss: torch.Tensor
    win: torch.Tensor
    lose: torch.Tensor
    n_win_tokens: torch.Tensor
    n_lose_positions: torch.Tensor
    n_above_margin: torch.Tensor
    mean_lose_p: torch.Tensor


def spear_loss(
    win_logp_BT: torch.Tensor,
    win_mask_BT: torch.Tensor,
    lose_logp_BT: torch.Tensor | None,
    lose_mask_BT: torch.Tensor | None,
    lose_conf_B: torch.Tensor | None,
    cfg_spear: SpearSettings,
) -> tuple[torch.Tensor, SpearStats]:
    """SPEAR's micro-step loss ``lambda_win * L_win + lambda_lose * L_lose`` (the caller adds the anchor).

    Args:
        win_logp_BT: log-probs of the win completion tokens ``[B, T]``.
        win_mask_BT: the win token mask (completion plus emitted EOS).
        lose_logp_BT: log-probs of the lose completion tokens ``[B', T']``, or None when there are no losses
            (or for feedback_sft); the three lose arguments are None together.
        lose_mask_BT: the penalised positions of the lose traces.
        lose_conf_B: confidences of the lose traces ``[B']``.
        cfg_spear: ``lambda_win``, ``lambda_lose`` and ``unlikelihood_margin`` are read; the lose term is skipped
            (stats 0) when ``lambda_lose`` is 0.

    Returns:
        (loss, SpearStats).
    """
    win, win_stats = sft_loss(win_logp_BT, win_mask_BT)
    loss = cfg_spear.lambda_win * win
    zero = torch.zeros((), device=win.device)
    lose_stats = UnlikelihoodStats(zero, zero, zero, zero)
    if lose_logp_BT is not None and cfg_spear.lambda_lose > 0:
        if lose_mask_BT is None or lose_conf_B is None:
            raise ValueError("lose_mask_BT and lose_conf_B are required with lose_logp_BT")
        lose, lose_stats = unlikelihood_loss(lose_logp_BT, lose_mask_BT, lose_conf_B, cfg_spear.unlikelihood_margin)
        loss = loss + cfg_spear.lambda_lose * lose
    stats = SpearStats(loss.detach(), win_stats.loss, lose_stats.loss, win_stats.n_tokens, lose_stats.n_positions,
                       lose_stats.n_above, lose_stats.mean_p)
    return loss, stats


# --------------------------------------------------------------------------- GRPO


def group_advantages(rewards_BG: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Group-relative advantages: ``a = r - mean_G(r)``, divided by the unbiased std of the group when ``normalize``
    and ``G > 1``. A constant group gives exactly 0 (no division by zero, no rounding noise).

    Args:
        rewards_BG: rewards of the G samples of each of B prompts ``[B, G]``.
        normalize: divide by the group std.

    Returns:
        adv_BG: ``[B, G]``, float32 (float64 for float64 rewards), no gradient.
    """
    r_BG = rewards_BG.detach().to(torch.promote_types(rewards_BG.dtype, torch.float32))
    adv_BG = r_BG - r_BG.mean(dim=-1, keepdim=True)
    varies_B1 = (r_BG.amax(dim=-1, keepdim=True) - r_BG.amin(dim=-1, keepdim=True)) > 0
    adv_BG = torch.where(varies_B1, adv_BG, torch.zeros_like(adv_BG))
    if normalize and r_BG.shape[-1] > 1:
        std_B1 = r_BG.std(dim=-1, keepdim=True, unbiased=True)
        adv_BG = adv_BG / torch.where(varies_B1, std_B1, torch.ones_like(std_B1))
    return adv_BG


def k3_kl(logp_BT: torch.Tensor, ref_logp_BT: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || ref) per sample: ``exp(d) - d - 1`` with ``d = ref - logp``.

    Unbiased for samples drawn from pi and always >= 0. ``d`` is clamped to ``+-K3_MAX_LOG_RATIO`` (10) before
    ``exp`` so one outlier cannot overflow; beyond the clamp the value is constant and the gradient 0. Works on
    token log-probs ``[B, T]`` or sequence log-probs ``[B]``; the reference log-probs are a constant.

    Returns:
        k3 with the shape of ``logp_BT``.
    """
    d = (ref_logp_BT.detach() - logp_BT).clamp(-K3_MAX_LOG_RATIO, K3_MAX_LOG_RATIO)
    return torch.exp(d) - d - 1


class GRPOStats(NamedTuple):
    """loss; policy: the clipped-surrogate part of the loss; kl: token mean of k3; clip_frac: share of tokens
    where the clipped term is the min (zero gradient); ratio: token mean of pi / pi_old."""

    loss: torch.Tensor
    policy: torch.Tensor
    kl: torch.Tensor
    clip_frac: torch.Tensor
    ratio: torch.Tensor


def _sequence_then_batch_mean(x_BT: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
    """Token mean within each sequence, then mean over the sequences that have at least one token."""
    n_B = mask_BT.sum(-1)
    per_seq_B = _masked_sum(x_BT, mask_BT, dim=-1) / n_B.clamp_min(1)
    return per_seq_B.sum() / (n_B > 0).sum().clamp_min(1)


def grpo_loss(
    logp_BT: torch.Tensor,
    old_logp_BT: torch.Tensor,
    ref_logp_BT: torch.Tensor | None,
    adv_B: torch.Tensor,
    mask_BT: torch.Tensor,
    clip_range: float,
    beta_kl: float,
) -> tuple[torch.Tensor, GRPOStats]:
    """PPO-clip GRPO loss with a k3 KL penalty (docs/algorithms.md, "GRPO").

    Per token: ``ratio = exp(logp - old_logp)`` (log-ratio clamped to +-20),
    ``objective = min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A)`` for both signs of A (as in PPO;
    docs/deviations.md), ``loss_t = -objective + beta * k3(logp, ref)``. The token losses are averaged within each sequence
    and then over sequences (the GRPO paper's normalisation: every sample weighs the same whatever its length;
    sequences with an empty mask are left out).

    Args:
        logp_BT: current log-probs of the sampled tokens ``[B, T]`` (B = prompts x G samples).
        old_logp_BT: log-probs recorded at sampling time ``[B, T]`` (constant).
        ref_logp_BT: log-probs under the round-start global adapter ``[B, T]`` (constant), or None for no KL.
        adv_B: advantage of each sample ``[B]`` (constant), e.g. ``group_advantages(...).reshape(-1)``.
        mask_BT: 1.0 on completion tokens.
        clip_range: epsilon.
        beta_kl: weight of the k3 KL term.

    Returns:
        (loss, GRPOStats).
    """
    log_ratio_BT = (logp_BT - old_logp_BT.detach()).clamp(-PPO_MAX_LOG_RATIO, PPO_MAX_LOG_RATIO)
    ratio_BT = log_ratio_BT.exp()
    adv_B1 = adv_B.detach().to(ratio_BT.dtype)[:, None]
    unclipped_BT = ratio_BT * adv_B1
    clipped_BT = ratio_BT.clamp(1 - clip_range, 1 + clip_range) * adv_B1
    policy_BT = -torch.minimum(unclipped_BT, clipped_BT)
    per_token_BT = policy_BT
    kl_BT = torch.zeros_like(logp_BT)
    if ref_logp_BT is not None and beta_kl != 0:
        kl_BT = k3_kl(logp_BT, ref_logp_BT)
        per_token_BT = policy_BT + beta_kl * kl_BT
    loss = _sequence_then_batch_mean(per_token_BT, mask_BT)
    with torch.no_grad():
        stats = GRPOStats(
            loss.detach(),
            _sequence_then_batch_mean(policy_BT, mask_BT),
            _masked_mean(kl_BT, mask_BT),
            _masked_mean((clipped_BT < unclipped_BT).to(ratio_BT.dtype), mask_BT),
            _masked_mean(ratio_BT, mask_BT),
        )
    return loss, stats


# --------------------------------------------------------------------------- OPSD


class DistillStats(NamedTuple):
    """loss: T^2 * mean KL; kl: mean per-position KL at temperature T (without T^2); n_tokens."""

    loss: torch.Tensor
    kl: torch.Tensor
    n_tokens: torch.Tensor


def distill_kl(
    student_logits_BTV: torch.Tensor, teacher_logits_BTV: torch.Tensor, mask_BT: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, DistillStats]:
    """OPSD's loss: ``T^2 * sum_t m_t KL(softmax(z_T / T) || softmax(z_S / T)) / sum_t m_t`` (forward KL, teacher
    first), over the full vocabulary, computed in float32. The teacher is a constant; teacher entries with
    probability 0 (e.g. logits of -inf) contribute 0.

    Args:
        student_logits_BTV: student logits on the completion positions ``[B, T, V]``.
        teacher_logits_BTV: teacher logits on the same positions ``[B, T, V]``.
        mask_BT: 1.0 on positions that count.
        temperature: T > 0.

    Returns:
        (loss, DistillStats). An empty mask gives 0 (still a graph).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if student_logits_BTV.shape != teacher_logits_BTV.shape:
        raise ValueError(f"student {tuple(student_logits_BTV.shape)} and teacher "
                         f"{tuple(teacher_logits_BTV.shape)} logits differ in shape")
    dtype = torch.promote_types(student_logits_BTV.dtype, torch.float32)
    log_s_BTV = F.log_softmax(student_logits_BTV.to(dtype) / temperature, dim=-1)
    with torch.no_grad():
        log_t_BTV = F.log_softmax(teacher_logits_BTV.detach().to(dtype) / temperature, dim=-1)
        p_t_BTV = log_t_BTV.exp()
    terms_BTV = torch.where(p_t_BTV > 0, p_t_BTV * (log_t_BTV - log_s_BTV), torch.zeros((), dtype=dtype,
                                                                                         device=p_t_BTV.device))
    kl_BT = terms_BTV.sum(-1)
    kl = _masked_mean(kl_BT, mask_BT)
    loss = temperature**2 * kl
    return loss, DistillStats(loss.detach(), kl.detach(), mask_BT.sum().detach())


# --------------------------------------------------------------------------- RLTF-SD


class RLTFSDAdvantages(NamedTuple):
    """Per-sample advantages ``[B, N]``: sd (A_sd), rl0 (A_RL0), rl1 (A_RL1)."""

    sd: torch.Tensor
    rl0: torch.Tensor
    rl1: torch.Tensor


def rltf_sd_advantages(
    r0_BN: torch.Tensor, r1_BN: torch.Tensor, gamma: float, revised_BN: torch.Tensor | None = None
) -> RLTFSDAdvantages:
    """RLTF-SD advantages per group of N samples of one prompt (Song et al. 2026, Alg. 1), with our fix for
    early termination.

    For a revised sample: ``R = r0 + gamma * r1``, ``A_sd = r1 - mean_N(r0)``, ``A_RL1 = r1 - mean(r1 over the
    group's revised samples)``. A sample that was not revised (a correct first answer under early termination)
    has ``R = r0`` and ``A_sd = A_RL1 = 0``; the caller masks it out of the SD and RL1 terms with ``revised_BN``.
    ``A_RL0 = R - mean_N(R)`` for every sample. The reference instead sets ``r1 = r0`` for those samples, which
    counts a correct first answer twice (``R = (1 + gamma) * r0``) and pushes it again through SD and RL1.

    Args:
        r0_BN: first-answer rewards ``[B, N]``.
        r1_BN: revision rewards ``[B, N]`` (any value where not revised).
        gamma: weight of the revision reward in R.
        revised_BN: True where a revision was sampled; None = every sample was revised (the paper's setting).

    Returns:
        RLTFSDAdvantages of ``[B, N]`` float tensors (no gradient).
    """
    dtype = torch.promote_types(r0_BN.dtype, torch.float32)
    r0, r1 = r0_BN.detach().to(dtype), r1_BN.detach().to(dtype)
    rev = torch.ones_like(r0, dtype=torch.bool) if revised_BN is None else revised_BN.to(torch.bool)
    zero = torch.zeros((), dtype=dtype, device=r0.device)
    r1 = torch.where(rev, r1, zero)
    ret = r0 + gamma * r1
    a_rl0 = ret - ret.mean(dim=-1, keepdim=True)
    a_sd = torch.where(rev, r1 - r0.mean(dim=-1, keepdim=True), zero)
    n_rev = rev.sum(dim=-1, keepdim=True).clamp_min(1)
    a_rl1 = torch.where(rev, r1 - r1.sum(dim=-1, keepdim=True) / n_rev, zero)
    return RLTFSDAdvantages(a_sd, a_rl0, a_rl1)


class RLTFSDStats(NamedTuple):
    """loss; sd, rl0, rl1: the three unweighted terms; kl0, kl1: mean sequence k3 of the RL0 / RL1 samples."""

    loss: torch.Tensor
    sd: torch.Tensor
    rl0: torch.Tensor
    rl1: torch.Tensor
    kl0: torch.Tensor
    kl1: torch.Tensor


def rltf_sd_loss(
    sd_logp_B: torch.Tensor,
    rl0_logp_B: torch.Tensor,
    rl1_logp_B: torch.Tensor,
    rl0_ref_B: torch.Tensor,
    rl1_ref_B: torch.Tensor,
    adv_sd_B: torch.Tensor,
    adv_rl0_B: torch.Tensor,
    adv_rl1_B: torch.Tensor,
    sd_mask_B: torch.Tensor,
    rl1_mask_B: torch.Tensor,
    sd_coeff: float,
    rl_coeff: float,
    beta_kl: float,
) -> tuple[torch.Tensor, RLTFSDStats]:
    """RLTF-SD loss ``sd_coeff * L_SD + rl_coeff * (L_RL0 + L_RL1)`` on sequence log-probs.

    All log-probs are sums over completion tokens (:func:`sequence_logprobs`), as in Alg. 1 of the paper (the
    reference uses per-token means); the KL is the k3 estimator on sequence log-probs.

    - ``L_SD = -mean_sd(A_sd * log pi(y1 | x0))``: the revision scored under the plain prompt.
    - ``L_RL0 = mean(-A_RL0 * log pi(y0 | x0) + beta * k3(y0))`` over all samples.
    - ``L_RL1 = mean_rl1(-A_RL1 * log pi(y1 | x1) + beta * k3(y1))``.

    ``mean_sd`` / ``mean_rl1`` average over the samples in ``sd_mask_B`` / ``rl1_mask_B`` (the revised ones; a term
    with no such sample is 0).

    Args:
        sd_logp_B: log pi(y1 | x0) ``[B]``.
        rl0_logp_B: log pi(y0 | x0) ``[B]``.
        rl1_logp_B: log pi(y1 | x1) ``[B]``.
        rl0_ref_B: the same as rl0_logp_B under the round-start adapter (constant).
        rl1_ref_B: the same as rl1_logp_B under the round-start adapter (constant).
        adv_sd_B: A_sd ``[B]`` (constant).
        adv_rl0_B: A_RL0 ``[B]`` (constant).
        adv_rl1_B: A_RL1 ``[B]`` (constant).
        sd_mask_B: 1.0 for samples in the SD term.
        rl1_mask_B: 1.0 for samples in the RL1 term.
        sd_coeff: weight of L_SD.
        rl_coeff: weight of L_RL0 + L_RL1.
        beta_kl: weight of k3.

    Returns:
        (loss, RLTFSDStats).
    """
    sd_mask_B, rl1_mask_B = sd_mask_B.to(sd_logp_B.dtype), rl1_mask_B.to(rl1_logp_B.dtype)
    sd = _masked_mean(-adv_sd_B.detach() * sd_logp_B, sd_mask_B)
    kl0_B = k3_kl(rl0_logp_B, rl0_ref_B)
    kl1_B = k3_kl(rl1_logp_B, rl1_ref_B)
    rl0 = (-adv_rl0_B.detach() * rl0_logp_B + beta_kl * kl0_B).sum() / max(1, rl0_logp_B.numel())
    rl1 = _masked_mean(-adv_rl1_B.detach() * rl1_logp_B + beta_kl * kl1_B, rl1_mask_B)
    loss = sd_coeff * sd + rl_coeff * (rl0 + rl1)
    stats = RLTFSDStats(loss.detach(), sd.detach(), rl0.detach(), rl1.detach(), kl0_B.detach().sum() / max(1, kl0_B.numel()),
                        _masked_mean(kl1_B.detach(), rl1_mask_B))
    return loss, stats

