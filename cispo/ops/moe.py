"""Sparse-MoE pieces for a batch of tokens, without host syncs (CUDA-graph safe).

    route_align(router_logits, k, renorm, weight_dtype) -> Routing
        softmax over experts in float32, top-k, optional renormalisation (MiniMax: always;
        Qwen3-MoE: `norm_topk_prob`), and the expert-sorted layout the grouped GEMM needs:
        `src[i]` the token of the i-th pair in expert order, `inv[p]` where pair p = t·k + j
        landed, `offs[e]` the cumulative pair count up to expert e (int32, grouped GEMM offsets).
    grouped_mm(x, w, offs)          x [pairs, K] · w[e] [K, N] per expert segment
    silu_mul(gate_up)               silu(gate) · up, gate = first half of the columns
    combine(y, routing)             out[t] = Σ_j w[t, j] · y[inv[t·k + j]] (float32 sum)

With these, an expert layer is route_align → x[src] → grouped_mm → silu_mul → grouped_mm →
combine: the data-dependent routing stays on the device. Rounding follows transformers'
`grouped_mm` experts path: products and activations in the model dtype, the weighted sum over
the k experts in float32 (MiniMax's float32 routing weights), or of products rounded to the
weights' dtype (Qwen3-MoE casts its weights to the model dtype), rounded once at the end.

`route_align` and `combine` have Triton kernels (two launches over blocks of tokens do the
routing and the sort: a block's per-expert counts, then each pair's place from the counts of the
blocks before it; instead of a sort, a histogram and a cumulative sum) and torch paths (CPU,
reference). `grouped_mm` is torch's grouped GEMM
(`torch.nn.functional.grouped_mm`, or `torch._grouped_mm` before torch 2.10: bf16 on CUDA);
elsewhere (float32 on CUDA) a masked product per expert that stays free of host syncs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cispo.ops.triton_util import triton_jit, use_triton

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = tl = None


@dataclass
class Routing:
    weights: torch.Tensor  # [n, k] routing weights (float32, or the model dtype)
    ids: torch.Tensor  # [n, k] expert of each pair
    src: torch.Tensor  # [n·k] token of each pair in expert-sorted order
    inv: torch.Tensor  # [n·k] sorted position of pair t·k + j
    offs: torch.Tensor  # [E] int32 cumulative pair counts


def route_align_ref(logits, k: int, renorm: bool, weight_dtype) -> Routing:
    n, E = logits.shape
    p = torch.softmax(logits.float(), dim=-1)
    w, ids = torch.topk(p, k, dim=-1)
    if renorm:
        w = w / w.sum(-1, keepdim=True)
    flat = ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    inv = torch.empty_like(order)
    inv[order] = torch.arange(order.numel(), device=logits.device)
    counts = torch.zeros(E, dtype=torch.long, device=logits.device).index_add_(0, flat, torch.ones_like(flat))
    return Routing(w.to(weight_dtype), ids, order // k, inv, counts.cumsum(0).to(torch.int32))


@triton_jit(do_not_specialize=["n"])
def _route_kernel(logits_ptr, n, stride_l, w_ptr, ids_ptr, counts_ptr,
                  E: tl.constexpr, K: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
                  BLOCK_T: tl.constexpr, RENORM: tl.constexpr):
    """One block of BLOCK_T tokens: softmax, top-k (first index on ties), weights, and how many
    of the block's pairs go to each expert (counts[block, e])."""
    b = tl.program_id(0)
    ei = tl.arange(0, BLOCK_E)
    emask = ei < E
    ki = tl.arange(0, BLOCK_K)
    ti = b * BLOCK_T + tl.arange(0, BLOCK_T)
    tmask = ti < n
    x = tl.load(logits_ptr + ti[:, None] * stride_l + ei[None, :],
                mask=tmask[:, None] & emask[None, :], other=float("-inf")).to(tl.float32)
    mx = tl.max(x, axis=1)
    p = tl.exp(x - mx[:, None])
    p = p / tl.sum(p, axis=1)[:, None]
    p = tl.where(emask[None, :], p, -1.0)
    vals = tl.zeros((BLOCK_T, BLOCK_K), tl.float32)
    counts = tl.zeros((BLOCK_E,), tl.int32)
    for j in tl.static_range(K):
        best = tl.max(p, axis=1)
        idx = tl.min(tl.where(p == best[:, None], ei[None, :], BLOCK_E), axis=1)
        idx = tl.minimum(idx, E - 1)  # NaN rows (never real ones) still name a valid expert
        tl.store(ids_ptr + ti * K + j, idx, mask=tmask)
        vals = tl.where(ki[None, :] == j, best[:, None], vals)
        hit = ei[None, :] == idx[:, None]
        p = tl.where(hit, -1.0, p)
        counts += tl.sum(tl.where(hit & tmask[:, None], 1, 0), axis=0)
    if RENORM:
        vals = vals / tl.sum(vals, axis=1)[:, None]
    tl.store(w_ptr + ti[:, None] * K + ki[None, :], vals.to(w_ptr.dtype.element_ty),
             mask=tmask[:, None] & (ki[None, :] < K))
    tl.store(counts_ptr + b * BLOCK_E + ei, counts)


@triton_jit(do_not_specialize=["n", "n_blocks"])
def _place_kernel(ids_ptr, counts_ptr, src_ptr, inv_ptr, offs_ptr, n, n_blocks,
                  E: tl.constexpr, K: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_T: tl.constexpr,
                  BLOCK_B: tl.constexpr, BLOCK_P: tl.constexpr):
    """The same block's pairs: each one's place in expert order (stable: earlier pairs first).
    A block's first pair of expert e goes after every pair of the experts before e and after
    the pairs of e in earlier blocks; the counts table says how many those are."""
    b = tl.program_id(0)
    ei = tl.arange(0, BLOCK_E)
    total = tl.zeros((BLOCK_E,), tl.int32)
    before = tl.zeros((BLOCK_E,), tl.int32)
    for c0 in range(0, n_blocks, BLOCK_B):
        bi = c0 + tl.arange(0, BLOCK_B)
        t = tl.load(counts_ptr + bi[:, None] * BLOCK_E + ei[None, :], mask=(bi < n_blocks)[:, None], other=0)
        total += tl.sum(t, axis=0)
        before += tl.sum(tl.where((bi < b)[:, None], t, 0), axis=0)
    incl = tl.cumsum(total, axis=0)
    if b == 0:
        tl.store(offs_ptr + ei, incl, mask=ei < E)
    base = incl - total + before
    local = tl.arange(0, BLOCK_P)  # BLOCK_P: BLOCK_T·K rounded up to a power of two
    pi = b * (BLOCK_T * K) + local
    pm = (local < BLOCK_T * K) & (pi < n * K)
    e = tl.load(ids_ptr + pi, mask=pm, other=BLOCK_E)
    mine = tl.sum(tl.where(e[:, None] == ei[None, :], base[None, :], 0), axis=1)
    same = (e[:, None] == e[None, :]) & (local[None, :] < local[:, None])
    pos = mine + tl.sum(tl.where(same, 1, 0), axis=1)
    tl.store(inv_ptr + pi, pos, mask=pm)
    tl.store(src_ptr + pos, pi // K, mask=pm)


def route_align(logits, k: int, renorm: bool, weight_dtype=torch.float32, *, force: str | None = None) -> Routing:
    """Routing of n tokens (router logits [n, E]) to their top-k experts, sorted by expert. Two
    launches over blocks of tokens (routing and per-block counts; then every pair's place),
    so the work spreads over the GPU instead of one program walking all tokens."""
    if not use_triton(logits, force):
        return route_align_ref(logits, k, renorm, weight_dtype)
    n, E = logits.shape
    dev = logits.device
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    w = torch.empty((n, k), dtype=weight_dtype, device=dev)
    ids = torch.empty((n, k), dtype=torch.int64, device=dev)
    src = torch.empty(n * k, dtype=torch.int64, device=dev)
    inv = torch.empty(n * k, dtype=torch.int64, device=dev)
    offs = torch.empty(E, dtype=torch.int32, device=dev)
    block_e = triton.next_power_of_2(E)
    block_t = max(1, 64 // triton.next_power_of_2(k))  # 64 pairs a block
    n_blocks = triton.cdiv(n, block_t)
    counts = torch.empty((n_blocks, block_e), dtype=torch.int32, device=dev)
    _route_kernel[(n_blocks,)](logits, n, logits.stride(0), w, ids, counts, E=E, K=k, BLOCK_E=block_e,
                               BLOCK_K=triton.next_power_of_2(k), BLOCK_T=block_t, RENORM=renorm, num_warps=2)
    _place_kernel[(n_blocks,)](ids, counts, src, inv, offs, n, n_blocks, E=E, K=k, BLOCK_E=block_e,
                               BLOCK_T=block_t, BLOCK_B=max(1, min(256, 4096 // block_e)),
                               BLOCK_P=triton.next_power_of_2(block_t * k), num_warps=2)
    return Routing(w, ids, src, inv, offs)


def has_grouped_mm(device: torch.device | str, dtype: torch.dtype = torch.bfloat16) -> bool:
    """torch's grouped GEMM runs here: CUDA bf16 on sm80+ (torch >= 2.9; Hopper only before),
    CPU with torch >= 2.10 (`torch.nn.functional.grouped_mm`)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        fn = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)
        if fn is None or dtype != torch.bfloat16:
            return False
        major, minor = torch.cuda.get_device_capability(dev)
        return (major, minor) >= (8, 0) if hasattr(F, "grouped_mm") else major == 9
    return hasattr(F, "grouped_mm")


def grouped_mm(x, w, offs, native: bool = True):
    """x [pairs, K] (expert-sorted rows) · w [E, K, N] → [pairs, N]: rows offs[e-1]..offs[e] use
    w[e]. `w` may be a transposed view of transformers' [E, N, K] expert weights. Without torch's
    grouped GEMM for this device and dtype, every expert multiplies every row and a mask keeps
    its own (E times the arithmetic, still without host syncs; a fallback for tests and small E).
    `native=False` takes that fallback even where torch's grouped GEMM runs."""
    if native and has_grouped_mm(x.device, x.dtype):
        fn = getattr(F, "grouped_mm", None) or torch._grouped_mm
        return fn(x, w, offs=offs)
    expert = torch.searchsorted(offs.long(), torch.arange(x.shape[0], device=x.device), right=True)
    out = x.new_zeros((x.shape[0], w.shape[-1]))
    for e in range(w.shape[0]):
        out = torch.where((expert == e)[:, None], x @ w[e], out)
    return out


def silu_mul_ref(gate_up):
    g, u = gate_up.chunk(2, dim=-1)
    return F.silu(g) * u


@triton_jit(do_not_specialize=["n_rows"])
def _silu_mul_kernel(x_ptr, out_ptr, n_rows, n_cols, stride_x, stride_out, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    c0 = tl.program_id(1) * BLOCK
    cols = c0 + tl.arange(0, BLOCK)
    mask = cols < n_cols
    g = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    dt = g.dtype
    u = tl.load(x_ptr + row * stride_x + n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    gf = g.to(tl.float32)
    a = (gf / (1.0 + tl.exp(-gf))).to(dt).to(tl.float32)
    tl.store(out_ptr + row * stride_out + cols, (a * u).to(dt), mask=mask)


def silu_mul(gate_up, *, force: str | None = None):
    """silu(gate) · up for gate_up = [gate | up] along the last dim (rounded as transformers)."""
    if not use_triton(gate_up, force):
        return silu_mul_ref(gate_up)
    x = gate_up.reshape(-1, gate_up.shape[-1])
    if x.stride(-1) != 1:
        x = x.contiguous()
    n_rows, n_cols = x.shape[0], x.shape[1] // 2
    out = torch.empty((n_rows, n_cols), dtype=x.dtype, device=x.device)
    BLOCK = min(1024, triton.next_power_of_2(n_cols))
    _silu_mul_kernel[(n_rows, triton.cdiv(n_cols, BLOCK))](x, out, n_rows, n_cols, x.stride(0), out.stride(0),
                                                          BLOCK=BLOCK, num_warps=4)
    return out.view(*gate_up.shape[:-1], n_cols)


def combine_ref(y, routing: Routing):
    n, k = routing.ids.shape
    w = routing.weights
    prod = y[routing.inv].view(n, k, -1) * w.unsqueeze(-1)
    if w.dtype != torch.float32:
        return prod.sum(1)  # product and sum in the weights' dtype (transformers' grouped path)
    return prod.float().sum(1).to(y.dtype)


@triton_jit(do_not_specialize=["n"])
def _combine_kernel(y_ptr, w_ptr, inv_ptr, out_ptr, n, n_cols, stride_y, stride_out,
                    K: tl.constexpr, BLOCK: tl.constexpr, ROUND_PROD: tl.constexpr):
    t = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    acc = tl.zeros((BLOCK,), tl.float32)
    for j in tl.static_range(K):
        p = tl.load(inv_ptr + t * K + j)
        wj = tl.load(w_ptr + t * K + j)
        y = tl.load(y_ptr + p * stride_y + cols, mask=mask, other=0.0)
        prod = y.to(tl.float32) * wj.to(tl.float32)
        if ROUND_PROD:
            prod = prod.to(w_ptr.dtype.element_ty).to(tl.float32)
        acc += prod
    tl.store(out_ptr + t * stride_out + cols, acc.to(out_ptr.dtype.element_ty), mask=mask)


def combine(y, routing: Routing, *, force: str | None = None):
    """[n, N]: each token's expert outputs weighted by its routing weights and summed."""
    if not use_triton(y, force):
        return combine_ref(y, routing)
    n, k = routing.ids.shape
    n_cols = y.shape[-1]
    out = torch.empty((n, n_cols), dtype=y.dtype, device=y.device)
    BLOCK = min(2048, triton.next_power_of_2(n_cols))
    _combine_kernel[(n, triton.cdiv(n_cols, BLOCK))](y, routing.weights, routing.inv, out, n, n_cols,
                                                     y.stride(0), out.stride(0), K=k, BLOCK=BLOCK,
                                                     ROUND_PROD=routing.weights.dtype != torch.float32,
                                                     num_warps=4)
    return out
