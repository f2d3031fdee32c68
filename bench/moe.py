"""Benchmark: AutoEP's expert computation backends on one GPU, forward + backward of the experts
of one MoE layer (DeepSpeed 0.19.8's own functions, `deepspeed.moe.ep_experts`).

    python bench/moe.py [--hidden 2048 --ffn 2048 --experts 16 --top-k 2 --tokens 16384]
                        [--out bench/results/moe.json]

Tokens are routed uniformly at random (top-k of E), sorted by expert as AutoEP's dispatch leaves
them; weights and inputs bf16. Backends (`cispo.models.speed.GROUPED_MM_BACKENDS`): grouped_mm
(torch._grouped_mm, gate and up separately: DeepSpeed's default), fused_gate_up (one grouped GEMM
for gate and up; rebuilds the concatenated weight each call), loop (a GEMM per expert). Also the
floor: the same FLOPs as one dense bf16 GEMM chain (x·W13ᵀ, h·W2ᵀ) on all routed rows at once.
Prints a table and writes JSON; picks the fastest as `learner.grouped_mm_backend`'s measured default.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch


def bench(fn, reps=10):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    return statistics.median(times)


def bench_experts(hidden: int, ffn: int, experts: int, top_k: int, tokens: int) -> dict:
    """fwd+bwd time of each backend on one MoE layer's experts (and the dense floor)."""
    res = _bench_experts(hidden, ffn, experts, top_k, tokens)
    torch.cuda.empty_cache()  # the layer's tensors went with _bench_experts' frame
    return res


def _bench_experts(hidden: int, ffn: int, experts: int, top_k: int, tokens: int) -> dict:
    from deepspeed.moe import ep_experts as ep

    dev, dt = "cuda", torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(0)
    E, H, F = experts, hidden, ffn
    rows = tokens * top_k
    w1, w3 = (torch.randn(E, F, H, device=dev, generator=g, dtype=dt) * H**-0.5 for _ in range(2))
    w2 = torch.randn(E, H, F, device=dev, generator=g, dtype=dt) * F**-0.5
    experts_of = torch.randint(0, E, (rows,), device=dev, generator=g).sort().values
    counts = torch.bincount(experts_of, minlength=E)
    x0 = torch.randn(rows, H, device=dev, generator=g, dtype=dt)
    dy = torch.randn(rows, H, device=dev, generator=g, dtype=dt)
    fns = {"grouped_mm": ep._run_experts_grouped_mm, "fused_gate_up": ep._run_experts_grouped_mm_fused_gate_up,
           "loop": ep._run_experts_for_loop}
    params = [w.requires_grad_() for w in (w1, w2, w3)]
    res = {"hidden": H, "ffn": F, "experts": E, "top_k": top_k, "tokens": tokens, "rows": {}}
    flops = 3 * 2 * rows * 3 * H * F  # fwd + bwd (×3) of three [rows, H] × [H, F] products
    for name, fn in fns.items():
        x = x0.clone().requires_grad_()

        def go(fn=fn, x=x):
            out = fn(w1, w2, w3, x, counts)
            torch.autograd.backward(out, dy)
        try:
            ms = bench(go)
            res["rows"][name] = {"ms": ms, "tflops": flops / ms / 1e9}
        except Exception as e:  # noqa: BLE001 - a backend that does not run here is a result too
            res["rows"][name] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
        for p in params + [x]:
            p.grad = None
    w13 = torch.randn(2 * F, H, device=dev, generator=g, dtype=dt).requires_grad_()
    w2d = torch.randn(H, F, device=dev, generator=g, dtype=dt).requires_grad_()

    def dense():
        x = x0.detach().requires_grad_()
        gu = x @ w13.T
        h = torch.nn.functional.silu(gu[:, :F]) * gu[:, F:]
        torch.autograd.backward(h @ w2d.T, dy)
    ms = bench(dense)
    res["rows"]["dense_floor"] = {"ms": ms, "tflops": flops / ms / 1e9}
    ok = {k: v["ms"] for k, v in res["rows"].items() if "ms" in v and k != "dense_floor"}
    res["fastest"] = min(ok, key=ok.get) if ok else None
    return res


def summary(res: dict) -> str:
    return (f"experts fwd+bwd, {res['experts']} experts top-{res['top_k']}, H {res['hidden']}, I {res['ffn']}, "
            f"{res['tokens']} tokens: " + ", ".join(
                f"{k} {v['ms']:.2f} ms ({v['tflops']:.0f} TFLOP/s)" if "ms" in v else f"{k} {v['error'][:60]}"
                for k, v in res["rows"].items()) + f"; fastest {res['fastest']}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--ffn", type=int, default=2048)
    ap.add_argument("--experts", type=int, default=16)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--out", default="bench/results/moe.json")
    a = ap.parse_args()
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
           **bench_experts(a.hidden, a.ffn, a.experts, a.top_k, a.tokens)}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(f"{res['device']}: " + summary(res))


if __name__ == "__main__":
    main()
