"""Per-round IS-weight metrics of off-policy rounds (`algorithm.num_minibatches` > 1)."""

import math

import pytest
import torch

from cispo.loss import policy_loss
from cispo.train import merge_minibatch_rounds


def round_metrics(old_shift: float) -> dict[str, float]:
    """One minibatch round's learner metrics, from the loss itself: π_old = π - shift."""
    lp = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]], dtype=torch.float64)
    old = lp - torch.tensor([[old_shift, -old_shift], [0.0, 2 * old_shift]], dtype=torch.float64)
    loss, m = policy_loss("cispo", lp, old, torch.tensor([1.0, -1.0], dtype=torch.float64),
                          torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=torch.float64),
                          eps_low=1.0, eps_high=0.28)
    return {"loss/policy": loss.item(), "grad/norm": 1.0, **{k: v for k, v in m.items() if k != "tokens"}}


def test_each_round_is_logged_with_its_own_is_weight_stats():
    rounds = [round_metrics(0.0), round_metrics(0.1), round_metrics(0.5)]
    out = merge_minibatch_rounds(rounds)
    # round 0 is on-policy: every ratio is 1 and nothing is clipped
    assert out["is/round_0/mean"] == 1.0 and out["is/round_0/clip_frac"] == 0.0
    assert out["is/round_0/min"] == out["is/round_0/max"] == 1.0
    # round 2: ratios e^0.5, e^-0.5, 1 -> max e^0.5 (clipped at 1.28), min e^-0.5 (no lower bound)
    assert out["is/round_2/max"] == pytest.approx(math.exp(0.5))
    assert out["is/round_2/min"] == pytest.approx(math.exp(-0.5))
    assert out["is/round_2/mean"] == pytest.approx((math.exp(0.5) + math.exp(-0.5) + 1) / 3)
    assert out["is/round_2/clip_frac"] == pytest.approx(1 / 3)
    # the step-level summary: means over rounds, extremes over all of them
    assert out["is_weight/max"] == pytest.approx(math.exp(0.5))
    assert out["is_weight/min"] == pytest.approx(math.exp(-0.5))
    assert out["is_weight/clip_frac"] == pytest.approx(1 / 9)
    assert out["loss/policy"] == pytest.approx(sum(r["loss/policy"] for r in rounds) / 3)


def test_one_round_adds_no_per_round_keys_and_empty_rounds_are_nan_not_inf():
    out = merge_minibatch_rounds([round_metrics(0.2)])
    assert not any(k.startswith("is/round_") for k in out)
    empty = {"loss/policy": 0.0, "grad/norm": 0.0, "is_weight/mean": 0.0, "is_weight/clip_frac": 0.0,
             "is_weight/max": 0.0, "is_weight/min": math.inf}
    out = merge_minibatch_rounds([empty, empty])
    assert math.isnan(out["is/round_1/min"]) and math.isnan(out["is_weight/min"])
