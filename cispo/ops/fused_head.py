"""FP32-accurate log-probs and entropy of the sampled tokens at bf16 tensor-core speed (Triton).

The same function as `cispo.ops.chunked_logprobs.linear_token_logprobs` in IEEE FP32 (the
reference): log softmax(h Wᵀ / τ)[token] and the entropy, never holding [T, V] logits. The
products run on bf16 tensor cores, exactly enough to stay FP32-accurate:

* Every operand is split into bf16 pieces whose sum is the operand: a bf16 tensor is one piece
  (itself); an FP32 tensor is three, hi + mid + lo, exactly (8 + 8 + 8 significant bits cover
  FP32's 24). A product of two bf16 numbers is exact in FP32, and the tensor cores accumulate in
  FP32, so Σ over piece pairs of bf16 products with FP32 accumulation is an FP32-accurate
  product, provided the accumulation is IEEE: the tensor cores' own FP32 adds truncate, so they
  sum only one BK slice (64 products) and the slices are added on the CUDA cores (_add_rn). Pairs whose weight is below 2⁻¹⁶ of the leading one (i + j > 2) are dropped.
  With bf16 hidden states and a bf16 head weight (the learner under DeepSpeed's bf16 mode, which
  stores every parameter in bf16 and keeps the FP32 master copy in the optimizer) the logits
  are one bf16 product; an FP32 weight makes them three.
* Forward (one Triton kernel): per [token block × vocab block] tile the logits are accumulated
  in FP32 registers and folded into an online softmax (running max m, s = Σ e^(x−m),
  t = Σ e^(x−m)(x−m), the target's logit); a second small kernel combines the vocab splits:
  lse = m + log s, log p = x_tok − lse, H = log s − t/s.
* Backward: a Triton kernel recomputes each logits tile, forms the FP32 gradient of the logits,
  gx = g_lp ([j = tok] − p) − g_H p (x − lse + H), scaled by 1/τ, and writes it as two bf16
  pieces (gx ≈ hi + lo, relative error ≤ 2⁻¹⁶, under the rounding the returned bf16 gradients
  get anyway) for one chunk of tokens; cuBLAS then takes grad_h = Σ gx_i W_j (i + j ≤ 1) and
  grad_W += Σ gx_iᵀ h_j with bf16 inputs and FP32 outputs (`torch.addmm(out_dtype=float32)`).

Products per call, in units of one bf16 [T, V, D] GEMM: bf16 weight: 1 forward + (1 recompute
+ 2 grad_h + 2 grad_W) backward = 6; FP32 weight: 3 + (3 + 3 + 2) = 11. bench/logprob.py times
them and bench/notes/learner_speed.md keeps the arithmetic.

CUDA only; `fused_token_logprobs` falls back to the IEEE torch path elsewhere. Under
`TRITON_INTERPRET=1` the same kernels run on CPU (tests), with each bf16 product done as an
FP32 product of the bf16 values (the same number: the interpreter's bf16 dot is broken in
Triton 3.6) and the cuBLAS products as FP32 torch products of the same pieces.
"""

from __future__ import annotations

import os

import torch

try:  # triton is optional on CPU-only installs
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - the fallback below needs no triton
    triton = None

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# Backward: the gradient of one chunk of tokens' logits is held as two bf16 [chunk, V] pieces
# (4 bytes per logit); this bounds that buffer (our choice: 2 GiB, ~2,600 tokens at V = 200,064).
GRAD_BUFFER_BYTES = 2 * 2**30

# Tiles (fixed, not autotuned: a first call must not compile a dozen variants). BT × BV logits
# per tile, BK of the hidden dim per step; VB_PER vocab blocks per forward program.
FWD_CONFIG = {"BT": 128, "BV": 128, "BK": 64, "VB_PER": 16, "GROUP_T": 8, "num_warps": 8, "num_stages": 3}
BWD_CONFIG = {"BT": 128, "BV": 128, "BK": 64, "GROUP_T": 8, "num_warps": 8, "num_stages": 3}
# the interpreter runs one program at a time in numpy: small tiles keep tests fast
INTERPRET_CONFIG = {"BT": 16, "BV": 32, "BK": 16, "VB_PER": 2, "GROUP_T": 2, "num_warps": 4, "num_stages": 1}


def _fix_interpreter_index() -> None:
    """Triton 3.6's interpreter turns a scalar into a Python int with int(array), which numpy ≥ 2.3
    refuses for the 1-element arrays its scalars are: any loop with a run-time bound fails. Take
    the element instead (interpreter only; its own patch scope restores the attribute)."""
    from triton.runtime import interpreter

    if getattr(interpreter, "_cispo_index_fix", False):
        return
    original = interpreter._patch_lang_tensor

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interpreter._patch_lang_tensor = patched
    interpreter._cispo_index_fix = True


if INTERPRET and triton is not None:
    _fix_interpreter_index()


def split_bf16(x: torch.Tensor) -> list[torch.Tensor]:
    """bf16 pieces summing to x: [x] for bf16, [hi, mid, lo] for FP32 (x = hi + mid + lo exactly,
    barring underflow below bf16's smallest normal), each contiguous."""
    if x.dtype == torch.bfloat16:
        return [x.contiguous()]
    if x.dtype != torch.float32:
        raise TypeError(f"split_bf16 takes bfloat16 or float32, got {x.dtype}")
    hi = x.to(torch.bfloat16)
    r = x - hi.float()
    mid = r.to(torch.bfloat16)
    lo = (r - mid.float()).to(torch.bfloat16)
    return [hi, mid, lo]


if triton is not None:

    @triton.jit
    def _dot(a, b, acc, F32DOT: tl.constexpr):
        # bf16 × bf16 → FP32 accumulate. The interpreter (Triton 3.6) multiplies bf16 bit
        # patterns as integers, so there the same exact products are taken in FP32.
        if F32DOT:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        else:
            return tl.dot(a, b, acc)

    @triton.jit
    def _to_bf16(x, F32DOT: tl.constexpr):
        # FP32 → bf16, round to nearest even: the GPU's conversion; the interpreter truncates,
        # so there the rounding is done on the bits
        if F32DOT:
            u = x.to(tl.uint32, bitcast=True)
            u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
            return u.to(tl.float32, bitcast=True).to(tl.bfloat16)
        else:
            return x.to(tl.bfloat16)

    @triton.jit
    def _add_rn(acc, part, F32DOT: tl.constexpr):
        # acc + part, one IEEE round-to-nearest FP32 add on the CUDA cores. A plain `acc + part`
        # is folded by Triton into the tensor-core accumulator (dot(a, b, acc)), whose FP32 adds
        # truncate: on an H100, folded over a 512..1024-long hidden dim, that left |Δ log p| of
        # 1.5e-5..2.2e-5 against float64 (bf16 operands, exact products), over the 1e-5 bound.
        # Inline PTX is opaque to that fold (the "promotion" of DeepSeek-V3's FP8 GEMMs).
        if F32DOT:  # the interpreter: no PTX; its adds are IEEE already
            return acc + part
        else:
            return tl.inline_asm_elementwise("add.rn.f32 $0, $1, $2;", "=r,r,r", [acc, part],
                                             dtype=tl.float32, is_pure=True, pack=1)

    @triton.jit
    def _tile_logits(H0, H1, H2, W0, W1, W2, rows, cols, rmask, cmask, D, stride_h, stride_w,
                     NH: tl.constexpr, NW: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr,
                     BK: tl.constexpr, F32DOT: tl.constexpr):
        """Σ over piece pairs (i + j ≤ 2) of h_i W_jᵀ for one [BT, BV] tile, FP32 accumulate,
        the small pairs first. NH, NW: pieces of h and W (1 or 3). Each BK slice's products are
        summed on the tensor cores from zero and then added to the tile in IEEE FP32 (_add_rn),
        so the tensor cores' truncating adds only ever see BK products."""
        acc = tl.zeros([BT, BV], dtype=tl.float32)
        hp = rows[:, None].to(tl.int64) * stride_h
        wp = cols[None, :].to(tl.int64) * stride_w
        for k0 in range(0, D, BK):
            ks = k0 + tl.arange(0, BK)
            km = ks < D
            hm = rmask[:, None] & km[None, :]
            wm = cmask[None, :] & km[:, None]
            part = tl.zeros([BT, BV], dtype=tl.float32)
            h0 = tl.load(H0 + hp + ks[None, :], mask=hm, other=0.0)
            w0 = tl.load(W0 + wp + ks[:, None], mask=wm, other=0.0)
            if NH > 1:
                h1 = tl.load(H1 + hp + ks[None, :], mask=hm, other=0.0)
                h2 = tl.load(H2 + hp + ks[None, :], mask=hm, other=0.0)
                part = _dot(h2, w0, part, F32DOT)
            if NW > 1:
                w1 = tl.load(W1 + wp + ks[:, None], mask=wm, other=0.0)
                w2 = tl.load(W2 + wp + ks[:, None], mask=wm, other=0.0)
                part = _dot(h0, w2, part, F32DOT)
                if NH > 1:
                    part = _dot(h1, w1, part, F32DOT)
                part = _dot(h0, w1, part, F32DOT)
            if NH > 1:
                part = _dot(h1, w0, part, F32DOT)
            part = _dot(h0, w0, part, F32DOT)
            acc = _add_rn(acc, part, F32DOT)
        return acc

    @triton.jit
    def _swizzle(pid, n_rows, n_cols, GROUP: tl.constexpr):
        """(row block, col block) of a program: GROUP row blocks sweep all col blocks together, so
        the programs running at once share their row tiles and col tiles through L2."""
        per_group = GROUP * n_cols
        first = (pid // per_group) * GROUP
        size = tl.minimum(n_rows - first, GROUP)
        r = first + (pid % per_group) % size
        c = (pid % per_group) // size
        return r, c

    @triton.jit
    def _head_fwd_kernel(H0, H1, H2, W0, W1, W2, TOK, PART, N, V, D, stride_h, stride_w, inv_temp,
                    n_vblocks, n_split,
                    NH: tl.constexpr, NW: tl.constexpr, ENTROPY: tl.constexpr, BT: tl.constexpr,
                    BV: tl.constexpr, BK: tl.constexpr, VB_PER: tl.constexpr, GROUP_T: tl.constexpr,
                    F32DOT: tl.constexpr):
        """Online-softmax partials of one token block over VB_PER vocab blocks:
        PART[0..3, split, token] = (m, s, t, target logit or 0)."""
        pid_t, pid_s = _swizzle(tl.program_id(0), tl.cdiv(N, BT), n_split, GROUP_T)
        rows = pid_t * BT + tl.arange(0, BT)
        rmask = rows < N
        tok = tl.load(TOK + rows, mask=rmask, other=-1)
        # a finite start: exp(m0 - m) = 0 and (m0 - m)·s = 0 without inf·0
        m = tl.full([BT], -1e30, dtype=tl.float32)
        s = tl.zeros([BT], dtype=tl.float32)
        t = tl.zeros([BT], dtype=tl.float32)
        picked = tl.zeros([BT], dtype=tl.float32)
        # a fixed count (a clamped bound trips the interpreter): blocks past V are fully masked,
        # which leaves m, s, t unchanged, and only the last split has any
        for i in range(0, VB_PER):
            cols = (pid_s * VB_PER + i) * BV + tl.arange(0, BV)
            cmask = cols < V
            x = _tile_logits(H0, H1, H2, W0, W1, W2, rows, cols, rmask, cmask, D, stride_h,
                             stride_w, NH, NW, BT, BV, BK, F32DOT) * inv_temp
            x = tl.where(cmask[None, :], x, float("-inf"))
            picked += tl.sum(tl.where(cols[None, :] == tok[:, None], x, 0.0), axis=1)
            m_new = tl.maximum(m, tl.max(x, axis=1))
            alpha = tl.exp(m - m_new)
            z = x - m_new[:, None]
            e = tl.exp(z)  # 0 at the masked columns
            if ENTROPY:
                t = alpha * (t + (m - m_new) * s) + tl.sum(e * tl.where(cmask[None, :], z, 0.0), axis=1)
            s = alpha * s + tl.sum(e, axis=1)
            m = m_new
        base = PART + pid_s * N + rows
        stride_part = n_split * N
        tl.store(base, m, mask=rmask)
        tl.store(base + stride_part, s, mask=rmask)
        if ENTROPY:
            tl.store(base + 2 * stride_part, t, mask=rmask)
        tl.store(base + 3 * stride_part, picked, mask=rmask)

    @triton.jit
    def _head_combine_kernel(PART, LP, LSE, ENT, N, n_split, ENTROPY: tl.constexpr, BLOCK: tl.constexpr):
        """lse, log p of the target and entropy from the vocab splits' partials."""
        rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        rmask = rows < N
        stride_part = n_split * N
        mx = tl.full([BLOCK], -1e30, dtype=tl.float32)
        for k in range(0, n_split):
            mx = tl.maximum(mx, tl.load(PART + k * N + rows, mask=rmask, other=-1e30))
        s = tl.zeros([BLOCK], dtype=tl.float32)
        t = tl.zeros([BLOCK], dtype=tl.float32)
        picked = tl.zeros([BLOCK], dtype=tl.float32)
        for k in range(0, n_split):
            p = PART + k * N + rows
            mk = tl.load(p, mask=rmask, other=-1e30)
            sk = tl.load(p + stride_part, mask=rmask, other=0.0)
            a = tl.exp(mk - mx)
            s += a * sk
            if ENTROPY:
                tk = tl.load(p + 2 * stride_part, mask=rmask, other=0.0)
                t += a * (tk + (mk - mx) * sk)
            picked += tl.load(p + 3 * stride_part, mask=rmask, other=0.0)
        s = tl.where(rmask, s, 1.0)  # rows past N: no log(0) (not stored)
        log_s = tl.log(s)
        lse = mx + log_s
        tl.store(LSE + rows, lse, mask=rmask)
        tl.store(LP + rows, picked - lse, mask=rmask)
        if ENTROPY:
            tl.store(ENT + rows, log_s - t / s, mask=rmask)

    @triton.jit
    def _head_bwd_kernel(H0, H1, H2, W0, W1, W2, TOK, LSE, ENT, GLP, GENT, G0, G1, N, V, D, stride_h,
                    stride_w, stride_g, inv_temp, row0,
                    NH: tl.constexpr, NW: tl.constexpr, ENT_GRAD: tl.constexpr, BT: tl.constexpr,
                    BV: tl.constexpr, BK: tl.constexpr, GROUP_T: tl.constexpr, F32DOT: tl.constexpr):
        """d loss / d(h Wᵀ) for one tile of tokens [row0, row0 + N) × vocab, as two bf16 pieces
        G0 + G1 (rows relative to row0)."""
        n_vblocks = tl.cdiv(V, BV)
        pid_t, pid_v = _swizzle(tl.program_id(0), tl.cdiv(N, BT), n_vblocks, GROUP_T)
        local = pid_t * BT + tl.arange(0, BT)
        rmask = local < N
        rows = row0 + local
        cols = pid_v * BV + tl.arange(0, BV)
        cmask = cols < V
        x = _tile_logits(H0, H1, H2, W0, W1, W2, rows, cols, rmask, cmask, D, stride_h, stride_w,
                         NH, NW, BT, BV, BK, F32DOT) * inv_temp
        lse = tl.load(LSE + rows, mask=rmask, other=0.0)
        glp = tl.load(GLP + rows, mask=rmask, other=0.0)
        tok = tl.load(TOK + rows, mask=rmask, other=-1)
        z = x - lse[:, None]
        p = tl.exp(z)
        gx = tl.where(cols[None, :] == tok[:, None], glp[:, None], 0.0) - p * glp[:, None]
        if ENT_GRAD:
            ent = tl.load(ENT + rows, mask=rmask, other=0.0)
            gent = tl.load(GENT + rows, mask=rmask, other=0.0)
            gx -= gent[:, None] * p * (z + ent[:, None])
        gx = gx * inv_temp
        hi = _to_bf16(gx, F32DOT)
        lo = _to_bf16(gx - hi.to(tl.float32), F32DOT)
        off = local[:, None].to(tl.int64) * stride_g + cols[None, :]
        msk = rmask[:, None] & cmask[None, :]
        tl.store(G0 + off, hi, mask=msk)
        tl.store(G1 + off, lo, mask=msk)


def _config(kind: str, n_pieces: int = 2) -> dict:
    if INTERPRET:
        return dict(INTERPRET_CONFIG)
    cfg = dict(FWD_CONFIG if kind == "fwd" else BWD_CONFIG)
    # pipeline stages that fit shared memory: every stage holds a BK-wide slice of each piece
    per_stage = (cfg["BT"] + cfg["BV"]) * cfg["BK"] * 2 * n_pieces / 2
    cfg["num_stages"] = int(max(1, min(cfg["num_stages"], 180 * 1024 // per_stage)))
    return cfg


def _pointers(pieces: list[torch.Tensor]) -> list[torch.Tensor]:
    """Three pointer arguments (unused ones repeat the first piece)."""
    return pieces + [pieces[0]] * (3 - len(pieces))


def _forward(h, w_pieces, h_pieces, tokens, inv_temp, with_entropy):
    n, d = h.shape
    vocab = w_pieces[0].shape[0]
    cfg = _config("fwd", len(h_pieces) + len(w_pieces))
    bt, bv, vb_per = cfg["BT"], cfg["BV"], cfg["VB_PER"]
    n_vblocks = triton.cdiv(vocab, bv)
    n_split = triton.cdiv(n_vblocks, vb_per)
    part = torch.empty(4, n_split, n, dtype=torch.float32, device=h.device)
    grid = (triton.cdiv(n, bt) * n_split,)
    _head_fwd_kernel[grid](*_pointers(h_pieces), *_pointers(w_pieces), tokens, part, n, vocab, d,
                      h_pieces[0].stride(0), w_pieces[0].stride(0), inv_temp, n_vblocks, n_split,
                      NH=len(h_pieces), NW=len(w_pieces), ENTROPY=with_entropy, BT=bt, BV=bv,
                      BK=cfg["BK"], VB_PER=vb_per, GROUP_T=cfg["GROUP_T"], F32DOT=INTERPRET,
                      num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    lp = torch.empty(n, dtype=torch.float32, device=h.device)
    lse = torch.empty_like(lp)
    ent = torch.empty_like(lp) if with_entropy else lse
    block = 64 if INTERPRET else 1024
    _head_combine_kernel[(triton.cdiv(n, block),)](part, lp, lse, ent, n, n_split, ENTROPY=with_entropy,
                                              BLOCK=block)
    return lp, lse, (ent if with_entropy else None)


# how _mm_acc adds bf16 products into FP32 on CUDA: "addmm_out_dtype" (cuBLAS, bf16 inputs, FP32
# C with beta = 1), else "mm_out_dtype" (+ an FP32 add), else "fp32" (upcast, IEEE FP32: right
# but slow). Settled by a small probe on the first CUDA call (checked for the right sum); benches
# report it.
MM_PATH: str | None = None


def _mm_variants():
    def addmm(out, a, b):
        torch.addmm(out, a, b, out_dtype=torch.float32, out=out)

    def mm(out, a, b):
        out.add_(torch.mm(a, b, out_dtype=torch.float32))

    def fp32(out, a, b):
        from cispo.ops.fp32_matmul import no_tf32

        with no_tf32():
            out.addmm_(a.float(), b.float())

    return {"addmm_out_dtype": addmm, "mm_out_dtype": mm, "fp32": fp32}


def _probe_mm_path(device) -> str:
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(16, 32, device=device, generator=g).bfloat16()
    b = torch.randn(32, 8, device=device, generator=g).bfloat16()
    want = 1.0 + a.double() @ b.double()
    for name, fn in _mm_variants().items():
        try:
            out = torch.ones(16, 8, device=device)
            fn(out, a, b.T.contiguous().T)  # a transposed operand, as grad W's are
            if torch.allclose(out.double(), want, rtol=1e-5, atol=1e-5):
                return name
        except (RuntimeError, TypeError, NotImplementedError):
            continue
    return "fp32"


def _mm_acc(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """out += a @ b: bf16 inputs, FP32 products accumulated into the FP32 `out` (cuBLAS on CUDA;
    on CPU the same exact products in FP32)."""
    global MM_PATH
    if not out.is_cuda:
        out.addmm_(a.float(), b.float())
        return
    if MM_PATH is None:
        MM_PATH = _probe_mm_path(out.device)
    _mm_variants()[MM_PATH](out, a, b)


def _backward(h_pieces, w_pieces, tokens, lse, ent, g_lp, g_ent, inv_temp, need_h, need_w,
              chunk_tokens=None):
    n, d = h_pieces[0].shape
    vocab = w_pieces[0].shape[0]
    dev = h_pieces[0].device
    cfg = _config("bwd", len(h_pieces) + len(w_pieces))
    bt, bv = cfg["BT"], cfg["BV"]
    # token chunk: the two bf16 gradient pieces of its logits fit GRAD_BUFFER_BYTES
    ct = chunk_tokens or max(bt, (GRAD_BUFFER_BYTES // (4 * vocab)) // bt * bt)
    ct = min(ct, n)
    g = torch.empty(2, ct, vocab, dtype=torch.bfloat16, device=dev)
    gh = torch.empty(n, d, dtype=torch.float32, device=dev) if need_h else None
    gw = torch.zeros(vocab, d, dtype=torch.float32, device=dev) if need_w else None
    ent_grad = g_ent is not None
    for a in range(0, n, ct):
        rows = min(ct, n - a)
        g0, g1 = g[0, :rows], g[1, :rows]
        grid = (triton.cdiv(rows, bt) * triton.cdiv(vocab, bv),)
        _head_bwd_kernel[grid](*_pointers(h_pieces), *_pointers(w_pieces), tokens, lse,
                          ent if ent_grad else lse, g_lp, g_ent if ent_grad else g_lp, g0, g1,
                          rows, vocab, d, h_pieces[0].stride(0), w_pieces[0].stride(0), g0.stride(0),
                          inv_temp, a, NH=len(h_pieces), NW=len(w_pieces), ENT_GRAD=ent_grad, BT=bt,
                          BV=bv, BK=cfg["BK"], GROUP_T=cfg["GROUP_T"], F32DOT=INTERPRET,
                          num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
        if need_h:  # grad_h = Σ_{i+j ≤ 1} G_i W_j
            out = gh[a:a + rows].zero_()
            if len(w_pieces) > 1:
                _mm_acc(out, g0, w_pieces[1])
            _mm_acc(out, g1, w_pieces[0])
            _mm_acc(out, g0, w_pieces[0])
        if need_w:  # grad_W += Σ_{i+j ≤ 1} G_iᵀ h_j
            if len(h_pieces) > 1:
                _mm_acc(gw, g0.T, h_pieces[1][a:a + rows])
            _mm_acc(gw, g1.T, h_pieces[0][a:a + rows])
            _mm_acc(gw, g0.T, h_pieces[0][a:a + rows])
    return gh, gw


class _FusedHead(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, w, tokens, temperature, with_entropy, chunk_tokens):
        inv_temp = 1.0 / temperature
        tokens = tokens.contiguous()
        lp, lse, ent = _forward(h, split_bf16(w), split_bf16(h), tokens, inv_temp, with_entropy)
        ctx.save_for_backward(h, w, tokens, lse, ent)
        ctx.cfg = (inv_temp, chunk_tokens)
        if with_entropy:
            return lp, ent
        ctx.mark_non_differentiable(lse)
        return lp, lse  # lse stands in for the absent entropy; its gradient is ignored

    @staticmethod
    def backward(ctx, g_lp, g_ent):
        h, w, tokens, lse, ent = ctx.saved_tensors
        inv_temp, chunk_tokens = ctx.cfg
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_h or need_w):
            return None, None, None, None, None, None
        g_lp = (g_lp if g_lp is not None else torch.zeros_like(lse)).float().contiguous()
        g_ent = g_ent.float().contiguous() if (ent is not None and g_ent is not None) else None
        gh, gw = _backward(split_bf16(h), split_bf16(w), tokens, lse, ent, g_lp, g_ent, inv_temp,
                           need_h, need_w, chunk_tokens)
        return (gh.to(h.dtype) if need_h else None, gw.to(w.dtype) if need_w else None,
                None, None, None, None)


def fused_available(hidden: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the Triton kernels run for these tensors: CUDA (or the interpreter on CPU),
    bf16/FP32 operands."""
    if triton is None:
        return False
    ok_dtype = hidden.dtype in (torch.bfloat16, torch.float32) and weight.dtype in (torch.bfloat16, torch.float32)
    return ok_dtype and (hidden.is_cuda or INTERPRET)


def fused_token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor,
                         temperature: float = 1.0, *, with_entropy: bool = False,
                         chunk_tokens: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log softmax(h Wᵀ / τ)[tokens], entropy or None) in FP32, differentiable w.r.t. hidden and
    weight, FP32-accurate from bf16 tensor-core products (module docstring). hidden [..., D]
    (bf16 or FP32), weight [V, D] (bf16 or FP32), tokens [...]. `chunk_tokens`: tokens per
    backward chunk (default: GRAD_BUFFER_BYTES of bf16 gradient pieces). Where the kernels do not
    run (CPU without TRITON_INTERPRET=1, other dtypes) this is the IEEE FP32 torch path,
    `cispo.ops.chunked_logprobs.linear_token_logprobs`."""
    if weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"hidden [..., D] and weight [V, D] disagree: {tuple(hidden.shape)} vs "
                         f"{tuple(weight.shape)}")
    if tokens.shape != hidden.shape[:-1]:
        raise ValueError(f"tokens {tuple(tokens.shape)} must match hidden's leading dims "
                         f"{tuple(hidden.shape[:-1])}")
    if not fused_available(hidden, weight):
        from cispo.ops.chunked_logprobs import linear_token_logprobs

        return linear_token_logprobs(hidden, weight, tokens, temperature, with_entropy=with_entropy,
                                     chunk_tokens=chunk_tokens)
    lead = tokens.shape
    h = hidden.reshape(-1, hidden.shape[-1])
    if h.shape[0] == 0:
        z = h.new_zeros(lead, dtype=torch.float32)
        return z, (z.clone() if with_entropy else None)
    lp, second = _FusedHead.apply(h.contiguous(), weight, tokens.reshape(-1), float(temperature),
                                  with_entropy, chunk_tokens)
    return lp.reshape(lead), (second.reshape(lead) if with_entropy else None)
