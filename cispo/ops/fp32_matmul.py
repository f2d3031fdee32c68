"""True-FP32 matrix products: TF32 off and autocast off, for the forward and the backward.

M1 computes the LM head in full FP32 (train/rollout probability correlation 0.987 → 0.997). TF32
keeps only 10 mantissa bits, so a head "in FP32" with TF32 on is not the recipe; and autocast
would recast the operands to bf16. TF32 is a process-wide switch, so it is turned off only around
the head's own products and restored afterwards, leaving the rest of the model as configured.
"""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def matmul_precision(allow_tf32: bool):
    """Within the block, CUDA float32 matmuls run in IEEE FP32 (or may use TF32 tensor cores) and
    autocast is off."""
    mm = torch.backends.cuda.matmul
    new_api = hasattr(mm, "fp32_precision")  # torch ≥ 2.9; mixing the two APIs raises there
    saved = mm.fp32_precision if new_api else mm.allow_tf32
    try:
        if new_api:
            mm.fp32_precision = "tf32" if allow_tf32 else "ieee"
        else:
            mm.allow_tf32 = allow_tf32
        with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            yield
    finally:
        if new_api:
            mm.fp32_precision = saved
        else:
            mm.allow_tf32 = saved


def no_tf32():
    """IEEE FP32 matmuls within the block (autocast off)."""
    return matmul_precision(False)


def tf32():
    """TF32 tensor-core matmuls allowed within the block (autocast off)."""
    return matmul_precision(True)


class _FP32Linear(torch.autograd.Function):
    """x Wᵀ (+ b) in FP32; the backward's two products also in FP32 without TF32."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        ctx.bias_dtype = None if b is None else b.dtype
        with no_tf32():
            y = x.float() @ w.float().T
            if b is not None:
                y = y + b.float()
        return y

    @staticmethod
    def backward(ctx, gy):
        x, w = ctx.saved_tensors
        gx = gw = gb = None
        with no_tf32():
            gy = gy.float()
            if ctx.needs_input_grad[0]:
                gx = (gy @ w.float()).to(x.dtype)
            if ctx.needs_input_grad[1]:
                gw = (gy.reshape(-1, gy.shape[-1]).T @ x.reshape(-1, x.shape[-1]).float()).to(w.dtype)
            if ctx.has_bias and ctx.needs_input_grad[2]:
                gb = gy.reshape(-1, gy.shape[-1]).sum(0).to(ctx.bias_dtype)
        return gx, gw, gb


def fp32_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """float32 x Wᵀ (+ b) computed in IEEE FP32 forward and backward, whatever the input dtypes.

    Gradients come back in each input's own dtype.
    """
    return _FP32Linear.apply(x, weight, bias)


def split_tf32(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 x = hi + lo exactly, hi keeping the top 10 mantissa bits (exact in TF32) and lo the
    remaining 13 (TF32 keeps 10 of those)."""
    hi = (x.view(torch.int32) & -8192).view(torch.float32)  # -8192 = 0xFFFFE000: clear 13 low bits
    return hi, x - hi


def mm_3xtf32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b for float32 operands from three TF32 tensor-core products (hi·hi + hi·lo + lo·hi; the
    dropped lo·lo term and lo's rounding leave ≈ 2⁻²¹ relative error per term, near IEEE FP32's
    2⁻²⁴, at about 3× the speed of IEEE FP32 on an H100). On CPU (no TF32) it is IEEE FP32."""
    ah, al = split_tf32(a.contiguous())
    bh, bl = split_tf32(b.contiguous())
    with tf32():
        out = ah @ bl
        out.addmm_(al, bh)
        out.addmm_(ah, bh)
    return out


def bf16_parts(w: torch.Tensor, parts: int) -> torch.Tensor:
    """[N, parts·K] bf16 pieces of a float32 [N, K] matrix laid side by side along K:
    w = p₀ + p₁ + … (each the bf16 rounding of what the earlier ones left), so one, two or
    three pieces carry 8, 16 or 24 significant bits: three reproduce any float32 value (up to
    exponent underflow of the last piece)."""
    out, rest = [], w.float()
    for _ in range(parts):
        p = rest.to(torch.bfloat16)
        out.append(p)
        rest = rest - p.float()
    return torch.cat(out, dim=1).contiguous()


def bf16_parts_needed(w: torch.Tensor) -> int:
    """1 when every entry of `w` is a bf16 value (a head trained in bf16, as DeepSpeed's bf16 mode
    holds it), else 3. Reads the answer on the host."""
    return 1 if torch.equal(w.float(), w.to(torch.bfloat16).float()) else 3


def mm_bf16_parts(a: torch.Tensor, parts_t: torch.Tensor, parts: int) -> torch.Tensor:
    """float32 a @ wᵀ for bf16 `a` and the `bf16_parts(w, parts)` of w, on the bf16 tensor cores:
    every product of two bf16 values is exact in float32 and the sum is accumulated in float32,
    so with `parts` enough to hold w the result is the FP32 product up to summation order
    (what M1's FP32 LM head asks for), at bf16 tensor-core speed instead of float32 CUDA cores.
    `parts_t` is [N, parts·K]; needs `torch.mm(..., out_dtype=torch.float32)` (CUDA)."""
    if a.dtype != torch.bfloat16:
        raise ValueError(f"mm_bf16_parts needs bf16 activations, got {a.dtype}")
    x = a if parts == 1 else a.repeat(1, parts)
    return torch.mm(x, parts_t.t(), out_dtype=torch.float32)
