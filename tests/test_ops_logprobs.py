"""The full-logits log-prob and entropy helpers against their formulas, in float64."""

import math

import pytest
import torch

from cispo.ops.logprobs import token_entropy, token_logprobs


def test_token_logprobs_and_entropy_float64():
    x = torch.tensor([[0.3, -1.2, 2.0], [5.0, 5.0, -3.0]], dtype=torch.float64)
    tokens = torch.tensor([2, 1])
    for temp in (1.0, 0.7):
        for i in range(2):
            z = [v / temp for v in x[i].tolist()]
            lse = math.log(sum(math.exp(v) for v in z))
            assert token_logprobs(x, tokens, temp)[i].item() == \
                pytest.approx(z[tokens[i]] - lse, rel=1e-12)
            ent = -sum(math.exp(v - lse) * (v - lse) for v in z)
            assert token_entropy(x, temp)[i].item() == pytest.approx(ent, rel=1e-12)
    assert token_logprobs(x.float(), tokens).dtype == torch.float32  # bf16/fp16 are upcast
