"""The graph engine on a GPU: CUDA graphs, Triton kernels, bf16 (skipped without CUDA).

Each test prints one `GPU_CHECK {...}` line with what it measured (the bounds it asserts are
the ones recorded in docs/rollout.md, from the run on one H200)."""

from __future__ import annotations

import json

import pytest
import torch
from test_engine_graph import prompts_for, tiny_transformers_model

from cispo.models.build import load_model, load_tokenizer
from cispo.models.fp32_head import enable_token_scoring
from rollout.engines.graph import GraphEngine
from rollout.types import SamplingParams

pytestmark = pytest.mark.gpu


def report(name: str, **values) -> None:
    print("GPU_CHECK " + json.dumps({"check": name, **values}))


def diff(a, b) -> tuple[float, int]:
    """(max |Δ log-prob| over samples whose tokens agree, number of samples whose tokens differ)."""
    worst, differ = 0.0, 0
    for x, y in zip(a, b, strict=True):
        if x.response_ids != y.response_ids:
            differ += 1
            continue
        if x.logprobs:
            worst = max(worst, float((torch.tensor(x.logprobs) - torch.tensor(y.logprobs)).abs().max()))
    return worst, differ


def test_graph_replay_equals_the_eager_step(tiny_model_path):
    prompts, params = prompts_for(tiny_model_path), SamplingParams(max_new_tokens=24, temperature=0.9, seed=3)
    for dtype in ("float32", "bfloat16"):
        eager = GraphEngine(tiny_model_path, dtype, "cuda", cuda_graphs=False, max_slots=8)
        graph = GraphEngine(tiny_model_path, dtype, "cuda", max_slots=8)
        a, b = eager.generate(prompts, 4, params), graph.generate(prompts, 4, params)
        worst, differ = diff(a, b)
        report("graph_vs_eager", dtype=dtype, max_abs_dlogp=worst, samples_differ=differ,
               captures=graph.stats["captures"], capture_s=graph.stats["capture_s"],
               capture_error=graph.stats.get("capture_error"))
        assert graph.stats["captures"] > 0 and "capture_error" not in graph.stats
        assert differ == 0 and worst <= 1e-4


def test_float32_gpu_engine_equals_the_cpu_torch_path(tiny_model_path):
    prompts, params = prompts_for(tiny_model_path), SamplingParams(max_new_tokens=16, seed=8)
    cpu = GraphEngine(tiny_model_path, max_slots=8).generate(prompts, 3, params)
    gpu = GraphEngine(tiny_model_path, "float32", "cuda", max_slots=8).generate(prompts, 3, params)
    worst, differ = diff(cpu, gpu)
    report("fp32_gpu_vs_cpu", max_abs_dlogp=worst, samples_differ=differ)
    # fla's prefill kernels multiply float32 in TF32 (as in the learner): ~1e-3 of the prompt state
    assert differ <= 2 and worst < 1e-2


def test_continuous_batching_on_gpu(tiny_model_path):
    prompts, params = prompts_for(tiny_model_path), SamplingParams(max_new_tokens=20, seed=2)
    few = GraphEngine(tiny_model_path, "float32", "cuda", max_slots=3)
    batched = few.generate(prompts, 4, params, first_index=10)
    alone = GraphEngine(tiny_model_path, "float32", "cuda", max_slots=4)
    single = [s for i, p in enumerate(prompts) for s in alone.generate([p], 4, params, first_index=10 + i)]
    worst, differ = diff(batched, single)
    report("continuous_batching", max_abs_dlogp=worst, samples_differ=differ, buckets=few.stats["captures"])
    assert differ == 0 and worst < 1e-4


def test_bf16_logprobs_against_the_learner(tiny_model_path):
    opts = {"fp32_head": True, "rotary_dim": 8}
    engine = GraphEngine(tiny_model_path, "bfloat16", "cuda", model_options=opts, max_slots=32)
    samples = engine.generate(prompts_for(tiny_model_path), 6, SamplingParams(max_new_tokens=48, seed=5))
    learner = enable_token_scoring(load_model(tiny_model_path, "bfloat16", **opts).cuda().eval())
    d, lp_e, lp_l = [], [], []
    for s in samples:
        ids = torch.tensor([s.prompt_ids + s.response_ids], device="cuda")
        with torch.no_grad():
            lp, _ = learner(ids[:, :-1], targets=ids[:, 1:])
        lp = lp[0, len(s.prompt_ids) - 1:].float().cpu()
        lp_e.append(torch.tensor(s.logprobs))
        lp_l.append(lp)
    e, l_ = torch.cat(lp_e), torch.cat(lp_l)
    d = (e - l_).abs()
    pearson = float(torch.corrcoef(torch.stack([e.exp(), l_.exp()]))[0, 1])
    report("bf16_vs_learner", tokens=len(e), max_abs_dlogp=float(d.max()), mean_abs_dlogp=float(d.mean()),
           prob_pearson=pearson, head_mode=engine.static.head.mode, head_parts=engine.static.head.parts)
    assert float(d.mean()) < 0.05 and float(d.max()) < 1.0 and pearson > 0.99


def test_weights_loaded_without_recapture(tiny_model_path, tmp_path):
    prompts, params = prompts_for(tiny_model_path), SamplingParams(max_new_tokens=12, seed=9)
    opts = {"fp32_head": True}
    engine = GraphEngine(tiny_model_path, "bfloat16", "cuda", model_options=opts, max_slots=8)
    g = torch.Generator().manual_seed(0)

    def bf16_weights():  # bf16 values, as a bf16 learner sends them
        return {n: (p.detach().float().cpu() + 0.05 * torch.randn(p.shape, generator=g)).to(torch.bfloat16)
                for n, p in engine.model.named_parameters()}

    def sync(weights):  # in buckets of 5 tensors, as the loop sends them
        names = list(weights)
        for a in range(0, len(names), 5):
            engine.load_state_dict({n: weights[n].cuda() for n in names[a:a + 5]}, strict=False)
        engine.check_complete(set(names))

    # the tiny model's FP32 head needs two bf16 pieces, a bf16 learner's one: the first sync may
    # re-capture once (other shapes); every later sync must reuse the graphs
    sync(bf16_weights())
    engine.generate(prompts, 2, params)
    captures = engine.stats["captures"]
    new = bf16_weights()
    sync(new)
    after = engine.generate(prompts, 2, params)
    model = load_model(tiny_model_path)
    model.load_state_dict({n: t.float() for n, t in new.items()}, strict=False)
    model.save_pretrained(tmp_path / "new")
    load_tokenizer(tiny_model_path).save_pretrained(tmp_path / "new")
    fresh = GraphEngine(str(tmp_path / "new"), "bfloat16", "cuda", model_options=opts, max_slots=8)
    worst, differ = diff(after, fresh.generate(prompts, 2, params))
    report("weights_mid_run", max_abs_dlogp=worst, samples_differ=differ,
           recaptured=engine.stats["captures"] - captures)
    assert engine.stats["captures"] == captures  # the same graphs, new weights
    assert differ == 0 and worst <= 1e-4


def test_sleep_releases_memory_and_wake_recaptures(tiny_model_path):
    engine = GraphEngine(tiny_model_path, "bfloat16", "cuda", max_slots=1024)
    prompts, params = prompts_for(tiny_model_path), SamplingParams(max_new_tokens=32, seed=1)
    first = engine.generate(prompts, 16, params)
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated()
    engine.sleep()
    asleep = torch.cuda.memory_allocated()
    capture_before = engine.stats["capture_s"]
    engine.wake()
    again = engine.generate(prompts, 16, params)
    worst, differ = diff(first, again)
    report("sleep_wake", held_mib=held / 2**20, asleep_mib=asleep / 2**20,
           pool_mib=sum(v for k, v in engine.memory.items() if k.endswith("_bytes") and k not in
                        ("weights_bytes", "budget_bytes", "per_slot_bytes") and v) / 2**20,
           recapture_s=engine.stats["capture_s"] - capture_before, max_abs_dlogp=worst, samples_differ=differ)
    assert asleep < held and differ == 0


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3_moe"])
def test_transformers_models_on_gpu(kind, tmp_path):
    path = tiny_transformers_model(kind, tmp_path / kind)
    params = SamplingParams(max_new_tokens=16, seed=6)
    samples = GraphEngine(path, "bfloat16", "cuda", max_slots=16).generate(prompts_for(path), 3, params)
    model = load_model(path, "bfloat16").cuda().eval()
    worst = 0.0
    for s in samples:
        ids = torch.tensor([s.prompt_ids + s.response_ids], device="cuda")
        with torch.no_grad():
            logits = model(ids).logits[0, len(s.prompt_ids) - 1:-1].float()
        lp = torch.log_softmax(logits, -1).gather(-1, ids[0, len(s.prompt_ids):, None])[:, 0].cpu()
        worst = max(worst, float((lp - torch.tensor(s.logprobs)).abs().max()))
    report("transformers_model", kind=kind, max_abs_dlogp=worst)
    assert worst < 0.5
