"""The vLLM adapter. Its engine tests run only where `import vllm` works (a CUDA machine with
vLLM installed); the repetition cut it applies after generation is plain Python, tested here."""

import math

import pytest
import torch

from rollout.engines.vllm_engine import _repetition_cut
from rollout.types import SamplingParams

HI, LO = math.log(0.999), math.log(0.5)


def test_repetition_cut_after_generation():
    p = SamplingParams(max_new_tokens=10, repetition_window=3, repetition_threshold=0.99)
    toks, lps = list(range(8)), [LO, HI, HI, LO, HI, HI, HI, HI]
    assert _repetition_cut(toks, lps, "length", p) == (toks[:7], lps[:7], "repetition")
    assert _repetition_cut(toks[:6], lps[:6], "stop", p) == (toks[:6], lps[:6], "stop")
    assert _repetition_cut(toks[:7], lps[:7], "stop", p) == (toks[:7], lps[:7], "stop")  # EOS wins
    off = SamplingParams(max_new_tokens=10)
    assert _repetition_cut(toks, lps, "length", off)[2] == "length"


def test_unknown_engine_names_the_registered_ones():
    from rollout.engines import make_engine

    with pytest.raises(KeyError, match="vllm"):
        make_engine("sglang", "x")


@pytest.mark.gpu
def test_vllm_engine_logprobs_and_weight_update(tiny_model_path):
    pytest.importorskip("vllm")
    from cispo.models.build import load_model
    from cispo.ops.logprobs import token_logprobs
    from rollout.engines import make_engine
    from rollout.sampler import process_logits

    engine = make_engine("vllm", tiny_model_path, "float32", "cuda", False, None)
    params = SamplingParams(max_new_tokens=6, temperature=0.9, top_p=0.95, seed=1)
    samples = engine.generate([[1, 5, 6, 7]], 4, params)
    assert len(samples) == 4 and all(s.prompt_index == 0 for s in samples)
    model = load_model(tiny_model_path).eval()
    for s in samples:  # log-probs of the processed distribution, as the HF engine returns
        ids = torch.tensor([s.prompt_ids + s.response_ids])
        with torch.no_grad():
            z = process_logits(model(ids).logits[0, len(s.prompt_ids) - 1:-1], 0.9, 0, 0.95)
        torch.testing.assert_close(token_logprobs(z, torch.tensor(s.response_ids)),
                                   torch.tensor(s.logprobs), atol=2e-3, rtol=0)
    sd = {k: v * 0 for k, v in model.state_dict().items() if k.endswith("lm_head.weight")}
    engine.load_state_dict(sd, strict=False)  # a zero head: every token equally likely
    s = engine.generate([[1, 5, 6, 7]], 1, SamplingParams(max_new_tokens=3, seed=2))[0]
    assert all(abs(lp + math.log(model.config.vocab_size)) < 1e-3 for lp in s.logprobs)
