"""PPO-clip, DAPO, GRPO and CISPO's trust-region mask against their formulas, in float64."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cispo.loss import policy_loss

LP = [[-0.5, -1.2, -0.1, -2.0], [-0.3, -0.9, -1.5, -0.7], [-2.5, -0.05, -0.6, -1.1]]
OLD = [[-0.5, -1.2 - math.log(1.9), -0.1, -2.0 - math.log(0.2)],
       [-0.35, -0.9, -1.5 + math.log(1.9), -0.7],
       [-2.4, -0.05, -0.6, -1.1 - math.log(1.5)]]
ADV = [1.3, -0.7, -0.4]
MASK = [[1, 1, 1, 1], [1, 1, 1, 0], [1, 0, 1, 1]]


def run(name, **kw):
    lp = torch.tensor(LP, dtype=torch.float64, requires_grad=True)
    loss, m = policy_loss(name, lp, torch.tensor(OLD, dtype=torch.float64),
                          torch.tensor(ADV, dtype=torch.float64),
                          torch.tensor(MASK, dtype=torch.float64), **kw)
    loss.backward()
    return loss.item(), lp.grad, m


def ppo_token(i, t, lo, hi, dual):
    """(objective to minimise, d/dlogπ) of one token, written out from PPO's definition."""
    r, a = math.exp(LP[i][t] - OLD[i][t]), ADV[i]
    unclipped, clipped = r * a, min(max(r, 1 - lo), 1 + hi) * a
    if unclipped <= clipped:          # min picks the unclipped term: gradient r·a
        obj, grad = -unclipped, -r * a
    else:                             # the clipped term is constant in θ: no gradient
        obj, grad = -clipped, 0.0
    if dual is not None and a < 0 and obj > -dual * a:
        obj, grad = -dual * a, 0.0
    return obj, grad


@pytest.mark.parametrize("name,lo,hi,dual", [("ppo_clip", 0.2, 0.2, 3.0), ("ppo_clip", 0.2, 0.2, 1.2),
                                             ("dapo", 0.2, 0.28, None)])
def test_token_level_ppo_family(name, lo, hi, dual):
    kw = {"eps_low": lo, "eps_high": hi} | ({"dual_clip": dual} if name == "ppo_clip" else {})
    loss, grad, _ = run(name, **kw)
    n = sum(map(sum, MASK))
    ref, ref_grad = 0.0, torch.zeros(3, 4, dtype=torch.float64)
    for i in range(3):
        for t in range(4):
            if MASK[i][t]:
                o, g = ppo_token(i, t, lo, hi, dual)
                ref += o / n
                ref_grad[i, t] = g / n
    assert loss == pytest.approx(ref, rel=1e-12)
    assert torch.allclose(grad, ref_grad, rtol=1e-12, atol=1e-15)


def test_grpo_sample_level_normalisation():
    loss, grad, _ = run("grpo", normalization="sample")
    ref, ref_grad = 0.0, torch.zeros(3, 4, dtype=torch.float64)
    for i in range(3):
        n_i = sum(MASK[i])
        for t in range(4):
            if MASK[i][t]:
                o, g = ppo_token(i, t, 0.2, 0.2, None)
                ref += o / n_i / 3
                ref_grad[i, t] = g / n_i / 3
    assert loss == pytest.approx(ref, rel=1e-12)
    assert torch.allclose(grad, ref_grad, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="per sample"):
        run("grpo", normalization="token")


def test_cispo_trust_region_mask_drops_exactly_eq7_tokens():
    _, plain, _ = run("cispo", eps_low=0.2, eps_high=0.28)
    _, masked, _ = run("cispo", eps_low=0.2, eps_high=0.28, trust_region_mask=True)
    for i in range(3):
        for t in range(4):
            r, a = math.exp(LP[i][t] - OLD[i][t]), ADV[i]
            drop = (a > 0 and r > 1.28) or (a < 0 and r < 0.8)
            expected = 0.0 if (drop or not MASK[i][t]) else plain[i, t].item()
            assert masked[i, t].item() == pytest.approx(expected, abs=1e-15), (i, t)
    assert masked[0, 1] == 0 and plain[0, 1] != 0  # Â>0, r=1.9: PPO's region drops it


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(-6, 0), st.floats(-5, 5), st.floats(-3, 3)), min_size=2, max_size=10),
       st.sampled_from(["ppo_clip", "dapo", "grpo", "cispo"]))
def test_micro_batch_parts_sum_to_the_whole(rows, name):
    """Property: with the batch's token/sample totals passed in, two halves add up to the whole."""
    lp = torch.tensor([[r[0], r[0] / 2] for r in rows], dtype=torch.float64)
    old = lp - torch.tensor([[r[1], -r[1]] for r in rows], dtype=torch.float64)
    adv = torch.tensor([r[2] for r in rows], dtype=torch.float64)
    mask = torch.ones_like(lp)
    mask[0, 1] = 0
    kw = {"normalization": "sample"} if name == "grpo" else {}
    whole, _ = policy_loss(name, lp, old, adv, mask, **kw)
    k = len(rows) // 2
    tot = {"token_count": mask.sum().item(), "sample_count": float(len(rows))}
    a, _ = policy_loss(name, lp[:k], old[:k], adv[:k], mask[:k], **tot, **kw)
    b, _ = policy_loss(name, lp[k:], old[k:], adv[k:], mask[k:], **tot, **kw)
    assert (a + b).item() == pytest.approx(whole.item(), rel=1e-9, abs=1e-12)
    assert torch.isfinite(whole)
