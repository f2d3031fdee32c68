"""The end of a graph-engine decode step in one kernel: sample, score, record, stop.

Per row r of the step (slot s = rows[r]; nothing happens for a slot that is not running):
  1. z = logits / temperature; the token is argmax(z + g) with the project's counter-based Gumbel
     noise g of (sample key, step t, token id) (`rollout.sampler`: the same hash, bit for bit, so
     a sample does not depend on batching or on the engine), and its log-prob log softmax(z)[tok]
     (online log-sum-exp over the vocabulary);
  2. token and log-prob go to the slot's output row at column t;
  3. the stop rules of the `hf` engine: a stop token (finish "stop"), M1's repetition stop (the
     run of tokens with p > threshold reaches the window; "repetition"), or t + 1 = max_new_tokens
     ("length"); the slot's code becomes the finish reason, else it stays running (-1);
  4. the slot's next input token, position, step and run advance.

`sample_step_ref` is the same in torch (CPU path and reference), built from `rollout.sampler`'s
own functions. With top-k / top-p the engine computes z with `process_logits` first and the
kernel skips the temperature (`apply_temperature=False`).
"""

from __future__ import annotations

import torch

from cispo.ops.triton_util import triton_jit, use_triton
from rollout.sampler import MIX_MUL, STEP_SALT, gumbel_noise, mix32, sample

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = tl = None

RUNNING, LENGTH, STOP, REPETITION, IDLE = -1, 0, 1, 2, 3  # slot codes (IDLE: free slot / the dummy)
MAX_STOP_IDS = 8
if tl is not None:  # Triton kernels read module constants only as constexpr
    _MIX_MUL_C, _STEP_SALT_C = tl.constexpr(MIX_MUL), tl.constexpr(STEP_SALT)


def sample_step_ref(logits, rows, pool, vocab_hash, temperature: float | None) -> None:
    """Torch version of the fused kernel (same effects on `pool`); temperature None = z given."""
    t, code = pool.info[0, rows], pool.info[1, rows]
    running = code < 0
    z = logits.float()
    if temperature is not None and temperature != 1.0:
        z = z / temperature
    tok, lp = sample(z, gumbel_noise(pool.key[rows], t, vocab_hash))
    col = torch.where(running, t, torch.full_like(t, pool.out_tok.shape[1] - 1))
    pool.out_tok[rows, col] = tok.to(pool.out_tok.dtype)
    pool.out_lp[rows, col] = lp
    window, max_new, n_stop = pool.iparams[0], pool.iparams[1], pool.iparams[2]
    run = torch.where(lp > pool.fparams[1], pool.run[rows] + 1, torch.zeros_like(t))
    stop_ids = pool.stop_ids[:MAX_STOP_IDS]
    valid = torch.arange(MAX_STOP_IDS, device=rows.device) < n_stop
    eos = ((tok[:, None] == stop_ids[None, :]) & valid[None, :]).any(-1)
    rep = (window > 0) & (run >= window) & ~eos
    new_code = torch.where(eos, STOP, torch.where(rep, REPETITION, torch.where(t + 1 >= max_new, LENGTH, RUNNING)))
    pool.info[1, rows] = torch.where(running, new_code, code)
    pool.info[0, rows] = t + running.long()
    pool.tok[rows] = torch.where(running, tok, pool.tok[rows])
    pool.pos[rows] = pool.pos[rows] + running.long()
    pool.run[rows] = torch.where(running, run, pool.run[rows])


@triton_jit
def _mix32(x):
    m = tl.full((), _MIX_MUL_C, tl.uint32)
    x = (x ^ (x >> 16)) * m
    x = (x ^ (x >> 16)) * m
    return x ^ (x >> 16)


@triton_jit(do_not_specialize=["vocab", "stride_l", "info_stride", "out_stride", "scratch"])
def _sample_step_kernel(logits_ptr, rows_ptr, vocab, stride_l, tok_ptr, pos_ptr, info_ptr, info_stride,
                        run_ptr, key_ptr, out_tok_ptr, out_lp_ptr, out_stride, scratch,
                        fparams_ptr, iparams_ptr, stop_ptr,
                        APPLY_TEMP: tl.constexpr, MAX_STOP: tl.constexpr, BLOCK_V: tl.constexpr):
    r = tl.program_id(0)
    s = tl.load(rows_ptr + r).to(tl.int64)
    t = tl.load(info_ptr + s)
    code = tl.load(info_ptr + info_stride + s)
    running = code < 0
    key = tl.load(key_ptr + s).to(tl.uint32)
    step = ((t + _STEP_SALT_C) & 0xFFFFFFFF).to(tl.uint32)
    kr = _mix32(key ^ _mix32(step))
    temp = tl.load(fparams_ptr)
    best = tl.full((), float("-inf"), tl.float64)
    best_i = tl.full((), 0, tl.int64)
    best_z = tl.full((), 0.0, tl.float32)
    m = tl.full((), float("-inf"), tl.float32)
    l_sum = tl.full((), 0.0, tl.float32)
    for v0 in range(0, vocab, BLOCK_V):
        vi = v0 + tl.arange(0, BLOCK_V)
        vm = vi < vocab
        z = tl.load(logits_ptr + r * stride_l + vi, mask=vm, other=float("-inf")).to(tl.float32)
        if APPLY_TEMP:
            z = z / temp
        h = _mix32(kr ^ _mix32(vi.to(tl.uint32)))
        u = (h.to(tl.float64) + 0.5) / 4294967296.0
        sc = z.to(tl.float64) - tl.log(-tl.log(u))
        sc = tl.where(vm, sc, float("-inf"))
        bmax = tl.max(sc, axis=0)
        bidx = tl.min(tl.where(sc == bmax, vi, vocab), axis=0).to(tl.int64)
        take = bmax > best  # strict: the earlier block keeps a tie (argmax takes the first)
        bz = tl.sum(tl.where(vi == bidx, z, 0.0), axis=0)
        best_i = tl.where(take, bidx, best_i)
        best_z = tl.where(take, bz, best_z)
        best = tl.where(take, bmax, best)
        m_new = tl.maximum(m, tl.max(z, axis=0))
        alive = m_new > float("-inf")
        scale = tl.where(alive, tl.exp(m - m_new), 1.0)
        part = tl.sum(tl.where(z > float("-inf"), tl.exp(z - m_new), 0.0), axis=0)
        l_sum = l_sum * scale + tl.where(alive, part, 0.0)
        m = m_new
    lp = best_z - (m + tl.log(l_sum))
    tok = best_i
    col = tl.where(running, t, scratch)
    tl.store(out_tok_ptr + s * out_stride + col, tok.to(out_tok_ptr.dtype.element_ty))
    tl.store(out_lp_ptr + s * out_stride + col, lp)
    window = tl.load(iparams_ptr)
    max_new = tl.load(iparams_ptr + 1)
    n_stop = tl.load(iparams_ptr + 2)
    run = tl.load(run_ptr + s)
    run = tl.where(lp > tl.load(fparams_ptr + 1), run + 1, 0)
    eos = tok < 0
    for i in tl.static_range(MAX_STOP):
        sid = tl.load(stop_ptr + i)
        eos = eos | ((tok == sid) & (i < n_stop))
    rep = (window > 0) & (run >= window) & (eos == 0)
    new_code = tl.where(eos, 1, tl.where(rep, 2, tl.where(t + 1 >= max_new, 0, -1)))
    tl.store(info_ptr + info_stride + s, new_code.to(tl.int64), mask=running)
    tl.store(info_ptr + s, t + 1, mask=running)
    tl.store(tok_ptr + s, tok, mask=running)
    tl.store(pos_ptr + s, tl.load(pos_ptr + s) + 1, mask=running)
    tl.store(run_ptr + s, run.to(tl.int64), mask=running)


def sample_step(logits, rows, pool, vocab_hash, temperature: float | None, *, force: str | None = None) -> None:
    """Sample one token for every row and advance its slot (see the module doc). `temperature`
    None: `logits` are already the processed z (top-k / top-p path). On the Triton path the
    temperature is read from pool.fparams[0] (so a captured graph follows it)."""
    if not use_triton(logits, force):
        return sample_step_ref(logits, rows, pool, vocab_hash, temperature)
    nb, vocab = logits.shape
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    _sample_step_kernel[(nb,)](
        logits, rows, vocab, logits.stride(0), pool.tok, pool.pos, pool.info, pool.info.stride(0),
        pool.run, pool.key, pool.out_tok, pool.out_lp, pool.out_tok.stride(0), pool.out_tok.shape[1] - 1,
        pool.fparams, pool.iparams, pool.stop_ids, APPLY_TEMP=temperature is not None,
        MAX_STOP=MAX_STOP_IDS, BLOCK_V=2048, num_warps=8)


def vocab_hashes(vocab: int, device) -> torch.Tensor:
    """mix32(arange(V)), the per-token half of the noise hash (the torch path's input)."""
    return mix32(torch.arange(vocab, device=device))
