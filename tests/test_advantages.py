import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from cispo.advantages import compute_advantages, zero_variance_fraction


def test_group_norm_matches_formula_float64():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5], dtype=torch.float64)
    adv = compute_advantages("group_norm", r, group_size=4, eps=0.0 + 1e-12)
    g = [1.0, 0.0, 0.0, 1.0]
    mean = sum(g) / 4
    std = (sum((x - mean) ** 2 for x in g) / 4) ** 0.5  # population std over the group
    for i in range(4):
        assert adv[i].item() == pytest.approx((g[i] - mean) / (std + 1e-12), rel=1e-12)
    assert torch.all(adv[4:] == 0)  # all-equal group: no signal
    assert zero_variance_fraction(r, 4) == 0.5


def test_bad_shapes():
    with pytest.raises(ValueError, match="multiple of group_size"):
        compute_advantages("group_norm", torch.zeros(5), group_size=4)
    with pytest.raises(KeyError):
        compute_advantages("nope", torch.zeros(4), group_size=4)


def test_skipped_samples_take_no_part_float64():
    r = torch.tensor([1.0, 0.0, 7.0, 0.0], dtype=torch.float64)
    valid = torch.tensor([True, True, False, True])
    adv = compute_advantages("group_norm", r, group_size=4, valid=valid, eps=1e-12)
    kept = [1.0, 0.0, 0.0]
    mean = sum(kept) / 3
    std = (sum((x - mean) ** 2 for x in kept) / 3) ** 0.5
    assert adv[2].item() == 0.0  # the skipped sample: no advantage, its 7.0 ignored
    for i, x in zip([0, 1, 3], kept, strict=True):
        assert adv[i].item() == pytest.approx((x - mean) / (std + 1e-12), rel=1e-12)
    # a group whose only valid rewards are equal carries no signal
    assert zero_variance_fraction(torch.tensor([1.0, 0.0, 1.0, 1.0]), 4,
                                  torch.tensor([True, False, True, True])) == 1.0


def test_group_mean_and_rloo_float64():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 5.0], dtype=torch.float64)
    gm = compute_advantages("group_mean", r, group_size=3)
    assert gm.tolist() == pytest.approx([1 - 1 / 3, -1 / 3, -1 / 3, 1 - 8 / 3, 2 - 8 / 3, 5 - 8 / 3])
    lo = compute_advantages("rloo", r, group_size=3)
    assert lo.tolist() == pytest.approx([1 - 0.0, 0 - 0.5, 0 - 0.5, 1 - 3.5, 2 - 3.0, 5 - 1.5])
    # a sample alone among valid ones has no baseline: 0; skipped samples get 0
    v = torch.tensor([True, False, False, True, True, True])
    lo = compute_advantages("rloo", r, group_size=3, valid=v)
    assert lo[:3].tolist() == [0.0, 0.0, 0.0]


@given(st.lists(st.floats(-10, 10), min_size=4, max_size=4), st.sampled_from(["group_norm", "group_mean", "rloo", "batch_norm"]))
def test_advantages_are_shift_invariant_and_zero_for_equal_groups(rs, name):
    r = torch.tensor(rs, dtype=torch.float64)
    a = compute_advantages(name, r, group_size=4)
    b = compute_advantages(name, r + 3.0, group_size=4)
    assert torch.allclose(a, b, atol=1e-9)
    flat = compute_advantages(name, torch.full((4,), rs[0], dtype=torch.float64), group_size=4)
    assert torch.all(flat.abs() < 1e-12)  # rloo: (4x − x)/3 − x rounds to ~1e-17, not 0


@pytest.mark.parametrize("name", ["group_norm", "group_mean", "rloo", "batch_norm"])
def test_fully_skipped_group_and_extreme_rewards_stay_finite(name):
    # group 0: every sample skipped (the "empty mask" of estimators) -> all 0, no NaN
    r = torch.tensor([3.0, 1.0, 2.0, 1e12, -1e12, 0.0, 1e-9, 0.0, 0.0], dtype=torch.float64)
    valid = torch.tensor([False] * 3 + [True] * 6)
    a = compute_advantages(name, r, group_size=3, valid=valid)
    assert torch.all(torch.isfinite(a)) and torch.all(a[:3] == 0)
    assert a[3] > 0 > a[4]  # huge rewards keep their order
    assert a[6] > 0  # a 1e-9 difference still counts (group_norm: divided by std + eps)


@given(st.lists(st.floats(-1e3, 1e3), min_size=5, max_size=5))
def test_estimators_zero_sum_and_scale_properties(rs):
    """Property: every estimator's advantages sum to 0 in a group; rloo = G/(G-1) · group_mean;
    group_norm has population std 1 when the rewards' std is far above eps."""
    r = torch.tensor(rs, dtype=torch.float64)
    gm = compute_advantages("group_mean", r, group_size=5)
    lo = compute_advantages("rloo", r, group_size=5)
    gn = compute_advantages("group_norm", r, group_size=5, eps=1e-12)
    scale = max(1.0, r.abs().max().item())
    for a in (gm, lo):
        assert abs(a.sum().item()) < 1e-9 * scale
    assert torch.allclose(lo, gm * 5 / 4, atol=1e-9 * scale)
    if r.std(unbiased=False) > 1e-3:
        assert abs(gn.sum().item()) < 1e-6
        assert gn.std(unbiased=False).item() == pytest.approx(1.0, rel=1e-6)


def test_batch_norm_matches_formula_float64():
    """ScaleRL's batch-level normalisation: group mean as baseline, the whole batch's std as scale."""
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5], dtype=torch.float64)
    adv = compute_advantages("batch_norm", r, group_size=4, eps=1e-12)
    xs = r.tolist()
    mu = sum(xs) / 12
    std = (sum((x - mu) ** 2 for x in xs) / 12) ** 0.5  # population std over the batch
    for g in range(3):
        part = xs[4 * g:4 * g + 4]
        m = sum(part) / 4
        for i in range(4):
            assert adv[4 * g + i].item() == pytest.approx((part[i] - m) / (std + 1e-12), rel=1e-12)
    # one right of four and three right of four: the same distance to the group mean (0.75), as
    # group_norm would also give, but here not rescaled per group
    assert adv[0].item() == pytest.approx(0.75 / (std + 1e-12), rel=1e-12)
    assert torch.all(adv[8:] == 0)  # zero-variance group


def test_batch_norm_hand_worked_and_skips():
    """Two groups of 2: rewards (1, 0) and (1, 1): batch mean 3/4, batch std √(3/16) = √3/4;
    group 0's baseline is 1/2, so Â = ±(1/2)/(√3/4) = ±2/√3; group 1 gets 0. A skipped sample
    takes no part: (1, 0 skipped) and (1, 0) has batch std over the three valid rewards."""
    adv = compute_advantages("batch_norm", torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64), 2, eps=0.0)
    assert adv.tolist() == pytest.approx([2 / 3 ** 0.5, -2 / 3 ** 0.5, 0.0, 0.0], rel=1e-12)
    valid = torch.tensor([True, False, True, True])
    adv = compute_advantages("batch_norm", torch.tensor([1.0, 5.0, 1.0, 0.0], dtype=torch.float64), 2, valid, eps=0.0)
    std = (sum((x - 2 / 3) ** 2 for x in (1.0, 1.0, 0.0)) / 3) ** 0.5
    assert adv.tolist() == pytest.approx([0.0, 0.0, 0.5 / std, -0.5 / std], rel=1e-12)
    flat = compute_advantages("batch_norm", torch.ones(4, dtype=torch.float64), 2)
    assert torch.all(flat == 0)


def test_advantage_eps_reaches_only_the_estimators_that_take_it():
    """cispo.train passes algorithm.advantage_eps to every estimator; the mean-only ones ignore it."""
    r = torch.tensor([1.0, 0.0, 0.0, 1.0])
    for name in ("group_mean", "rloo", "group_norm", "batch_norm"):
        assert torch.isfinite(compute_advantages(name, r, 2, eps=1e-6)).all()
