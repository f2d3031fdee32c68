"""Advantage estimators: pure functions from per-sample rewards to per-sample advantages.

Samples arrive grouped: the G responses of one prompt are consecutive. Registry:
`compute_advantages(name, rewards, group_size, **kw)`.
"""

from __future__ import annotations

import inspect
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


def compute_advantages(name: str, rewards: torch.Tensor, group_size: int,
                       valid: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
    """Advantages [N]. `valid` [N] bool marks scored samples; the others (a reward returned None:
    skip) take no part in their group's statistics and get advantage 0."""
    if name not in ADVANTAGES:
        raise KeyError(f"unknown advantage estimator {name!r}; registered: {sorted(ADVANTAGES)}")
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be 1-D with a multiple of group_size={group_size} "
                         f"entries, got shape {tuple(rewards.shape)}")
    if valid is None:
        valid = torch.ones_like(rewards, dtype=torch.bool)
    fn = ADVANTAGES[name]
    if "eps" in kwargs and "eps" not in inspect.signature(fn).parameters:
        kwargs.pop("eps")  # algorithm.advantage_eps: only estimators that divide by a std take it
    return fn(rewards, group_size, valid, **kwargs)


@register_advantage("group_norm")
def group_norm(rewards: torch.Tensor, group_size: int, valid: torch.Tensor,
               eps: float = 1e-6) -> torch.Tensor:
    """Â_i = (R_i − mean_j R_j) / (std_j R_j + eps) within each group (M1 / GRPO).

    std is the population std over the group's valid samples (the formula's std_j); a group
    whose rewards are all equal gets advantage 0 for every sample (it carries no signal).
    """
    dtype = torch.float64 if rewards.dtype == torch.float64 else torch.float32
    r = rewards.reshape(-1, group_size).to(dtype)
    v = valid.reshape(-1, group_size).to(dtype)
    n = v.sum(dim=1, keepdim=True).clamp(min=1.0)
    mean = (r * v).sum(dim=1, keepdim=True) / n
    std = (((r - mean) ** 2 * v).sum(dim=1, keepdim=True) / n).sqrt()
    return ((r - mean) / (std + eps) * v).reshape(-1)


@register_advantage("batch_norm")
def batch_norm(rewards: torch.Tensor, group_size: int, valid: torch.Tensor,
               eps: float = 1e-6) -> torch.Tensor:
    """Â_i = (R_i − mean_{j∈g(i)} R_j) / (std_{j∈batch} R_j + eps): the group's mean as the
    baseline, the standard deviation of every valid reward of the batch (the step's samples) as
    the scale. ScaleRL's batch-level advantage normalisation (as LitePPO / TRL's
    scale_rewards="batch"): no per-group division, so a group where one of 16 is right does not
    get the same-sized advantages as one where half are. std is the population std; zero-variance
    groups get 0; a batch whose valid rewards are all equal gets 0 everywhere.
    """
    dtype = torch.float64 if rewards.dtype == torch.float64 else torch.float32
    r = rewards.reshape(-1, group_size).to(dtype)
    v = valid.reshape(-1, group_size).to(dtype)
    mean = (r * v).sum(dim=1, keepdim=True) / v.sum(dim=1, keepdim=True).clamp(min=1.0)
    n = v.sum().clamp(min=1.0)
    batch_mean = (r * v).sum() / n
    std = (((r - batch_mean) ** 2 * v).sum() / n).sqrt()
    return ((r - mean) / (std + eps) * v).reshape(-1)


def zero_variance_fraction(rewards: torch.Tensor, group_size: int,
                           valid: torch.Tensor | None = None) -> float:
    """Share of groups whose valid rewards are all equal (they carry no learning signal)."""
    r = rewards.reshape(-1, group_size)
    v = torch.ones_like(r, dtype=torch.bool) if valid is None else valid.reshape(-1, group_size)
    hi = torch.where(v, r, torch.full_like(r, -torch.inf)).max(dim=1).values
    lo = torch.where(v, r, torch.full_like(r, torch.inf)).min(dim=1).values
    return float(((hi == lo) | ~v.any(dim=1)).float().mean())


@register_advantage("group_mean")
def group_mean(rewards: torch.Tensor, group_size: int, valid: torch.Tensor) -> torch.Tensor:
    """Â_i = R_i − mean_j R_j (Dr. GRPO: no division by the std, which favours easy and hard
    prompts over the ones in between)."""
    dtype = torch.float64 if rewards.dtype == torch.float64 else torch.float32
    r = rewards.reshape(-1, group_size).to(dtype)
    v = valid.reshape(-1, group_size).to(dtype)
    mean = (r * v).sum(dim=1, keepdim=True) / v.sum(dim=1, keepdim=True).clamp(min=1.0)
    return ((r - mean) * v).reshape(-1)


@register_advantage("rloo")
def rloo(rewards: torch.Tensor, group_size: int, valid: torch.Tensor) -> torch.Tensor:
    """Â_i = R_i − mean_{j≠i} R_j (REINFORCE leave-one-out); a sample alone in its group gets 0."""
    dtype = torch.float64 if rewards.dtype == torch.float64 else torch.float32
    r = rewards.reshape(-1, group_size).to(dtype)
    v = valid.reshape(-1, group_size).to(dtype)
    total = (r * v).sum(dim=1, keepdim=True)
    others = (v.sum(dim=1, keepdim=True) - 1.0)
    baseline = (total - r * v) / others.clamp(min=1.0)
    return torch.where((v > 0) & (others > 0), r - baseline, torch.zeros_like(r)).reshape(-1)
