"""One decode step of lightning attention for a batch of slots, the FP32 state updated in place.

For row r (slot s = slot[r]) and head h, with q, k, v = silu(qkv[r, h]) rounded to the model
dtype (transformers applies the activation to the projection in the model dtype):

    S ← exp(−λ_h) · S + kᵀ v          S = state[s, layer, h]: [D, D] in FP32, updated in place
    o = q · S                         returned in the model dtype

which is `cispo.models.lightning.fp32_state_decode` (M1 keeps this state in FP32) for one token,
over the slot pool of the graph engine. Rows whose slot is not running (`codes[s] >= 0`: a
finished sample the host has not yet refilled, or the padded rows of a CUDA-graph bucket, which
all point at one dummy slot) leave their state untouched, so a padded row never races a real one.

`qkv` is the projection output per transformers' layout: head h's q, k, v are the columns
[3Dh, 3Dh + D), [3Dh + D, 3Dh + 2D), [3Dh + 2D, 3Dh + 3D). `decay[layer, h]` = exp(−λ_h) computed
from the layer's own `slope_rate` buffer, as the learner's kernels read it.

The Triton kernel runs one program per (row, head, block of value columns): it reads the
[D, BV] block of S once and writes it once (the bytes that bound a decode step at large batch:
2 · 4 · H · D² per row and lightning layer).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cispo.ops.triton_util import triton_jit, use_triton

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = tl = None


def lightning_decode_ref(qkv, state, layer: int, slot, decay, codes):
    """Torch reference (and the CPU path): same contract as `lightning_decode`."""
    nb = qkv.shape[0]
    H, D = state.shape[2], state.shape[3]
    x = F.silu(qkv[:, :3 * H * D]).view(nb, H, 3 * D).float()
    q, k, v = x.split(D, dim=-1)
    old = state[slot, layer]  # [nb, H, D, D]
    new = decay[layer].view(1, H, 1, 1) * old + k.unsqueeze(-1) * v.unsqueeze(-2)
    o = (q.unsqueeze(-2) @ new).squeeze(-2)
    running = (codes[slot] < 0).view(nb, 1, 1, 1)
    state[slot, layer] = torch.where(running, new, old)  # padded rows write the dummy's own values back
    return o.reshape(nb, H * D).to(qkv.dtype)


@triton_jit(do_not_specialize=["layer"])
def _lightning_decode_kernel(qkv_ptr, state_ptr, slot_ptr, decay_ptr, codes_ptr, out_ptr,
                             stride_qkv, stride_out, layer, n_layers,
                             H: tl.constexpr, D: tl.constexpr, BV: tl.constexpr):
    r = tl.program_id(0)
    h = tl.program_id(1)
    j = tl.program_id(2)
    s = tl.load(slot_ptr + r).to(tl.int64)
    code = tl.load(codes_ptr + s)
    base = qkv_ptr + r * stride_qkv + h * 3 * D
    di = tl.arange(0, D)
    vj = j * BV + tl.arange(0, BV)
    q = tl.load(base + di)
    dt = q.dtype
    qf = q.to(tl.float32)
    kf = tl.load(base + D + di).to(tl.float32)
    vf = tl.load(base + 2 * D + vj).to(tl.float32)
    # silu in float32, rounded to the model dtype (as transformers' act_fn on the projection)
    qf = (qf / (1.0 + tl.exp(-qf))).to(dt).to(tl.float32)
    kf = (kf / (1.0 + tl.exp(-kf))).to(dt).to(tl.float32)
    vf = (vf / (1.0 + tl.exp(-vf))).to(dt).to(tl.float32)
    sp = state_ptr + ((s * n_layers + layer) * H + h) * D * D + di[:, None] * D + vj[None, :]
    S = tl.load(sp)
    lam = tl.load(decay_ptr + layer * H + h)
    S = lam * S + kf[:, None] * vf[None, :]
    o = tl.sum(qf[:, None] * S, axis=0)
    # the running test on the [D, BV] block itself, not a scalar bool broadcast into it: Triton's
    # interpreter (3.6..3.9) widens a broadcast scalar comparison to the operands' int type, and
    # 3.9's refuses an int mask; compiled, both forms are one predicate per row
    running = (code + tl.zeros([D, BV], dtype=tl.int64)) < 0
    tl.store(sp, S, mask=running)
    tl.store(out_ptr + r * stride_out + h * D + vj, o.to(out_ptr.dtype.element_ty))


def lightning_decode(qkv, state, layer: int, slot, decay, codes, *, out=None, force: str | None = None):
    """o [nb, H·D] (model dtype) for one token per row; state[slot[r], layer] updated in place
    for running rows. qkv [nb, ≥3·H·D] (last dim contiguous; e.g. the first columns of a fused
    projection), state [slots, layers, H, D, D] float32 contiguous, slot [nb] int, decay
    [layers, H] float32, codes [slots] int (running where < 0)."""
    if state.dtype != torch.float32 or not state.is_contiguous():
        raise ValueError("the lightning state must be a contiguous float32 tensor")
    if not use_triton(qkv, force):
        o = lightning_decode_ref(qkv, state, layer, slot, decay, codes)
        if out is not None:
            out.copy_(o)
            return out
        return o
    nb = qkv.shape[0]
    n_layers, H, D = state.shape[1], state.shape[2], state.shape[3]
    if qkv.stride(-1) != 1:
        raise ValueError("qkv's last dim must be contiguous")
    if out is None:
        out = torch.empty((nb, H * D), dtype=qkv.dtype, device=qkv.device)
    BV = min(D, 64)
    _lightning_decode_kernel[(nb, H, D // BV)](qkv, state, slot, decay, codes, out, qkv.stride(0),
                                               out.stride(0), layer, n_layers, H=H, D=D, BV=BV,
                                               num_warps=4 if D * BV <= 4096 else 8)
    return out
