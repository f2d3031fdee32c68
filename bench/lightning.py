"""Benchmark: one lightning-attention layer, fla path vs transformers' block loop (GPU).

    python bench/lightning.py [--hidden 6144 --heads 64 --head-dim 128]
                              [--tokens 4096 8192 16384 32768] [--out bench/results/lightning.json]

Per length T, one packed row (B = 1) of sequences of random lengths (cu_seqlens, no padding),
bf16, forward + backward (input and all weight gradients), median of CUDA-event timings:
  loop      transformers' MiniMaxLightningAttention (its Python block loop, block 256)
  patched   the same module after cispo.models.lightning.patch_lightning_attention
  bare      chunk_simple_gla alone on q, k, v of the layer's shape (the kernel floor)
  proj      the patched layer with the kernel swapped for o = v: projections, norm and gate only
So patched − proj is what the attention core costs inside our layer, to compare with bare.
Prints a table and writes JSON; asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from cispo.models.lightning import patch_lightning_attention


def make_layer(hidden, heads, head_dim):
    from transformers import MiniMaxConfig
    from transformers.models.minimax.modeling_minimax import MiniMaxLightningAttention

    cfg = MiniMaxConfig(hidden_size=hidden, num_attention_heads=heads, head_dim=head_dim,
                        num_hidden_layers=8, block_size=256, layer_types=["linear_attention"] * 8)
    layer = MiniMaxLightningAttention(cfg, layer_idx=2)
    for lin in (layer.qkv_proj, layer.output_gate, layer.out_proj):
        torch.nn.init.normal_(lin.weight, std=hidden**-0.5)
    return layer.cuda().bfloat16()


def time_ms(fn, reps, warmup=2):
    times = []
    for i in range(warmup + reps):
        torch.cuda.synchronize()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(s.elapsed_time(e))
    return statistics.median(times)


def layer_step(layer, x, dy, **kw):
    def go():
        xi = x.detach().requires_grad_()
        out, _ = layer(xi, None, None, **kw)
        out.backward(dy)
        layer.zero_grad(set_to_none=True)
    return go


def bare_step(kernel, q, k, v, do, g_gamma, cu):
    def go():
        o, _ = kernel(q, k, v, g_gamma=g_gamma, scale=1.0, cu_seqlens=cu)
        o.backward(do)
        q.grad = k.grad = v.grad = None
    return go


def packed_cu_seqlens(t, gen):
    """Random sequence lengths (512 … 8,192) filling exactly t tokens."""
    bounds, pos = [0], 0
    while pos < t:
        pos = min(t, pos + int(torch.randint(512, 8193, (1,), generator=gen)))
        bounds.append(pos)
    return torch.tensor(bounds, device="cuda")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=6144)
    ap.add_argument("--heads", type=int, default=64)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--tokens", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--loop-max", type=int, default=32768, help="skip the slow loop above this T")
    ap.add_argument("--out", default="bench/results/lightning.json")
    a = ap.parse_args()
    from fla.ops.simple_gla import chunk_simple_gla

    gen = torch.Generator().manual_seed(0)
    loop_layer = make_layer(a.hidden, a.heads, a.head_dim)
    fast_layer = make_layer(a.hidden, a.heads, a.head_dim)
    fast_layer.load_state_dict(loop_layer.state_dict())
    patch_lightning_attention(torch.nn.ModuleList([fast_layer]))
    g_gamma = -fast_layer.slope_rate.reshape(-1).float()
    rows = []
    for t in a.tokens:
        cu = packed_cu_seqlens(t, gen)
        x = torch.randn(1, t, a.hidden, device="cuda", dtype=torch.bfloat16)
        dy = torch.randn_like(x)

        q, k, v = (torch.randn(1, t, a.heads, a.head_dim, device="cuda", dtype=torch.bfloat16)
                   .mul_(0.3).requires_grad_() for _ in range(3))
        do = torch.randn_like(v)

        bare = bare_step(chunk_simple_gla, q, k, v, do, g_gamma, cu)
        row = {"tokens": t, "sequences": len(cu) - 1}
        row["patched_ms"] = time_ms(layer_step(fast_layer, x, dy, cu_seq_lens_q=cu), a.reps)
        row["bare_ms"] = time_ms(bare, a.reps)
        import fla.ops.simple_gla as simple_gla
        real = simple_gla.chunk_simple_gla
        simple_gla.chunk_simple_gla = lambda q, k, v, **kw: (v * 1, None)
        try:
            row["proj_ms"] = time_ms(layer_step(fast_layer, x, dy, cu_seq_lens_q=cu), a.reps)
        finally:
            simple_gla.chunk_simple_gla = real
        torch.cuda.reset_peak_memory_stats()
        layer_step(fast_layer, x, dy, cu_seq_lens_q=cu)()
        row["patched_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        if t <= a.loop_max:
            try:
                row["loop_ms"] = time_ms(layer_step(loop_layer, x, dy), max(2, a.reps // 2), warmup=1)
                torch.cuda.reset_peak_memory_stats()
                layer_step(loop_layer, x, dy)()
                row["loop_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            except torch.OutOfMemoryError:
                row["loop_ms"] = None
                torch.cuda.empty_cache()
        if row.get("loop_ms"):
            row["speedup_vs_loop"] = row["loop_ms"] / row["patched_ms"]
        row["core_ms"] = row["patched_ms"] - row["proj_ms"]
        row["core_over_bare"] = row["core_ms"] / row["bare_ms"]
        rows.append(row)
        print(row, flush=True)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "hidden": a.hidden, "heads": a.heads, "head_dim": a.head_dim, "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(f"\n{result['device']}  hidden {a.hidden}, {a.heads} heads × {a.head_dim}, bf16, packed "
          "varlen, forward+backward, median ms")
    print(f"{'T':>6} | {'seqs':>4} | {'loop':>8} | {'patched':>8} | {'speedup':>7} | {'proj':>7} | "
          f"{'core':>7} | {'bare fla':>8} | core/bare | peak GiB (patched/loop)")
    for r in rows:
        lp = f"{r['loop_ms']:8.1f}" if r.get("loop_ms") else "     n/a"
        sp = f"{r['speedup_vs_loop']:6.1f}×" if r.get("speedup_vs_loop") else "    n/a"
        print(f"{r['tokens']:>6} | {r['sequences']:>4} | {lp} | {r['patched_ms']:8.2f} | {sp} | "
              f"{r['proj_ms']:7.2f} | {r['core_ms']:7.2f} | {r['bare_ms']:8.2f} | "
              f"{r['core_over_bare']:9.2f} | {r['patched_peak_gib']:.1f}/{r.get('loop_peak_gib', 0):.1f}")


if __name__ == "__main__":
    main()
