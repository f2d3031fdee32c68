"""Lightning attention on GPU through flash-linear-attention, in place of transformers' block loop.

transformers' `MiniMaxLightningAttention` computes, per head h with decay rate λ_h,

    o_t = Σ_{s ≤ t} exp(−λ_h (t − s)) (q_t · k_s) v_s,        q, k, v = silu(W_qkv x)

as a Python loop over 256-token blocks (intra-block masked product + inter-block KV state). That is
exactly `chunk_simple_gla(q, k, v, g_gamma=−λ, scale=1.0)`: a data-independent per-head log-decay
of −λ_h per step and no 1/√d scaling. λ_h is the module's own `slope_rate` buffer, which in
transformers (as in MiniMax-Text-01's release) is M1's 2^(−8(h+1)/H) times a per-layer factor
1 − l/(L−1) + 1e-5, so reading the buffer keeps the patched layer equal to the original whatever
the layer.

`patch_lightning_attention(model)` rebinds the forward of every lightning layer. The fla kernel runs
for every full-sequence pass on CUDA (training, log-probs, and a generation prefill, which also
leaves the final KV state in the cache); decode steps (one token, state in the cache) keep the
state in FP32 (`fp32_state_decode`, as M1 does; `fp32_state=False` gives transformers' step back),
and CPU runs keep transformers' code. Packed micro-batches (B = 1, several sequences back to
back) take `cu_seq_lens_q` from the call's kwargs (HF's flash-attention convention) or, failing
that, derive it from `position_ids` restarting at 0; the KV state then restarts at every
sequence boundary, which transformers' loop (one state across the whole row) does not do.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn

# cache the row's boundaries on the tensor they come from (False: rebuild them in every layer, as
# before issue 22; benchmarks switch it to compare)
CACHE_CU_SEQLENS = True


def _cu_seqlens(position_ids: torch.Tensor | None, batch: int, seq_len: int, kwargs: dict):
    """The row's sequence boundaries (long), or None for one sequence / a padded batch. Cached on
    the tensor it comes from, so every layer (and the backward) passes fla the same object: its
    chunk indices are then built once per forward (fla caches them by identity), not per layer."""
    cu = kwargs.get("cu_seq_lens_q")
    src = cu if cu is not None else position_ids
    if src is None:
        return None
    if not CACHE_CU_SEQLENS:
        return _derive_cu_seqlens(cu, position_ids, batch, seq_len)
    cached = getattr(src, "_cispo_cu_long", None)
    if cached is None:
        cached = _derive_cu_seqlens(cu, position_ids, batch, seq_len)
        src._cispo_cu_long = cached if cached is not None else False
    return cached if cached is not False else None


def _cu_seqlens_cpu(cu: torch.Tensor | None) -> torch.Tensor | None:
    """A host copy of cu_seqlens (one sync per forward, cached): fla otherwise reads the lengths
    back from the GPU in every call."""
    if cu is None or not cu.is_cuda or not CACHE_CU_SEQLENS:
        return None
    cached = getattr(cu, "_cispo_cpu", None)
    if cached is None:
        cached = cu.cpu()
        cu._cispo_cpu = cached
    return cached


def _derive_cu_seqlens(cu, position_ids, batch, seq_len):
    if cu is not None:
        return cu.to(torch.long)
    if position_ids is None or batch != 1:
        return None
    starts = (position_ids.reshape(-1)[:seq_len] == 0).nonzero().squeeze(1)
    if starts.numel() <= 1 and (starts.numel() == 0 or int(starts[0]) == 0):
        return None  # one sequence: no boundaries to honour
    bounds = torch.cat([starts.new_zeros(1), starts[starts > 0], starts.new_tensor([seq_len])])
    return bounds.to(torch.long)


def fla_lightning_forward(self, hidden_states, position_embeddings=None, attention_mask=None,
                          past_key_values=None, **kwargs):
    """Same signature and result as MiniMaxLightningAttention.forward, via chunk_simple_gla."""
    decoding = past_key_values is not None and past_key_values.get_linear_cache(self.layer_idx) is not None
    # several tokens after a kept state (a multi-turn episode's observation): fla's chunked kernel
    # from that state, not a loop over the tokens
    extending = decoding and hidden_states.shape[1] > 1 and hidden_states.is_cuda
    if decoding and not extending and getattr(self, "fp32_state", False):
        return fp32_state_decode(self, hidden_states, attention_mask, past_key_values)
    if (decoding and not extending) or not hidden_states.is_cuda:  # transformers' recurrence
        return type(self).forward(self, hidden_states, position_embeddings, attention_mask,
                                  past_key_values, **kwargs)
    from fla.ops.simple_gla import chunk_simple_gla
    from transformers.models.minimax.modeling_minimax import apply_mask_to_padding_states

    batch, seq_len, _ = hidden_states.shape
    heads, dim = self.num_attention_heads, self.head_dim
    qkv = self.act_fn(self.qkv_proj(hidden_states))
    qkv = apply_mask_to_padding_states(qkv, attention_mask)  # left padding: zero q, k, v
    # [B, T, H, 3D] split is fla's [B, T, H, D] layout (strided; fla makes it contiguous).
    # Three separate q/k/v products giving contiguous tensors were tried: the layer's total
    # forward+backward time did not change (H100, 32K: 98 vs 100 ms), so the simpler form stays,
    # and it calls qkv_proj itself, which ZeRO-3 needs to gather the weight.
    q, k, v = qkv.view(batch, seq_len, heads, 3 * dim).split(dim, dim=-1)
    cu = _cu_seqlens(kwargs.get("position_ids"), batch, seq_len, kwargs)
    g_gamma = -self.slope_rate.reshape(heads).float()
    # a prefill with a cache (generation, use_cache=True) leaves the final KV state for decoding
    initial = past_key_values.get_linear_cache(self.layer_idx).float() if extending else None
    o, state = chunk_simple_gla(q, k, v, g_gamma=g_gamma, scale=1.0, initial_state=initial,
                                cu_seqlens=cu, cu_seqlens_cpu=_cu_seqlens_cpu(cu),
                                output_final_state=past_key_values is not None)
    if past_key_values is not None:
        # fla's final state is FP32; transformers' decode step multiplies it with the model-dtype
        # queries, so it gets v's dtype unless our FP32-state decode step reads it
        keep = torch.float32 if getattr(self, "fp32_state", False) else v.dtype
        past_key_values.set_linear_cache(self.layer_idx, state.to(keep))
    o = self.norm(o.reshape(batch, seq_len, heads * dim))
    o = F.sigmoid(self.output_gate(hidden_states)) * o
    # transformers returns the final KV state too; nothing in the decoder layer reads it
    return self.out_proj(o), None


def fp32_state_decode(self, hidden_states, attention_mask, past_key_values):
    """Decode steps of a lightning layer with the KV state kept and updated in FP32.

    transformers' step runs S ← e^{−λ} S + kᵀv and o = q S in the model's dtype, so in bf16 the
    state (a running sum over the whole response) is rounded to 8 bits of mantissa at every
    token and the rollout's log-probs drift away from the learner's full pass (fla, FP32
    accumulation). M1 keeps this state in FP32; so does this step: q, k, v come from the
    model-dtype projection, the recurrence and q S run in FP32, and o is cast back for the norm.
    Same result as transformers' step in an FP32 model.
    """
    from transformers.models.minimax.modeling_minimax import apply_mask_to_padding_states

    batch, seq_len, _ = hidden_states.shape
    heads, dim = self.num_attention_heads, self.head_dim
    qkv = self.act_fn(self.qkv_proj(hidden_states))
    qkv = apply_mask_to_padding_states(qkv, attention_mask)
    q, k, v = qkv.view(batch, seq_len, heads, 3 * dim).float().transpose(1, 2).split(dim, dim=-1)
    state = past_key_values.get_linear_cache(self.layer_idx).float()  # [B, H, D, D]
    ratio = torch.exp(-self.slope_rate.float())  # [H, 1, 1]
    out = []
    for t in range(seq_len):
        kt, vt = k[:, :, t:t + 1], v[:, :, t:t + 1]
        state = ratio * state + kt.transpose(-1, -2) @ vt
        out.append(q[:, :, t:t + 1] @ state)
    past_key_values.set_linear_cache(self.layer_idx, state)
    o = torch.cat(out, dim=2).transpose(1, 2).reshape(batch, seq_len, heads * dim).to(hidden_states.dtype)
    o = self.norm(o)
    o = F.sigmoid(self.output_gate(hidden_states)) * o
    return self.out_proj(o), None


def patch_lightning_attention(model: nn.Module, fp32_state: bool = True) -> int:
    """Route every MiniMax lightning layer of `model` through fla on GPU; returns how many.

    `fp32_state` (default, as M1): generation keeps the lightning KV state in FP32 across decode
    steps (`fp32_state_decode`) instead of the model's dtype. Idempotent; the module's parameters
    and buffers are untouched, so checkpoints, ZeRO-3 partitioning and `save_pretrained` see the
    same model.
    """
    from transformers.models.minimax.modeling_minimax import MiniMaxLightningAttention

    n = 0
    for module in model.modules():
        if isinstance(module, MiniMaxLightningAttention):
            module.forward = types.MethodType(fla_lightning_forward, module)
            module.fp32_state = fp32_state
            n += 1
    return n

