"""Log-probs and entropy of the sampled tokens straight from hidden states and the LM head weight.

At V=200,064 and 32K tokens the FP32 logits alone are 26 GB, and autograd would keep them (and a
softmax of the same size) for the backward. Here the logits exist only one [token chunk × vocab
block] tile at a time, in the forward and again in the backward, which recomputes each tile from
the saved log-normaliser instead of storing it: one extra head matmul buys memory that no longer
grows with T×V.

Forward, per token chunk, an online log-sum-exp over vocabulary blocks (the flash-attention trick):
running max m, s = Σ exp(x − m), and for the entropy t = Σ exp(x − m)·(x − m), so that
lse = m + log s and entropy H = log s − t / s.

Backward, per tile, with x'' = x − lse and p = exp(x''):
  d logp_i / dx_j = [j = token_i] − p_j
  d H_i / dx_j    = −p_j (x''_j + H_i)           (since x_j − E_p[x] = x''_j + H_i)
and the chain rule through x = h Wᵀ / τ gives grad_h = gx W / τ, grad_W = gxᵀ h / τ.

All of it is computed in `compute_dtype` (float32 by default; float64 in the reference tests),
whatever the dtype of the hidden states and the weight, which is what the FP32-head recipe needs.
"""

from __future__ import annotations

import torch

from cispo.ops.fp32_matmul import mm_3xtf32, no_tf32

PRECISIONS = ("ieee", "3xtf32")


def _mm(a: torch.Tensor, b: torch.Tensor, precision: str) -> torch.Tensor:
    """a @ b in IEEE arithmetic of the operands' dtype, or from three TF32 products ("3xtf32")."""
    if precision == "3xtf32" and a.dtype == torch.float32:
        return mm_3xtf32(a, b)
    return a @ b

# One tile of logits holds at most this many elements: 2**25 float32 = 128 MiB, and the backward
# keeps two tiles alive, so the op's extra memory stays well under 1 GiB at any length.
TILE_ELEMENTS = 2**25


def _tile_shape(n_tokens: int, vocab: int, chunk_tokens: int | None, vocab_block: int | None):
    vb = vocab_block or min(vocab, 32768)
    ct = chunk_tokens or max(1, TILE_ELEMENTS // vb)
    return max(1, min(ct, max(n_tokens, 1))), max(1, min(vb, vocab))


def _pick(x: torch.Tensor, tokens: torch.Tensor, v0: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows whose token falls in this vocab block [v0, v0 + width), and that token's column."""
    col = tokens - v0
    rows = ((col >= 0) & (col < x.shape[1])).nonzero().squeeze(1)
    return rows, col[rows]


def _forward(h, w, tokens, temperature, with_entropy, ct, vb, dtype, precision):
    n, vocab = h.shape[0], w.shape[0]
    lse = h.new_empty(n, dtype=dtype)
    picked = h.new_empty(n, dtype=dtype)
    ent = h.new_empty(n, dtype=dtype) if with_entropy else None
    for a in range(0, n, ct):
        hc = h[a:a + ct].to(dtype)
        tc = tokens[a:a + ct]
        m = s = t = None
        pk = hc.new_zeros(hc.shape[0])
        for v0 in range(0, vocab, vb):
            x = _mm(hc, w[v0:v0 + vb].to(dtype).T, precision)
            if temperature != 1.0:
                x.div_(temperature)
            rows, cols = _pick(x, tc, v0)
            pk[rows] = x[rows, cols]
            bm = x.amax(1)
            m_new = bm if m is None else torch.maximum(m, bm)
            x.sub_(m_new[:, None])
            if with_entropy:
                e = x.exp()
                bs = e.sum(1)
                bt = e.mul_(x).sum(1)
            else:
                bt = None
                bs = x.exp_().sum(1)
            if m is None:
                s, t = bs, bt
            else:
                # rescale the running sums to the new max: exp(x-m) = exp(x-m_new)·exp(m_new-m)
                alpha = torch.exp(m - m_new)
                if with_entropy:
                    t = alpha * (t + (m - m_new) * s) + bt
                s = alpha * s + bs
            m = m_new
        lse[a:a + ct] = m + s.log()
        picked[a:a + ct] = pk
        if with_entropy:
            ent[a:a + ct] = s.log() - t / s
    return picked - lse, lse, ent


def _tile_grad(hc, wb, tc, v0, lse_c, ent_c, g_lp, g_ent, temperature, precision):
    """d(loss)/dx for one tile of logits x = hc wbᵀ / τ, before the 1/τ of the chain rule."""
    x = _mm(hc, wb.T, precision)
    if temperature != 1.0:
        x.div_(temperature)
    x.sub_(lse_c[:, None])
    p = x.exp()
    if g_ent is not None:
        gx = x.add_(ent_c[:, None]).mul_(p).mul_(-g_ent[:, None])
        gx.sub_(p.mul_(g_lp[:, None]))
    else:
        gx = p.mul_(-g_lp[:, None])
    rows, cols = _pick(gx, tc, v0)
    gx[rows, cols] += g_lp[rows]
    if temperature != 1.0:
        gx.div_(temperature)
    return gx


class _ChunkedHeadLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, w, tokens, temperature, with_entropy, ct, vb, dtype, precision):
        with no_tf32():
            logp, lse, ent = _forward(h, w, tokens, temperature, with_entropy, ct, vb, dtype, precision)
        ctx.save_for_backward(h, w, tokens, lse, ent if with_entropy else None)
        ctx.cfg = (temperature, ct, vb, dtype, precision)
        if with_entropy:
            return logp, ent
        ctx.mark_non_differentiable(lse)
        return logp, lse  # lse stands in for the absent entropy; its gradient is ignored

    @staticmethod
    def backward(ctx, g_lp, g_ent):
        h, w, tokens, lse, ent = ctx.saved_tensors
        temperature, ct, vb, dtype, precision = ctx.cfg
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        n, vocab = h.shape[0], w.shape[0]
        g_lp = (g_lp if g_lp is not None else torch.zeros_like(lse)).to(dtype)
        g_ent = g_ent.to(dtype) if (ent is not None and g_ent is not None) else None
        gh = torch.zeros(h.shape, dtype=dtype, device=h.device) if need_h else None
        gw = None
        with no_tf32():
            # Token chunks outside: grad_h accumulates per chunk, grad_W across chunks in a
            # [V, D] buffer of compute dtype, which for an FP32 head is the gradient itself.
            if need_w:
                gw = torch.zeros(w.shape, dtype=dtype, device=w.device)
            for a in range(0, n, ct):
                hc = h[a:a + ct].to(dtype)
                for v0 in range(0, vocab, vb):
                    wb = w[v0:v0 + vb].to(dtype)
                    gx = _tile_grad(hc, wb, tokens[a:a + ct], v0, lse[a:a + ct],
                                    None if g_ent is None else ent[a:a + ct],
                                    g_lp[a:a + ct], None if g_ent is None else g_ent[a:a + ct],
                                    temperature, precision)
                    if precision == "ieee":
                        if need_h:
                            gh[a:a + ct].addmm_(gx, wb)
                        if need_w:
                            gw[v0:v0 + vb].addmm_(gx.T, hc)
                    else:
                        if need_h:
                            gh[a:a + ct] += _mm(gx, wb, precision)
                        if need_w:
                            gw[v0:v0 + vb] += _mm(gx.T, hc, precision)
        gh = gh.to(h.dtype) if need_h else None
        gw = gw.to(w.dtype) if need_w else None
        return gh, gw, None, None, None, None, None, None, None


def linear_token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    tokens: torch.Tensor,
    temperature: float = 1.0,
    *,
    with_entropy: bool = False,
    chunk_tokens: int | None = None,
    vocab_block: int | None = None,
    compute_dtype: torch.dtype = torch.float32,
    precision: str = "ieee",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log softmax(h Wᵀ / τ)[tokens], entropy or None), never holding the [..., V] logits.

    hidden [..., D] (any float dtype), weight [V, D] (an LM head without bias), tokens [...] →
    two [...] tensors in `compute_dtype`. Differentiable w.r.t. hidden and weight; the backward
    recomputes the logits tile by tile. `chunk_tokens` × `vocab_block` sets the tile (default:
    32,768-wide vocab blocks, 2**25 elements a tile). `precision`: "ieee" (default: every product
    in IEEE arithmetic, TF32 off: M1's FP32 head) or "3xtf32" (each float32 product from three
    TF32 tensor-core products, `cispo.ops.fp32_matmul.mm_3xtf32`: ≈ 2⁻²¹ relative error instead
    of 2⁻²⁴, about 3× faster on Hopper; identical to "ieee" on CPU).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"hidden [..., D] and weight [V, D] disagree: {tuple(hidden.shape)} vs "
                         f"{tuple(weight.shape)}")
    if tokens.shape != hidden.shape[:-1]:
        raise ValueError(f"tokens {tuple(tokens.shape)} must match hidden's leading dims "
                         f"{tuple(hidden.shape[:-1])}")
    lead = tokens.shape
    h = hidden.reshape(-1, hidden.shape[-1])
    t = tokens.reshape(-1)
    ct, vb = _tile_shape(h.shape[0], weight.shape[0], chunk_tokens, vocab_block)
    logp, second = _ChunkedHeadLogprobs.apply(h, weight, t, float(temperature), with_entropy,
                                              ct, vb, compute_dtype, precision)
    return logp.reshape(lead), (second.reshape(lead) if with_entropy else None)
