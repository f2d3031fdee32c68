import pytest
import torch

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
