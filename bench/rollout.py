"""Benchmark: rollout generation throughput and NCCL weight-sync bandwidth (GPU).

    python bench/rollout.py gen [--batch 64 256 1024] [--engines graph hf generate] [--baseline-batch 256]
                                [--group 16] [--prompt-len 256] [--new 128] [--hidden 1024] [--layers 8]
                                [--experts 8] [--profile 256] [--agreement 64] [--out DIR]
    python bench/rollout.py micro [--out DIR]
    torchrun --nproc_per_node 2 bench/rollout.py sync [--params 2e9] [--bucket-mb 256 1024] [--out DIR]

gen: a random hybrid MiniMax (M1 layout in miniature: lightning layers then one softmax layer,
sparse MoE top-2) in bf16. For each batch B (= B/G prompts × G samples):
  graph         rollout.engines.graph (CUDA graphs, slot pool, continuous batching), with the
                FP32 LM head and FP32 lightning state as the training loop runs it
  hf            rollout.engines.hf: one prefill per prompt, cache expanded G times, batched decode
  hf_noshare    the same engine with every sample's prompt prefilled separately (G=1 rows)
  generate      plain transformers `model.generate(do_sample=True)` on the B prompt rows
Each is called twice at each batch size and the second call is timed (the first is recorded too).
`--baseline-batch` limits hf / generate to those batch sizes (they take seconds a call).
Tokens counted are those actually generated.
Decode floor: the fewest bytes one decode step must move through HBM, over the bandwidth: the
weights it reads (every non-expert weight; the experts a batch of B tokens hits, E·(1−(1−k/E)^B)
per layer; the LM head at the engine's dtype; only the B embedding rows), the softmax layers' K/V
at the average context (prompt + (T−1)/2), and the FP32 lightning state read and written once
(2 · 4 · H · D² bytes per row and lightning layer). Bandwidth: the vendor peak (H200 4.8 TB/s,
as before) and the device-to-device copy rate measured here. (Until 2026-12 this bench counted
the whole embedding, a bf16 state and the longest context instead.)
--profile B: a torch.profiler table of one eager decode step of the graph engine at B live rows,
and the median time of one CUDA-graph replay of that step. --agreement B: the graph engine's
log-probs at B against the learner's teacher-forced ones (same bf16 weights, FP32 head, fla).
micro: the FP32 LM head computed four ways (IEEE float32, 3xTF32, bf16 tensor-core pieces with
one and three pieces) against float64, timed; the lightning decode kernel's bandwidth; grouped
GEMM availability.
sync: rank 0 plays learner rank 0 holding ~2B bf16 parameters, rank 1 an engine; the weights go
through cispo.weight_sync.broadcast_send / broadcast_recv (NCCL group of its own, per-bucket
flat buffers) and rank 1 loads each bucket into its copy. 1 warm-up, 3 timed syncs.
Prints a table and writes JSON (rollout_gen.json / rollout_micro.json / rollout_sync.json);
asserts nothing about speed.
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


def build_model(out: Path, hidden: int, layers: int, vocab: int, experts: int = 8, device: str = "cpu") -> str:
    from transformers import MiniMaxConfig, MiniMaxForCausalLM

    from cispo.models.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    types = ["linear_attention"] * (layers - 1) + ["full_attention"]
    cfg = MiniMaxConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden,
                        num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=min(8, hidden // 64),
                        head_dim=64, num_local_experts=experts, num_experts_per_tok=2, layer_types=types,
                        block_size=256, max_position_embeddings=8192, pad_token_id=tok.pad_token_id,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):  # initialising a 2B model on the GPU takes a second, on the CPU a minute
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


def decode_bytes(model, B: int, ctx: float, head_bytes: int, state_bytes: int = 4) -> dict[str, float]:
    """Bytes one decode step of B rows must move at the least (see the module doc)."""
    c = model.config
    E, k = getattr(c, "num_local_experts", 0), getattr(c, "num_experts_per_tok", 0)
    hit = E * (1 - (1 - k / E) ** B) if E else 0
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    experts = other = 0
    for name, p in model.named_parameters():
        if p is emb or p is head:
            continue
        n = p.numel() * p.element_size()
        if ".experts." in name:
            experts += n / E * hit
        else:
            other += n
    full = sum(t == "full_attention" for t in c.layer_types)
    lin = len(c.layer_types) - full
    kv = full * 2 * B * ctx * c.num_key_value_heads * c.head_dim * emb.element_size()
    state = lin * 2 * B * c.num_attention_heads * c.head_dim ** 2 * state_bytes
    parts = {"experts": experts, "other_weights": other, "head": head.numel() * head_bytes,
             "embedding_rows": B * emb.shape[1] * emb.element_size(), "kv": kv, "lightning_state": state}
    parts["total"] = sum(parts.values())
    return parts


def copy_bandwidth() -> float:
    """Device-to-device copy rate, bytes read + written per second (median of 20, 2 GiB)."""
    a = torch.empty(2**29, dtype=torch.float32, device="cuda").normal_()
    b = torch.empty_like(a)
    times = []
    for _ in range(23):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    return 2 * a.numel() * 4 / statistics.median(times[3:])


def bench_gen(args) -> None:
    """Graph engine rows first (then its profile and agreement), the slower baselines after, so
    a run cut short still has the graph numbers; the JSON is rewritten after every stage."""
    from rollout.types import SamplingParams

    cuda = args.device == "cuda"
    dev = torch.cuda.get_device_name() if cuda else "cpu"
    shape = f"h{args.hidden}_l{args.layers}_e{args.experts}"
    out = args.out / f"rollout_gen_{shape}.json"
    path = build_model(Path(f"/tmp/rollout_bench_model_{shape}"), args.hidden, args.layers, args.vocab, args.experts,
                       args.device)
    dtype = "bfloat16" if cuda else "float32"
    G, T, Lp = args.group, args.new, args.prompt_len
    g = torch.Generator().manual_seed(0)
    params = SamplingParams(max_new_tokens=T, seed=1, repetition_window=0)
    prompts_of = {B: [torch.randint(40, args.vocab, (Lp,), generator=g).tolist() for _ in range(B // G)]
                  for B in args.batch}
    hbm, copy_bw = _hbm(dev), (copy_bandwidth() if cuda else float("nan"))
    result = {"device": dev, "hidden": args.hidden, "layers": args.layers, "experts": args.experts,
              "vocab": args.vocab, "group": G, "prompt_len": Lp, "new_tokens": T, "torch": torch.__version__,
              "transformers": __import__("transformers").__version__, "hbm_vendor_bytes_s": hbm,
              "copy_bytes_s": copy_bw, "rows": []}
    rows = {B: {"batch": B, "prompts": B // G, "tok_s": {}, "seconds": {}, "first_call_s": {}} for B in args.batch}
    model = None
    if "graph" in args.engines:
        from rollout.engines.graph import GraphEngine

        t0 = time.perf_counter()
        ge = GraphEngine(path, dtype, args.device, model_options={"fp32_head": True}, max_slots=max(args.batch),
                         prefill_tokens=args.prefill_tokens, cuda_graphs=not args.eager)
        load_s = time.perf_counter() - t0
        model = ge.model
        for B in args.batch:
            row, before = rows[B], dict(ge.stats)
            t, s, first = _time(lambda prompts=prompts_of[B], ge=ge: ge.generate(prompts, G, params))
            row["tok_s"]["graph"], row["seconds"]["graph"], row["first_call_s"]["graph"] = _tokens(s) / t, t, first
            steps = ge.stats["steps"] - before["steps"]
            row["graph_stats"] = {"steps_two_calls": steps, "captures": ge.stats["captures"] - before["captures"],
                                  "capture_s": ge.stats["capture_s"] - before["capture_s"],
                                  "mean_live_rows": (ge.stats["rows_sum"] - before["rows_sum"]) / max(steps, 1),
                                  "prefills_two_calls": ge.stats["prefills"] - before["prefills"],
                                  "capture_error": ge.stats.get("capture_error")}
            row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
            print(f"B={B}: graph {row['tok_s']['graph']:.0f} tok/s", flush=True)
            _finish_rows(result, rows, model, Lp, T, hbm, copy_bw, out)
        result["graph_engine"] = {"load_s": load_s, "memory": ge.memory, "head_mode": ge.static.head.mode,
                                  "head_parts": ge.static.head.parts, "grouped_mm": ge.static.grouped_mm_ok,
                                  "cuda_graphs": ge.cuda_graphs, "stats": ge.stats}
        _write(out, result)
        if args.profile:
            result["profile"] = profile_step(ge, args.profile, Lp, args.out / f"rollout_profile_{shape}.txt", hbm)
            _write(out, result)
        if args.agreement:
            result["agreement"] = agreement(ge, path, args.agreement, G, Lp, T, args.vocab, g)
            _write(out, result)
    if {"hf", "hf_noshare", "generate"} & set(args.engines):
        _baselines(args, path, dtype, prompts_of, params, rows, result, out, hbm, copy_bw)
        model = model or result.pop("_hf_model")
    result.pop("_hf_model", None)
    result["params"] = sum(p.numel() for p in model.parameters())
    result["experts_implementation"] = str(getattr(model.config, "_experts_implementation", None))
    _finish_rows(result, rows, model, Lp, T, hbm, copy_bw, out)
    print(f"{dev}, {result['params'] / 1e6:.0f}M-parameter hybrid MiniMax (bf16), G={G}, prompt {Lp}, {T} new "
          f"tokens; copy {copy_bw / 1e12:.2f} TB/s")
    names = [e for e in ("graph", "hf", "hf_noshare", "generate") if e in args.engines]
    print(f"{'B':>5} " + " ".join(f"{n + ' tok/s':>14}" for n in names) + f" {'×gen':>6} {'floor tok/s':>12} {'%floor':>7} {'%copy':>6}")
    for r in result["rows"]:
        fl = r["decode_floor"]["graph"]
        print(f"{r['batch']:>5} " + " ".join(f"{r['tok_s'].get(n, float('nan')):>14.0f}" for n in names)
              + f" {r.get('graph_vs_generate', float('nan')):>6.2f} {fl['tok_s_vendor']:>12.0f}"
              f" {r.get('graph_pct_floor_vendor', float('nan')):>6.1f}% {r.get('graph_pct_floor_copy', float('nan')):>5.1f}%")
    if "profile" in result:
        p = result["profile"]
        print(f"decode step at B={p['batch']}: graph replay {p['replay_ms']:.3f} ms ({p['kernels']} kernels, "
              f"eager {p['eager_ms']:.3f} ms), floor {p['floor_ms']:.3f} ms")
    if "agreement" in result:
        a = result["agreement"]
        print(f"agreement B={a['batch']}: mean |dlogp| {a['mean_abs_dlogp']:.4f}, max {a['max_abs_dlogp']:.3f}, "
              f"prob pearson {a['prob_pearson']:.5f}")
    if args.micro:
        del model
        torch.cuda.empty_cache()
        bench_micro(args)


def _tokens(samples) -> int:
    return sum(len(x.response_ids) for x in samples)


def _baselines(args, path, dtype, prompts_of, params, rows, result, out, hbm, copy_bw) -> None:
    """The hf engine (with / without prefix sharing) and plain `generate` at the baseline sizes."""
    from transformers import GenerationConfig

    from rollout.engines.hf import HFEngine
    from rollout.types import SamplingParams

    G, T, Lp = args.group, args.new, args.prompt_len
    hf = HFEngine(path, dtype=dtype, device=args.device)
    warm = [prompts_of[args.batch[0]][0]]
    if {"hf", "hf_noshare"} & set(args.engines):
        hf.generate(warm, 4, SamplingParams(max_new_tokens=8, seed=0, repetition_window=0))
    hf.model.generate(input_ids=torch.tensor(warm * 4, device=args.device), max_new_tokens=8, do_sample=True,
                      pad_token_id=hf.pad_id)
    result["_hf_model"] = hf.model
    result["attn_implementation"] = str(getattr(hf.model.config, "_attn_implementation", None))
    for B in args.batch:
        if args.baseline_batch and B not in args.baseline_batch:
            continue
        row, prompts = rows[B], prompts_of[B]
        if "hf" in args.engines:
            t, s, first = _time(lambda prompts=prompts: hf.generate(prompts, G, params))
            row["tok_s"]["hf"], row["seconds"]["hf"], row["first_call_s"]["hf"] = _tokens(s) / t, t, first
        if "hf_noshare" in args.engines:
            alone = [p for p in prompts for _ in range(G)]
            t, s, first = _time(lambda alone=alone: hf.generate(alone, 1, params))
            row["tok_s"]["hf_noshare"], row["seconds"]["hf_noshare"], row["first_call_s"]["hf_noshare"] = \
                _tokens(s) / t, t, first
        if "generate" in args.engines:
            ids = torch.tensor([p for p in prompts for _ in range(G)], device=args.device)
            gen = GenerationConfig(do_sample=True, max_new_tokens=T, pad_token_id=hf.pad_id,
                                   eos_token_id=hf.eos_id, temperature=1.0, top_p=1.0, top_k=None)
            t, o, first = _time(lambda ids=ids, gen=gen: hf.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gen))
            is_eos = o[:, Lp:] == hf.eos_id  # tokens up to and including EOS (then padding)
            n = int(torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, o.shape[1] - Lp).sum())
            row["tok_s"]["generate"], row["seconds"]["generate"], row["first_call_s"]["generate"] = n / t, t, first
        print(f"B={B}: " + ", ".join(f"{k} {v:.0f} tok/s" for k, v in row["tok_s"].items()), flush=True)
        _finish_rows(result, rows, hf.model, Lp, T, hbm, copy_bw, out)


def _finish_rows(result, rows, model, Lp, T, hbm, copy_bw, out) -> None:
    """Floors and ratios of every row measured so far, and the JSON rewritten."""
    done = []
    for B, row in rows.items():
        if not row["tok_s"]:
            continue
        floors = {}
        for name, head_bytes in (("graph", 4), ("hf", 2)):  # graph: FP32 head as the loop runs it
            b = decode_bytes(model, B, Lp + (T - 1) / 2, head_bytes)
            floors[name] = {"bytes_per_step": b, "tok_s_vendor": B / (b["total"] / hbm),
                            "tok_s_copy": B / (b["total"] / copy_bw)}
        row["decode_floor"] = floors
        t = row["tok_s"]
        if "graph" in t and "generate" in t:
            row["graph_vs_generate"] = t["graph"] / t["generate"]
        if "graph" in t and "hf" in t:
            row["graph_vs_hf"] = t["graph"] / t["hf"]
        if "graph" in t:
            row["graph_pct_floor_vendor"] = 100 * t["graph"] / floors["graph"]["tok_s_vendor"]
            row["graph_pct_floor_copy"] = 100 * t["graph"] / floors["graph"]["tok_s_copy"]
        done.append(row)
    result["rows"] = done
    _write(out, {k: v for k, v in result.items() if not k.startswith("_")})


def profile_step(engine, B: int, Lp: int, table_path: Path, hbm: float) -> dict:
    """One decode step of B live rows: profiler table (eager, per kernel) and graph replay time."""
    from rollout.engines.graph import bucket

    pool = engine.pool
    nb = bucket(B)
    sampling = (1.0, 0, 1.0)
    steps = min(40, pool.max_new - 1, pool.max_len - Lp - 1)

    def reset():
        pool.info[1, :B] = -1
        pool.info[0, :B] = 0
        pool.pos[:B] = Lp
        pool.run[:B] = 0
        pool.iparams[1] = pool.max_new
        rows = torch.full((nb,), pool.slots, dtype=torch.long, device=pool.tok.device)
        rows[:B] = torch.arange(B, device=rows.device)
        engine._rows[:nb].copy_(rows)

    reset()
    engine.static.decode(engine._rows[:nb], pool, engine.vocab_hash, sampling)  # warm
    reset()
    _sync()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        engine.static.decode(engine._rows[:nb], pool, engine.vocab_hash, sampling)
        _sync()
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    kernels = len(events)
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=40)
    table_path.parent.mkdir(parents=True, exist_ok=True)
    table_path.write_text(table)
    # eager wall time of a step and graph replay time
    reset()
    times = []
    for _ in range(steps):
        _sync()
        t0 = time.perf_counter()
        engine.static.decode(engine._rows[:nb], pool, engine.vocab_hash, sampling)
        _sync()
        times.append(time.perf_counter() - t0)
    eager_ms = 1e3 * statistics.median(times)
    replay_ms = float("nan")
    if engine.cuda_graphs:
        graph = engine._graph(nb, sampling)
        reset()
        rt = []
        for _ in range(steps):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            graph.replay()
            e.record()
            e.synchronize()
            rt.append(s.elapsed_time(e))
        replay_ms = statistics.median(rt)
    floor = decode_bytes(engine.model, B, Lp + steps / 2, 4)["total"] / hbm
    print(table)
    return {"batch": B, "bucket": nb, "kernels": kernels, "eager_ms": eager_ms, "replay_ms": replay_ms,
            "floor_ms": 1e3 * floor, "table": str(table_path)}


def agreement(engine, path: str, B: int, G: int, Lp: int, T: int, vocab: int, g) -> dict:
    """The graph engine's sampled log-probs against the learner's teacher-forced ones."""
    from cispo.models.build import load_model
    from cispo.models.fp32_head import enable_token_scoring
    from rollout.types import SamplingParams

    prompts = [torch.randint(40, vocab, (Lp,), generator=g).tolist() for _ in range(B // G)]
    samples = engine.generate(prompts, G, SamplingParams(max_new_tokens=T, seed=7, repetition_window=0))
    dtype = str(engine.static.dtype).removeprefix("torch.")
    learner = enable_token_scoring(load_model(path, dtype, fp32_head=True).to(engine.device).eval())
    eng, ref = [], []
    for a in range(0, len(samples), 16):
        chunk = samples[a:a + 16]
        n = max(len(s.response_ids) for s in chunk)
        ids = torch.tensor([s.prompt_ids + s.response_ids + [0] * (n - len(s.response_ids)) for s in chunk],
                           device=engine.device)
        with torch.no_grad():
            lp, _ = learner(ids[:, :-1], targets=ids[:, 1:])
        for i, s in enumerate(chunk):
            ref.append(lp[i, Lp - 1:Lp - 1 + len(s.response_ids)].float().cpu())
            eng.append(torch.tensor(s.logprobs))
    del learner
    e, r = torch.cat(eng), torch.cat(ref)
    d = (e - r).abs()
    return {"batch": B, "tokens": len(e), "mean_abs_dlogp": float(d.mean()), "max_abs_dlogp": float(d.max()),
            "p99_abs_dlogp": float(d.quantile(0.99)), "prob_pearson": float(torch.corrcoef(torch.stack([e.exp(), r.exp()]))[0, 1]),
            "logprob_pearson": float(torch.corrcoef(torch.stack([e, r]))[0, 1])}


def bench_micro(args) -> None:
    """FP32 LM head variants (agreement with float64, time), lightning decode bandwidth, grouped GEMM."""
    from cispo.ops.fp32_matmul import bf16_parts, mm_3xtf32, mm_bf16_parts, no_tf32
    from cispo.ops.lightning_decode import lightning_decode
    from cispo.ops.moe import has_grouped_mm

    def timed(fn, reps=20):
        for _ in range(3):
            fn()
        ts = []
        for _ in range(reps):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            e.synchronize()
            ts.append(s.elapsed_time(e))
        return statistics.median(ts)

    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "copy_bytes_s": copy_bandwidth(),
           "grouped_mm_bf16": has_grouped_mm("cuda", torch.bfloat16), "head": [], "lightning": []}
    try:
        a = torch.ones(16, 16, dtype=torch.bfloat16, device="cuda")
        out["mm_out_dtype"] = str(torch.mm(a, a, out_dtype=torch.float32).dtype)
    except Exception as e:  # noqa: BLE001 - recorded, not fatal
        out["mm_out_dtype"] = f"error: {e}"[:200]
    V = args.vocab
    for hidden in args.micro_hidden:
        for B in args.micro_batch:
            h = torch.randn(B, hidden, device="cuda").to(torch.bfloat16)
            w_rand = torch.randn(V, hidden, device="cuda") * 0.02  # full float32 values
            w_b16 = w_rand.to(torch.bfloat16).float()  # bf16 values in a float32 tensor (a bf16-trained head)
            for wname, w in (("fp32_values", w_rand), ("bf16_values", w_b16)):
                ref = h.double() @ w.double().t()
                variants = {}
                variants["ieee"] = lambda w=w, h=h: h.float() @ w.t()  # timed under no_tf32 below
                variants["3xtf32"] = lambda w=w, h=h: mm_3xtf32(h.float(), w.t())
                for parts in (1, 3):
                    p = bf16_parts(w, parts)
                    variants[f"bf16x{parts}"] = lambda p=p, parts=parts, h=h: mm_bf16_parts(h, p, parts)
                wb = w.to(torch.bfloat16)
                variants["bf16_native"] = lambda wb=wb, h=h: (h @ wb.t()).float()
                for name, fn in variants.items():
                    if name == "ieee":
                        with no_tf32():
                            y, ms = fn(), timed(fn)
                    else:
                        y, ms = fn(), timed(fn)
                    err = float((y.double() - ref).norm() / ref.norm())
                    out["head"].append({"hidden": hidden, "batch": B, "weights": wname, "variant": name,
                                        "rel_err": err, "max_abs_err": float((y.double() - ref).abs().max()),
                                        "ms": ms})
    for B in args.micro_batch:
        L, H, D = 7, 16, 64
        state = torch.randn(B + 1, L, H, D, D, device="cuda")
        qkv = torch.randn(B, 4 * H * D, device="cuda").to(torch.bfloat16)
        slot = torch.arange(B, device="cuda")
        codes = torch.full((B + 1,), -1, device="cuda")
        decay = torch.rand(L, H, device="cuda")
        ms = timed(lambda qkv=qkv, state=state, slot=slot, decay=decay, codes=codes, H=H, D=D:
                   lightning_decode(qkv[:, :3 * H * D], state, 3, slot, decay, codes))
        nbytes = 2 * B * H * D * D * 4
        out["lightning"].append({"batch": B, "ms": ms, "state_bytes_rw": nbytes, "bytes_s": nbytes / (ms / 1e3)})
    print(f"{out['device']}: copy {out['copy_bytes_s'] / 1e12:.2f} TB/s, grouped_mm bf16 {out['grouped_mm_bf16']}, "
          f"mm out_dtype {out['mm_out_dtype']}")
    print(f"{'hidden':>6} {'B':>5} {'weights':>11} {'variant':>11} {'rel err':>9} {'ms':>7}")
    for r in out["head"]:
        print(f"{r['hidden']:>6} {r['batch']:>5} {r['weights']:>11} {r['variant']:>11} {r['rel_err']:>9.2e} {r['ms']:>7.3f}")
    for r in out["lightning"]:
        print(f"lightning decode B={r['batch']}: {r['ms']:.3f} ms, {r['bytes_s'] / 1e12:.2f} TB/s of state read+write")
    _write(args.out / "rollout_micro.json", out)


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
    ap.add_argument("what", choices=["gen", "micro", "sync"])
    ap.add_argument("--batch", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--engines", nargs="+", default=["graph", "hf", "generate"],
                    choices=["graph", "hf", "hf_noshare", "generate"])
    ap.add_argument("--baseline-batch", type=int, nargs="*", default=[],
                    help="batch sizes at which hf / generate run (default: all)")
    ap.add_argument("--group", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--prefill-tokens", type=int, default=8192)
    ap.add_argument("--eager", action="store_true", help="graph engine without CUDA graphs")
    ap.add_argument("--profile", type=int, default=0, help="profile one graph-engine decode step at this batch")
    ap.add_argument("--agreement", type=int, default=0, help="engine vs learner log-probs at this batch")
    ap.add_argument("--micro", action="store_true", help="gen: run `micro` afterwards in the same process")
    ap.add_argument("--micro-hidden", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--micro-batch", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--params", type=float, default=2e9)
    ap.add_argument("--bucket-mb", type=float, nargs="+", default=[256, 1024])
    ap.add_argument("--device", default="cuda", help="cpu: a smoke run (gloo for sync), not a measurement")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    {"gen": bench_gen, "micro": bench_micro, "sync": bench_sync}[args.what](args)


if __name__ == "__main__":
    main()
