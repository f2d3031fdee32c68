"""Benchmark: the learner's step on GPU, and train/rollout log-prob agreement with BF16 vs FP32 head.

    torchrun --nproc_per_node 1 bench/learner.py throughput [--shape 2.59b|m1slice] [--tokens 16384]
        [--steps 3] [--cases after-long,after-short,before-long] [--profile] [--autoep 1]
        [--fla-autotune full|one] [--out bench/results/learner.json]
    python bench/learner.py agreement [--out bench/results/agreement.json]

throughput: a hybrid MiniMax MoE (lightning : softmax layers, top-2 experts, V = 200,064) under
DeepSpeed ZeRO-3 (+ AutoEP when --autoep > 0 and it initialises), bf16, lightning through fla, the
FP32 head with chunked log-probs, a CISPO-shaped loss (clipped IS weight × advantage × log π) on
random tokens. Each step is one packed micro-batch of `--tokens` tokens: sequences of random
lengths back to back (`cispo.packing`, position_ids restarting per sequence, cu_seqlens), scored
through the engine's forward as the learner does (`enable_token_scoring`), then backward and
the optimizer step.

Shapes (`--shape`): 2.59b = 8 layers (7 lightning : 1 softmax), hidden 2048, 16 heads × 128 (2 KV
heads), 16 experts top-2, expert FFN 2048. m1slice = one M1 GPU's share: hidden 6144, 64 heads ×
128 with 8 KV heads (M1's GQA), expert FFN 9216, M1's head (V = 200,064 × 6144), 4 layers (3
lightning + 1 softmax, as the last pipeline stage of M1 holds a few layers and the head) and 4
experts top-2 (the 4 local experts of 32 under 8-way expert parallelism: the same expert work per
token as 32 top-2, which one GPU cannot hold with its optimizer state); the input embedding is
frozen (it lives on M1's first stage; here it would only add 1.2B parameters of optimizer state).

One process builds the model and engine once and runs each case in `--cases` on it; a case sets
the sequence lengths and the code paths, switched in place:
  long   lengths uniform in [seq-min, seq-max] (default 2,048–8,192)
  short  lengths uniform in [32, 64] (hundreds of sequences: RL on short answers)
  after  the learner's GPU paths (`cispo.models.speed.enable_fast_paths`): fused FP32-accurate
         head (head_precision=split_bf16), varlen flash attention for the softmax layers, fused
         RMSNorm, fla's cu_seqlens built once per forward; activation checkpointing off
         (`--ckpt-layers` checkpoints that many layers)
  before the previous state: chunked IEEE-FP32 torch head, transformers' sdpa with its packed
         mask, transformers' RMSNorm, cu_seqlens per layer, every layer checkpointed
ZeRO-3 settings are the engine's (`bench/zero3_config.py`, one for all cases). `--profile` adds one
profiled step per case: GPU time by kind of kernel (head, GEMM, attention, fla, norm,
elementwise, copies, optimizer, NCCL) and launches per step.
Reports tokens/s/GPU and MFU (6 × active matmul parameters per token + the causal softmax-attention
and lightning FLOPs, over 989 TFLOP/s dense bf16 for an H100 SXM or H200; recomputation not
counted) and peak memory.

agreement: a small hybrid model samples responses with transformers' generate (the rollout side:
prefill through fla, then transformers' one-token recurrence with its bf16 KV state), then the
learner's full-sequence pass (fla, no cache: the train side) rescores the same tokens; per-token Pearson correlation of the probabilities and
mean |Δ log p|, once with a BF16 head on both sides and once with the FP32 head on both sides.
Prints tables and writes JSON; asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from zero3_config import zero3_bench_config  # bench/, first on sys.path

from cispo.models.fp32_head import apply_fp32_head, enable_token_scoring
from cispo.models.lightning import patch_lightning_attention
from cispo.ops.logprobs import token_logprobs
from cispo.packing import pack

PEAK_BF16 = 989e12  # dense bf16 tensor-core FLOP/s, H100 SXM / H200 datasheet

SHAPES = {
    "2.59b": {"layers": 8, "hidden": 2048, "heads": 16, "kv_heads": 2, "experts": 16, "ffn": 2048,
              "softmax_every": 8},
    "m1slice": {"layers": 4, "hidden": 6144, "heads": 64, "kv_heads": 8, "experts": 4, "ffn": 9216,
                "softmax_every": 4},
    # a CPU smoke run of this script's code (`--device cpu`), nothing to measure
    "tiny": {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "experts": 4, "ffn": 64, "softmax_every": 2},
}

CASES = {  # lengths, and the code paths of `set_paths`
    "after-long": ("long", "after"), "after-short": ("short", "after"),
    "before-long": ("long", "before"), "before-short": ("short", "before"),
}


def hybrid_config(layers, hidden, heads, experts, ffn, vocab=200064, kv_heads=None, softmax_every=8):
    from transformers import MiniMaxConfig

    return MiniMaxConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads or max(1, heads // 8),
        head_dim=hidden // heads if hidden // heads >= 64 else 128,
        num_local_experts=experts, num_experts_per_tok=2, block_size=256,
        layer_types=["full_attention" if (i + 1) % softmax_every == 0 else "linear_attention"
                     for i in range(layers)],
        max_position_embeddings=65536, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1e7},
        attn_implementation="sdpa")


def flops_per_token(cfg, tokens):
    """6 × active matmul params + attention (softmax: causal QKᵀ and PV; lightning: chunked
    intra-block product and state updates, ≈ 4·T_chunk + 4·D per head-dim per token). `tokens`:
    the mean causal context length scale, Σ L_i² / Σ L_i over the packed sequences."""
    h, d, hd = cfg.hidden_size, cfg.head_dim, cfg.num_attention_heads
    kv = cfg.num_key_value_heads
    lin = sum(t == "linear_attention" for t in cfg.layer_types)
    soft = len(cfg.layer_types) - lin
    attn_params = lin * (5 * h * hd * d) + soft * (2 * h * hd * d + 2 * h * kv * d)
    expert_params = len(cfg.layer_types) * 2 * 3 * h * cfg.intermediate_size
    head = cfg.vocab_size * h
    dense = 6 * (attn_params + expert_params + head)
    softmax_attn = soft * 3 * 2 * hd * d * tokens  # fwd 2·T/2·d·2 per head (causal), ×3 f+b
    lightning = lin * 3 * hd * d * (2 * 64 * 2 + 4 * d)
    return dense + softmax_attn + lightning


# kernel name → kind, first match wins (profile table)
KINDS = [
    ("head (fused)", ("_head_fwd", "_head_bwd", "_head_combine")),
    ("rmsnorm (fused)", ("_rms_fwd", "_rms_bwd")),
    ("attention (flash)", ("flash", "fmha", "attention")),
    ("lightning (fla)", ("chunk_", "fla", "cumsum", "solve_tril", "prepare_")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("nccl / ZeRO comm", ("nccl",)),
    ("moe grouped gemm", ("grouped", "_grouped_mm")),
    ("gemm", ("gemm", "nvjet", "xmma", "cutlass", "wgmma", "sm90", "sm80", "ampere", "magma", "dot_kernel")),
    ("copy / cast", ("copy", "memcpy", "memset", "cat", "fill")),
    ("reduction", ("reduce", "sum", "norm", "softmax", "max", "argmax", "topk", "sort", "scan", "index",
                   "scatter", "gather")),
    ("elementwise", ("elementwise", "vectorized", "unrolled", "pointwise", "triton_")),
]


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, keys in KINDS:
        if any(k in low for k in keys):
            return kind
    return "other"


def profile_table(prof) -> dict:
    """GPU time and launches per kind of kernel, and the top kernels, from one profiled step."""
    kinds: dict[str, dict[str, float]] = {}
    top = []
    for ev in prof.key_averages():
        if getattr(ev, "device_type", None) is None or ev.device_type.name != "CUDA":
            continue
        us = getattr(ev, "self_device_time_total", None)
        if us is None:
            us = getattr(ev, "self_cuda_time_total", 0.0)
        if us <= 0:
            continue
        k = kind_of(ev.key)
        d = kinds.setdefault(k, {"ms": 0.0, "launches": 0})
        d["ms"] += us / 1e3
        d["launches"] += ev.count
        top.append((us / 1e3, ev.count, ev.key[:90]))
    total = sum(d["ms"] for d in kinds.values()) or 1.0
    for d in kinds.values():
        d["share"] = d["ms"] / total
    top.sort(reverse=True)
    return {"gpu_ms": total, "launches": sum(d["launches"] for d in kinds.values()),
            "kinds": dict(sorted(kinds.items(), key=lambda kv: -kv[1]["ms"])),
            "top_kernels": [{"ms": t, "count": c, "name": n} for t, c, n in top[:25]]}


def make_batch(cfg, tokens, seq_min, seq_max, seed, dev="cuda"):
    g = torch.Generator().manual_seed(seed)
    lengths = []
    while sum(lengths) < tokens:
        n = int(torch.randint(seq_min, seq_max + 1, (1,), generator=g))
        lengths.append(min(n, tokens - sum(lengths)))
    if lengths[-1] < 2 and len(lengths) > 1:  # a 1-token tail scores nothing: merge it
        tail = lengths.pop()
        lengths[-1] += tail
    seqs = [torch.randint(0, cfg.vocab_size, (n,), generator=g).tolist() for n in lengths]
    p = pack(seqs)
    kwargs = {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in p.model_kwargs().items()}
    adv = torch.randn(1, tokens, generator=g).to(dev)
    return {"lengths": lengths, "kwargs": kwargs, "targets": p.targets.to(dev),
            "valid": p.valid.to(dev).float(), "adv": adv,
            "old_lp": torch.full((1, tokens), -12.0, device=dev)}


def set_paths(model, which: str, ckpt_layers: int | None) -> dict:
    """Switch the model in place to the `after` (the learner's GPU paths) or `before` code paths."""
    from cispo.models import lightning, speed

    if which == "after":
        info = speed.enable_fast_paths(model)
        lightning.CACHE_CU_SEQLENS = True
        speed.checkpoint_layers(model, ckpt_layers or 0)
    else:
        info = speed.disable_fast_paths(model)
        lightning.CACHE_CU_SEQLENS = False
        speed.checkpoint_layers(model, None)  # every layer, as before
    return info


def step(engine, b, timed=True):
    lp, _ = engine(**b["kwargs"], targets=b["targets"])
    w = torch.exp(lp.detach() - b["old_lp"]).clamp(max=1.28)  # CISPO: sg(clip(r)) · Â · log π
    loss = -(w * b["adv"] * lp * b["valid"]).sum() / b["valid"].sum()
    engine.backward(loss)
    engine.step()


def trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


def throughput(a):
    cpu = a.device == "cpu"
    if cpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    t_start = time.perf_counter()
    deepspeed.init_distributed("gloo" if cpu else "nccl")
    rank = int(os.environ.get("RANK", 0))
    dev = "cpu" if cpu else "cuda"
    if not cpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    sync = (lambda: None) if cpu else torch.cuda.synchronize
    from transformers import MiniMaxForCausalLM

    from cispo.models import speed

    shape = {**SHAPES[a.shape], **{k: v for k, v in (("layers", a.layers), ("experts", a.experts)) if v}}
    cfg = hybrid_config(shape["layers"], shape["hidden"], shape["heads"], shape["experts"], shape["ffn"],
                        kv_heads=shape["kv_heads"], softmax_every=shape["softmax_every"])
    torch.manual_seed(0)
    if a.fla_autotune == "one":
        speed.limit_fla_autotune()
    moe = None
    if a.moe_bench and not cpu:  # AutoEP's expert backends on this shape's MoE layer (bench/moe.py)
        from moe import bench_experts, summary

        try:
            moe = bench_experts(shape["hidden"], shape["ffn"], shape["experts"], 2, a.tokens)
            if rank == 0:
                print("moe: " + summary(moe), flush=True)
        except Exception as e:  # noqa: BLE001 - the step measurement matters more
            moe = {"error": f"{type(e).__name__}: {str(e)[:200]}"}

    def build():
        with torch.device(dev):  # random init on the GPU: minutes faster than on CPU
            m = MiniMaxForCausalLM(cfg)
        apply_fp32_head(m)
        patch_lightning_attention(m)
        m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        m.config.use_cache = False
        return enable_token_scoring(m)

    model = build()
    n_params = sum(p.numel() for p in model.parameters())
    if a.shape == "m1slice":
        # the input embedding lives on M1's first pipeline stage, not on this one (the last: a
        # few layers and the head); frozen here it costs no gradient or optimizer memory
        model.get_input_embeddings().weight.requires_grad_(False)
    ds = zero3_bench_config(a.autoep, model=model, prefetch_layers=a.prefetch_layers,
                            grouped_mm_backend=a.grouped_mm_backend)
    if cpu:  # the smoke run: FP32 on CPU, torch's plain AdamW
        ds["bf16"]["enabled"] = False
        ds["optimizer"]["params"].pop("fused", None)
    # the tuned config first; if DeepSpeed refuses it, ZeRO-3's own sizes, then without AutoEP:
    # each failure is recorded, and the step is still measured
    plain = {"stage": 3, "overlap_comm": True}
    attempts = [dict(ds), {**ds, "zero_optimization": plain}]
    if a.autoep:
        attempts.append({k: v for k, v in ds.items() if k != "expert_parallel"} | {"zero_optimization": plain})
    notes = []
    for i, trial in enumerate(attempts):
        if i:
            model = build()
            if a.shape == "m1slice":
                model.get_input_embeddings().weight.requires_grad_(False)
        try:
            engine, *_ = deepspeed.initialize(model=model, model_parameters=trainable(model), config=trial)
            ds = trial
            break
        except Exception as e:  # noqa: BLE001 - record why, then try the next config
            notes.append(f"config {i} failed ({type(e).__name__}: {str(e)[:200]})")
            if i == len(attempts) - 1:
                raise
            del model
            torch.cuda.empty_cache() if not cpu else None
    autoep_note = (f"autoep_size={a.autoep}" if "expert_parallel" in ds else "off") + (
        "; " + "; ".join(notes) if notes else "")
    ep_layers = sum(type(m).__name__ == "AutoEPMoELayer" for m in engine.module.modules())
    setup_s = time.perf_counter() - t_start
    res = {"device": "cpu" if cpu else torch.cuda.get_device_name(), "torch": torch.__version__, "shape": a.shape,
           "params_total": n_params, **shape, "vocab": cfg.vocab_size, "tokens_per_gpu": a.tokens,
           "autoep": autoep_note, "autoep_layers": ep_layers, "zero": ds["zero_optimization"],
           "expert_parallel": ds.get("expert_parallel"),
           "fla_autotune": a.fla_autotune, "setup_s": setup_s, "moe_backends": moe, "cases": {}}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in a.cases.split(","):
        kind, which = CASES[name]
        lo, hi = (a.seq_min, a.seq_max) if kind == "long" else (a.short_min, a.short_max)
        b = make_batch(cfg, a.tokens, lo, hi, seed=rank, dev=dev)
        info = set_paths(engine.module, which, a.ckpt_layers)
        t0 = time.perf_counter()
        for _ in range(a.warmup):
            step(engine, b)
        sync()
        warm_s = time.perf_counter() - t0
        if not cpu:
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(a.steps):
            sync()
            t0 = time.perf_counter()
            step(engine, b)
            sync()
            times.append(time.perf_counter() - t0)
        s = statistics.median(times)
        lengths = b["lengths"]
        context = sum(n * n for n in lengths) / sum(lengths)
        f = flops_per_token(cfg, context)
        row = {"paths": which, "paths_info": info, "sequences": len(lengths),
               "length_min": min(lengths), "length_max": max(lengths), "warmup_s": warm_s,
               "step_s": s, "step_times": times, "tokens_per_s_per_gpu": a.tokens / s,
               "flops_per_token": f, "head_flop_share": 6 * cfg.vocab_size * cfg.hidden_size / f,
               "mfu": a.tokens / s * f / PEAK_BF16,
               "peak_gib": 0.0 if cpu else torch.cuda.max_memory_allocated() / 2**30}
        if a.profile and not cpu:
            from torch.profiler import ProfilerActivity, profile

            try:
                sync()
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    t0 = time.perf_counter()
                    step(engine, b)
                    sync()
                    wall = time.perf_counter() - t0
                row["profile"] = profile_table(prof)
                # GPU time summed over kernels vs the step's wall time: the gap is the GPU waiting
                # on the host (Python, DeepSpeed's hooks, launches, syncs)
                row["profile"]["wall_ms"] = wall * 1e3
            except Exception as e:  # noqa: BLE001 - a profiler problem must not lose the timings
                row["profile_error"] = f"{type(e).__name__}: {e}"
        from cispo.ops import fused_head

        row["fused_mm_path"] = fused_head.MM_PATH
        res["cases"][name] = row
        out.write_text(json.dumps(res, indent=1))  # after every case: a timeout keeps the rest
        if rank == 0:
            print(f"{name}: {len(lengths)} seqs, {s:.3f} s/step, {row['tokens_per_s_per_gpu']:.0f} tok/s, "
                  f"MFU {row['mfu']:.3f}, peak {row['peak_gib']:.1f} GiB (warm-up {warm_s:.1f} s)", flush=True)
    if rank == 0:
        print(f"\n{res['device']}: {a.shape} {n_params / 1e9:.2f}B, ZeRO-3, AutoEP {autoep_note} "
              f"({ep_layers} layers), {a.tokens} tokens/GPU, setup {setup_s:.0f} s")
        print(f"{'case':>13} | seqs | s/step | tok/s/GPU |   MFU | peak GiB")
        for name, r in res["cases"].items():
            print(f"{name:>13} | {r['sequences']:4d} | {r['step_s']:6.3f} | {r['tokens_per_s_per_gpu']:9.0f} | "
                  f"{r['mfu']:.3f} | {r['peak_gib']:.1f}")
        for name, r in res["cases"].items():
            if "profile" in r:
                p = r["profile"]
                print(f"{name}: GPU {p['gpu_ms']:.0f} of {p.get('wall_ms', 0):.0f} ms, {p['launches']} launches: " + ", ".join(
                    f"{k} {v['ms']:.0f} ms/{v['launches']}" for k, v in list(p["kinds"].items())[:7]))


def pearson(x, y):
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    return (x * y).sum().item() / (x.norm() * y.norm()).item()


def agreement(a):
    from transformers import MiniMaxForCausalLM

    cfg = hybrid_config(a.layers, a.hidden, a.heads, a.experts, a.ffn)
    torch.manual_seed(0)
    base = MiniMaxForCausalLM(cfg)
    with torch.no_grad():  # a trained LM's logits span tens of nats; random init gives ~0.1
        base.lm_head.weight.normal_(0, a.logit_std / cfg.hidden_size**0.5)
    state = base.state_dict()
    rows = []
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a smoke run of the script only
    for head, lstate in [(h, st) for h in a.head_dtypes.split(",") for st in a.states.split(",")]:
        model = MiniMaxForCausalLM(cfg)
        model.load_state_dict(state)
        model = model.to(dev).bfloat16().eval()
        model.generation_config.eos_token_id = None  # every response runs to max_new_tokens
        if head == "fp32":
            apply_fp32_head(model)
            model.lm_head.weight.data.copy_(state["lm_head.weight"])
        # the rollout's lightning KV state across decode steps: bf16 (transformers) or FP32 (M1)
        patch_lightning_attention(model, fp32_state=lstate == "fp32")
        g = torch.Generator(device=dev).manual_seed(1)
        prompt = torch.randint(0, cfg.vocab_size, (a.batch, a.prompt), device=dev, generator=g)
        torch.manual_seed(2)
        with torch.no_grad():
            out = model.generate(prompt, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 max_new_tokens=a.new, pad_token_id=0, output_logits=True, return_dict_in_generate=True)
            resp = out.sequences[:, a.prompt:]
            roll = token_logprobs(torch.stack(out.logits, 1), resp)  # rollout: with cache
            # use_cache=False: the learner's pass, no cache, so every lightning layer runs fla
            hidden = model.model(input_ids=out.sequences, use_cache=False).last_hidden_state
            hidden = hidden[:, a.prompt - 1:-1]
            if head == "fp32":
                train, _ = model.lm_head(hidden, tokens=resp)
            else:
                train = token_logprobs(model.lm_head(hidden), resp)
        rows.append({"head": head, "decode_state": lstate, "tokens": resp.numel(),
                     "pearson_prob": pearson(train.exp().flatten(), roll.exp().flatten()),
                     "pearson_logprob": pearson(train.flatten(), roll.flatten()),
                     "mean_abs_dlogp": (train - roll).abs().mean().item(),
                     "mean_logp": roll.mean().item()})
        print(rows[-1], flush=True)
    res = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "layers": a.layers, "hidden": a.hidden,
           "experts": a.experts, "vocab": cfg.vocab_size, "logit_std": a.logit_std, "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(f"\n{res['device']}: {a.layers}-layer hybrid, hidden {a.hidden}, V {cfg.vocab_size}, "
          f"{a.batch}×{a.new} sampled tokens; rollout = generate (prefill fla, then transformers' "
          "one-token recurrence, lightning state in the model dtype or FP32), train = full pass without cache (fla)")
    print(f"{'head':>5} | {'state':>5} | {'pearson p':>9} | {'pearson logp':>12} | {'mean |Δlogp|':>12} | mean logp")
    for r in rows:
        print(f"{r['head']:>5} | {r['decode_state']:>5} | {r['pearson_prob']:9.5f} | {r['pearson_logprob']:12.5f} | "
              f"{r['mean_abs_dlogp']:12.2e} | {r['mean_logp']:.2f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["throughput", "agreement"])
    ap.add_argument("--shape", choices=list(SHAPES), default="2.59b")
    ap.add_argument("--layers", type=int, default=0, help="throughput: override the shape's layers")
    ap.add_argument("--hidden", type=int, default=2048, help="agreement model")
    ap.add_argument("--heads", type=int, default=16, help="agreement model")
    ap.add_argument("--experts", type=int, default=0, help="throughput: override the shape's experts; agreement: 16")
    ap.add_argument("--ffn", type=int, default=2048, help="agreement model")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--cases", default="after-long,after-short,before-long")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--ckpt-layers", type=int, default=0, help="after: layers whose activations are recomputed")
    ap.add_argument("--prefetch-layers", type=int, default=2, help="ZeRO-3 layers gathered ahead (the plan's)")
    ap.add_argument("--fla-autotune", choices=["full", "one"], default="full",
                    help="one: each fla kernel compiles one config instead of autotuning dozens (short device calls)")
    ap.add_argument("--autoep", type=int, default=1)
    ap.add_argument("--grouped-mm-backend", default=None, help="AutoEP experts: grouped_mm | fused_gate_up | loop")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: a smoke run of the code")
    ap.add_argument("--moe-bench", action="store_true", help="first time AutoEP's expert backends (bench/moe.py)")
    ap.add_argument("--seq-min", type=int, default=2048)
    ap.add_argument("--seq-max", type=int, default=8192)
    ap.add_argument("--short-min", type=int, default=32)
    ap.add_argument("--short-max", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--logit-std", type=float, default=4.0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--head-dtypes", default="bf16,fp32", help="agreement: LM-head precisions to compare")
    ap.add_argument("--states", default="model,fp32", help="agreement: decode lightning-state dtypes")
    a = ap.parse_args()
    a.out = a.out or f"bench/results/{'learner' if a.mode == 'throughput' else 'agreement'}.json"
    if a.mode == "agreement":
        a.layers, a.experts = a.layers or 8, a.experts or 16
    (throughput if a.mode == "throughput" else agreement)(a)


if __name__ == "__main__":
    main()
