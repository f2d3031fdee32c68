"""Sequence-parallel forwards for transformers' MiniMax attention layers (bound by `patch_model`).

Lightning (LASP+-style): the chunk runs from a zero state through the chunked kernel (fla on GPU,
`chunk_lightning_torch` on CPU), which also returns the final state of its last sequence. The
ranks' final states are combined into each rank's incoming state (`IncomingState`: all-gather +
decayed prefix sum, exact backward), and the incoming state's part of the output,
exp(−λ (t+1)) q_t · I for the tokens before the chunk's first sequence start, is added.

Softmax: K and V (after RoPE at global positions; GQA keeps them small) are all-gathered along the
sequence; every local segment attends to its own sequence's keys up to itself: a causal mask
aligned bottom-right over global keys [sequence start, segment end), one SDPA call per segment,
so no [T, T] mask exists. The all-gather's backward reduce-scatters the K/V gradients.

Both run at sequence-parallel size 1 too (then they are packed-sequence layers that honour
boundaries), and fall back to the original forward for cached generation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cispo.models.rope import partial_rotary
from cispo.seqpar.comm import gather_seq, group_rank, group_size
from cispo.seqpar.lightning_kernel import chunk_lightning_torch
from cispo.seqpar.segments import Segments, segments_of
from cispo.seqpar.state_combine import IncomingState, add_incoming, chunk_decay


def _segments(self, kwargs: dict) -> Segments:
    pos = kwargs.get("position_ids")
    if pos is None:
        raise ValueError("a sequence-parallel model needs position_ids (restarting at 0 per "
                         "packed sequence); build the inputs with cispo.seqpar.model_inputs")
    sp = self._seqpar
    # every layer of one forward gets the same position_ids object; the cache holds that object,
    # so an identity match cannot be a new tensor that reuses a freed address
    if sp.cached_key is not pos:
        sp.cached_key, sp.cached = pos, segments_of(pos, group_rank(sp.group))
    return sp.cached


def _check_unpadded(hidden_states: torch.Tensor, attention_mask) -> None:
    if hidden_states.shape[0] != 1:
        raise ValueError(f"sequence-parallel layers take one packed row (B = 1), got B = "
                         f"{hidden_states.shape[0]}")
    if attention_mask is not None and attention_mask.dim() == 2 and not bool(attention_mask.all()):
        raise ValueError("padded rows are not supported by the sequence-parallel layers: pack the "
                         "sequences (position_ids restarting at 0) instead")


def _no_cache_under_sp(self) -> None:
    if group_size(self._seqpar.group) > 1:
        raise ValueError("a KV cache (use_cache=True) is for generation, which does not run "
                         "sequence-parallel: call the model with use_cache=False")


def lightning_local(q, k, v, slopes, cu_seqlens: list[int], block: int):
    """The chunk from a zero state: (o [T, H, d], final states [N, H, d, d]) via fla or torch."""
    if q.is_cuda:
        from fla.ops.simple_gla import chunk_simple_gla

        cu = torch.tensor(cu_seqlens, device=q.device, dtype=torch.long)
        o, finals = chunk_simple_gla(q[None], k[None], v[None], g_gamma=-slopes.float(), scale=1.0,
                                     cu_seqlens=cu if len(cu_seqlens) > 2 else None,
                                     output_final_state=True)
        return o[0], finals
    return chunk_lightning_torch(q, k, v, slopes, torch.tensor(cu_seqlens), block)


def sp_lightning_forward(self, hidden_states, position_embeddings=None, attention_mask=None,
                         past_key_values=None, **kwargs):
    if past_key_values is not None:  # generation: the original layer and its cache
        _no_cache_under_sp(self)
        return self._seqpar_original(hidden_states, position_embeddings, attention_mask,
                                     past_key_values, **kwargs)
    _check_unpadded(hidden_states, attention_mask)
    seg = _segments(self, kwargs)
    T, H, d = hidden_states.shape[1], self.num_attention_heads, self.head_dim
    qkv = self.act_fn(self.qkv_proj(hidden_states))
    q, k, v = qkv.view(T, H, 3 * d).split(d, dim=-1)
    slopes = self.slope_rate.reshape(H)
    o, finals = lightning_local(q, k, v, slopes, seg.cu_seqlens, self.block_size)
    group = self._seqpar.group
    if group_size(group) > 1:
        sdt = torch.promote_types(q.dtype, torch.float32)  # states and decays in FP32 at least
        lam = slopes.to(sdt)
        incoming = IncomingState.apply(finals[-1].to(sdt), chunk_decay(lam, T, seg.resets), group)
        o = add_incoming(o, q, lam, incoming, seg.first_len)
    o = self.norm(o.reshape(1, T, H * d))
    o = F.sigmoid(self.output_gate(hidden_states)) * o
    return self.out_proj(o), None


def sp_softmax_forward(self, hidden_states, position_embeddings, attention_mask,
                       past_key_values=None, **kwargs):
    if past_key_values is not None:
        _no_cache_under_sp(self)
        return self._seqpar_original(hidden_states, position_embeddings, attention_mask,
                                     past_key_values, **kwargs)
    from torch.nn.attention.bias import causal_lower_right
    from transformers.models.minimax.modeling_minimax import repeat_kv

    if hidden_states.shape[0] != 1:
        raise ValueError(f"sequence-parallel layers take one packed row (B = 1), got B = "
                         f"{hidden_states.shape[0]}")
    seg = _segments(self, kwargs)
    T, d = hidden_states.shape[1], self.head_dim
    q = self.q_proj(hidden_states).view(1, T, -1, d).transpose(1, 2)
    k = self.k_proj(hidden_states).view(1, T, -1, d).transpose(1, 2)
    v = self.v_proj(hidden_states).view(1, T, -1, d).transpose(1, 2)
    cos, sin = position_embeddings  # from the chunk's position_ids: global positions
    q, k = partial_rotary(q, k, cos, sin)  # whole or M1-partial rotation (cos width decides)
    group = self._seqpar.group
    keys = gather_seq(k[0].transpose(0, 1), group)  # [W T, Hkv, d]
    values = gather_seq(v[0].transpose(0, 1), group)
    outs = []
    for a, b, g0, g1 in seg.key_ranges():
        kk = repeat_kv(keys[g0:g1].transpose(0, 1)[None], self.num_key_value_groups)
        vv = repeat_kv(values[g0:g1].transpose(0, 1)[None], self.num_key_value_groups)
        outs.append(F.scaled_dot_product_attention(
            q[:, :, a:b], kk, vv, attn_mask=causal_lower_right(b - a, g1 - g0), scale=self.scaling,
            dropout_p=self.attention_dropout if self.training else 0.0))
    out = torch.cat(outs, dim=2).transpose(1, 2).reshape(1, T, -1)
    return self.o_proj(out), None
