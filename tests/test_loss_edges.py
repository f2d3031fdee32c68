"""CISPO's sample-level variant (M1's long-window stages) against its formula in float64, and the
edge cases every registered loss must survive: empty masks, all-equal rewards, extreme ratios."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cispo.advantages import ADVANTAGES, compute_advantages
from cispo.loss import policy_loss

LP = [[-0.5, -1.2, -0.1, -2.0], [-0.3, -0.9, -1.5, -0.7], [-2.5, -0.05, -0.6, -1.1]]
OLD = [[-0.5, -1.2 - math.log(1.9), -0.1, -2.0 - math.log(0.2)],
       [-0.35, -0.9, -1.5 + math.log(1.9), -0.7],
       [-2.4, -0.05, -0.6, -1.1 - math.log(1.5)]]
ADV = [1.3, -0.7, -0.4]
MASK = [[1, 1, 1, 1], [1, 1, 1, 0], [1, 0, 0, 0]]
# every loss with the keyword arguments that make it valid on its own
LOSS_KW = {"cispo": {}, "cispo_sample": {"normalization": "sample"}, "ppo_clip": {}, "dapo": {},
           "grpo": {"normalization": "sample"}}


def call(name, lp, old, adv, mask, **kw):
    base = "cispo" if name == "cispo_sample" else name
    return policy_loss(base, lp, old, adv, mask, **LOSS_KW[name], **kw)


def test_cispo_sample_level_value_and_gradient_float64():
    """L = 1/N Σ_i 1/|o_i| Σ_t -clip(r_it)·Â_i·log π_it; dL/dlogπ_it = -clip(r_it)·Â_i/(N·|o_i|)."""
    lo, hi = 1.0, 0.28
    lp = torch.tensor(LP, dtype=torch.float64, requires_grad=True)
    loss, m = policy_loss("cispo", lp, torch.tensor(OLD, dtype=torch.float64),
                          torch.tensor(ADV, dtype=torch.float64), torch.tensor(MASK, dtype=torch.float64),
                          eps_low=lo, eps_high=hi, normalization="sample")
    loss.backward()
    ref, ref_grad = 0.0, [[0.0] * 4 for _ in range(3)]
    for i in range(3):
        n_i = sum(MASK[i])
        for t in range(4):
            if MASK[i][t]:
                w = min(max(math.exp(LP[i][t] - OLD[i][t]), 1 - lo), 1 + hi)
                ref += -w * ADV[i] * LP[i][t] / n_i / 3
                ref_grad[i][t] = -w * ADV[i] / n_i / 3
    assert loss.item() == pytest.approx(ref, rel=1e-12)
    assert torch.allclose(lp.grad, torch.tensor(ref_grad, dtype=torch.float64), rtol=1e-12, atol=1e-15)
    # the one-token response weighs as much as the four-token one (token-level CISPO: 1/4 of it)
    assert lp.grad[2, 0].abs() / lp.grad[0, 0].abs() == pytest.approx(4 * 0.4 * math.exp(-0.1) / 1.3, rel=1e-12)
    assert m["tokens"] == 8


def test_cispo_sample_level_with_the_trust_region_mask_and_bad_normalisation():
    lp = torch.tensor(LP, dtype=torch.float64, requires_grad=True)
    loss, _ = policy_loss("cispo", lp, torch.tensor(OLD, dtype=torch.float64),
                          torch.tensor(ADV, dtype=torch.float64), torch.tensor(MASK, dtype=torch.float64),
                          eps_low=0.2, eps_high=0.28, normalization="sample", trust_region_mask=True)
    loss.backward()
    assert lp.grad[0, 1] == 0  # Â>0, r=1.9 > 1.28: Eq. 7 drops it
    assert lp.grad[0, 0] != 0
    with pytest.raises(ValueError, match="not supported"):
        policy_loss("cispo", lp, lp.detach(), torch.ones(3), torch.ones(3, 4), normalization="tokens")


@pytest.mark.parametrize("name", list(LOSS_KW))
def test_empty_mask_gives_zero_loss_and_zero_gradient(name):
    lp = torch.full((3, 4), -1.0, dtype=torch.float64, requires_grad=True)
    old = lp.detach() - 2.0  # r = e^2: far outside every clip range
    loss, m = call(name, lp, old, torch.tensor(ADV, dtype=torch.float64), torch.zeros(3, 4, dtype=torch.float64))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(lp.grad == 0) and m["tokens"] == 0
    assert m["is_weight/clip_frac"] == 0.0


@pytest.mark.parametrize("name", list(LOSS_KW))
@pytest.mark.parametrize("estimator", sorted(ADVANTAGES))
def test_all_equal_rewards_give_no_gradient(name, estimator):
    """A group whose rewards are all equal has advantage 0 under every estimator, so no loss
    moves the policy on it, whatever the ratios."""
    adv = compute_advantages(estimator, torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0], dtype=torch.float64), 3)
    assert torch.all(adv == 0)
    lp = torch.tensor(LP + LP, dtype=torch.float64, requires_grad=True)
    loss, _ = call(name, lp, torch.tensor(OLD + OLD, dtype=torch.float64), adv,
                   torch.tensor(MASK + MASK, dtype=torch.float64))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(lp.grad == 0)


@pytest.mark.parametrize("name", list(LOSS_KW))
def test_extreme_ratios_stay_finite(name):
    """r = e^±60 (π_old from a very different policy): losses and gradients stay finite; the
    clipped weight bounds CISPO's gradient, the PPO family's clip drops the token."""
    lp = torch.tensor([[-1.0, -70.0], [-65.0, -1.0]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-61.0, -10.0], [-5.0, -61.0]], dtype=torch.float64)  # r: e^60, e^-60, e^-60, e^60
    adv = torch.tensor([2.0, -2.0], dtype=torch.float64)
    loss, m = call(name, lp, old, adv, torch.ones(2, 2, dtype=torch.float64), eps_low=0.2, eps_high=0.28)
    loss.backward()
    assert math.isfinite(loss.item()) and torch.all(torch.isfinite(lp.grad))
    assert m["is_weight/clip_frac"] == 1.0
    assert m["is_weight/max"] == pytest.approx(math.exp(60)) and m["is_weight/min"] == pytest.approx(math.exp(-60))
    if name.startswith("cispo"):
        assert torch.all(lp.grad.abs() <= 1.28 * 2.0)  # |clip(r)·Â| / normaliser (≥ 1)
    else:
        # Â>0 & r≫1 and Â<0 & r≪1 are clipped: no gradient; the other two keep r·Â, for ppo_clip
        # the dual clip (Â<0, r=e^60) then caps it to a constant
        assert lp.grad[0, 0] == 0 and lp.grad[1, 0] == 0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 6), st.floats(-3, 3)), min_size=1, max_size=8),
       st.floats(-2, 2), st.floats(0.0, 1.0))
def test_cispo_sample_level_gradient_property(rows, log_ratio, eps_high):
    """Property: each response's tokens share -clip(r)·Â/(N·|o_i|), and a response's summed
    gradient does not depend on its length."""
    T = max(n for n, _ in rows)
    mask = torch.tensor([[1.0] * n + [0.0] * (T - n) for n, _ in rows], dtype=torch.float64)
    lp = torch.full((len(rows), T), -1.0, dtype=torch.float64, requires_grad=True)
    old = lp.detach() - log_ratio
    adv = torch.tensor([a for _, a in rows], dtype=torch.float64)
    loss, _ = policy_loss("cispo", lp, old, adv, mask, eps_high=eps_high, normalization="sample")
    loss.backward()
    w = min(max(math.exp(log_ratio), 0.0), 1 + eps_high)
    for i, (n, a) in enumerate(rows):
        assert torch.allclose(lp.grad[i, :n], torch.full((n,), -w * a / (len(rows) * n), dtype=torch.float64),
                              rtol=1e-10, atol=1e-300)
        assert lp.grad[i].sum().item() == pytest.approx(-w * a / len(rows), rel=1e-9, abs=1e-300)
        assert torch.all(lp.grad[i, n:] == 0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(-6, 0), st.floats(-3, 3), st.floats(-3, 3), st.booleans()),
                min_size=1, max_size=10),
       st.sampled_from(["ppo_clip", "dapo", "grpo"]))
def test_ppo_family_gradient_property(rows, name):
    """Property: each unmasked token's gradient is -r·Â/n when the unclipped term is the smaller
    one (and, for ppo_clip with Â<0, the dual clip does not bind), else 0; n = the batch's
    unmasked tokens (token level) or N·|o_i| (grpo, one token per response here)."""
    lp = torch.tensor([[x[0]] for x in rows], dtype=torch.float64, requires_grad=True)
    old = lp.detach() - torch.tensor([[x[1]] for x in rows], dtype=torch.float64)
    adv = torch.tensor([x[2] for x in rows], dtype=torch.float64)
    mask = torch.tensor([[float(x[3])] for x in rows], dtype=torch.float64)
    loss, _ = call(name, lp, old, adv, mask)
    loss.backward()
    lo, hi = 0.2, (0.28 if name == "dapo" else 0.2)
    n = max(mask.sum().item(), 1.0)
    for i, (_, lr, a, m) in enumerate(rows):
        r = math.exp(lr)
        keep = m and r * a <= min(max(r, 1 - lo), 1 + hi) * a
        if name == "ppo_clip" and a < 0 and -r * a > -3.0 * a:
            keep = False  # dual clip: the loss is the constant -3·Â
        expected = -r * a / n if keep else 0.0
        assert lp.grad[i, 0].item() == pytest.approx(expected, rel=1e-9, abs=1e-300), i
