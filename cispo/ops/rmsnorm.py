"""RMSNorm forward and backward as one Triton kernel each (instead of ~7 and ~12 torch kernels).

transformers' Llama-style RMSNorm (MiniMax's too) computes, per row,
    y = w · bf16( x / sqrt(mean(x²) + ε) )       (the normalisation in FP32, cast back, times w)
as separate cast, pow, mean, add, rsqrt, mul, cast and mul kernels, each a pass over the
activations, and autograd runs about twice as many for the backward; with 3 norms per MiniMax
layer and gradient checkpointing that is hundreds of launches per step. Here the forward is one
pass (it saves 1/rms per row) and the backward one pass plus a column sum for grad w:
    n = x·r,  dn = dy·w,  dx = r·(dn − n·mean(dn·n)),  dw = Σ_rows dy·n.
Same values as transformers' module (the normalised row is rounded to the input dtype before the
weight multiplies it, as there); gradients in FP32 arithmetic, rounded once at the end.

`patch_rmsnorm(model)` rebinds every such module's forward: CUDA tensors take the kernels, others
transformers' own code. `TRITON_INTERPRET=1` runs the kernels on CPU (tests).
"""

from __future__ import annotations

import os
import types

import torch
from torch import nn

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

if triton is not None:
    if INTERPRET:
        from cispo.ops.fused_head import _fix_interpreter_index

        _fix_interpreter_index()

    @triton.jit
    def _rms_fwd(X, W, Y, R, n_cols, eps, stride_x, stride_y, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        r = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n_cols + eps)
        tl.store(R + row, r)
        w = tl.load(W + cols, mask=mask, other=0.0)
        n = (x * r).to(X.dtype.element_ty)
        y = w.to(tl.float32) * n.to(tl.float32)
        tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)

    @triton.jit
    def _rms_bwd(X, W, DY, R, DX, DW_PART, n_rows, n_cols, stride_x, stride_dy, stride_dx,
                 rows_per_prog, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        dw = tl.zeros([BLOCK], dtype=tl.float32)
        for i in range(0, rows_per_prog):
            row = pid * rows_per_prog + i
            ok = row < n_rows
            row64 = row.to(tl.int64)
            # past the last row no column is valid; a block comparison, not mask & ok (the
            # interpreter widens a broadcast scalar bool to int, which 3.9's refuses as a mask)
            m = cols < tl.where(ok, n_cols, 0)
            x = tl.load(X + row64 * stride_x + cols, mask=m, other=0.0).to(tl.float32)
            dy = tl.load(DY + row64 * stride_dy + cols, mask=m, other=0.0).to(tl.float32)
            r = tl.load(R + row, mask=ok, other=0.0)
            n = x * r
            dn = dy * w
            dx = r * (dn - n * (tl.sum(dn * n, axis=0) / n_cols))
            tl.store(DX + row64 * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=m)
            # grad w sees the normalised row as the forward multiplied it: rounded
            dw += dy * n.to(X.dtype.element_ty).to(tl.float32)
        tl.store(DW_PART + pid * n_cols + cols, dw, mask=mask)


def _block(n_cols: int) -> int:
    return triton.next_power_of_2(n_cols)


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        rows, n_cols = x2.shape
        out_dtype = torch.promote_types(weight.dtype, x.dtype)
        y = torch.empty(rows, n_cols, dtype=out_dtype, device=x.device)
        r = torch.empty(rows, dtype=torch.float32, device=x.device)
        block = _block(n_cols)
        warps = 4 if INTERPRET else min(16, max(4, block // 512))
        _rms_fwd[(rows,)](x2, weight, y, r, n_cols, eps, x2.stride(0), y.stride(0), BLOCK=block,
                          num_warps=warps)
        ctx.save_for_backward(x2, weight, r)
        ctx.shape = shape
        return y.reshape(*shape[:-1], n_cols)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, r = ctx.saved_tensors
        rows, n_cols = x2.shape
        dy2 = dy.reshape(rows, n_cols)
        if dy2.stride(-1) != 1:
            dy2 = dy2.contiguous()
        dx = torch.empty_like(x2)
        n_prog = 4 if INTERPRET else min(rows, 4 * torch.cuda.get_device_properties(x2.device).multi_processor_count)
        n_prog = max(1, n_prog)
        per = -(-rows // n_prog)
        n_prog = -(-rows // per)
        part = torch.empty(n_prog, n_cols, dtype=torch.float32, device=x2.device)
        block = _block(n_cols)
        warps = 4 if INTERPRET else min(16, max(4, block // 512))
        _rms_bwd[(n_prog,)](x2, weight, dy2, r, dx, part, rows, n_cols, x2.stride(0), dy2.stride(0),
                            dx.stride(0), per, BLOCK=block, num_warps=warps)
        dw = part.sum(0).to(weight.dtype) if ctx.needs_input_grad[1] else None
        return dx.reshape(ctx.shape), dw, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' RMSNorm of x over its last dim with `weight`, through the Triton kernels."""
    return _RMSNorm.apply(x, weight, float(eps))


def _fused_forward(self, hidden_states):
    if hidden_states.is_cuda or (INTERPRET and triton is not None):
        return rms_norm(hidden_states, self.weight, self.variance_epsilon)
    return type(self).forward(self, hidden_states)


def patch_rmsnorm(model: nn.Module) -> int:
    """Route every Llama-style RMSNorm of `model` (a `weight` and a `variance_epsilon`, the class
    name ending in RMSNorm) through the Triton kernels on CUDA; returns how many. Parameters and
    buffers are untouched (ZeRO-3 gathers the weight around the module's call as before)."""
    if triton is None:
        return 0
    n = 0
    for module in model.modules():
        if (type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon")
                and isinstance(getattr(module, "weight", None), torch.Tensor)
                and module.weight.dim() == 1):
            module.forward = types.MethodType(_fused_forward, module)
            n += 1
    return n
