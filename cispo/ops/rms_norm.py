"""RMSNorm with the residual combine of the layer before it, and MiniMax's gated output norm.

Both do in one pass what transformers does in several element-wise kernels, with transformers'
rounding: the residual combine `res·α + delta·β` rounds each product and the sum to the model
dtype, the norm runs in float32 (x · rsqrt(mean(x²) + eps)), is rounded to the model dtype and
only then multiplied by the weight (as `MiniMaxRMSNorm`, `LlamaRMSNorm`, `Qwen3MoeRMSNorm` do).

    add_rms_norm(res, delta, weight, eps, alpha, beta) -> (x, h)   x = res·α + delta·β, h = norm(x)
    gated_rms_norm(o, gate, weight, eps) -> sigmoid(gate) · norm(o)   (lightning layers' output)

Each has a torch path (CPU, any dtype: the reference) and a Triton kernel (CUDA: one program per
row), selected by the tensors' device; `force` picks one (tests run the Triton one under
TRITON_INTERPRET=1 on CPU).
"""

from __future__ import annotations

import torch

from cispo.ops.triton_util import triton_jit, use_triton

try:  # the kernels need triton; the torch paths run without it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU machines without triton
    triton = tl = None


def _norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    xf = x.to(torch.float32)
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(dtype)


def add_rms_norm_ref(res, delta, weight, eps, alpha=1.0, beta=1.0):
    x = res if delta is None else (res * alpha if alpha != 1 else res) + (delta * beta if beta != 1 else delta)
    return x, _norm_ref(x, weight, eps)


def gated_rms_norm_ref(o, gate, weight, eps):
    return torch.sigmoid(gate) * _norm_ref(o, weight, eps)


@triton_jit
def _add_rms_norm_kernel(res_ptr, delta_ptr, w_ptr, x_ptr, h_ptr, n_cols, stride_res, stride_delta,
                         stride_x, stride_h, eps, alpha, beta,
                         HAS_DELTA: tl.constexpr, STORE_X: tl.constexpr, SCALE_RES: tl.constexpr,
                         SCALE_DELTA: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    r = tl.load(res_ptr + row * stride_res + cols, mask=mask, other=0.0)
    dt = r.dtype
    x = r
    if HAS_DELTA:
        d = tl.load(delta_ptr + row * stride_delta + cols, mask=mask, other=0.0)
        if SCALE_RES:
            x = (x.to(tl.float32) * alpha).to(dt)
        if SCALE_DELTA:
            d = (d.to(tl.float32) * beta).to(dt)
        x = (x.to(tl.float32) + d.to(tl.float32)).to(dt)
        if STORE_X:
            tl.store(x_ptr + row * stride_x + cols, x, mask=mask)
    xf = x.to(tl.float32)
    var = tl.sum(xf * xf, axis=0) / n_cols
    y = (xf * (1.0 / tl.sqrt(var + eps))).to(dt)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    h = (w.to(tl.float32) * y.to(tl.float32)).to(dt)
    tl.store(h_ptr + row * stride_h + cols, h, mask=mask)


@triton_jit
def _gated_rms_norm_kernel(o_ptr, g_ptr, w_ptr, out_ptr, n_cols, stride_o, stride_g, stride_out, eps,
                           BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    o = tl.load(o_ptr + row * stride_o + cols, mask=mask, other=0.0)
    dt = o.dtype
    of = o.to(tl.float32)
    var = tl.sum(of * of, axis=0) / n_cols
    y = (of * (1.0 / tl.sqrt(var + eps))).to(dt)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    n = (w.to(tl.float32) * y.to(tl.float32)).to(dt)
    g = tl.load(g_ptr + row * stride_g + cols, mask=mask, other=0.0).to(tl.float32)
    s = (1.0 / (1.0 + tl.exp(-g))).to(dt)
    tl.store(out_ptr + row * stride_out + cols, (s.to(tl.float32) * n.to(tl.float32)).to(dt), mask=mask)


def _rows(t: torch.Tensor) -> torch.Tensor:
    t = t.reshape(-1, t.shape[-1])
    return t if t.stride(-1) == 1 else t.contiguous()


def add_rms_norm(res, delta, weight, eps: float, alpha: float = 1.0, beta: float = 1.0, *,
                 store_x: bool = True, force: str | None = None):
    """(x, h): x = res·α + delta·β (res itself when delta is None), h = RMSNorm(x)·weight.
    With store_x=False the Triton path skips writing x (returns None for it)."""
    if not use_triton(res, force):
        return add_rms_norm_ref(res, delta, weight, eps, alpha, beta)
    shape = res.shape
    r = _rows(res)
    d = _rows(delta) if delta is not None else r
    n_rows, n_cols = r.shape
    h = torch.empty((n_rows, n_cols), dtype=res.dtype, device=res.device)
    keep_x = store_x and delta is not None
    x = torch.empty_like(h) if keep_x else None
    _add_rms_norm_kernel[(n_rows,)](
        r, d, weight, x if keep_x else h, h, n_cols, r.stride(0), d.stride(0),
        (x if keep_x else h).stride(0), h.stride(0), float(eps), float(alpha), float(beta),
        HAS_DELTA=delta is not None, STORE_X=keep_x, SCALE_RES=alpha != 1, SCALE_DELTA=beta != 1,
        BLOCK=triton.next_power_of_2(n_cols), num_warps=_warps(n_cols))
    x_out = res if delta is None else (x.view(shape) if keep_x else None)
    return x_out, h.view(shape)


def gated_rms_norm(o, gate, weight, eps: float, *, force: str | None = None):
    """sigmoid(gate) · RMSNorm(o)·weight (MiniMax lightning attention's output)."""
    if not use_triton(o, force):
        return gated_rms_norm_ref(o, gate, weight, eps)
    shape = o.shape
    o2, g2 = _rows(o), _rows(gate)
    n_rows, n_cols = o2.shape
    out = torch.empty((n_rows, n_cols), dtype=o.dtype, device=o.device)
    _gated_rms_norm_kernel[(n_rows,)](o2, g2, weight, out, n_cols, o2.stride(0), g2.stride(0), out.stride(0),
                                      float(eps), BLOCK=triton.next_power_of_2(n_cols),
                                      num_warps=_warps(n_cols))
    return out.view(shape)


def _warps(n_cols: int) -> int:
    return 4 if n_cols <= 2048 else 8 if n_cols <= 8192 else 16
