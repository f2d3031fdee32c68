"""Policy losses: pure functions on tensors, selected by name.

    loss, metrics = policy_loss("cispo", logprobs, old_logprobs, advantages, mask,
                                eps_low=1.0, eps_high=0.28)

Shapes: `logprobs`, `old_logprobs`, `mask` are [N, T] (N sequences, T response positions);
`advantages` is [N] (one per sequence, broadcast over its tokens) or [N, T]. The learner calls
this without knowing which algorithm it runs; new losses register with `@register_loss`.

Every loss accepts `token_count` and `sample_count`: the token and sequence totals of the whole
batch when a call sees only part of it (a micro-batch, one data-parallel rank), so the parts sum
to the loss of the whole batch. Losses: cispo (M1), ppo_clip (dual clip), dapo, grpo.

Normalisation (`normalization=`, how per-token terms are averaged into the loss):
  "token"   Σ ℓ·m / Σ m                          every token weighs the same (M1, DAPO)
  "sample"  mean_i (Σ_t ℓ·m / |o_i|)             every response weighs the same (GRPO)
  "prompt"  mean_g (Σ_{i∈g} Σ_t ℓ·m / T_g)       every prompt weighs the same (ScaleRL):
            g runs over the prompts (groups of responses to one prompt), T_g = the tokens of g
"prompt" takes `prompt_index` [N] (which prompt each sequence answers) or, for a call holding
part of the batch, `prompt_tokens` [N] (T_g of each sequence's prompt over the whole batch) and
`prompt_count` (the number of prompts in the whole batch).
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


NORMALIZATIONS = ("token", "sample", "prompt")


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, normalization: str = "token", *,
              token_count: float | None = None, sample_count: float | None = None,
              prompt_index: torch.Tensor | None = None, prompt_tokens: torch.Tensor | None = None,
              prompt_count: float | None = None) -> torch.Tensor:
    """The loss from per-token terms [N, T]: their token, sample or prompt average (module
    docstring). The *_count / prompt_tokens arguments are the whole batch's totals when this call
    holds part of it (micro-batches, data-parallel ranks), so every part divides by the same
    numbers and the parts add up to the whole batch's loss."""
    if normalization == "token":
        total = mask.sum() if token_count is None else torch.as_tensor(token_count, dtype=mask.dtype)
        return (per_token * mask).sum() / total.clamp(min=1.0)
    if normalization == "sample":
        return _sample_mean(per_token, mask, sample_count)
    if normalization == "prompt":
        return _prompt_mean(per_token, mask, prompt_index, prompt_tokens, prompt_count)
    raise ValueError(f"normalization {normalization!r} is not supported; use one of {NORMALIZATIONS}")


def _prompt_mean(per_token, mask, prompt_index, prompt_tokens, prompt_count) -> torch.Tensor:
    """mean over prompts g of Σ_{i∈g,t} ℓ·m / T_g (ScaleRL's prompt-level loss averaging)."""
    seq_sum = (per_token * mask).sum(-1)
    seq_tokens = mask.sum(-1)
    if prompt_tokens is None:
        if prompt_index is None:
            raise ValueError("normalization='prompt' needs prompt_index (which prompt each "
                             "sequence answers) or prompt_tokens and prompt_count")
        _, group = torch.unique(prompt_index, return_inverse=True)
        totals = torch.zeros(int(group.max()) + 1 if group.numel() else 0, dtype=mask.dtype,
                             device=mask.device).index_add_(0, group, seq_tokens)
        prompt_tokens = totals[group]
        if prompt_count is None:
            prompt_count = float((totals > 0).sum())
    elif prompt_count is None:
        raise ValueError("prompt_tokens needs prompt_count (the batch's number of prompts)")
    denom = torch.as_tensor(prompt_tokens, dtype=mask.dtype, device=mask.device).clamp(min=1.0)
    n = torch.as_tensor(prompt_count, dtype=mask.dtype, device=mask.device).clamp(min=1.0)
    return (seq_sum / denom).sum() / n


def _ratio_metrics(ratio: torch.Tensor, clipped: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    n = mask.sum().clamp(min=1.0)
    return {
        "is_weight/mean": float((ratio * mask).sum() / n),
        "is_weight/clip_frac": float((clipped * mask).sum() / n),
        "is_weight/max": float(torch.where(mask > 0, ratio, torch.zeros_like(ratio)).max()) if mask.any() else 0.0,
        "is_weight/min": float(torch.where(mask > 0, ratio, torch.full_like(ratio, torch.inf)).min())
        if mask.any() else float("inf"),
        "tokens": float(mask.sum()),
    }


@register_loss("cispo")
def cispo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
               mask: torch.Tensor, *, eps_low: float = 1.0, eps_high: float = 0.28,
               normalization: str = "token", token_count: float | None = None,
               sample_count: float | None = None, trust_region_mask: bool = False, **norm):
    """CISPO (MiniMax-M1, Eq. 4): L = -1/Σ|o_i| · Σ sg(clip(r, 1-eps_low, 1+eps_high)) · Â · log π.

    The importance weight r = π/π_old is clipped and detached; every unmasked token keeps the
    gradient of log π (PPO would drop the clipped ones). `trust_region_mask=True` multiplies by
    the report's Eq. 7 mask M_it, which reproduces PPO's trust region: M=0 where Â>0 and
    r>1+eps_high, or Â<0 and r<1-eps_low (standard CISPO: off). Dropped tokens still count in
    the normaliser, as in the unified formula.

    `normalization="sample"`: the variant of M1's long-window stages ("sample-level loss combined
    with token-level normalisation", our reading): each response's loss is its token mean,
    L_i = -1/|o_i| · Σ_t sg(r̂_it) Â_i log π_it, and the batch loss is the mean over responses
    L = 1/N · Σ_i L_i, so a long (often failing) response weighs no more than a short one.
    `sample_count`: the batch's number of responses when this call holds part of it.
    `normalization="prompt"`: ScaleRL's prompt-level averaging (`aggregate`; `**norm` takes its
    prompt_index / prompt_tokens / prompt_count).
    """
    with torch.no_grad():
        ratio = torch.exp(logprobs - old_logprobs)
        weight = ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
        clipped = ((ratio < 1.0 - eps_low) | (ratio > 1.0 + eps_high)).to(mask.dtype)
        if trust_region_mask:
            drop = ((advantages > 0) & (ratio > 1.0 + eps_high)) | ((advantages < 0) & (ratio < 1.0 - eps_low))
            weight = weight * (~drop).to(weight.dtype)
    per_token = -weight * advantages * logprobs
    loss = aggregate(per_token, mask, normalization, token_count=token_count,
                     sample_count=sample_count, **norm)
    return loss, _ratio_metrics(ratio, clipped, mask)


def _ppo_clip_terms(logprobs, old_logprobs, advantages, eps_low, eps_high, dual_clip):
    """Per-token PPO objective (to minimise) and which tokens were clipped."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = ratio * advantages
    clipped_obj = ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * advantages
    per_token = -torch.minimum(unclipped, clipped_obj)
    if dual_clip is not None:  # Ye et al. 2020: bound the loss of negative-advantage tokens
        per_token = torch.where(advantages < 0, torch.minimum(per_token, -dual_clip * advantages),
                                per_token)
    with torch.no_grad():
        clipped = ((ratio < 1.0 - eps_low) | (ratio > 1.0 + eps_high)).to(logprobs.dtype)
    return per_token, ratio.detach(), clipped


def _sample_mean(per_token: torch.Tensor, mask: torch.Tensor, sample_count: float | None) -> torch.Tensor:
    """Mean over each sequence's tokens, then over sequences (GRPO's normalisation).
    sample_count: the batch's number of sequences when this call holds part of it."""
    per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    has = (mask.sum(-1) > 0).to(per_token.dtype)
    n = has.sum() if sample_count is None else torch.as_tensor(sample_count, dtype=per_token.dtype)
    return (per_seq * has).sum() / n.clamp(min=1.0)


@register_loss("ppo_clip")
def ppo_clip_loss(logprobs, old_logprobs, advantages, mask, *, eps_low: float = 0.2,
                  eps_high: float = 0.2, dual_clip: float | None = 3.0,
                  normalization: str = "token", token_count: float | None = None,
                  sample_count: float | None = None, **norm):
    """PPO-clip, L = -min(r·Â, clip(r, 1-eps_low, 1+eps_high)·Â), with dual clip c (default 3,
    None: off) for Â<0. Clipped tokens get no gradient. Token-level normalisation by default
    (any of `aggregate`'s)."""
    per_token, ratio, clipped = _ppo_clip_terms(logprobs, old_logprobs, advantages, eps_low,
                                                eps_high, dual_clip)
    loss = aggregate(per_token, mask, normalization, token_count=token_count,
                     sample_count=sample_count, **norm)
    return loss, _ratio_metrics(ratio, clipped, mask)


@register_loss("dapo")
def dapo_loss(logprobs, old_logprobs, advantages, mask, *, eps_low: float = 0.2,
              eps_high: float = 0.28, normalization: str = "token", token_count: float | None = None,
              sample_count: float | None = None, **norm):
    """DAPO: PPO-clip with clip-higher (eps_high 0.28 > eps_low 0.2) and token-level
    normalisation over the batch; no dual clip, no KL."""
    return ppo_clip_loss(logprobs, old_logprobs, advantages, mask, eps_low=eps_low,
                         eps_high=eps_high, dual_clip=None, normalization=normalization,
                         token_count=token_count, sample_count=sample_count, **norm)


@register_loss("grpo")
def grpo_loss(logprobs, old_logprobs, advantages, mask, *, eps_low: float = 0.2,
              eps_high: float = 0.2, normalization: str = "sample",
              token_count: float | None = None, sample_count: float | None = None, **norm):
    """GRPO (DeepSeekMath): PPO-clip per token, averaged over each response's tokens and then
    over responses (sample-level normalisation); the KL term is left out, as M1 uses none.
    `sample_count`: the batch's number of responses when this call holds part of it."""
    if normalization != "sample" or norm:  # norm: prompt-level arguments (normalization="prompt")
        raise ValueError("grpo normalises per sample; use dapo for token-level (or prompt-level) "
                         "normalisation")
    per_token, ratio, clipped = _ppo_clip_terms(logprobs, old_logprobs, advantages, eps_low,
                                                eps_high, None)
    return _sample_mean(per_token, mask, sample_count), _ratio_metrics(ratio, clipped, mask)
