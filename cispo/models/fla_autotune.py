"""Fewer Triton autotune candidates for fla's lightning-attention kernels: a shorter cold start.

fla 0.6.0 autotunes `chunk_fwd_kernel_h` and `chunk_bwd_kernel_dh` over 48 configurations each
(BK, BV in {32, 64} x 4 warp counts x 3 pipeline depths), and each configuration is compiled
before it is timed (~1 s each). The forward-state kernel is tuned twice (bf16 states in the
forward, FP32 states in the backward), so a first training step compiles ~150 kernels: that was
most of the 163 s step 0 of the first GPU run of the loop (docs/PERFORMANCE.md). With the
candidates below it compiles a few dozen. Triton keeps both the compiled kernels and (through
fla's `cache_results`) the tuning result on disk ($TRITON_CACHE_DIR, default ~/.triton/cache), so
a later run on the same machine compiles nothing at all.

The kept candidates are Hopper-friendly tiles (4 warps; 64- and 32-wide state blocks, 2-3
pipeline stages); the timing still picks among them per shape. `CISPO_FLA_AUTOTUNE=full` keeps
fla's own lists.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

# kernel (module, attribute) -> predicate on a triton.Config that keeps it
PINS = {
    ("fla.ops.common.chunk_h", "chunk_fwd_kernel_h"):
        lambda c: c.num_warps == 4 and c.num_stages in (2, 3) and (c.kwargs["BK"], c.kwargs["BV"]) in
        {(64, 64), (32, 64), (64, 32)},
    ("fla.ops.common.chunk_h", "chunk_bwd_kernel_dh"):
        lambda c: c.num_warps == 4 and c.num_stages in (2, 3) and (c.kwargs["BK"], c.kwargs["BV"]) in
        {(64, 64), (32, 64), (64, 32)},
    ("fla.ops.common.chunk_o", "chunk_bwd_kernel_dqkwg"): lambda c: c.num_warps == 4 and c.num_stages in (2, 3),
    ("fla.ops.common.chunk_o", "chunk_bwd_kernel_dv"): lambda c: c.num_warps == 4 and c.num_stages in (2, 3),
}


def _autotuner(obj):
    """The triton Autotuner inside fla's decorator chain (Heuristics -> Autotuner -> JIT)."""
    while obj is not None and not hasattr(obj, "configs"):
        obj = getattr(obj, "fn", None)
    return obj


def pin_fla_autotune() -> dict[str, tuple[int, int]]:
    """Restrict the candidates (idempotent); {kernel: (before, after)}. A kernel fla no longer
    has, or whose filter would keep nothing, is left as fla made it."""
    if os.environ.get("CISPO_FLA_AUTOTUNE", "pinned") == "full":
        return {}
    import importlib

    done = {}
    for (mod, name), keep in PINS.items():
        try:
            tuner = _autotuner(getattr(importlib.import_module(mod), name))
        except (ImportError, AttributeError):
            continue
        if tuner is None:
            continue
        before = getattr(tuner, "_cispo_all_configs", None) or list(tuner.configs)
        try:
            kept = [c for c in before if keep(c)]
        except (KeyError, AttributeError):
            continue
        if kept:
            tuner._cispo_all_configs = before
            tuner.configs = kept
            done[name] = (len(before), len(kept))
    if done:
        log.debug("fla autotune candidates pinned: %s", done)
    return done
