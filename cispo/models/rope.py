"""M1's partial RoPE for transformers' MiniMax: rotate the first `rotary_dim` of each head's dims.

MiniMax-Text-01/M1 (`rotary_dim: 64`, head_dim 128, θ = 1e7) rotates only dims [0, 64) of every
query/key head, NeoX style (dim i pairs with i + 32), and passes dims [64, 128) through; its
release code and vLLM's `MiniMaxText01RotaryEmbedding(rotary_dim=config.rotary_dim)` do this.
transformers' `minimax` (checked in 5.23) builds its frequencies over the whole head_dim and
rotates all 128 dims (pairs i with i + 64): a different function of the same weights. Loading an
M1 checkpoint there and training would silently train another model, and log-probs would disagree
with a vLLM rollout.

`apply_m1_partial_rope(model, rotary_dim)` fixes both halves: the model's rotary embedding gets the
rotary_dim-wide frequencies, and every softmax-attention layer rotates only that slice. It records
`config.rotary_dim` so `save_pretrained` writes the value vLLM reads. Lightning layers use no RoPE.
"""

from __future__ import annotations

import types

import torch
from torch import nn


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def partial_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """Rotate the first cos.shape[-1] dims of q, k ([B, H, T, D]); the rest pass through."""
    r = cos.shape[-1]
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    q_rot, q_pass = q[..., :r], q[..., r:]
    k_rot, k_pass = k[..., :r], k[..., r:]
    q = torch.cat((q_rot * cos + rotate_half(q_rot) * sin, q_pass), dim=-1)
    k = torch.cat((k_rot * cos + rotate_half(k_rot) * sin, k_pass), dim=-1)
    return q, k


def _partial_rope_attention_forward(self, hidden_states, position_embeddings, attention_mask,
                                    past_key_values=None, **kwargs):
    """transformers' MiniMaxAttention.forward with `partial_rotary` in place of full rotation."""
    from transformers.models.minimax.modeling_minimax import (
        ALL_ATTENTION_FUNCTIONS,
        eager_attention_forward,
    )

    input_shape = hidden_states.shape[:-1]
    hidden_shape = (*input_shape, -1, self.head_dim)
    q = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
    k = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
    v = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
    cos, sin = position_embeddings
    q, k = partial_rotary(q, k, cos, sin)
    if past_key_values is not None:
        k, v = past_key_values.update(k, v, self.layer_idx)
    attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation,
                                                      eager_attention_forward)
    out, weights = attention(self, q, k, v, attention_mask,
                             dropout=0.0 if not self.training else self.attention_dropout,
                             scaling=self.scaling,
                             sliding_window=getattr(self.config, "sliding_window", None), **kwargs)
    return self.o_proj(out.reshape(*input_shape, -1).contiguous()), weights


def apply_m1_partial_rope(model: nn.Module, rotary_dim: int = 64) -> nn.Module:
    """Make a transformers MiniMax model rotate only `rotary_dim` dims per head, as M1 does."""
    from transformers.models.minimax.modeling_minimax import (
        MiniMaxAttention,
        MiniMaxRotaryEmbedding,
    )

    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    if rotary_dim % 2 or not 0 < rotary_dim <= head_dim:
        raise ValueError(f"rotary_dim must be even and in (0, head_dim={head_dim}], got {rotary_dim}")
    theta = cfg.rope_parameters["rope_theta"]
    for module in model.modules():
        if isinstance(module, MiniMaxRotaryEmbedding):
            dev = module.inv_freq.device
            inv = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float, device=dev)
                                   / rotary_dim))
            module.inv_freq = inv
            module.original_inv_freq = inv.clone()
        elif isinstance(module, MiniMaxAttention):
            module.forward = types.MethodType(_partial_rope_attention_forward, module)
    cfg.rotary_dim = rotary_dim
    return model
