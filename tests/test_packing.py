"""Sequence packing: planning by token budget, the packed layout, and packed log-probs equal to
one forward per sequence (softmax and lightning layers must not see across boundaries)."""

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cispo.packing import pack, plan_micro_batches


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=30), st.integers(40, 120))
def test_plan_covers_every_sequence_once_within_budget(lengths, budget):
    plan = plan_micro_batches(lengths, budget)
    assert sorted(i for b in plan for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= budget for b in plan)
    assert plan == plan_micro_batches(lengths, budget)  # deterministic


def test_plan_refuses_a_sequence_over_budget():
    with pytest.raises(ValueError, match="micro_batch_tokens"):
        plan_micro_batches([5, 50], 10)


def test_pack_layout_and_unpack():
    p = pack([[5, 6, 7], [8, 9], [10]], pad_to=8, pad_id=0)
    assert p.input_ids.tolist() == [[5, 6, 7, 8, 9, 10, 0, 0]]
    assert p.position_ids.tolist() == [[0, 1, 2, 0, 1, 0, 0, 1]]
    assert p.cu_seqlens.tolist() == [0, 3, 5, 6]
    assert p.targets.tolist() == [[6, 7, 0, 9, 0, 0, 0, 0]]
    assert p.valid.tolist() == [[True, True, False, True, False, False, False, False]]
    assert p.model_kwargs()["cu_seq_lens_q"].tolist() == [0, 3, 5, 6, 8]
    rows = p.unpack(torch.arange(8.0)[None], fill=-1.0)
    assert rows.tolist() == [[0.0, 1.0], [3.0, -1.0], [-1.0, -1.0]]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_logprobs_equal_per_sequence(tiny_model_path, attn):
    """The tiny hybrid (lightning + GQA softmax layers, grouped-mm experts: float32 only) on CPU."""
    from cispo.models.build import load_model
    from cispo.ops.logprobs import token_logprobs

    model = load_model(tiny_model_path).eval()
    model.set_attn_implementation(attn)
    rng = random.Random(0)
    seqs = [[rng.randrange(4, 21) for _ in range(n)] for n in (37, 5, 20, 1, 16)]
    p = pack(seqs, pad_to=84)
    with torch.no_grad():
        logits = model(**p.model_kwargs()).logits
        packed = p.unpack(token_logprobs(logits, p.targets))
        for i, s in enumerate(seqs):
            if len(s) < 2:
                continue
            ids = torch.tensor([s])
            ref = token_logprobs(model(input_ids=ids).logits[:, :-1], ids[:, 1:])[0]
            torch.testing.assert_close(packed[i, :len(s) - 1], ref, rtol=1e-5, atol=1e-5)
        # and it is not vacuous: without boundaries the second sequence sees the first
        row = model(input_ids=p.input_ids).logits
        assert not torch.allclose(row[0, 37:41], logits[0, 37:41])
