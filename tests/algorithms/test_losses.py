"""Hand-computed checks of every loss in fedspear.algorithms.losses (arithmetic in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from fedspear.algorithms import losses
from fedspear.algorithms.losses import (
    anchor_loss,
    distill_kl,
    gather_token_logprobs,
    group_advantages,
    grpo_loss,
    k3_kl,
    rltf_sd_advantages,
    rltf_sd_loss,
    sequence_logprobs,
    sft_loss,
    spear_loss,
    unlikelihood_loss,
)
from fedspear.algorithms.settings import SpearSettings

LN2 = math.log(2.0)


def t(values, requires_grad: bool = False, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype, requires_grad=requires_grad)


def close(actual, expected, tol: float = 1e-5) -> None:
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float64),
                               torch.as_tensor(expected, dtype=torch.float64), rtol=tol, atol=tol)


# --------------------------------------------------------------------------- gather_token_logprobs


def test_gather_token_logprobs_by_hand():
    # Row 0: logits [0, ln 3] -> softmax [1/4, 3/4]; target 1 -> ln 0.75, target 0 -> ln 0.25.
    logits = t([[[0.0, math.log(3.0)], [0.0, math.log(3.0)]]])
    logp = gather_token_logprobs(logits, torch.tensor([[1, 0]]))
    close(logp, [[math.log(0.75), math.log(0.25)]])
    assert logp.dtype == torch.float32


@pytest.mark.parametrize("chunk", [2**26, 7])  # 7 elements -> 1 row per chunk with V = 11: exercises the loop
def test_gather_token_logprobs_matches_log_softmax(monkeypatch, chunk):
    monkeypatch.setattr(losses, "_CHUNK_ELEMENTS", chunk)
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 6, 11, generator=g, dtype=torch.float64) * 4).requires_grad_(True)
    targets = torch.randint(0, 11, (3, 5), generator=g)
    sliced = logits[:, :-1]  # non-contiguous slice, as callers pass it
    ref = torch.log_softmax(sliced, -1).gather(-1, targets[..., None]).squeeze(-1)
    got = gather_token_logprobs(sliced, targets)
    close(got, ref, 1e-12)
    weights = torch.randn(3, 5, generator=g, dtype=torch.float64)
    (grad_ref,) = torch.autograd.grad((ref * weights).sum(), logits)
    (grad_got,) = torch.autograd.grad((got * weights).sum(), logits)
    close(grad_got, grad_ref, 1e-12)


def test_gather_token_logprobs_gradcheck(monkeypatch):
    monkeypatch.setattr(losses, "_CHUNK_ELEMENTS", 10)  # 2 rows per chunk with V = 5
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 5, (2, 3), generator=g)
    assert torch.autograd.gradcheck(lambda x: gather_token_logprobs(x, targets), (logits,))


def test_gather_token_logprobs_bf16_close_to_float64():
    g = torch.Generator().manual_seed(2)
    logits_bf16 = (torch.randn(2, 8, 5000, generator=g) * 5).to(torch.bfloat16).requires_grad_(True)
    targets = torch.randint(0, 5000, (2, 8), generator=g)
    ref = torch.log_softmax(logits_bf16.detach().double(), -1).gather(-1, targets[..., None]).squeeze(-1)
    got = gather_token_logprobs(logits_bf16, targets)
    assert got.dtype == torch.float32
    # float32 arithmetic on the exact bf16 values: error ~1e-6, whereas a bf16 log-softmax is off by ~0.05.
    assert (got.double() - ref).abs().max() < 1e-4
    bf16_naive = torch.log_softmax(logits_bf16.detach(), -1).gather(-1, targets[..., None]).squeeze(-1)
    assert (bf16_naive.double() - ref).abs().max() > 1e-3  # the precision this function exists to keep
    got.sum().backward()
    assert logits_bf16.grad.dtype == torch.bfloat16 and torch.isfinite(logits_bf16.grad.float()).all()


def test_gather_token_logprobs_2d_and_inference_mode():
    logits = t([[0.0, math.log(3.0)]])  # [T=1, V=2]
    with torch.inference_mode():
        logp = gather_token_logprobs(logits, torch.tensor([1]))
    close(logp, [math.log(0.75)])
    with pytest.raises(ValueError):
        gather_token_logprobs(torch.zeros(2, 3, 4), torch.zeros(2, 2, dtype=torch.long))


def test_sequence_logprobs_sums_masked_tokens():
    # [ln .5 + ln .25, ln .5] with the -inf padding ignored -> [ln(1/8), ln(1/2)]
    logp = t([[math.log(0.5), math.log(0.25)], [float("-inf"), math.log(0.5)]])
    close(sequence_logprobs(logp, t([[1.0, 1.0], [0.0, 1.0]])), [math.log(0.125), math.log(0.5)])


# --------------------------------------------------------------------------- SFT and unlikelihood


def test_sft_loss_token_mean_over_batch():
    # counted tokens: ln .5, ln .25 (seq 0) and ln .125 (seq 1); -inf padding is ignored.
    # loss = -(ln .5 + ln .25 + ln .125) / 3 = (1 + 2 + 3) ln 2 / 3 = 2 ln 2 = 1.386294
    logp = t([[math.log(0.5), math.log(0.25)], [math.log(0.125), float("-inf")]], requires_grad=True)
    mask = t([[1.0, 1.0], [1.0, 0.0]])
    loss, stats = sft_loss(logp, mask)
    close(loss, 2 * LN2)
    close(stats.n_tokens, 3.0)
    loss.backward()
    close(logp.grad, [[-1 / 3, -1 / 3], [-1 / 3, 0.0]])  # d(-mean)/dlogp = -1/3 on counted tokens


def test_sft_loss_empty_mask_is_zero_with_graph():
    logp = t([[-1.0, -2.0]], requires_grad=True)
    loss, stats = sft_loss(logp, torch.zeros(1, 2))
    assert loss.requires_grad and float(stats.loss) == 0.0 and float(stats.n_tokens) == 0.0
    loss.backward()
    close(logp.grad, [[0.0, 0.0]])


def _ul_inputs():
    # trace 0: p = [.5, .2, .9], last position masked, c = 1.0
    # trace 1: p = [.75, .4, .1], all penalised, c = 0.5
    p = t([[0.5, 0.2, 0.9], [0.75, 0.4, 0.1]])
    return p.log().requires_grad_(True), t([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]), t([1.0, 0.5])


def test_unlikelihood_loss_by_hand():
    logp, mask, conf = _ul_inputs()
    loss, stats = unlikelihood_loss(logp, mask, conf, margin=0.3)
    # above the margin and masked: .5 (trace 0), .75 and .4 (trace 1); .2 and .1 are below, .9 is masked.
    # u = -ln(1 - p): -ln .5 = 0.693147, -ln .25 = 1.386294, -ln .6 = 0.510826
    # numerator = 1.0 * 0.693147 + 0.5 * (1.386294 + 0.510826) = 1.641707
    # denominator = |M_0| + |M_1| = 2 + 3 = 5 (every penalised position, not just those above the margin)
    close(loss, (math.log(2) + 0.5 * (math.log(4) - math.log(0.6))) / 5)
    close(loss, 0.3283414)
    close(stats.n_above, 3.0)
    close(stats.n_positions, 5.0)
    close(stats.mean_p, (0.5 + 0.2 + 0.75 + 0.4 + 0.1) / 5)  # 0.39
    loss.backward()
    # du/dlogp = p / (1 - p); times c / 5:  .5 -> 1 * 1 / 5 = 0.2;  .75 -> 0.5 * 3 / 5 = 0.3;
    # .4 -> 0.5 * (2/3) / 5 = 0.0666667. Below the margin and masked: exactly 0.
    close(logp.grad, [[0.2, 0.0, 0.0], [0.3, 0.5 * (0.4 / 0.6) / 5, 0.0]])


def test_unlikelihood_zero_margin_counts_everything():
    logp, mask, conf = _ul_inputs()
    loss, stats = unlikelihood_loss(logp, mask, conf, margin=0.0)
    # adds -ln .8 = 0.223144 (c = 1) and 0.5 * -ln .9 = 0.052680 to the numerator 1.641707 -> 1.917531 / 5
    close(loss, (1.641707 - math.log(0.8) - 0.5 * math.log(0.9)) / 5)
    close(stats.n_above, 5.0)


def test_unlikelihood_safe_when_p_is_one():
    # logp = 0 (p = 1) and a rounding artefact logp > 0 must give a finite, capped penalty and no NaN.
    logp = t([[0.0, 1e-7, -1e-3, float("-inf")]], requires_grad=True)
    mask = t([[1.0, 1.0, 1.0, 0.0]])
    loss, _ = unlikelihood_loss(logp, mask, t([1.0]), margin=0.3)
    # 1 - p floored at 1e-6: u = -ln 1e-6 = 13.815511 for the first two; third: 1 - p = 1 - e^-0.001 = 9.995e-4
    expected = (2 * -math.log(1e-6) - math.log(-math.expm1(-1e-3))) / 3
    close(loss, expected, 1e-4)
    loss.backward()
    assert torch.isfinite(logp.grad).all()
    # floored positions have zero gradient; the third p/(1-p)/3 = 0.999/9.995e-4/3 = 333.17
    close(logp.grad[0, :2], [0.0, 0.0])
    close(logp.grad[0, 2], math.exp(-1e-3) / -math.expm1(-1e-3) / 3, 1e-3)


def test_unlikelihood_empty_mask():
    logp = t([[-0.1]], requires_grad=True)
    loss, stats = unlikelihood_loss(logp, torch.zeros(1, 1), t([1.0]), margin=0.3)
    assert float(stats.loss) == 0.0 and loss.requires_grad and float(stats.n_positions) == 0.0
    loss.backward()


def test_anchor_loss_mean_and_sum():
    theta = {"a": t([1.0, 2.0], requires_grad=True), "b": t([[0.0, 0.0], [0.0, 0.0]], requires_grad=True)}
    anchor = {"a": t([0.0, 0.0]), "b": t([[1.0, 1.0], [1.0, 3.0]]), "unused": t([5.0])}
    # mean: a -> (1 + 4) / 2 = 2.5; b -> (1 + 1 + 1 + 9) / 4 = 3.0; total 5.5
    loss, stats = anchor_loss(theta, anchor)
    close(loss, 5.5)
    close(stats.loss, 5.5)
    loss.backward()
    close(theta["a"].grad, [1.0, 2.0])  # 2 (theta - anchor) / 2
    close(theta["b"].grad, [[-0.5, -0.5], [-0.5, -1.5]])  # 2 (theta - anchor) / 4
    # sum: 5 + 12 = 17 (FedProx multiplies this by mu / 2)
    loss_sum, _ = anchor_loss(theta, anchor, reduction="sum")
    close(loss_sum, 17.0)


def test_anchor_loss_errors_and_empty():
    with pytest.raises(KeyError):
        anchor_loss({"a": t([1.0])}, {})
    with pytest.raises(ValueError):
        anchor_loss({"a": t([1.0])}, {"a": t([1.0])}, reduction="max")
    assert float(anchor_loss({}, {})[0]) == 0.0


def test_spear_loss_combines_terms():
    win_logp = t([[math.log(0.5), math.log(0.25)]], requires_grad=True)
    win_mask = t([[1.0, 1.0]])
    lose_logp, lose_mask, conf = _ul_inputs()
    cfg = SpearSettings(lambda_win=1.0, lambda_lose=0.1, unlikelihood_margin=0.3)
    loss, stats = spear_loss(win_logp, win_mask, lose_logp, lose_mask, conf, cfg)
    # L_win = (ln 2 + 2 ln 2) / 2 = 1.5 ln 2 = 1.039721; L_lose = 0.3283414 (see above)
    # L = 1.0 * 1.039721 + 0.1 * 0.3283414 = 1.072555
    close(stats.win, 1.5 * LN2)
    close(stats.lose, 0.3283414)
    close(loss, 1.5 * LN2 + 0.03283414)
    close(stats.n_win_tokens, 2.0)
    close(stats.n_above_margin, 3.0)
    loss.backward()
    close(lose_logp.grad[1, 0], 0.1 * 0.3)  # lambda_lose times the unlikelihood gradient above
    # feedback_sft: no lose traces, only the win term
    loss_sft, stats_sft = spear_loss(win_logp, win_mask, None, None, None, cfg)
    close(loss_sft, 1.5 * LN2)
    assert float(stats_sft.lose) == 0.0


# --------------------------------------------------------------------------- GRPO


def test_group_advantages_by_hand():
    rewards = t([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.3, 0.3, 0.3, 0.3], [1.0, 0.0, 0.0, 0.0]])
    adv = group_advantages(rewards, normalize=True)
    # group 0: mean .5 -> [.5, -.5, -.5, .5]; unbiased std = sqrt(4 * .25 / 3) = 0.577350 -> +-0.866025
    close(adv[0], [0.866025, -0.866025, -0.866025, 0.866025])
    # constant groups -> exactly 0 (also 0.3, whose float mean is not exactly 0.3)
    assert adv[1].eq(0).all() and adv[2].eq(0).all()
    # group 3: mean .25 -> [.75, -.25, -.25, -.25]; std = sqrt((.5625 + 3 * .0625) / 3) = 0.5 -> [1.5, -.5, -.5, -.5]
    close(adv[3], [1.5, -0.5, -0.5, -0.5])
    close(group_advantages(rewards, normalize=False)[3], [0.75, -0.25, -0.25, -0.25])
    # G = 2, mixed: [.5, -.5] / std sqrt(.5) = +-0.707107 (the reference's value)
    close(group_advantages(t([[1.0, 0.0]]), normalize=True), [[0.707107, -0.707107]])
    # G = 1: always 0
    close(group_advantages(t([[1.0], [0.0]]), normalize=True), [[0.0], [0.0]])


def test_k3_kl_by_hand():
    logp = t([math.log(0.5), math.log(0.5), 0.0], requires_grad=True)
    ref = t([math.log(0.25), math.log(0.5), 50.0])
    k3 = k3_kl(logp, ref)
    # d = ln .25 - ln .5 = -ln 2: e^d - d - 1 = 0.5 + 0.693147 - 1 = 0.193147
    # d = 0: 1 - 0 - 1 = 0;  d = 50 clamped to 10: e^10 - 11 = 22015.465795
    close(k3, [0.5 + LN2 - 1, 0.0, math.exp(10) - 11], 1e-6)
    k3.sum().backward()
    # dk3/dlogp = 1 - e^d: 1 - .5 = .5; 1 - 1 = 0; clamped -> 0
    close(logp.grad, [0.5, 0.0, 0.0])


def test_grpo_clipping_cases():
    eps = 0.2
    # one token per sequence; logp - old = ln(ratio)
    #   0: A = +1, ratio 1.5 > 1.2 -> min(1.5, 1.2) = 1.2 clipped   -> loss -1.2, grad 0
    #   1: A = -1, ratio 0.5 < 0.8 -> min(-0.5, -0.8) = -0.8 clipped -> loss  0.8, grad 0
    #   2: A = -1, ratio 1.5 > 1.2 -> min(-1.5, -1.2) = -1.5 NOT clipped -> loss 1.5, dloss/dlogp = -A ratio = 1.5
    #   3: A = +1, ratio 0.5 < 0.8 -> min(0.5, 0.8) = 0.5 NOT clipped  -> loss -0.5, dloss/dlogp = -0.5
    ratios = [1.5, 0.5, 1.5, 0.5]
    old = t([[-1.0], [-1.0], [-1.0], [-1.0]])
    logp = (old + t([[math.log(r)] for r in ratios])).requires_grad_(True)
    adv = t([1.0, -1.0, -1.0, 1.0])
    loss, stats = grpo_loss(logp, old, None, adv, torch.ones(4, 1), clip_range=eps, beta_kl=0.0)
    close(loss, (-1.2 + 0.8 + 1.5 - 0.5) / 4)  # 0.15
    close(stats.clip_frac, 0.5)
    close(stats.ratio, 1.0)  # (1.5 + .5 + 1.5 + .5) / 4
    close(stats.kl, 0.0)
    loss.backward()
    close(logp.grad, [[0.0], [0.0], [1.5 / 4], [-0.5 / 4]])


def test_grpo_sequence_mean_then_batch_mean_and_masking():
    # ratio 1 everywhere, so the objective is A. seq 0: two tokens, A = +1 -> token losses -1, -1 -> mean -1.
    # seq 1: one counted token, A = -1 -> +1; its second position is padding with a wild log-prob.
    # sequence-then-batch mean: (-1 + 1) / 2 = 0  (a token mean would give (-1 - 1 + 1) / 3 = -1/3)
    # seq 2: empty mask -> left out of the batch mean.
    logp = t([[-1.0, -2.0], [-1.0, 500.0], [-3.0, -3.0]], requires_grad=True)
    old = t([[-1.0, -2.0], [-1.0, -500.0], [-3.0, -3.0]])
    mask = t([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    loss, stats = grpo_loss(logp, old, None, t([1.0, -1.0, 1.0]), mask, clip_range=0.2, beta_kl=0.0)
    close(loss, 0.0)
    close(stats.policy, 0.0)
    loss.backward()
    # d/dlogp = -A * ratio / n_tokens(seq) / n_seqs: seq 0 -> -1/2/2 = -0.25 each; seq 1 -> +1/1/2 = 0.5
    close(logp.grad, [[-0.25, -0.25], [0.5, 0.0], [0.0, 0.0]])
    assert torch.isfinite(logp.grad).all()


def test_grpo_constant_group_leaves_only_kl():
    # constant rewards -> advantages 0 -> loss = beta * mean k3 = 0.02 * 0.193147 = 0.00386294
    adv = group_advantages(t([[1.0, 1.0]]), normalize=True).reshape(-1)
    logp = torch.full((2, 3), math.log(0.5), requires_grad=True)
    ref = torch.full((2, 3), math.log(0.25))
    loss, stats = grpo_loss(logp, logp.detach(), ref, adv, torch.ones(2, 3), clip_range=0.2, beta_kl=0.02)
    close(loss, 0.02 * (0.5 + LN2 - 1))
    close(stats.kl, 0.5 + LN2 - 1)
    close(stats.policy, 0.0)
    loss.backward()
    close(logp.grad, torch.full((2, 3), 0.02 * 0.5 / 6))  # beta (1 - e^d) / (3 tokens * 2 seqs)


def test_grpo_extreme_ratio_is_finite():
    logp = t([[0.0]], requires_grad=True)
    loss, _ = grpo_loss(logp, t([[-1000.0]]), None, t([-1.0]), torch.ones(1, 1), clip_range=0.2, beta_kl=0.0)
    close(loss, math.exp(20), 1e-3)  # log-ratio clamped to 20: -(-1 * e^20)
    loss.backward()
    assert torch.isfinite(logp.grad).all()


# --------------------------------------------------------------------------- OPSD


def test_distill_kl_by_hand():
    temp = 2.0
    # position 0: teacher [0, 2 ln 3] / 2 -> softmax [1/4, 3/4]; student [0, 0] -> [1/2, 1/2]
    #   KL = .25 ln(.25/.5) + .75 ln(.75/.5) = -0.173287 + 0.304099 = 0.130812
    # position 1: identical logits -> KL 0.  position 2: masked garbage.
    # loss = T^2 * (0.130812 + 0) / 2 = 4 * 0.065406 = 0.261624
    student = t([[[0.0, 0.0], [1.0, 2.0], [50.0, -50.0]]], requires_grad=True)
    teacher = t([[[0.0, 2 * math.log(3.0)], [1.0, 2.0], [-50.0, 50.0]]], requires_grad=True)
    mask = t([[1.0, 1.0, 0.0]])
    loss, stats = distill_kl(student, teacher, mask, temp)
    kl0 = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    close(stats.kl, kl0 / 2)
    close(loss, 4 * kl0 / 2)
    close(stats.n_tokens, 2.0)
    loss.backward()
    # dKL/dz_S = (p_S - p_T) / T: position 0 -> ([.5, .5] - [.25, .75]) / 2 = [.125, -.125]; times T^2 / 2 = 2
    close(student.grad, [[[0.25, -0.25], [0.0, 0.0], [0.0, 0.0]]])
    assert teacher.grad is None  # the teacher is a constant


def test_distill_kl_matches_torch_kl_div_v3_and_zero_teacher_probs():
    g = torch.Generator().manual_seed(3)
    student = torch.randn(2, 4, 3, generator=g, dtype=torch.float64)
    teacher = torch.randn(2, 4, 3, generator=g, dtype=torch.float64)
    mask = t([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    log_s, log_t = torch.log_softmax(student / 1.5, -1), torch.log_softmax(teacher / 1.5, -1)
    kl_bt = torch.nn.functional.kl_div(log_s, log_t, log_target=True, reduction="none").sum(-1)
    expected = 1.5**2 * (kl_bt * mask).sum() / mask.sum()
    close(distill_kl(student, teacher, mask, 1.5)[0], expected, 1e-10)
    # a teacher token with probability 0 (logit -inf) contributes 0, no NaN: teacher [-inf, 0, 0] -> [0, .5, .5]
    # student [0, 0, 0] -> 1/3 each: KL = 2 * .5 ln(.5 / (1/3)) = ln 1.5; T = 1
    s = torch.zeros(1, 1, 3, requires_grad=True)
    loss, _ = distill_kl(s, t([[[float("-inf"), 0.0, 0.0]]]), torch.ones(1, 1), 1.0)
    close(loss, math.log(1.5))
    loss.backward()
    close(s.grad, [[[1 / 3, 1 / 3 - 0.5, 1 / 3 - 0.5]]])  # p_S - p_T


# --------------------------------------------------------------------------- RLTF-SD


def test_rltf_sd_advantages_by_hand():
    # one group of N = 4: sample 0 correct first (early-terminated, not revised), samples 1-3 revised
    r0 = t([[1.0, 0.0, 0.0, 0.0]])
    r1 = t([[1.0, 1.0, 0.0, 1.0]])  # the value in the unrevised slot is ignored
    revised = torch.tensor([[False, True, True, True]])
    adv = rltf_sd_advantages(r0, r1, gamma=1.0, revised_BN=revised)
    # R = [1 (no gamma r1 term), 0 + 1, 0 + 0, 0 + 1] = [1, 1, 0, 1]; mean .75 -> A_RL0 = [.25, .25, -.75, .25]
    # (the reference would count sample 0 twice: R_0 = 2, A_RL0_0 = 2 - 1.25 = .75)
    close(adv.rl0, [[0.25, 0.25, -0.75, 0.25]])
    # A_sd = r1 - mean(r0) = r1 - .25 on revised samples, 0 otherwise
    close(adv.sd, [[0.0, 0.75, -0.25, 0.75]])
    # A_RL1 = r1 - mean(r1 over revised) = r1 - 2/3 on revised samples, 0 otherwise
    close(adv.rl1, [[0.0, 1 / 3, -2 / 3, 1 / 3]])


def test_rltf_sd_advantages_gamma_all_revised_and_all_correct():
    # all revised, gamma .5: r0 = [0, 0], r1 = [1, 0] -> R = [.5, 0] -> A_RL0 = [.25, -.25];
    # A_sd = r1 - 0 = [1, 0]; A_RL1 = r1 - .5 = [.5, -.5]
    adv = rltf_sd_advantages(t([[0.0, 0.0]]), t([[1.0, 0.0]]), gamma=0.5)
    close(adv.rl0, [[0.25, -0.25]])
    close(adv.sd, [[1.0, 0.0]])
    close(adv.rl1, [[0.5, -0.5]])
    # every first answer correct, none revised: everything 0
    adv = rltf_sd_advantages(t([[1.0, 1.0]]), t([[1.0, 1.0]]), 1.0, torch.tensor([[False, False]]))
    for a in adv:
        close(a, [[0.0, 0.0]])


def test_rltf_sd_loss_by_hand():
    sd_logp = t([-2.0, -4.0], requires_grad=True)
    rl0_logp = t([-1.0, -3.0], requires_grad=True)
    rl1_logp = t([-2.0, -5.0], requires_grad=True)
    rl0_ref = t([-1.0, -3.0 + LN2])  # d = ref - logp = [0, ln 2] -> k3 = [0, 2 - ln 2 - 1 = 0.306853]
    rl1_ref = t([-2.0 - LN2, -5.0])  # d = [-ln 2, 0] -> k3 = [0.5 + ln 2 - 1 = 0.193147, 0]
    a_sd, a_rl0, a_rl1 = t([0.75, -0.25]), t([0.5, -0.5]), t([1 / 3, 0.7])
    sd_mask, rl1_mask = t([1.0, 0.0]), t([1.0, 0.0])
    loss, stats = rltf_sd_loss(sd_logp, rl0_logp, rl1_logp, rl0_ref, rl1_ref, a_sd, a_rl0, a_rl1, sd_mask, rl1_mask,
                               sd_coeff=0.1, rl_coeff=1.0, beta_kl=0.1)
    # L_SD = -(0.75 * -2) / 1 = 1.5 (sample 1 masked out)
    close(stats.sd, 1.5)
    # L_RL0 = mean(-0.5 * -1 + 0.1 * 0, 0.5 * -3 + 0.1 * 0.306853) = mean(0.5, -1.469315) = -0.484657
    close(stats.rl0, (0.5 + (-1.5 + 0.1 * (1 - LN2))) / 2)
    # L_RL1 = (-(1/3) * -2 + 0.1 * 0.193147) / 1 = 0.685981 (sample 1 masked out)
    close(stats.rl1, 2 / 3 + 0.1 * (LN2 - 0.5))
    # L = 0.1 * 1.5 + 1.0 * (-0.484657 + 0.685981) = 0.351324
    close(loss, 0.15 + (0.5 - 1.5 + 0.1 * (1 - LN2)) / 2 + 2 / 3 + 0.1 * (LN2 - 0.5))
    close(stats.kl0, (1 - LN2) / 2)
    close(stats.kl1, LN2 - 0.5)
    loss.backward()
    close(sd_logp.grad, [0.1 * -0.75, 0.0])  # sd_coeff * -A_sd / n_sd
    # RL0: (-A + beta (1 - e^d)) / 2: sample 0 -> (-0.5 + 0) / 2 = -0.25; sample 1 -> (0.5 + 0.1 (1 - 2)) / 2 = 0.2
    close(rl0_logp.grad, [-0.25, 0.2])
    # RL1: sample 0 -> -1/3 + 0.1 (1 - 0.5) = -0.283333; sample 1 masked -> 0
    close(rl1_logp.grad, [-1 / 3 + 0.05, 0.0])
