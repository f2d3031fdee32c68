"""Policy losses: pure functions on tensors, selected by name.

    loss, metrics = policy_loss("cispo", logprobs, old_logprobs, advantages, mask,
                                eps_low=1.0, eps_high=0.28)

Shapes: `logprobs`, `old_logprobs`, `mask` are [N, T] (N sequences, T response positions);
`advantages` is [N] (one per sequence, broadcast over its tokens) or [N, T]. The learner calls
this without knowing which algorithm it runs; new losses register with `@register_loss`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

LossFn = Callable[..., tuple[torch.Tensor, dict[str, float]]]
LOSSES: dict[str, LossFn] = {}


def register_loss(name: str) -> Callable[[LossFn], LossFn]:
    def deco(fn: LossFn) -> LossFn:
        if name in LOSSES:
            raise ValueError(f"policy loss {name!r} is already registered")
        LOSSES[name] = fn
        return fn

    return deco


def policy_loss(name: str, logprobs: torch.Tensor, old_logprobs: torch.Tensor,
                advantages: torch.Tensor, mask: torch.Tensor, **kwargs) -> tuple[torch.Tensor, dict[str, float]]:
    if name not in LOSSES:
        raise KeyError(f"unknown policy loss {name!r}; registered: {sorted(LOSSES)}")
    if logprobs.shape != old_logprobs.shape or logprobs.shape != mask.shape:
        raise ValueError(f"logprobs {tuple(logprobs.shape)}, old_logprobs "
                         f"{tuple(old_logprobs.shape)} and mask {tuple(mask.shape)} must match")
    adv = advantages if advantages.dim() == 2 else advantages.unsqueeze(-1)
    return LOSSES[name](logprobs, old_logprobs, adv.to(logprobs.dtype), mask.to(logprobs.dtype), **kwargs)


def _denominator(mask: torch.Tensor, normalization: str, token_count: float | None) -> torch.Tensor:
    if normalization != "token":
        raise ValueError(f"normalization {normalization!r} is not supported; use 'token'")
    # token_count: the batch's token total when this call sees only part of it (micro-batches,
    # data-parallel ranks), so every part divides by the same number.
    total = mask.sum() if token_count is None else torch.as_tensor(token_count, dtype=mask.dtype)
    return total.clamp(min=1.0)


@register_loss("cispo")
def cispo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
               mask: torch.Tensor, *, eps_low: float = 1.0, eps_high: float = 0.28,
               normalization: str = "token", token_count: float | None = None):
    """CISPO (MiniMax-M1, Eq. 4): L = -1/Σ|o_i| · Σ sg(clip(r, 1-eps_low, 1+eps_high)) · Â · log π.

    The importance weight r = π/π_old is clipped and detached; every unmasked token keeps the
    gradient of log π (PPO would drop the clipped ones).
    """
    with torch.no_grad():
        ratio = torch.exp(logprobs - old_logprobs)
        weight = ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
        clipped = ((ratio < 1.0 - eps_low) | (ratio > 1.0 + eps_high)).to(mask.dtype)
    denom = _denominator(mask, normalization, token_count)
    loss = -(weight * advantages * logprobs * mask).sum() / denom
    n = mask.sum().clamp(min=1.0)
    metrics = {
        "is_weight/mean": float((ratio * mask).sum() / n),
        "is_weight/clip_frac": float((clipped * mask).sum() / n),
        "is_weight/max": float(torch.where(mask > 0, ratio, torch.zeros_like(ratio)).max()) if mask.any() else 0.0,
        "tokens": float(mask.sum()),
    }
    return loss, metrics
