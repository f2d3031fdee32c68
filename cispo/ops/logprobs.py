"""Per-token log-probabilities and entropies under logits, in FP32."""

from __future__ import annotations

import torch


def _scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / temperature in float32 (float64 stays float64): the sampling distribution."""
    x = logits if logits.dtype == torch.float64 else logits.float()
    return x / temperature if temperature != 1.0 else x


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature)[tokens], computed in float32 (float64 stays float64).

    logits [..., V], tokens [...] → [...]. The temperature must be the sampling temperature, so
    the learner scores the same distribution the engine sampled from.
    """
    x = _scaled(logits, temperature)
    picked = x.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(x, dim=-1)


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / temperature) at each position (used for monitoring)."""
    logp = torch.log_softmax(_scaled(logits, temperature), dim=-1)
    return -(logp.exp() * logp).sum(-1)
