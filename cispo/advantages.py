"""Advantage estimators: pure functions from per-sample rewards to per-sample advantages.

Samples arrive grouped: the G responses of one prompt are consecutive. Registry:
`compute_advantages(name, rewards, group_size, **kw)`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

ADVANTAGES: dict[str, Callable[..., torch.Tensor]] = {}


def register_advantage(name: str):
    def deco(fn):
        if name in ADVANTAGES:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        ADVANTAGES[name] = fn
        return fn

    return deco


def compute_advantages(name: str, rewards: torch.Tensor, group_size: int, **kwargs) -> torch.Tensor:
    if name not in ADVANTAGES:
        raise KeyError(f"unknown advantage estimator {name!r}; registered: {sorted(ADVANTAGES)}")
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be 1-D with a multiple of group_size={group_size} "
                         f"entries, got shape {tuple(rewards.shape)}")
    return ADVANTAGES[name](rewards, group_size, **kwargs)


@register_advantage("group_norm")
def group_norm(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """Â_i = (R_i − mean_j R_j) / (std_j R_j + eps) within each group (M1 / GRPO).

    std is the population std over the G samples (the formula's std_j); a group whose rewards
    are all equal gets advantage 0 for every sample (it carries no signal).
    """
    r = rewards.reshape(-1, group_size).to(torch.float64 if rewards.dtype == torch.float64 else torch.float32)
    mean = r.mean(dim=1, keepdim=True)
    std = r.std(dim=1, keepdim=True, unbiased=False)
    return ((r - mean) / (std + eps)).reshape(-1)


def zero_variance_fraction(rewards: torch.Tensor, group_size: int) -> float:
    r = rewards.reshape(-1, group_size)
    return float((r.max(dim=1).values == r.min(dim=1).values).float().mean())
