"""Benchmark: rollout generation throughput and NCCL weight-sync bandwidth (GPU).

    python bench/rollout.py gen [--batch 64 128 256] [--group 16] [--prompt-len 256] [--new 128]
                                [--hidden 1024] [--layers 8] [--out DIR]
    torchrun --nproc_per_node 2 bench/rollout.py sync [--params 2e9] [--bucket-mb 256 1024] [--out DIR]

gen: a random small hybrid MiniMax (M1 layout in miniature: lightning layers then one softmax
layer, sparse MoE top-2) in bf16. For each batch B (= B/G prompts × G samples):
  engine        rollout.engines.hf: one prefill per prompt, cache expanded G times, batched decode
  engine_noshare  the same engine with every sample's prompt prefilled separately (G=1 rows)
  generate      plain transformers `model.generate(do_sample=True)` on the B prompt rows
Each is called twice at each batch size and the second call is timed (the first is recorded too);
and the decode memory-bandwidth floor: per step every weight plus the KV cache / lightning state
is read once from HBM, so tokens/s ≤ B / (bytes per step / HBM bandwidth). Tokens counted are
those actually generated.
sync: rank 0 plays learner rank 0 holding ~2B bf16 parameters, rank 1 an engine; the weights go
through cispo.weight_sync.broadcast_send / broadcast_recv (NCCL group of its own, per-bucket
flat buffers) and rank 1 loads each bucket into its copy. 1 warm-up, then 3 timed syncs.
Prints a table and writes JSON (rollout_gen.json / rollout_sync.json); asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

# this file is bench/rollout.py: with bench/ first on sys.path (python bench/rollout.py) it would
# shadow the `rollout` package it measures
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

HBM_BYTES_PER_S = {"H200": 4.8e12, "H100": 3.35e12}  # vendor peak


def _hbm(name: str) -> float:
    return next((v for k, v in HBM_BYTES_PER_S.items() if k in name), float("nan"))


def build_model(out: Path, hidden: int, layers: int, vocab: int) -> str:
    from transformers import MiniMaxConfig, MiniMaxForCausalLM

    from cispo.models.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    types = ["linear_attention"] * (layers - 1) + ["full_attention"]
    cfg = MiniMaxConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden,
                        num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=min(8, hidden // 64),
                        head_dim=64, num_local_experts=8, num_experts_per_tok=2, layer_types=types,
                        block_size=256, max_position_embeddings=8192, pad_token_id=tok.pad_token_id,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = MiniMaxForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _time(fn, reps: int = 2) -> tuple[float, object, float]:
    """(seconds of the last call, its result, seconds of the first call): the first call at a
    new batch size pays one-time costs (kernel autotuning / compilation for new shapes)."""
    times = []
    for _ in range(reps):
        _sync()
        t0 = time.perf_counter()
        out = fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return times[-1], out, times[0]


def decode_floor(model, B: int, ctx: int, hbm: float) -> float:
    """tokens/s if each decode step only read weights + cache once at peak HBM bandwidth."""
    c = model.config
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    full = sum(t == "full_attention" for t in c.layer_types)
    kv = full * 2 * B * ctx * c.num_key_value_heads * c.head_dim * 2  # bf16 K and V
    state = (len(c.layer_types) - full) * 2 * B * c.num_attention_heads * c.head_dim ** 2 * 2  # read + write
    return B / ((weights + kv + state) / hbm)


def bench_gen(args) -> None:
    from transformers import GenerationConfig

    from rollout.engines.hf import HFEngine
    from rollout.types import SamplingParams

    path = build_model(Path("/tmp/rollout_bench_model"), args.hidden, args.layers, args.vocab)
    cuda = args.device == "cuda"
    engine = HFEngine(path, dtype="bfloat16" if cuda else "float32", device=args.device)
    model, dev = engine.model, torch.cuda.get_device_name() if cuda else "cpu"
    n_params = sum(p.numel() for p in model.parameters())
    G, T, Lp = args.group, args.new, args.prompt_len
    g = torch.Generator().manual_seed(0)
    params = SamplingParams(max_new_tokens=T, seed=1, repetition_window=0)
    # warm-up: kernels, autotuning, allocator
    warm = [torch.randint(40, args.vocab, (Lp,), generator=g).tolist()]
    engine.generate(warm, 4, SamplingParams(max_new_tokens=8, seed=0, repetition_window=0))
    model.generate(input_ids=torch.tensor(warm * 4, device=args.device), max_new_tokens=8, do_sample=True,
                   pad_token_id=engine.pad_id)
    rows = []
    for B in args.batch:
        prompts = [torch.randint(40, args.vocab, (Lp,), generator=g).tolist() for _ in range(B // G)]
        t_eng, s, first_eng = _time(lambda prompts=prompts: engine.generate(prompts, G, params))
        n_eng = sum(len(x.response_ids) for x in s)
        rows_alone = [p for p in prompts for _ in range(G)]
        t_noshare, s2, first_noshare = _time(lambda rows_alone=rows_alone: engine.generate(rows_alone, 1, params))
        n_noshare = sum(len(x.response_ids) for x in s2)
        ids = torch.tensor([p for p in prompts for _ in range(G)], device=args.device)
        gen = GenerationConfig(do_sample=True, max_new_tokens=T, pad_token_id=engine.pad_id,
                               eos_token_id=engine.eos_id, temperature=1.0, top_p=1.0, top_k=None)
        t_gen, out, first_gen = _time(lambda ids=ids, gen=gen: model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gen))
        is_eos = out[:, Lp:] == engine.eos_id  # tokens up to and including EOS (then padding)
        n_gen = int(torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, out.shape[1] - Lp).sum())
        floor = decode_floor(model, B, Lp + T, _hbm(dev))
        rows.append({"batch": B, "prompts": B // G, "group": G, "prompt_len": Lp, "new_tokens": T,
                     "engine_tok_s": n_eng / t_eng, "engine_noshare_tok_s": n_noshare / t_noshare,
                     "generate_tok_s": n_gen / t_gen, "engine_s": t_eng, "engine_noshare_s": t_noshare,
                     "generate_s": t_gen, "first_call_s": {"engine": first_eng, "engine_noshare": first_noshare,
                                                            "generate": first_gen},
                     "decode_floor_tok_s": floor,
                     "speedup_vs_generate": (n_eng / t_eng) / (n_gen / t_gen),
                     "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")})
        if cuda:
            torch.cuda.reset_peak_memory_stats()
    result = {"device": dev, "params": n_params, "hidden": args.hidden, "layers": args.layers,
              "vocab": args.vocab, "torch": torch.__version__,
              "transformers": __import__("transformers").__version__,
              "experts_implementation": str(getattr(model.config, "_experts_implementation", None)),
              "attn_implementation": str(getattr(model.config, "_attn_implementation", None)), "rows": rows}
    print(f"{dev}, {n_params / 1e6:.0f}M-parameter hybrid MiniMax (bf16), G={G}, prompt {Lp}, {T} new tokens, "
          f"experts {result['experts_implementation']}, attention {result['attn_implementation']}")
    print(f"{'B':>5} {'engine tok/s':>13} {'no-share':>10} {'generate':>10} {'×gen':>6} {'floor tok/s':>12} {'%floor':>7}")
    for r in rows:
        print(f"{r['batch']:>5} {r['engine_tok_s']:>13.0f} {r['engine_noshare_tok_s']:>10.0f} "
              f"{r['generate_tok_s']:>10.0f} {r['speedup_vs_generate']:>6.2f} {r['decode_floor_tok_s']:>12.0f} "
              f"{100 * r['engine_tok_s'] / r['decode_floor_tok_s']:>6.2f}%")
    _write(args.out / "rollout_gen.json", result)


def bench_sync(args) -> None:
    from cispo.weight_sync import (
        broadcast_recv,
        broadcast_send,
        make_group,
        param_entries,
        plan_buckets,
    )

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    dev = torch.device("cuda", rank) if cuda else torch.device("cpu")
    rows_n, cols = (8192, 7680) if cuda else (256, 240)
    n_mat = max(1, round(args.params / (rows_n * cols)))
    module = torch.nn.ParameterList([torch.nn.Parameter(torch.full((rows_n, cols), float(rank), dtype=torch.bfloat16,
                                                                   device=dev)) for _ in range(n_mat)])
    n_params = sum(p.numel() for p in module.parameters())
    group = make_group("nccl" if cuda else "gloo", os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]) + 1, rank, world)
    named = dict(module.named_parameters())

    def load(bucket):
        with torch.no_grad():
            for k, v in bucket.items():
                named[k].copy_(v)

    rows = []
    for mb in args.bucket_mb:
        nbytes = int(mb * 2**20)
        plan = plan_buckets(param_entries(module), nbytes)
        times = []
        for i in range(4):
            dist_barrier(group, dev)
            if rank == 0:
                _, stats = broadcast_send(group, module, nbytes, zero3=False, is_sender=True, device=dev)
            else:
                stats = broadcast_recv(group, plan, dev, load)
            if i:
                times.append(stats["sync/seconds"])
        ok = all(bool((p == 0).all()) for p in module.parameters())  # rank 1 now holds rank 0's zeros
        sec = statistics.median(times)
        rows.append({"bucket_mb": mb, "buckets": len(plan), "params": n_params, "bytes": stats["sync/bytes"],
                     "seconds_median": sec, "seconds_all": times, "gb_per_s": stats["sync/bytes"] / 1e9 / sec,
                     "received_correct": ok})
    if rank == 1:
        result = {"device": torch.cuda.get_device_name() if cuda else "cpu (gloo)", "world": world,
                  "torch": torch.__version__,
                  "nccl": ".".join(map(str, torch.cuda.nccl.version())) if cuda else "-", "rows": rows}
        print(f"{result['device']} x2, NCCL {result['nccl']}: {n_params / 1e9:.2f}B bf16 parameters, rank 0 → rank 1")
        print(f"{'bucket MiB':>10} {'buckets':>8} {'seconds':>8} {'GB/s':>7} {'correct':>8}")
        for r in rows:
            print(f"{r['bucket_mb']:>10} {r['buckets']:>8} {r['seconds_median']:>8.3f} {r['gb_per_s']:>7.1f} "
                  f"{str(r['received_correct']):>8}")
        _write(args.out / "rollout_sync.json", result)


def dist_barrier(group, dev) -> None:
    """All ranks start a timed sync together (a tiny all-reduce on the sync group itself)."""
    t = torch.zeros(1, device=dev)
    group.allreduce([t]).wait()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["gen", "sync"])
    ap.add_argument("--batch", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--group", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--params", type=float, default=2e9)
    ap.add_argument("--bucket-mb", type=float, nargs="+", default=[256, 1024])
    ap.add_argument("--device", default="cuda", help="cpu: a smoke run (gloo for sync), not a measurement")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    (bench_gen if args.what == "gen" else bench_sync)(args)


if __name__ == "__main__":
    main()
