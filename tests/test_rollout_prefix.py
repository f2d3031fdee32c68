"""Group prefix sharing in the HF engine: one prefill per prompt, expanded G times, gives each
sample the same tokens and per-token log-probs as generating that sample alone."""

import torch

from cispo.models.build import load_model, load_tokenizer
from cispo.ops.logprobs import token_logprobs
from rollout.engines.hf import HFEngine
from rollout.sampler import gumbel_noise, mix32, process_logits, sample_keys
from rollout.types import SamplingParams


def _prompts(path):
    tok = load_tokenizer(path)
    return [[tok.bos_token_id] + tok(t, add_special_tokens=False).input_ids
            for t in ["1+2=\\boxed{", "12+20=\\boxed{", "0+1="]]  # different lengths: left padding


def test_prefix_sharing_matches_each_sample_alone(tiny_model_path):
    torch.manual_seed(0)
    engine = HFEngine(tiny_model_path)
    prompts, G = _prompts(tiny_model_path), 4
    params = SamplingParams(max_new_tokens=12, temperature=0.9, top_p=0.95, seed=11)
    shared = engine.generate(prompts, G, params, first_index=5)
    assert [s.prompt_index for s in shared] == [5 + i // G for i in range(len(prompts) * G)]
    assert {s.finish_reason for s in shared} == {"stop", "length"}  # rows leave the batch early
    for r, s in enumerate(shared):
        alone, = engine._generate([prompts[r // G]], 1, params, first_index=5 + r // G, first_sample=r % G)
        assert alone.response_ids == s.response_ids and alone.finish_reason == s.finish_reason
        torch.testing.assert_close(torch.tensor(s.logprobs), torch.tensor(alone.logprobs),
                                   atol=1e-5, rtol=0)
    # and they are the log-probs of the processed distribution, teacher-forced without a cache
    model = load_model(tiny_model_path).eval()
    for s in shared[:G]:
        ids = torch.tensor([s.prompt_ids + s.response_ids])
        with torch.no_grad():
            logits = model(ids).logits[0, len(s.prompt_ids) - 1:-1]
        z = process_logits(logits, 0.9, 0, 0.95)
        lp = token_logprobs(z, torch.tensor(s.response_ids))
        torch.testing.assert_close(lp, torch.tensor(s.logprobs), atol=1e-4, rtol=0)


def test_batch_split_does_not_change_samples(tiny_model_path):
    engine = HFEngine(tiny_model_path)
    prompts = _prompts(tiny_model_path)
    params = SamplingParams(max_new_tokens=8, seed=3)
    whole = engine.generate(prompts, 3, params)
    engine.max_prompts_per_batch = 1
    split = engine.generate(prompts, 3, params)
    assert [s.response_ids for s in whole] == [s.response_ids for s in split]


def test_gumbel_sampling_follows_the_distribution():
    # 20k draws from a 4-token distribution: empirical frequencies within 0.015 of p
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]])).repeat(20000, 1)
    keys = sample_keys(1, torch.arange(20000), torch.zeros(20000, dtype=torch.long))
    tok = torch.argmax(logits.double() + gumbel_noise(keys, 0, mix32(torch.arange(4))), -1)
    freq = torch.bincount(tok, minlength=4) / 20000
    assert torch.allclose(freq, torch.tensor([0.1, 0.2, 0.3, 0.4]), atol=0.015), freq


def test_top_p_keeps_the_smallest_head_reaching_p():
    z = process_logits(torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])), 1.0, 0, 0.8)
    assert torch.isfinite(z).tolist() == [[True, True, False, False]]
    z = process_logits(torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])), 1.0, 3, 1.0)
    assert torch.isfinite(z).tolist() == [[True, True, True, False]]
