"""Softmax attention of one new token per row over its slot's KV cache (decode step, GQA).

    o[r, h] = softmax(q[r, h] · K[s, :L, h_kv]ᵀ · scale) · V[s, :L, h_kv]      s = slot[r], L = pos[r] + 1

The caches are per-slot buffers [slots, max_len, kv_heads, D] (the graph engine's static pool);
the row's own key/value at `pos` must already be written. The Triton kernel runs one program
per (row, kv head): the group's query heads share each key/value block it loads (GQA), with an
online softmax in float32 (as flash attention; probabilities rounded to V's dtype for the P·V
product). Lengths come from device memory, so one captured graph serves any lengths.
"""

from __future__ import annotations

import torch

from cispo.ops.triton_util import triton_jit, use_triton

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = tl = None


def decode_attention_ref(q, k_cache, v_cache, slot, pos, scale: float):
    nb, H, D = q.shape
    M, KVH = k_cache.shape[1], k_cache.shape[2]
    k = k_cache[slot].float().repeat_interleave(H // KVH, dim=2)  # [nb, M, H, D]
    v = v_cache[slot].float().repeat_interleave(H // KVH, dim=2)
    s = torch.einsum("bhd,bmhd->bhm", q.float(), k) * scale
    beyond = torch.arange(M, device=q.device)[None, :] > pos[:, None]
    s = s.masked_fill(beyond[:, None, :], float("-inf"))
    p = torch.softmax(s, dim=-1)
    return torch.einsum("bhm,bmhd->bhd", p, v).to(q.dtype)


@triton_jit
def _decode_attention_kernel(q_ptr, k_ptr, v_ptr, slot_ptr, pos_ptr, out_ptr, scale,
                             stride_qr, stride_qh, stride_cs, stride_cm, stride_ch,
                             stride_or, stride_oh,
                             GROUP: tl.constexpr, BLOCK_H: tl.constexpr, D: tl.constexpr,
                             BLOCK_N: tl.constexpr, IEEE: tl.constexpr):
    r = tl.program_id(0)
    g = tl.program_id(1)
    s = tl.load(slot_ptr + r).to(tl.int64)
    length = tl.load(pos_ptr + r).to(tl.int32) + 1
    hi = tl.arange(0, BLOCK_H)
    di = tl.arange(0, D)
    hmask = hi < GROUP
    q = tl.load(q_ptr + r * stride_qr + (g * GROUP + hi[:, None]) * stride_qh + di[None, :],
                mask=hmask[:, None], other=0.0)
    m = tl.full((BLOCK_H,), float("-inf"), tl.float32)
    l_sum = tl.zeros((BLOCK_H,), tl.float32)
    acc = tl.zeros((BLOCK_H, D), tl.float32)
    base = s * stride_cs + g * stride_ch
    for n0 in range(0, length, BLOCK_N):  # the row's own length: no work past it
        ni = n0 + tl.arange(0, BLOCK_N)
        nmask = ni < length
        offs = base + ni[:, None] * stride_cm + di[None, :]
        k = tl.load(k_ptr + offs, mask=nmask[:, None], other=0.0)
        v = tl.load(v_ptr + offs, mask=nmask[:, None], other=0.0)
        if IEEE:
            sc = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            sc = tl.dot(q, tl.trans(k))
        sc = tl.where(nmask[None, :], sc * scale, float("-inf"))
        m_new = tl.maximum(m, tl.max(sc, axis=1))
        p = tl.exp(sc - m_new[:, None])
        alpha = tl.exp(m - m_new)
        l_sum = l_sum * alpha + tl.sum(p, axis=1)
        if IEEE:
            pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            pv = tl.dot(p.to(v.dtype), v)
        acc = acc * alpha[:, None] + pv
        m = m_new
    o = acc / l_sum[:, None]
    tl.store(out_ptr + r * stride_or + (g * GROUP + hi[:, None]) * stride_oh + di[None, :],
             o.to(out_ptr.dtype.element_ty), mask=hmask[:, None])


def decode_attention(q, k_cache, v_cache, slot, pos, scale: float, *, force: str | None = None):
    """o [nb, H, D] in q's dtype. q [nb, H, D] (last dim contiguous), caches [slots, max_len,
    kv_heads, D] (contiguous), slot / pos [nb] int: row r attends to positions 0..pos[r]."""
    if not use_triton(q, force):
        return decode_attention_ref(q, k_cache, v_cache, slot, pos, scale)
    nb, H, D = q.shape
    KVH = k_cache.shape[2]
    if q.stride(-1) != 1 or not k_cache.is_contiguous() or not v_cache.is_contiguous():
        raise ValueError("decode_attention: q's last dim and the caches must be contiguous")
    if D < 16 or D & (D - 1):
        raise ValueError(f"decode_attention needs a power-of-two head_dim >= 16, got {D}")
    group = H // KVH
    out = torch.empty((nb, H, D), dtype=q.dtype, device=q.device)
    _decode_attention_kernel[(nb, KVH)](
        q, k_cache, v_cache, slot, pos, out, float(scale), q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), out.stride(0), out.stride(1),
        GROUP=group, BLOCK_H=max(16, triton.next_power_of_2(group)), D=D, BLOCK_N=64 if D <= 64 else 32,
        IEEE=q.dtype == torch.float32, num_warps=4)
    return out
