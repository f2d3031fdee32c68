"""Per-token log-probabilities of given tokens under logits, in FP32."""

from __future__ import annotations

import torch


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature)[tokens], computed in float32 (float64 stays float64).

    logits [..., V], tokens [...] → [...]. The temperature must be the sampling temperature, so
    the learner scores the same distribution the engine sampled from.
    """
    x = logits if logits.dtype == torch.float64 else logits.float()
    if temperature != 1.0:
        x = x / temperature
    picked = x.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(x, dim=-1)


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / temperature) at each position, in float32 (no gradient use)."""
    x = logits if logits.dtype == torch.float64 else logits.float()
    if temperature != 1.0:
        x = x / temperature
    logp = torch.log_softmax(x, dim=-1)
    return -(logp.exp() * logp).sum(-1)
