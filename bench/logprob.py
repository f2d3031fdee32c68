"""Benchmark: the FP32 head's log-probs + entropy, forward and forward+backward, on GPU.

    python bench/logprob.py [--vocab 200064] [--hidden 2048] [--tokens 4096 8192 16384 32768]
                            [--variants fused chunked chunked_3xtf32 naive] [--weight-dtypes float32 bfloat16]
                            [--out bench/results/logprob.json]

For each length T: hidden states [T, D] in bf16 (what the model emits), the head weight [V, D] in
FP32 (the FP32-head recipe as written) or bf16 (what the learner's weight is under DeepSpeed's bf16
mode, which keeps the FP32 master copy in the optimizer), sampled tokens. Variants, forward only
(the old-policy log-prob pass) and forward+backward (the policy-loss pass), all returning log-probs
and entropies:
  fused    cispo.ops.fused_head (Triton; each FP32 operand as bf16 pieces, products on bf16 tensor
           cores, FP32 softmax; learner.head_precision=split_bf16)
  chunked  cispo.ops.chunked_logprobs.linear_token_logprobs, IEEE FP32 (the reference)
  chunked_3xtf32  the same with precision="3xtf32" (each FP32 product from three TF32 products)
  naive    fp32_linear → [T, V] FP32 logits → log_softmax / gather / entropy, autograd keeps them
Floors: `floor_fp32` the head matmul in IEEE FP32 ([T, D] × [D, V] in 4,096-row pieces: ×1 fwd,
×3 fwd+bwd); `floor_bf16` the same product as one bf16 GEMM. Issue 22's bar for an FP32-accurate
head: fwd+bwd ≤ 1.3 × 9 bf16 products (three bf16 products per FP32-accurate product, three
products). The fused head needs, in bf16 products: bf16 weight 1 fwd + 5 bwd (recompute,
2 grad_h, 2 grad_W); FP32 weight 3 fwd + 8 bwd (3 recompute, 3 grad_h, 2 grad_W).
Accuracy at the real shape: log-prob and entropy of the first 1,024 tokens against float64.
"extra" memory = peak allocated during the call − memory held before it − the gradients it
returns: what the op needs beyond inputs and outputs.
Prints a table and writes JSON; asserts nothing about speed. Needs CUDA.
"""

from __future__ import annotations

import argparse
import json
import statistics
from functools import partial
from pathlib import Path

import torch

from cispo.ops.chunked_logprobs import linear_token_logprobs
from cispo.ops.fp32_matmul import fp32_linear, no_tf32
from cispo.ops.fused_head import fused_token_logprobs

GiB = 2**30


def naive(h, w, tok):
    logits = fp32_linear(h, w)
    logp_all = torch.log_softmax(logits, -1)
    lp = logp_all.gather(-1, tok[:, None]).squeeze(-1)
    ent = -(logp_all.exp() * logp_all).sum(-1)
    return lp, ent


def chunked(h, w, tok):
    return linear_token_logprobs(h, w, tok, with_entropy=True)


def chunked_3xtf32(h, w, tok):
    return linear_token_logprobs(h, w, tok, with_entropy=True, precision="3xtf32")


def fused(h, w, tok):
    return fused_token_logprobs(h, w, tok, with_entropy=True)


VARIANTS = {"fused": fused, "chunked": chunked, "chunked_3xtf32": chunked_3xtf32, "naive": naive}
BF16_PRODUCTS = {"float32": 11, "bfloat16": 6}  # the fused head's fwd+bwd, in bf16 [T, V, D] GEMMs


def floor_bf16(h, wb):
    out = torch.empty(min(4096, h.shape[0]), wb.shape[0], device=h.device, dtype=torch.bfloat16)
    for a in range(0, h.shape[0], 4096):
        torch.mm(h[a:a + 4096], wb.T, out=out[: h[a:a + 4096].shape[0]])


def float64_errors(h, w, tok, n=1024):
    """max |Δ log p|, |Δ entropy| of the fused head against float64 on the first n tokens."""
    h, tok = h[:n], tok[:n]
    with torch.no_grad():
        lp, ent = fused(h, w, tok)
        x = h.double() @ w.double().T
        la = torch.log_softmax(x, -1)
        rlp = la.gather(-1, tok[:, None]).squeeze(-1)
        rent = -(la.exp() * la).sum(-1)
        del x, la
    return {"max_abs_dlogp": float((lp.double() - rlp).abs().max()),
            "max_abs_dentropy": float((ent.double() - rent).abs().max())}


def floor_matmul(h, w):
    out = torch.empty(min(4096, h.shape[0]), w.shape[0], device=h.device)
    with no_tf32():
        h32 = h.float()
        for a in range(0, h.shape[0], 4096):
            torch.mm(h32[a:a + 4096], w.float().T if w.dtype != torch.float32 else w.T,
                     out=out[: h32[a:a + 4096].shape[0]])


def measure(fn, reps, grad_bytes=0):
    """Median ms over reps (CUDA events, after one warm-up) and extra peak GiB, or an OOM note."""
    times = []
    try:
        for i in range(reps + 1):
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            if i:
                times.append(start.elapsed_time(end))
            extra = (torch.cuda.max_memory_allocated() - base - grad_bytes) / GiB
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {"ms": None, "extra_gib": None, "note": "OOM"}
    return {"ms": statistics.median(times), "extra_gib": extra}


def run_length(t, vocab, dim, reps, variants, w_dtype="float32"):
    g = torch.Generator(device="cuda").manual_seed(t)
    h0 = torch.randn(t, dim, device="cuda", generator=g).bfloat16()
    w0 = (torch.randn(vocab, dim, device="cuda", generator=g) * (3 / dim**0.5)).to(getattr(torch, w_dtype))  # logits std ≈ 3
    tok = torch.randint(0, vocab, (t,), device="cuda", generator=g)
    grad_bytes = t * dim * 2 + vocab * dim * w0.element_size()
    row = {"tokens": t, "weight_dtype": w_dtype}
    if "fused" in variants:
        row["fused_vs_float64"] = float64_errors(h0, w0, tok)

    # correctness on these inputs first: chunked vs naive, forward values
    if t <= 8192 and "naive" in variants:
        with torch.no_grad():
            b = naive(h0, w0, tok)
            for name in ("chunked", "chunked_3xtf32"):
                if name in variants:
                    a = VARIANTS[name](h0, w0, tok)
                    sfx = "" if name == "chunked" else "_3xtf32"
                    row["max_abs_diff_logp" + sfx] = (a[0] - b[0]).abs().max().item()
                    row["max_abs_diff_entropy" + sfx] = (a[1] - b[1]).abs().max().item()

    def fwd(fn):
        def go():
            with torch.no_grad():
                fn(h0, w0, tok)
        return go

    def fwd_bwd(fn):
        def go():
            h = h0.detach().requires_grad_()
            w = w0.detach().requires_grad_()
            lp, ent = fn(h, w, tok)
            (lp.sum() + 0.01 * ent.sum()).backward()
            del h, w, lp, ent
        return go

    row["floor_fwd"] = measure(lambda: floor_matmul(h0, w0), reps)
    # the bf16 copy of the weight lives as long as this measurement (the partial), no longer
    row["floor_bf16"] = measure(partial(floor_bf16, h0, w0.bfloat16()), reps)
    fl, fb = row["floor_fwd"]["ms"], row["floor_bf16"]["ms"]
    for name in variants:
        row[f"{name}_fwd"] = measure(fwd(VARIANTS[name]), reps)
        row[f"{name}_fwd_bwd"] = measure(fwd_bwd(VARIANTS[name]), reps, grad_bytes)
        if name != "naive" and row[f"{name}_fwd"]["ms"] is not None:
            row[f"{name}_fwd_over_floor"] = row[f"{name}_fwd"]["ms"] / fl
            row[f"{name}_fwd_bwd_over_floor"] = row[f"{name}_fwd_bwd"]["ms"] / (3 * fl)
            # issue 22's floor: 3 bf16 products per FP32-accurate product, ×3 for fwd+bwd
            row[f"{name}_fwd_bwd_over_9bf16"] = row[f"{name}_fwd_bwd"]["ms"] / (9 * fb)
            row[f"{name}_fwd_over_3bf16"] = row[f"{name}_fwd"]["ms"] / (3 * fb)
    if "fused" in variants and row["fused_fwd_bwd"]["ms"] is not None:
        need = BF16_PRODUCTS[w_dtype]
        row["fused_bf16_products"] = need
        row["fused_fwd_bwd_over_own_floor"] = row["fused_fwd_bwd"]["ms"] / (need * fb)
    return row


def fwd_tiles(a):
    """The fused forward's time with other tile shapes (bf16 weight, the first length)."""
    from cispo.ops import fused_head

    t, out = a.tokens[0], []
    g = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(t, a.hidden, device="cuda", generator=g).bfloat16()
    w = (torch.randn(a.vocab, a.hidden, device="cuda", generator=g) * (3 / a.hidden**0.5)).bfloat16()
    tok = torch.randint(0, a.vocab, (t,), device="cuda", generator=g)
    default = dict(fused_head.FWD_CONFIG)
    for spec in [default_spec(default)] + a.fwd_configs.split(";"):
        bt, bv, bk, warps, stages = (int(x) for x in spec.split(","))
        fused_head.FWD_CONFIG = {**default, "BT": bt, "BV": bv, "BK": bk, "num_warps": warps, "num_stages": stages}
        try:
            m = measure(lambda: fused(h, w, tok), a.reps)
            out.append({"config": spec, "ms": m["ms"]})
        except Exception as e:  # noqa: BLE001 - a tile that does not compile or fit is a result
            out.append({"config": spec, "error": f"{type(e).__name__}: {str(e)[:120]}"})
    fused_head.FWD_CONFIG = default
    return out


def default_spec(c):
    return f"{c['BT']},{c['BV']},{c['BK']},{c['num_warps']},{c['num_stages']}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=200064)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--tokens", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--weight-dtypes", nargs="+", choices=["float32", "bfloat16"], default=["float32"])
    ap.add_argument("--fwd-configs", default="",
                    help="also time the fused forward (bf16 weight, first T) with these tiles: 'BT,BV,BK,warps,stages;...'")
    ap.add_argument("--out", default="bench/results/logprob.json")
    a = ap.parse_args()
    rows = [run_length(t, a.vocab, a.hidden, a.reps, a.variants, wd) for wd in a.weight_dtypes for t in a.tokens]
    tiles = fwd_tiles(a) if a.fwd_configs else []
    from cispo.ops import fused_head

    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "vocab": a.vocab, "hidden": a.hidden, "fused_mm_path": fused_head.MM_PATH, "rows": rows,
              "fused_fwd_tiles": tiles}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))

    def cell(m):
        return "OOM" if m["ms"] is None else f"{m['ms']:8.1f} ms {m['extra_gib']:5.2f} GiB"

    print(f"\n{result['device']}  V={a.vocab}  D={a.hidden}  hidden bf16, log-probs + entropy; median time, "
          f"extra peak memory; fused grad GEMMs via {result['fused_mm_path']}")
    print(f"{'W':>4} {'T':>6} | {'fp32 mm':>8} | {'bf16 mm':>8} | " + " | ".join(
        f"{v + ' fwd':>20} | {v + ' f+b':>20}" for v in a.variants))
    for r in rows:
        cells = " | ".join(f"{cell(r[v + '_fwd'])} | {cell(r[v + '_fwd_bwd'])}" for v in a.variants)
        print(f"{r['weight_dtype'][:4]:>4} {r['tokens']:>6} | {r['floor_fwd']['ms']:5.1f} ms | "
              f"{r['floor_bf16']['ms']:5.2f} ms | {cells}")
    for t in tiles:
        print(f"fused fwd tiles {t['config']}: {t['ms']:.2f} ms" if t.get("ms") else f"fused fwd tiles {t}")
    for r in rows:
        for v in a.variants:
            if f"{v}_fwd_bwd_over_9bf16" in r:
                print(f"{r['weight_dtype'][:4]} T={r['tokens']} {v}: f+b / (9 bf16) {r[v + '_fwd_bwd_over_9bf16']:.2f}, "
                      f"f+b / (3 fp32) {r[v + '_fwd_bwd_over_floor']:.2f}"
                      + (f", f+b / ({r['fused_bf16_products']} bf16 needed) {r['fused_fwd_bwd_over_own_floor']:.2f}"
                         if v == "fused" else ""))
        if "fused_vs_float64" in r:
            e = r["fused_vs_float64"]
            print(f"{r['weight_dtype'][:4]} T={r['tokens']} fused vs float64: max |dlogp| {e['max_abs_dlogp']:.2e}, "
                  f"max |dentropy| {e['max_abs_dentropy']:.2e}")
        for sfx in ("", "_3xtf32"):
            if "max_abs_diff_logp" + sfx in r:
                print(f"T={r['tokens']}: chunked{sfx} vs naive IEEE max |dlogp| "
                      f"{r['max_abs_diff_logp' + sfx]:.2e}, max |dentropy| {r['max_abs_diff_entropy' + sfx]:.2e}")


if __name__ == "__main__":
    main()
