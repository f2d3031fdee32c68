"""Benchmark: sequence parallelism on GPUs (torchrun, one process per GPU; no Ray).

    torchrun --nproc_per_node 2 bench/seqpar.py [--layers 8 --hidden 2048 --experts 8
        --lengths 32768,65536,131072,262144 --autoep 2] [--out bench/results/seqpar.json]

check: a small hybrid MiniMax (fp32) on a packed row of several sequences: the loss and every
parameter's gradient with sequence parallelism 2 (fla lightning kernel + state combine, K/V
all-gather) against size 1 on the same GPU code, and both against a float64 CPU reference
(the torch kernel) on rank 0.

throughput: a hybrid MoE (7 lightning : 1 softmax layers, top-2 experts) under DeepSpeed ZeRO-3
(+ AutoEP), bf16, no activation checkpointing (so activations, which sequence parallelism
splits, are what limits the length), FP32 head with chunked log-probs, a CISPO-shaped loss. For
size 1 every GPU trains its own sequence of T tokens (data parallel); for size 2 the two GPUs
share one sequence of T tokens. A length runs only if the peak memory fitted on the shorter
lengths predicts it fits (no OOM mid-collective); the fitted line gives the longest sequence
per step. One profiled step per length gives the share of the step the GPU spends in the
sequence-parallel collectives (`seqpar::comm`) and in all NCCL kernels (ZeRO-3 + AutoEP too).
Prints tables and writes JSON; asserts nothing.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
from zero3_config import zero3_bench_config  # bench/, first on sys.path

from cispo import seqpar
from cispo.seqpar.comm import COMM_LABEL


def hybrid_config(layers, hidden, heads, experts, ffn, vocab, softmax_every=8):
    from transformers import MiniMaxConfig

    return MiniMaxConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=max(1, heads // 8), head_dim=hidden // heads,
        num_local_experts=experts, num_experts_per_tok=2, block_size=256,
        layer_types=["full_attention" if (i + 1) % softmax_every == 0 else "linear_attention"
                     for i in range(layers)],
        max_position_embeddings=1 << 20, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1e7}, attn_implementation="sdpa")


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30))


def _loss_and_grads(model, local, n, group):
    from cispo.ops.logprobs import token_logprobs

    model.zero_grad()
    logits = model(**seqpar.model_inputs(local)).logits
    lp = token_logprobs(logits[0], local["target_ids"][0])
    loss = (lp * local["weight"][0].to(lp.dtype)).sum() / n
    loss.backward()
    total = loss.detach().double().reshape(1)
    grads = [p.grad.detach().double().reshape(-1) for p in model.parameters()]
    flat = torch.cat(grads)
    if group is not None:
        dist.all_reduce(total, group=group)
        dist.all_reduce(flat, group=group)
    return float(total), flat.cpu()


def check(a, rank, device):
    from transformers import MiniMaxForCausalLM

    cfg = hybrid_config(4, 512, 8, 4, 512, 1000, softmax_every=4)
    cfg._experts_implementation = "eager"  # the same expert loop in fp32 on GPU and f64 on CPU
    torch.manual_seed(0)
    model = MiniMaxForCausalLM(cfg).float()
    lens = [700, 1100, 96, 1105]  # 3001 tokens: padded to 3002, the 2nd sequence spans both ranks
    g = torch.Generator().manual_seed(1)
    T = sum(lens)
    batch = {"input_ids": torch.randint(0, 1000, (1, T), generator=g),
             "position_ids": torch.cat([torch.arange(n) for n in lens])[None],
             "weight": torch.randn(1, T, generator=g, dtype=torch.float64)}
    n = float(batch["weight"].abs().sum())
    gpu = copy.deepcopy(model).to(device)
    sp = seqpar.patch_model(gpu, None)
    on_dev = {k: v.to(device) for k, v in batch.items()}
    loss1, g1 = _loss_and_grads(gpu, seqpar.split_packed(on_dev, 0, 1), n, None)
    sp.group = dist.group.WORLD
    loss2, g2 = _loss_and_grads(gpu, seqpar.split_packed(on_dev, sp.rank, sp.size), n, sp.group)
    out = {"lens": lens, "loss_sp1": loss1, "loss_sp2": loss2,
           "grad_rel_err_sp2_vs_sp1": rel(g2, g1)}
    if rank == 0 and not a.no_f64:  # float64 on the CPU: the torch kernel, the same patched layers at size 1
        ref = copy.deepcopy(model).double()
        seqpar.patch_model(ref, None)
        loss_ref, g_ref = _loss_and_grads(ref, seqpar.split_packed(batch, 0, 1), n, None)
        out.update(loss_f64=loss_ref, grad_rel_err_sp1_vs_f64=rel(g1, g_ref),
                   grad_rel_err_sp2_vs_f64=rel(g2, g_ref))
    dist.barrier()
    return out


def _engine(model, autoep):
    import deepspeed

    ds = zero3_bench_config(autoep)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds)
    return engine


def _step(engine, local, scale):
    # through the engine's own forward (cispo.models.fp32_head.enable_token_scoring says why)
    lp, _ = engine(**seqpar.model_inputs(local), targets=local["target_ids"])
    w = torch.exp(lp.detach() + 12.0).clamp(max=1.28)  # CISPO: sg(clip(r)) · Â · log π
    loss = -(w * local["adv"] * lp).sum() * scale
    engine.backward(loss)
    engine.step()


def _profiled_step(engine, local, scale):
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        _step(engine, local, scale)
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    sp_us = nccl_us = 0.0
    try:
        for ev in prof.key_averages():
            if ev.key == COMM_LABEL:
                sp_us += ev.device_time_total
            elif "nccl" in ev.key.lower() and ev.device_type.name == "CUDA":
                nccl_us += ev.device_time_total
    except Exception as e:  # noqa: BLE001 - a profiler API difference must not lose the timings
        print(f"profile not read: {type(e).__name__}: {e}", flush=True)
        return wall, float("nan"), float("nan")
    return wall, sp_us / 1e6, nccl_us / 1e6


def throughput(a, rank, world, device, save=lambda part: None):
    from transformers import MiniMaxForCausalLM

    from cispo.models.fp32_head import apply_fp32_head, enable_token_scoring

    cfg = hybrid_config(a.layers, a.hidden, a.heads, a.experts, a.ffn, a.vocab)
    torch.manual_seed(0)
    model = MiniMaxForCausalLM(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    apply_fp32_head(model)
    enable_token_scoring(model)
    sp = seqpar.patch_model(model, None)
    engine = _engine(model, a.autoep)
    capacity = torch.cuda.get_device_properties(device).total_memory
    rows = []
    for size in (1, world):
        sp.group = dist.group.WORLD if size > 1 else None
        seen: list[tuple[int, float]] = []  # (tokens per GPU, peak bytes)
        for T in a.lengths:
            local_T = T // size
            if len(seen) >= 2:
                (t1, m1), (t2, m2) = seen[-2], seen[-1]
                predicted = m2 + (m2 - m1) / (t2 - t1) * (local_T - t2)
                if predicted > 0.9 * capacity:
                    rows.append({"sp": size, "tokens": T, "skipped": "predicted peak "
                                 f"{predicted / 2**30:.0f} GiB > 90% of {capacity / 2**30:.0f} GiB"})
                    break
            # size 1: each GPU its own sequence (seeded by rank); size 2: one shared sequence
            g = torch.Generator(device=device).manual_seed(rank if size == 1 else 1234)
            row = {"input_ids": torch.randint(0, cfg.vocab_size, (1, T), device=device, generator=g),
                   "position_ids": torch.arange(T, device=device)[None],
                   "adv": torch.randn(1, T, device=device, generator=g)}
            local = seqpar.split_packed(row, sp.rank if size > 1 else 0, size)
            scale = world / T  # DeepSpeed averages over ranks: x world / tokens of the whole batch
            torch.cuda.reset_peak_memory_stats()
            times = []
            try:
                for i in range(a.steps + 1):
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    _step(engine, local, scale)
                    torch.cuda.synchronize()
                    if i:
                        times.append(time.perf_counter() - t0)
                wall, sp_s, nccl_s = _profiled_step(engine, local, scale)
            except torch.cuda.OutOfMemoryError as e:
                rows.append({"sp": size, "tokens": T, "oom": str(e)[:200]})
                break
            peak = torch.cuda.max_memory_allocated()
            seen.append((local_T, peak))
            s = statistics.median(times)
            rows.append({"sp": size, "tokens": T, "tokens_per_gpu": local_T, "step_s": s,
                         "tokens_per_s_per_gpu": local_T / s, "peak_gib": peak / 2**30,
                         "profiled_step_s": wall, "seqpar_comm_share": sp_s / wall,
                         "nccl_share": nccl_s / wall, "step_times": times})
            if rank == 0:
                print(json.dumps(rows[-1]), flush=True)
                save({"rows": rows})
        if len(seen) >= 2:  # longest sequence per step from the fitted peak(tokens per GPU) line
            (t1, m1), (t2, m2) = seen[-2], seen[-1]
            b = (m2 - m1) / (t2 - t1)
            fit = int((0.9 * capacity - (m2 - b * t2)) / b) * size
            rows.append({"sp": size, "longest_run_tokens": seen[-1][0] * size,
                         "fitted_max_tokens_at_90pct_memory": fit, "bytes_per_token_per_gpu": b})
            if rank == 0:
                print(json.dumps(rows[-1]), flush=True)
    return {"params_total": n_params, "layers": a.layers, "hidden": a.hidden, "heads": a.heads,
            "experts": a.experts, "expert_ffn": a.ffn, "vocab": a.vocab, "autoep": a.autoep,
            "activation_checkpointing": False, "rows": rows}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("what", nargs="?", default="all", choices=["all", "check", "throughput"])
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--ffn", type=int, default=2048)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--autoep", type=int, default=2)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--lengths", default="32768,65536,131072,196608,262144,393216,524288")
    p.add_argument("--out", default="bench/results/seqpar.json")
    p.add_argument("--no-f64", action="store_true", help="check: skip the float64 CPU reference")
    p.add_argument("--cpu", action="store_true", help="run `check` on CPU over gloo (a dry run)")
    a = p.parse_args()
    a.lengths = [int(x) for x in a.lengths.split(",")]
    import logging

    import deepspeed

    deepspeed.init_distributed("gloo" if a.cpu else "nccl")
    deepspeed.utils.logger.setLevel(logging.WARNING)
    rank, world = dist.get_rank(), dist.get_world_size()
    if a.cpu:
        device, a.what = torch.device("cpu"), "check"
        res = {"device": "cpu", "gpus": 0}
    else:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        res = {"device": torch.cuda.get_device_name(), "gpus": world}
    t0 = time.perf_counter()
    if a.what in ("all", "check"):
        res["check"] = check(a, rank, device)
        res["check"]["wall_s"] = time.perf_counter() - t0
        if rank == 0:
            print(json.dumps(res["check"]), flush=True)
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            Path(a.out).write_text(json.dumps(res, indent=1))
    if a.what in ("all", "throughput"):
        def save(part):  # partial results survive a time limit
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            Path(a.out).write_text(json.dumps({**res, "throughput": part}, indent=1))

        res["throughput"] = throughput(a, rank, world, device, save)
    if rank == 0:
        print(table(res))
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=1))
    dist.barrier()
    dist.destroy_process_group()


def table(res):
    out = [f"{res['device']} x {res['gpus']} GPUs"]
    if "check" in res:
        c = res["check"]
        out.append("check (fp32 fla, packed {}): loss SP1 {:.8f} SP2 {:.8f} f64 {}; grad rel err "
                   "SP2/SP1 {:.1e}, SP1/f64 {}, SP2/f64 {}".format(
                       c["lens"], c["loss_sp1"], c["loss_sp2"], c.get("loss_f64"),
                       c["grad_rel_err_sp2_vs_sp1"], c.get("grad_rel_err_sp1_vs_f64"),
                       c.get("grad_rel_err_sp2_vs_f64")))
    if "throughput" in res:
        out.append(f"{'SP':>3} {'tokens':>8} {'tok/GPU':>8} {'step s':>7} {'tok/s/GPU':>10} "
                   f"{'peak GiB':>9} {'SP comm':>8} {'all NCCL':>9}")
        for r in res["throughput"]["rows"]:
            if "step_s" in r:
                out.append(f"{r['sp']:>3} {r['tokens']:>8} {r['tokens_per_gpu']:>8} {r['step_s']:>7.3f} "
                           f"{r['tokens_per_s_per_gpu']:>10.0f} {r['peak_gib']:>9.1f} "
                           f"{r['seqpar_comm_share']:>8.1%} {r['nccl_share']:>9.1%}")
            else:
                out.append(f"{r['sp']:>3} " + json.dumps({k: v for k, v in r.items() if k != 'sp'}))
    return "\n".join(out)


if __name__ == "__main__":
    main()
