"""Benchmark: the learner's step on GPU, and train/rollout log-prob agreement with BF16 vs FP32 head.

    torchrun --nproc_per_node 1 bench/learner.py throughput [--layers 8 --hidden 2048 --experts 16
        --tokens 16384 --steps 5 --autoep 1 --seq-min 2048 --seq-max 8192 --head-precision ieee]
        [--out bench/results/learner.json]
    python bench/learner.py agreement [--out bench/results/agreement.json]

throughput: a hybrid MiniMax MoE (7 lightning : 1 softmax layers, top-2 experts, V = 200,064) under
DeepSpeed ZeRO-3 (+ AutoEP when --autoep > 0 and it initialises), bf16, gradient checkpointing,
lightning through fla, FP32 head with chunked log-probs (IEEE or 3xTF32 products), a CISPO-shaped
loss (clipped IS weight × advantage × log π) on random tokens. Each step is one packed micro-batch
of `--tokens` tokens: sequences of random lengths in [seq-min, seq-max] back to back
(`cispo.packing`, position_ids restarting per sequence, cu_seqlens for fla), scored through the
engine's forward as the learner does (`enable_token_scoring`). Reports tokens/s/GPU, MFU (6 ×
active matmul parameters per token + the causal softmax-attention and lightning FLOPs, over
989 TFLOP/s dense bf16 for an H100 SXM or H200) and peak memory.

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


def hybrid_config(layers, hidden, heads, experts, ffn, vocab=200064):
    from transformers import MiniMaxConfig

    return MiniMaxConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=max(1, heads // 8), head_dim=hidden // heads,
        num_local_experts=experts, num_experts_per_tok=2, block_size=256,
        layer_types=["full_attention" if (i + 1) % 8 == 0 else "linear_attention"
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


def throughput(a):
    import deepspeed

    deepspeed.init_distributed("nccl")
    rank = int(os.environ.get("RANK", 0))
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    from transformers import MiniMaxForCausalLM

    cfg = hybrid_config(a.layers, a.hidden, a.heads, a.experts, a.ffn)
    torch.manual_seed(0)

    def build():
        with torch.device("cuda"):  # random init on the GPU: minutes faster than on CPU
            m = MiniMaxForCausalLM(cfg)
        apply_fp32_head(m)
        m.lm_head.precision = a.head_precision
        patch_lightning_attention(m)
        m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        m.config.use_cache = False
        return enable_token_scoring(m)

    model = build()
    n_params = sum(p.numel() for p in model.parameters())
    ds = zero3_bench_config(a.autoep)
    autoep_note = "off"
    try:
        engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds)
        autoep_note = f"autoep_size={a.autoep}" if a.autoep else "off"
    except Exception as e:  # noqa: BLE001 - record why AutoEP failed, then measure without it
        if not a.autoep:
            raise
        autoep_note = f"AutoEP failed ({type(e).__name__}: {str(e)[:200]}); ran without"
        ds.pop("expert_parallel")
        model = build()
        engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds)
    ep_layers = sum(type(m).__name__ == "AutoEPMoELayer" for m in engine.module.modules())
    g = torch.Generator().manual_seed(rank)
    lengths = []
    while sum(lengths) < a.tokens:
        n = int(torch.randint(a.seq_min, a.seq_max + 1, (1,), generator=g))
        lengths.append(min(n, a.tokens - sum(lengths)))
    seqs = [torch.randint(0, cfg.vocab_size, (n,), generator=g).tolist() for n in lengths]
    p = pack(seqs)
    kwargs = {k: (v.cuda() if torch.is_tensor(v) else v) for k, v in p.model_kwargs().items()}
    targets, valid = p.targets.cuda(), p.valid.cuda().float()
    adv = torch.randn(1, a.tokens, generator=g).cuda()
    old_lp = torch.full((1, a.tokens), -12.0, device="cuda")
    times = []
    torch.cuda.reset_peak_memory_stats()
    for step in range(a.steps + 2):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        lp, _ = engine(**kwargs, targets=targets)
        w = torch.exp(lp.detach() - old_lp).clamp(max=1.28)  # CISPO: sg(clip(r)) · Â · log π
        loss = -(w * adv * lp * valid).sum() / valid.sum()
        engine.backward(loss)
        engine.step()
        torch.cuda.synchronize()
        if step >= 2:
            times.append(time.perf_counter() - t0)
    s = statistics.median(times)
    context = sum(n * n for n in lengths) / sum(lengths)
    f = flops_per_token(cfg, context)
    head_share = 6 * cfg.vocab_size * cfg.hidden_size / f
    res = {"device": torch.cuda.get_device_name(), "params_total": n_params, "layers": a.layers,
           "hidden": a.hidden, "experts": a.experts, "expert_ffn": a.ffn, "tokens_per_gpu": a.tokens,
           "sequence_lengths": lengths, "head_precision": a.head_precision,
           "autoep": autoep_note, "autoep_layers": ep_layers, "step_s": s,
           "tokens_per_s_per_gpu": a.tokens / s, "flops_per_token": f, "head_flop_share": head_share,
           "mfu": a.tokens / s * f / PEAK_BF16,
           "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "step_times": times}
    if rank == 0:
        print(json.dumps(res, indent=1))
        print(f"\n{res['device']}: {n_params / 1e9:.2f}B hybrid MoE, ZeRO-3, AutoEP {autoep_note} "
              f"({ep_layers} layers replaced), head {a.head_precision}, {a.tokens} tokens/GPU in "
              f"{len(lengths)} packed sequences: {s:.3f} s/step, {res['tokens_per_s_per_gpu']:.0f} "
              f"tokens/s/GPU, MFU {res['mfu']:.3f}, peak {res['peak_gib']:.1f} GiB")
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=1))


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
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--experts", type=int, default=16)
    ap.add_argument("--ffn", type=int, default=2048)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--autoep", type=int, default=1)
    ap.add_argument("--seq-min", type=int, default=2048)
    ap.add_argument("--seq-max", type=int, default=8192)
    ap.add_argument("--head-precision", choices=["ieee", "3xtf32"], default="ieee")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--logit-std", type=float, default=4.0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--head-dtypes", default="bf16,fp32", help="agreement: LM-head precisions to compare")
    ap.add_argument("--states", default="model,fp32", help="agreement: decode lightning-state dtypes")
    a = ap.parse_args()
    a.out = a.out or f"bench/results/{'learner' if a.mode == 'throughput' else 'agreement'}.json"
    (throughput if a.mode == "throughput" else agreement)(a)


if __name__ == "__main__":
    main()
