"""Compile the Triton kernels the learner benches use, ahead of them (GPU).

    python bench/warm_kernels.py [--heads 16 64] [--fla-autotune one|full]

A first step of bench/learner.py compiles the fused head (forward, combine, backward; with and
without entropy), the fused RMSNorm and fla's lightning kernels one after another inside the
timed call. Run in the background while something else uses the GPU lightly (the GPU tests), this
fills Triton's on-disk cache so the benches start warm. Triton specialises an integer argument
only on whether it is 1 or divisible by 16, so small token counts compile the very binaries the
16K-token steps run (the vocabulary stays 200,064: the kernels' vocab-block counts follow it).
Prints the seconds each group took; compiles, measures nothing.
"""

from __future__ import annotations

import argparse
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--heads", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--vocab", type=int, default=200064)
    ap.add_argument("--fla-autotune", choices=["one", "full"], default="one")
    a = ap.parse_args()
    dev = "cuda"

    def timed(name, fn):
        t0 = time.perf_counter()
        try:
            fn()
            torch.cuda.synchronize()
            print(f"{name}: {time.perf_counter() - t0:.1f} s", flush=True)
        except Exception as e:  # noqa: BLE001 - warm what can be warmed
            print(f"{name}: {type(e).__name__}: {str(e)[:200]}", flush=True)

    def head():
        from cispo.ops.fused_head import fused_token_logprobs

        g = torch.Generator(device=dev).manual_seed(0)
        n, d = 256, 2048
        for w_dtype in (torch.bfloat16, torch.float32):
            h = torch.randn(n, d, device=dev, generator=g).bfloat16().requires_grad_()
            w = (torch.randn(a.vocab, d, device=dev, generator=g) * 0.05).to(w_dtype).requires_grad_()
            tok = torch.randint(0, a.vocab, (n,), device=dev, generator=g)
            lp, ent = fused_token_logprobs(h, w, tok, with_entropy=True)
            (lp.sum() + ent.sum()).backward()
            if w_dtype == torch.bfloat16:  # the training step: no entropy
                lp, _ = fused_token_logprobs(h, w, tok)
                lp.sum().backward()

    def norm():
        from cispo.ops.rmsnorm import rms_norm

        # 8,448 rows: like 16K-token steps, the backward's rows per program come out divisible by 16
        rows = 16 * 4 * torch.cuda.get_device_properties(0).multi_processor_count
        for n in (2048, 6144, 8192):
            x = torch.randn(rows, n, device=dev, dtype=torch.bfloat16, requires_grad=True)
            w = torch.ones(n, device=dev, dtype=torch.bfloat16, requires_grad=True)
            rms_norm(x, w, 1e-6).sum().backward()

    def lightning():
        from cispo.models import speed

        if a.fla_autotune == "one":
            speed.limit_fla_autotune()
        from fla.ops.simple_gla import chunk_simple_gla

        for heads in a.heads:
            t = 512
            q, k, v = (torch.randn(1, t, heads, 128, device=dev, dtype=torch.bfloat16, requires_grad=True)
                       for _ in range(3))
            cu = torch.tensor([0, 100, 300, t], device=dev, dtype=torch.long)
            g_gamma = -torch.rand(heads, device=dev)
            o, _ = chunk_simple_gla(q, k, v, g_gamma=g_gamma, scale=1.0, cu_seqlens=cu, cu_seqlens_cpu=cu.cpu())
            o.float().sum().backward()

    timed("fused head", head)
    timed("rmsnorm", norm)
    timed("fla lightning", lightning)


if __name__ == "__main__":
    main()
