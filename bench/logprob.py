"""Benchmark: chunked FP32 log-probs + entropy vs the naive FP32 logits path (GPU).

    python bench/logprob.py [--vocab 200064] [--hidden 2048] [--tokens 4096 8192 16384 32768]
                            [--variants naive chunked chunked_3xtf32] [--out bench/results/logprob.json]

For each length T: hidden states [T, D] in bf16 (what the model emits), the head weight [V, D] in
FP32 (the FP32-head recipe), sampled tokens. Three ways, forward only (the old-policy log-prob
pass) and forward+backward (the policy-loss pass), both returning log-probs and entropies:
  naive    fp32_linear → [T, V] FP32 logits → log_softmax / gather / entropy, autograd keeps them
  chunked  cispo.ops.chunked_logprobs.linear_token_logprobs (tiles, recomputing backward)
  chunked_3xtf32  the same with precision="3xtf32" (each FP32 product from three TF32 products)
  floor    the head matmul alone in IEEE FP32 ([T, D] × [D, V], computed in 4,096-row pieces):
           ×1 for forward, ×3 for forward+backward (the backward's two products cost the same
           FLOPs); the log-softmax itself adds bytes, not FLOPs.
"extra" memory = peak allocated during the call − memory held before it − the gradients it
returns (grad_h [T, D] bf16, grad_W [V, D] FP32): what the op needs beyond inputs and outputs.
Prints a table and writes JSON; asserts nothing about speed. Needs CUDA.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from cispo.ops.chunked_logprobs import linear_token_logprobs
from cispo.ops.fp32_matmul import fp32_linear, no_tf32

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


VARIANTS = {"naive": naive, "chunked": chunked, "chunked_3xtf32": chunked_3xtf32}


def floor_matmul(h, w):
    out = torch.empty(min(4096, h.shape[0]), w.shape[0], device=h.device)
    with no_tf32():
        h32 = h.float()
        for a in range(0, h.shape[0], 4096):
            torch.mm(h32[a:a + 4096], w.T, out=out[: h32[a:a + 4096].shape[0]])


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


def run_length(t, vocab, dim, reps, variants):
    g = torch.Generator(device="cuda").manual_seed(t)
    h0 = torch.randn(t, dim, device="cuda", generator=g).bfloat16()
    w0 = torch.randn(vocab, dim, device="cuda", generator=g) * (3 / dim**0.5)  # logits std ≈ 3
    tok = torch.randint(0, vocab, (t,), device="cuda", generator=g)
    grad_bytes = t * dim * 2 + vocab * dim * 4
    row = {"tokens": t}

    # correctness on these inputs first: chunked vs naive, forward values
    if t <= 8192:
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
    fl = row["floor_fwd"]["ms"]
    for name in variants:
        row[f"{name}_fwd"] = measure(fwd(VARIANTS[name]), reps)
        row[f"{name}_fwd_bwd"] = measure(fwd_bwd(VARIANTS[name]), reps, grad_bytes)
        if name != "naive" and row[f"{name}_fwd"]["ms"] is not None:
            row[f"{name}_fwd_over_floor"] = row[f"{name}_fwd"]["ms"] / fl
            row[f"{name}_fwd_bwd_over_floor"] = row[f"{name}_fwd_bwd"]["ms"] / (3 * fl)
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=200064)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--tokens", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--out", default="bench/results/logprob.json")
    a = ap.parse_args()
    rows = [run_length(t, a.vocab, a.hidden, a.reps, a.variants) for t in a.tokens]
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "vocab": a.vocab, "hidden": a.hidden, "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))

    def cell(m):
        return "OOM" if m["ms"] is None else f"{m['ms']:8.1f} ms {m['extra_gib']:6.2f} GiB"

    print(f"\n{result['device']}  V={a.vocab}  D={a.hidden}  hidden bf16, head FP32, log-probs + "
          "entropy; time (median) and extra peak memory; x/floor: fwd over floor, f+b over 3·floor")
    print(f"{'T':>6} | {'floor fwd':>9} | " + " | ".join(f"{v + ' fwd':>21} | {v + ' fwd+bwd':>21}"
                                                       for v in a.variants))
    for r in rows:
        cells = " | ".join(f"{cell(r[v + '_fwd'])} | {cell(r[v + '_fwd_bwd'])}" for v in a.variants)
        print(f"{r['tokens']:>6} | {r['floor_fwd']['ms']:6.1f} ms | {cells}")
        for v in a.variants:
            if f"{v}_fwd_over_floor" in r:
                print(f"{'':>6}   {v}: fwd/floor {r[v + '_fwd_over_floor']:.2f}, "
                      f"f+b/(3·floor) {r[v + '_fwd_bwd_over_floor']:.2f}")
    for r in rows:
        for sfx in ("", "_3xtf32"):
            if "max_abs_diff_logp" + sfx in r:
                print(f"T={r['tokens']}: chunked{sfx} vs naive IEEE max |Δlogp| "
                      f"{r['max_abs_diff_logp' + sfx]:.2e}, max |Δentropy| {r['max_abs_diff_entropy' + sfx]:.2e}")


if __name__ == "__main__":
    main()
