"""The graph engine (`rollout.engine=graph`) on CPU: the same step code the GPU captures, run
eagerly with the torch paths, in float32.

- samples (tokens, finish reasons) equal the `hf` engine's for the same seed, log-probs to 1e-5;
- per-token log-probs equal the learner's teacher-forced ones (FP32 head, M1's partial RoPE) to 1e-5;
- continuous batching (fewer slots than samples, slots refilled as samples finish) gives the same
  samples as one prompt at a time;
- weights loaded mid-run (in buckets) give what a fresh engine with those weights gives;
- repetition stop, stop tokens, routing record, sleep/wake; Llama / Qwen2 (tied head) / Qwen3-MoE
  through the static KV cache.

The GPU versions (bf16, CUDA graphs, Triton kernels) are in tests/test_engine_graph_gpu.py.
"""

from __future__ import annotations

import torch

from cispo.models.build import load_model, load_tokenizer
from cispo.models.fp32_head import enable_token_scoring
from cispo.ops.logprobs import token_logprobs
from rollout.engines.graph import GraphEngine
from rollout.engines.hf import HFEngine
from rollout.sampler import process_logits
from rollout.types import SamplingParams

ATOL = 1e-5  # float32: the two engines run the same arithmetic in a different order (~1e-7)


def prompts_for(path):
    tok = load_tokenizer(path)
    texts = ["1+2=\\boxed{", "12+20=\\boxed{", "0+1=", "7*8-3=\\boxed{"]  # different lengths
    return [[tok.bos_token_id] + tok(t, add_special_tokens=False).input_ids for t in texts] + [[tok.bos_token_id]]


def same_samples(a, b, atol=ATOL):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert (x.prompt_index, x.prompt_ids) == (y.prompt_index, y.prompt_ids)
        assert x.response_ids == y.response_ids, (x.response_ids, y.response_ids)
        assert x.finish_reason == y.finish_reason
        torch.testing.assert_close(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=atol, rtol=0)


def test_samples_equal_the_hf_engine(tiny_model_path):
    prompts = prompts_for(tiny_model_path)
    hf, graph = HFEngine(tiny_model_path), GraphEngine(tiny_model_path, max_slots=64)
    for params in (SamplingParams(max_new_tokens=12, temperature=0.9, seed=11),
                   SamplingParams(max_new_tokens=9, temperature=1.2, top_p=0.9, top_k=12, seed=3)):
        a = hf.generate(prompts, 4, params, first_index=5)
        b = graph.generate(prompts, 4, params, first_index=5)
        same_samples(a, b)
        assert {s.finish_reason for s in b} == {"stop", "length"}  # rows finish at different steps


def test_logprobs_equal_the_learners_teacher_forced(tiny_model_path):
    opts = {"fp32_head": True, "rotary_dim": 8}  # M1's FP32 head and partial RoPE (head_dim 16)
    engine = GraphEngine(tiny_model_path, model_options=opts, max_slots=8)
    params = SamplingParams(max_new_tokens=10, temperature=0.8, seed=5)
    samples = engine.generate(prompts_for(tiny_model_path), 3, params)
    learner = enable_token_scoring(load_model(tiny_model_path, **opts).eval())  # the learner's scoring path
    for s in samples:
        ids = torch.tensor([s.prompt_ids + s.response_ids])
        with torch.no_grad():
            lp, _ = learner(ids[:, :-1], targets=ids[:, 1:], temperature=0.8)
        torch.testing.assert_close(lp[0, len(s.prompt_ids) - 1:], torch.tensor(s.logprobs), atol=ATOL, rtol=0)


def test_continuous_batching_equals_one_prompt_at_a_time(tiny_model_path):
    prompts = prompts_for(tiny_model_path)
    params = SamplingParams(max_new_tokens=14, seed=2)
    few = GraphEngine(tiny_model_path, max_slots=3)  # 20 samples through 3 slots, refilled as they finish
    batched = few.generate(prompts, 4, params, first_index=10)
    assert few.stats["prefills"] > 1 and few.stats["steps"] > 14
    alone = GraphEngine(tiny_model_path, max_slots=4)
    one_by_one = [s for i, p in enumerate(prompts) for s in alone.generate([p], 4, params, first_index=10 + i)]
    same_samples(batched, one_by_one)


def _perturbed(model, seed):
    g = torch.Generator().manual_seed(seed)
    return {n: p.detach() + 0.05 * torch.randn(p.shape, generator=g) for n, p in model.named_parameters()}


def test_weights_loaded_mid_run_equal_a_fresh_engine(tiny_model_path, tmp_path):
    prompts, params = prompts_for(tiny_model_path), SamplingParams(max_new_tokens=8, seed=9)
    engine = GraphEngine(tiny_model_path, model_options={"fp32_head": True}, max_slots=6)
    before = engine.generate(prompts, 2, params)
    new = _perturbed(engine.model, 0)
    names = list(new)
    for a in range(0, len(names), 7):  # buckets of 7 tensors, as a bucketed weight sync
        engine.load_state_dict({n: new[n] for n in names[a:a + 7]}, strict=False)
    engine.check_complete(set(names))
    after = engine.generate(prompts, 2, params)
    # a fresh engine built from a checkpoint holding the new weights
    model = load_model(tiny_model_path)
    model.load_state_dict(new, strict=False)
    model.save_pretrained(tmp_path / "new")
    load_tokenizer(tiny_model_path).save_pretrained(tmp_path / "new")
    fresh = GraphEngine(str(tmp_path / "new"), model_options={"fp32_head": True}, max_slots=6).generate(prompts, 2, params)
    same_samples(after, fresh)
    assert [s.response_ids for s in after] != [s.response_ids for s in before]


def test_repetition_stop_and_stop_tokens_as_the_hf_engine(tiny_model_path):
    prompts = prompts_for(tiny_model_path)
    # threshold ~0: every token counts as confident, so each row stops after `window` tokens
    # (unless it stops on EOS first), exactly where the hf engine stops it
    params = SamplingParams(max_new_tokens=12, seed=4, repetition_window=3, repetition_threshold=1e-9)
    a = HFEngine(tiny_model_path).generate(prompts, 3, params)
    b = GraphEngine(tiny_model_path, max_slots=5).generate(prompts, 3, params)
    same_samples(a, b)
    assert "repetition" in {s.finish_reason for s in b}
    assert all(len(s.response_ids) <= 3 for s in b)
    # an extra stop token ends a response at its first occurrence
    free = GraphEngine(tiny_model_path).generate(prompts, 3, SamplingParams(max_new_tokens=12, seed=4))
    common = torch.tensor([t for s in free for t in s.response_ids]).bincount().argmax().item()
    stopped = GraphEngine(tiny_model_path, stop_token_ids=[common]).generate(
        prompts, 3, SamplingParams(max_new_tokens=12, seed=4))
    for s, f in zip(stopped, free, strict=True):
        if common in f.response_ids:
            cut = f.response_ids.index(common) + 1
            assert s.response_ids == f.response_ids[:cut] and s.finish_reason == "stop"
        else:
            assert s.response_ids == f.response_ids


def test_routing_record_matches_the_hf_engine(tiny_model_path):
    prompts, params = prompts_for(tiny_model_path), SamplingParams(max_new_tokens=6, seed=4)
    a = HFEngine(tiny_model_path, record_routing=True).generate(prompts[:3], 3, params)
    b = GraphEngine(tiny_model_path, record_routing=True, max_slots=4).generate(prompts[:3], 3, params)
    for x, y in zip(a, b, strict=True):
        assert x.response_ids == y.response_ids
        assert y.routing.shape == x.routing.shape == (len(x.prompt_ids) + len(x.response_ids) - 1, 4, 2)
        assert torch.equal(x.routing.long().sort(-1).values, y.routing.long().sort(-1).values)


def test_sleep_releases_and_wake_restores(tiny_model_path):
    engine = GraphEngine(tiny_model_path, max_slots=4)
    prompts, params = prompts_for(tiny_model_path)[:2], SamplingParams(max_new_tokens=5, seed=1)
    first = engine.generate(prompts, 2, params)
    engine.sleep()
    assert engine.pool is None
    try:
        engine.generate(prompts, 2, params)
        raise AssertionError("generate while asleep must fail")
    except RuntimeError as e:
        assert "asleep" in str(e)
    engine.wake()
    assert engine.pool is not None
    same_samples(engine.generate(prompts, 2, params), first)


def tiny_transformers_model(kind: str, path) -> str:
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3MoeConfig

    from cispo.models.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    common = dict(vocab_size=len(tok), hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    if kind == "llama":
        cfg = LlamaConfig(intermediate_size=96, tie_word_embeddings=False, **common)
    elif kind == "qwen2":  # q/k/v biases, a tied head
        cfg = Qwen2Config(intermediate_size=96, tie_word_embeddings=True, use_sliding_window=False, **common)
    else:  # qwen3_moe: q/k norms, a dense first layer, sparse ones after it (top-2 of 4, no renorm)
        cfg = Qwen3MoeConfig(intermediate_size=96, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2,
                             norm_topk_prob=False, mlp_only_layers=[0], head_dim=16, tie_word_embeddings=False,
                             **common)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("gate.weight") or "bias" in n:
                p.normal_(0, 0.5)  # routers and biases away from their zero init
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_dense_and_moe_transformers_models(tmp_path):
    for kind in ("llama", "qwen2", "qwen3_moe"):
        path = tiny_transformers_model(kind, tmp_path / kind)
        prompts = prompts_for(path)
        params = SamplingParams(max_new_tokens=10, temperature=0.9, seed=6)
        a = HFEngine(path).generate(prompts, 3, params)
        engine = GraphEngine(path, max_slots=5)
        b = engine.generate(prompts, 3, params)
        same_samples(a, b)
        model = load_model(path).eval()
        for s in b[:6]:
            ids = torch.tensor([s.prompt_ids + s.response_ids])
            with torch.no_grad():
                logits = model(ids).logits[0, len(s.prompt_ids) - 1:-1]
            lp = token_logprobs(process_logits(logits, 0.9, 0, 1.0), torch.tensor(s.response_ids))
            torch.testing.assert_close(lp, torch.tensor(s.logprobs), atol=ATOL, rtol=0)


def test_engine_options_from_config():
    from omegaconf import OmegaConf

    from cispo.config import ParallelConfig, RolloutConfig
    from rollout.manager import engine_options_from

    cfg = OmegaConf.structured(RolloutConfig(engine="graph", num_workers=2, prompts_per_step=64, group_size=16,
                                             routing_replay=True))
    opts = engine_options_from(cfg, OmegaConf.structured(ParallelConfig(rollout_batched_tokens=4096)))
    assert opts == {"max_slots": 512, "prefill_tokens": 4096, "gpu_memory_fraction": 0.5, "cuda_graphs": True,
                    "record_routing": True, "max_new_tokens": 4096}
    assert engine_options_from(cfg, OmegaConf.structured(ParallelConfig(rollout_concurrency=128)))["max_slots"] == 128
