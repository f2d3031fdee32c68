"""Sequence parallelism's pieces in one process, float64: the state combine against the double
sum, the torch lightning kernel against the formula, chunks + combine against the whole packed
row (boundaries inside a chunk and at a chunk start), splitting, and the patched model at size 1
against transformers run on each sequence alone."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cispo import seqpar
from cispo.seqpar.lightning_kernel import chunk_lightning_torch
from cispo.seqpar.segments import segments_of
from cispo.seqpar.state_combine import (
    add_incoming,
    chunk_decay,
    incoming_states,
    state_grads,
)


def formula(q, k, v, slopes, lens):
    """o_t = Σ_{s≤t, same sequence} exp(−λ (t−s)) (q_t·k_s) v_s, densely, in float64."""
    seq = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens))
    t = torch.arange(q.shape[0], dtype=q.dtype)
    dist = t[:, None] - t[None, :]
    keep = (dist >= 0) & (seq[:, None] == seq[None, :])
    decay = torch.exp(-slopes[:, None, None] * dist.clamp(min=0)) * keep
    return torch.einsum("hts,ths,she->the", decay, torch.einsum("thd,shd->ths", q, k), v)


def qkv(T, H=3, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(T, H, d, generator=g, dtype=torch.float64) for _ in range(3)]


SLOPES = torch.tensor([0.05, 0.3, 0.9], dtype=torch.float64)


def test_incoming_states_is_the_decayed_prefix_sum_and_state_grads_its_adjoint():
    g = torch.Generator().manual_seed(1)
    W, H, d = 5, 3, 4
    S = torch.randn(W, H, d, d, generator=g, dtype=torch.float64, requires_grad=True)
    a = torch.rand(W, H, generator=g, dtype=torch.float64)
    a[2, 1] = 0.0  # a reset on one head of rank 2
    inc = incoming_states(S, a)
    for r in range(W):  # I_r = Σ_{j<r} (Π_{j<m<r} a_m) S_j
        want = sum((torch.prod(a[j + 1:r], dim=0)[:, None, None] * S[j] for j in range(r)),
                   torch.zeros(H, d, d, dtype=torch.float64))
        torch.testing.assert_close(inc[r], want, rtol=1e-14, atol=1e-14)
    dI = torch.randn(W, H, d, d, generator=g, dtype=torch.float64)
    (autograd,) = torch.autograd.grad(inc, S, dI)
    torch.testing.assert_close(state_grads(dI, a), autograd, rtol=1e-14, atol=1e-14)


def test_torch_kernel_matches_the_formula_with_packed_sequences():
    lens = [7, 1, 13]
    q, k, v = qkv(sum(lens))
    q.requires_grad_()
    cu = torch.tensor([0, 7, 8, 21])
    o, finals = chunk_lightning_torch(q, k, v, SLOPES, cu, block=4)
    torch.testing.assert_close(o, formula(q, k, v, SLOPES, lens), rtol=1e-12, atol=1e-12)
    # final state of the last sequence: Σ_s exp(−λ (20 − s)) k_s v_sᵀ over s in [8, 21)
    s = torch.arange(8, 21, dtype=torch.float64)
    w = torch.exp(-SLOPES[:, None] * (20 - s)[None])  # [H, n]
    want = torch.einsum("hs,shd,she->hde", w, k[8:21], v[8:21])
    torch.testing.assert_close(finals[2], want, rtol=1e-12, atol=1e-12)
    (gq,) = torch.autograd.grad(o.sum(), q)
    (gq_ref,) = torch.autograd.grad(formula(q, k, v, SLOPES, lens).sum(), q)
    torch.testing.assert_close(gq, gq_ref, rtol=1e-12, atol=1e-12)


def chunked(q, k, v, lens, W, block=4):
    """The whole row's output computed the sequence-parallel way, ranks simulated in one process:
    each chunk from a zero state, the final states combined, the incoming part added."""
    T = q.shape[0]
    pos = torch.cat([torch.arange(n) for n in lens])[None]
    L = T // W
    outs, finals, decays, segs = [], [], [], []
    for r in range(W):
        seg = segments_of(pos[:, r * L:(r + 1) * L], r)
        o, f = chunk_lightning_torch(q[r * L:(r + 1) * L], k[r * L:(r + 1) * L],
                                     v[r * L:(r + 1) * L], SLOPES, torch.tensor(seg.cu_seqlens), block)
        outs.append(o)
        finals.append(f[-1])
        decays.append(chunk_decay(SLOPES, L, seg.resets))
        segs.append(seg)
    inc = incoming_states(torch.stack(finals), torch.stack(decays))
    return torch.cat([add_incoming(outs[r], q[r * L:(r + 1) * L], SLOPES, inc[r], segs[r].first_len)
                      for r in range(W)])


@pytest.mark.parametrize("lens,W", [
    ([24], 3),  # one sequence over three ranks
    ([5, 19], 2),  # a boundary inside chunk 0; sequence 2 runs on into chunk 1
    ([12, 4, 8], 2),  # a boundary exactly at chunk 1's start, another inside it
    ([3, 10, 2, 9], 4),  # chunk 1 = [6, 12): continues, then a start at 13 in chunk 2 ...
])
def test_chunks_plus_combine_equal_the_whole_row(lens, W):
    q, k, v = qkv(sum(lens), seed=sum(lens) + W)
    params = [q.requires_grad_(), k.requires_grad_(), v.requires_grad_()]
    want = formula(q, k, v, SLOPES, lens)
    got = chunked(q, k, v, lens, W)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(want)
    for a, b in zip(torch.autograd.grad(got, params, g), torch.autograd.grad(want, params, g),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)


@settings(max_examples=25, deadline=None)
@given(lens=st.lists(st.integers(1, 9), min_size=1, max_size=5), W=st.sampled_from([2, 3]))
def test_property_any_packing_any_split(lens, W):
    T = sum(lens)
    pad = -T % W
    lens = lens + ([pad] if pad else [])  # split_packed's pad sequence
    q, k, v = qkv(T + pad, seed=T)
    torch.testing.assert_close(chunked(q, k, v, lens, W, block=3), formula(q, k, v, SLOPES, lens),
                               rtol=1e-11, atol=1e-11)


def test_segments_of_a_chunk():
    pos = torch.tensor([[5, 6, 0, 1, 2, 0, 1]])
    seg = segments_of(pos, rank=2)
    assert seg.cu_seqlens == [0, 2, 5, 7] and seg.continues and seg.first_len == 2 and seg.resets
    assert seg.key_ranges() == [(0, 2, 9, 16), (2, 5, 16, 19), (5, 7, 19, 21)]
    seg = segments_of(torch.tensor([[3, 4, 5]]), rank=1)
    assert not seg.resets and seg.first_len == 3 and seg.key_ranges() == [(0, 3, 0, 6)]
    assert segments_of(torch.tensor([[0, 1, 2]]), rank=1).first_len == 0


def test_split_packed_pads_splits_and_shifts_targets():
    batch = {"input_ids": torch.arange(10, 17)[None], "position_ids": torch.tensor([[0, 1, 2, 0, 1, 2, 3]]),
             "mask": torch.ones(1, 7), "advantages": torch.tensor([1.0, 2.0])}
    parts = [seqpar.split_packed(batch, r, 3, pad_id=0) for r in range(3)]
    assert [p["input_ids"].tolist() for p in parts] == [[[10, 11, 12]], [[13, 14, 15]], [[16, 0, 0]]]
    assert [p["target_ids"].tolist() for p in parts] == [[[11, 12, 13]], [[14, 15, 16]], [[0, 0, 0]]]
    assert parts[2]["position_ids"].tolist() == [[3, 0, 1]] and parts[2]["mask"].tolist() == [[1, 0, 0]]
    assert parts[1]["advantages"] is batch["advantages"] and parts[0]["sp_tokens"] == 7
    with pytest.raises(ValueError, match="restart at 0"):
        seqpar.split_packed({**batch, "position_ids": torch.tensor([[0, 1, 3, 0, 1, 2, 3]])}, 0, 2)
    with pytest.raises(ValueError, match="start at 0"):
        seqpar.split_packed({**batch, "position_ids": batch["position_ids"] + 1}, 0, 2)


def test_patched_model_at_size_1_equals_transformers_on_each_sequence():
    import copy

    from seqpar_workers import packed_batch, tiny_hybrid

    ref = tiny_hybrid()
    model = copy.deepcopy(ref)
    seqpar.patch_model(model, None)
    lens = [6, 11, 4]
    batch = packed_batch(lens, seed=3)
    ids = batch["input_ids"]
    out = model(**seqpar.model_inputs(seqpar.split_packed(batch, 0, 1))).logits
    parts, start = [], 0
    for n in lens:  # transformers' own layers, one sequence at a time (no packing involved)
        parts.append(ref(input_ids=ids[:, start:start + n], use_cache=False).logits)
        start += n
    # 1e-6: transformers' lightning loop uses decay tables built in float32
    assert ((out - torch.cat(parts, 1)).abs().max() / out.abs().max()).item() < 1e-6


def test_learner_rejects_a_size_that_does_not_divide_the_ranks(tiny_model_path):
    from omegaconf import OmegaConf

    from cispo.config import LearnerConfig, ModelConfig, ParallelConfig
    from cispo.learner import LearnerGroup

    cfg = OmegaConf.structured(LearnerConfig(num_workers=3))
    par = OmegaConf.structured(ParallelConfig(sequence_parallel=2, micro_batch_tokens=40))
    with pytest.raises(ValueError, match="must divide"):  # before any actor starts
        LearnerGroup(cfg, par, OmegaConf.structured(ModelConfig), tiny_model_path, 4, 1.0)


def test_docs_seqpar_example_runs(monkeypatch):
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    blocks = re.findall(r"```python\n(.*?)```", (root / "docs" / "seqpar.md").read_text(), flags=re.S)
    assert blocks
    for code in blocks:
        exec(compile(code, "docs/seqpar.md", "exec"), {})


def test_segments_are_recomputed_for_every_new_position_ids():
    """Two forwards whose position_ids differ (a freed tensor's address may be reused) must not
    share cached segments."""
    from seqpar_workers import tiny_hybrid

    model = tiny_hybrid()
    sp = seqpar.patch_model(model, None)
    ids = torch.randint(0, 64, (1, 8))
    for pos in ([0, 1, 2, 3, 4, 5, 6, 7], [0, 1, 2, 0, 1, 2, 3, 4]):
        model(**seqpar.model_inputs({"input_ids": ids, "position_ids": torch.tensor([pos])}))
        assert list(sp.cached.starts) == [i for i, p in enumerate(pos) if p == 0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fla_local_kernel_matches_the_torch_kernel_with_final_states():
    """The GPU path of a chunk (fla, varlen, output_final_state) against the float64 torch kernel:
    outputs and every sequence's final state in the [N, H, d, d] k-first layout the combine uses."""
    from cispo.seqpar.layers import lightning_local

    lens = [300, 517, 65]
    q, k, v = qkv(sum(lens), H=8, d=64, seed=4)
    slopes = 2.0 ** (-8 * (torch.arange(8, dtype=torch.float64) + 1) / 8)
    cu = [0, 300, 817, 882]
    o_ref, s_ref = chunk_lightning_torch(q, k, v, slopes, torch.tensor(cu), block=64)
    o, s = lightning_local(*(x.float().cuda() for x in (q, k, v)), slopes.cuda(), cu, 256)
    for got, want in ((o, o_ref), (s, s_ref)):
        err = ((got.double().cpu() - want).norm() / want.norm()).item()
        assert err < 5e-3, err  # fla's float32 kernels use TF32 products
