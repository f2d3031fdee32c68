"""Rotary embedding of one decode token's q and k, with its k and v written to the KV cache.

For row r (slot s = slot[r], position p = pos[r]) of a fused q|k|v projection y [n, (H + 2·KVH)·D]:

    q[r, h] = rope(norm_q(y_q[r, h]), p)                       returned, [n, H, D]
    k_cache[s, p, j] = rope(norm_k(y_k[r, j]), p);  v_cache[s, p, j] = y_v[r, j]

rope rotates the first R dims NeoX style (dim i pairs with i + R/2; R = the table's width, M1's
partial RoPE when R < D) and passes the rest through: x·cos + rotate_half(x)·sin, each product
and the sum rounded to the model dtype as transformers computes it; cos / sin come from tables
[positions, R] computed as transformers' rotary embedding does. norm_q / norm_k: Qwen3's per-head
RMSNorm before the rotation (None: none). One Triton program per (row, head) replaces the ~25
element-wise kernels and two scatter kernels of the torch path.
"""

from __future__ import annotations

import torch

from cispo.ops.triton_util import triton_jit, use_triton

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = tl = None


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _head_norm(x, norm):
    if norm is None:
        return x
    w, eps = norm
    xf = x.float()
    return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def rope_ref(x, cos, sin):
    """x [n, heads, D], cos / sin [n, R]: rotate the first R dims."""
    R = cos.shape[-1]
    c, s = cos[:, None, :], sin[:, None, :]
    rot = x[..., :R] * c + _rotate_half(x[..., :R]) * s
    return rot if R == x.shape[-1] else torch.cat((rot, x[..., R:]), dim=-1)


def rope_cache_ref(y, heads, kv_heads, cos_t, sin_t, pos, slot, k_cache, v_cache, q_norm=None, k_norm=None):
    n, D = y.shape[0], k_cache.shape[-1]
    q = y[:, :heads * D].view(n, heads, D)
    k = y[:, heads * D:(heads + kv_heads) * D].view(n, kv_heads, D)
    v = y[:, (heads + kv_heads) * D:].view(n, kv_heads, D)
    cos, sin = cos_t[pos], sin_t[pos]
    q = rope_ref(_head_norm(q, q_norm), cos, sin)
    k_cache[slot, pos] = rope_ref(_head_norm(k, k_norm), cos, sin)
    v_cache[slot, pos] = v
    return q


@triton_jit
def _rope_cache_kernel(y_ptr, cos_ptr, sin_ptr, pos_ptr, slot_ptr, k_ptr, v_ptr, q_ptr, qn_ptr, kn_ptr,
                       stride_y, stride_t, stride_cs, stride_cm, stride_ch, q_eps, k_eps,
                       H: tl.constexpr, KVH: tl.constexpr, D: tl.constexpr, R: tl.constexpr,
                       HAS_NORM: tl.constexpr):
    r = tl.program_id(0)
    h = tl.program_id(1)  # q heads first, then k heads
    p = tl.load(pos_ptr + r).to(tl.int64)
    is_q = h < H
    d = tl.arange(0, D)
    pidx = tl.where(d < R // 2, d + R // 2, tl.where(d < R, d - R // 2, d))  # rotate_half's partner
    base = y_ptr + r * stride_y + h * D
    x = tl.load(base + d)
    dt = x.dtype
    xf = x.to(tl.float32)
    xp = tl.load(base + pidx).to(tl.float32)
    if HAS_NORM:  # Qwen3: RMSNorm over the head (float32, rounded, times the weight, rounded)
        w = tl.where(is_q, tl.load(qn_ptr + d), tl.load(kn_ptr + d)).to(tl.float32)
        wp = tl.where(is_q, tl.load(qn_ptr + pidx), tl.load(kn_ptr + pidx)).to(tl.float32)
        inv = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / D + tl.where(is_q, q_eps, k_eps))
        xf = (w * (xf * inv).to(dt).to(tl.float32)).to(dt).to(tl.float32)
        xp = (wp * (xp * inv).to(dt).to(tl.float32)).to(dt).to(tl.float32)
    c = tl.load(cos_ptr + p * stride_t + d, mask=d < R, other=1.0).to(tl.float32)
    s = tl.load(sin_ptr + p * stride_t + d, mask=d < R, other=0.0).to(tl.float32)
    rot = tl.where(d < R // 2, -xp, xp)
    out = ((xf * c).to(dt).to(tl.float32) + (rot * s).to(dt).to(tl.float32)).to(dt)
    out = tl.where(d < R, out, xf.to(dt))
    if is_q:
        tl.store(q_ptr + (r * H + h) * D + d, out)
    else:
        j = h - H
        slot = tl.load(slot_ptr + r).to(tl.int64)
        cache = slot * stride_cs + p * stride_cm + j * stride_ch + d
        tl.store(k_ptr + cache, out)
        tl.store(v_ptr + cache, tl.load(y_ptr + r * stride_y + (H + KVH + j) * D + d))


def rope_cache(y, heads: int, kv_heads: int, cos_t, sin_t, pos, slot, k_cache, v_cache, q_norm=None, k_norm=None,
               *, force: str | None = None):
    """q [n, heads, D] rotated; k (rotated) and v written to the caches at (slot[r], pos[r]).
    y [n, (heads + 2·kv_heads)·D] (last dim contiguous), cos_t / sin_t [positions, R], caches
    [slots, max_len, kv_heads, D] contiguous; q_norm / k_norm (weight, eps) or None."""
    if not use_triton(y, force):
        return rope_cache_ref(y, heads, kv_heads, cos_t, sin_t, pos, slot, k_cache, v_cache, q_norm, k_norm)
    n, D = y.shape[0], k_cache.shape[-1]
    R = cos_t.shape[-1]
    if y.stride(-1) != 1 or not k_cache.is_contiguous() or not v_cache.is_contiguous() or cos_t.stride(-1) != 1:
        raise ValueError("rope_cache: y's last dim, the tables and the caches must be contiguous")
    q = torch.empty((n, heads, D), dtype=y.dtype, device=y.device)
    has_norm = q_norm is not None
    qn, q_eps = q_norm if has_norm else (y, 0.0)
    kn, k_eps = k_norm if has_norm else (y, 0.0)
    _rope_cache_kernel[(n, heads + kv_heads)](
        y, cos_t, sin_t, pos, slot, k_cache, v_cache, q, qn, kn, y.stride(0), cos_t.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), float(q_eps), float(k_eps),
        H=heads, KVH=kv_heads, D=D, R=R, HAS_NORM=has_norm, num_warps=1 if D <= 64 else 2)
    return q
