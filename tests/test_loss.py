"""CISPO loss against the formula written out by hand, in float64."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cispo.loss import LOSSES, policy_loss, register_loss


def reference_cispo(lp, old, adv, mask, eps_low, eps_high):
    """L = -(1/Σmask) Σ_i Σ_t clip(r_it, 1-eps_low, 1+eps_high) Â_i log π_it mask_it, with
    dL/d logπ_it = -clip(r_it)·Â_i·mask_it / Σmask (the weight is a constant: stop-gradient)."""
    N, T = len(lp), len(lp[0])
    total = sum(mask[i][t] for i in range(N) for t in range(T))
    loss, grad = 0.0, [[0.0] * T for _ in range(N)]
    for i in range(N):
        for t in range(T):
            if not mask[i][t]:
                continue
            r = math.exp(lp[i][t] - old[i][t])
            w = min(max(r, 1 - eps_low), 1 + eps_high)
            loss += -w * adv[i] * lp[i][t] / total
            grad[i][t] = -w * adv[i] / total
    return loss, grad


def test_cispo_value_and_gradient_float64():
    lp_v = [[-0.5, -1.2, -0.1, -2.0], [-0.3, -0.9, -1.5, -0.7], [-2.5, -0.05, -0.6, -1.1]]
    # ratios chosen to be inside, above (1.9) and below (0.2) the clip range
    old_v = [[-0.5, -1.2 - math.log(1.9), -0.1, -2.0 - math.log(0.2)],
             [-0.35, -0.9, -1.5 + math.log(1.9), -0.7],
             [-2.4, -0.05, -0.6, -1.1 - math.log(1.5)]]
    adv_v = [1.3, -0.7, 0.4]
    mask_v = [[1, 1, 1, 1], [1, 1, 1, 0], [1, 0, 1, 1]]
    lp = torch.tensor(lp_v, dtype=torch.float64, requires_grad=True)
    loss, metrics = policy_loss("cispo", lp, torch.tensor(old_v, dtype=torch.float64),
                                torch.tensor(adv_v, dtype=torch.float64),
                                torch.tensor(mask_v, dtype=torch.float64), eps_low=0.2, eps_high=0.28)
    loss.backward()
    ref_loss, ref_grad = reference_cispo(lp_v, old_v, adv_v, mask_v, 0.2, 0.28)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-12, abs=1e-14)
    assert torch.allclose(lp.grad, torch.tensor(ref_grad, dtype=torch.float64), rtol=1e-12, atol=1e-15)
    # clipped tokens (ratio 1.9 above, 0.2 below) still get gradient; masked ones get none
    assert lp.grad[0, 1] != 0 and lp.grad[0, 3] != 0 and lp.grad[1, 2] != 0
    assert lp.grad[1, 3] == 0 and lp.grad[2, 1] == 0
    # outside [0.8, 1.28]: r=1.9, 0.2, 1/1.9, 1.5 -> 4 of the 10 unmasked tokens
    assert metrics["is_weight/clip_frac"] == pytest.approx(4 / 10)


def test_token_count_and_per_token_advantages():
    g = torch.Generator().manual_seed(0)
    lp = torch.randn(4, 6, dtype=torch.float64, generator=g) - 1
    old = lp.detach() + 0.3 * torch.randn(4, 6, dtype=torch.float64, generator=g)
    adv = torch.randn(4, dtype=torch.float64, generator=g)
    mask = (torch.rand(4, 6, generator=g) > 0.3).double()
    full, _ = policy_loss("cispo", lp, old, adv, mask)
    # the same loss from two halves that each divide by the whole batch's token count
    n = mask.sum().item()
    a, _ = policy_loss("cispo", lp[:2], old[:2], adv[:2], mask[:2], token_count=n)
    b, _ = policy_loss("cispo", lp[2:], old[2:], adv[2:], mask[2:], token_count=n)
    assert (a + b).item() == pytest.approx(full.item(), rel=1e-12)
    # [N] advantages broadcast exactly like the equivalent [N, T] tensor
    per_tok, _ = policy_loss("cispo", lp, old, adv[:, None].expand(4, 6), mask)
    assert per_tok.item() == pytest.approx(full.item(), rel=1e-12)


def test_empty_mask_gives_zero_loss_and_no_nan():
    lp = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    loss, m = policy_loss("cispo", lp, lp.detach(), torch.ones(2, dtype=torch.float64),
                          torch.zeros(2, 3, dtype=torch.float64))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(lp.grad == 0) and m["tokens"] == 0


def test_registry_errors():
    with pytest.raises(KeyError, match="registered"):
        policy_loss("nope", torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1), torch.ones(1, 1))
    with pytest.raises(ValueError, match="already registered"):
        register_loss("cispo")(LOSSES["cispo"])
    with pytest.raises(ValueError, match="must match"):
        policy_loss("cispo", torch.zeros(1, 2), torch.zeros(1, 1), torch.zeros(1), torch.ones(1, 1))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(-8, 0), st.floats(-8, 8), st.floats(-3, 3), st.booleans()),
                min_size=1, max_size=12),
       st.floats(0.0, 1.0), st.floats(0.0, 2.0))
def test_gradient_is_clipped_weight_times_advantage(rows, eps_low, eps_high):
    """Property: every unmasked token's gradient is -clip(r)·Â/Σmask, whatever the ratio."""
    lp = torch.tensor([[r[0]] for r in rows], dtype=torch.float64, requires_grad=True)
    old = lp.detach() - torch.tensor([[r[1]] for r in rows], dtype=torch.float64)
    adv = torch.tensor([r[2] for r in rows], dtype=torch.float64)
    mask = torch.tensor([[float(r[3])] for r in rows], dtype=torch.float64)
    loss, _ = policy_loss("cispo", lp, old, adv, mask, eps_low=eps_low, eps_high=eps_high)
    loss.backward()
    n = max(mask.sum().item(), 1.0)
    w = torch.exp(lp.detach() - old).clamp(1 - eps_low, 1 + eps_high)
    expected = -w * adv[:, None] * mask / n
    assert torch.allclose(lp.grad, expected, rtol=1e-10, atol=1e-300)
    assert torch.isfinite(loss)
