"""RoPE in the softmax-attention layers: what transformers' minimax does, and M1's partial form."""

from __future__ import annotations

import math

import pytest
import torch

from cispo.models.rope import apply_m1_partial_rope


def one_softmax_layer_model(head_dim=16, heads=4, kv_heads=2, theta=1e7):
    from transformers import MiniMaxConfig, MiniMaxForCausalLM

    cfg = MiniMaxConfig(vocab_size=50, hidden_size=heads * head_dim, intermediate_size=32,
                        num_hidden_layers=1, num_attention_heads=heads, num_key_value_heads=kv_heads,
                        head_dim=head_dim, num_local_experts=2, num_experts_per_tok=1,
                        layer_types=["full_attention"], attn_implementation="eager",
                        rope_parameters={"rope_type": "default", "rope_theta": theta})
    torch.manual_seed(0)
    model = MiniMaxForCausalLM(cfg).double().eval()
    attn = model.model.layers[0].self_attn
    with torch.no_grad():  # sharp attention, so the rotation shows in the output
        attn.q_proj.weight.normal_(0, 0.5)
        attn.k_proj.weight.normal_(0, 0.5)
    return model


def rope_formula(x: torch.Tensor, rotary_dim: int, theta: float) -> torch.Tensor:
    """x [B, H, T, D] at positions 0..T-1: dims i and i + r/2 (i < r/2) turn by p·θ^(−2i/r)."""
    out = x.clone()
    half = rotary_dim // 2
    for p in range(x.shape[2]):
        for i in range(half):
            a = p * theta ** (-2 * i / rotary_dim)
            c, s = math.cos(a), math.sin(a)
            x1, x2 = x[:, :, p, i], x[:, :, p, i + half]
            out[:, :, p, i] = x1 * c - x2 * s
            out[:, :, p, i + half] = x1 * s + x2 * c
    return out


def attention_formula(attn, x: torch.Tensor, rotary_dim: int, theta: float) -> torch.Tensor:
    """Causal GQA softmax attention of one MiniMaxAttention layer, RoPE on `rotary_dim` dims."""
    b, t, _ = x.shape
    d, h = attn.head_dim, attn.config.num_attention_heads
    q = attn.q_proj(x).view(b, t, -1, d).transpose(1, 2)
    k = attn.k_proj(x).view(b, t, -1, d).transpose(1, 2)
    v = attn.v_proj(x).view(b, t, -1, d).transpose(1, 2)
    q, k = rope_formula(q, rotary_dim, theta), rope_formula(k, rotary_dim, theta)
    rep = h // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    o = torch.softmax(scores, -1) @ v
    return attn.o_proj(o.transpose(1, 2).reshape(b, t, h * d))


def layer_output(model, x):
    pos = torch.arange(x.shape[1])[None]
    cos_sin = model.model.rotary_emb(x, pos)
    attn = model.model.layers[0].self_attn
    mask = torch.zeros(1, 1, x.shape[1], x.shape[1], dtype=x.dtype).masked_fill(
        torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).triu(1), float("-inf"))
    return attn(hidden_states=x, position_embeddings=cos_sin, attention_mask=mask)[0]


def test_transformers_minimax_rotates_the_whole_head():
    """What transformers ships: all head_dim dims rotated — not M1's 64 of 128. (1e-5: its
    frequencies and cos/sin are computed in float32 even for a float64 model.)"""
    model = one_softmax_layer_model()
    x = torch.randn(2, 7, 64, dtype=torch.float64)
    ours = layer_output(model, x)
    attn = model.model.layers[0].self_attn
    torch.testing.assert_close(ours, attention_formula(attn, x, 16, 1e7), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours, attention_formula(attn, x, 8, 1e7), atol=1e-3)


@pytest.mark.parametrize("rotary_dim", [8, 4, 16])
def test_m1_partial_rope_matches_formula(rotary_dim):
    """After apply_m1_partial_rope: the first rotary_dim dims rotate, the rest pass through
    (M1: 64 of 128; here the same ratio and others at head_dim 16)."""
    model = apply_m1_partial_rope(one_softmax_layer_model(), rotary_dim)
    assert model.config.rotary_dim == rotary_dim
    x = torch.randn(2, 9, 64, dtype=torch.float64)
    attn = model.model.layers[0].self_attn
    torch.testing.assert_close(layer_output(model, x), attention_formula(attn, x, rotary_dim, 1e7),
                               rtol=1e-5, atol=1e-5)


def test_whole_model_runs_with_partial_rope_and_rejects_bad_dims():
    model = apply_m1_partial_rope(one_softmax_layer_model().float(), 8)  # MoE: no float64 kernel
    out = model(input_ids=torch.randint(0, 50, (2, 5))).logits
    assert out.shape == (2, 5, 50) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="rotary_dim"):
        apply_m1_partial_rope(one_softmax_layer_model(), 7)
