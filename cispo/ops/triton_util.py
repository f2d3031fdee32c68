"""Where the Triton kernels run: CUDA tensors take them, CPU tensors the torch reference paths.

`force="triton"` runs a kernel on CPU tensors too, which works under TRITON_INTERPRET=1 (set
before triton is imported; the tests run such checks in a subprocess); `force="torch"` runs the
reference on any device. Without triton installed every op falls back to torch.
"""

from __future__ import annotations

import torch

try:
    import triton
except ImportError:  # pragma: no cover
    triton = None


def triton_jit(fn=None, **kwargs):
    """`triton.jit` when triton is importable; otherwise the plain function (never launched)."""
    if fn is None:
        return lambda f: triton_jit(f, **kwargs)
    return triton.jit(fn, **kwargs) if triton is not None else fn


def use_triton(t: torch.Tensor, force: str | None = None) -> bool:
    if force not in (None, "triton", "torch"):
        raise ValueError(f"force must be None, 'triton' or 'torch', got {force!r}")
    if force is not None:
        return force == "triton" and triton is not None
    return t.is_cuda and triton is not None
