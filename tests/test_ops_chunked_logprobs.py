"""Chunked log-probs/entropy against the naive formula, in float64, values and gradients."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cispo.ops.chunked_logprobs import linear_token_logprobs
from cispo.ops.logprobs import token_logprobs


def naive(h, w, tokens, temperature):
    """The formula, materialising the logits: log softmax(h Wᵀ/τ)[tok], −Σ p log p."""
    logp_all = torch.log_softmax((h @ w.T) / temperature, dim=-1)
    logp = logp_all.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    ent = -(logp_all.exp() * logp_all).sum(-1)
    return logp, ent


def both(h, w, tokens, temperature, g_lp, g_ent, **kw):
    """Values and d(Σ g_lp·logp + Σ g_ent·H)/d(h, W) from the chunked op and from the formula."""
    out = []
    for fn in ("chunked", "naive"):
        hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
        if fn == "chunked":
            lp, ent = linear_token_logprobs(hh, ww, tokens, temperature, with_entropy=True,
                                            compute_dtype=torch.float64, **kw)
        else:
            lp, ent = naive(hh, ww, tokens, temperature)
        ((lp * g_lp).sum() + (ent * g_ent).sum()).backward()
        out.append((lp.detach(), ent.detach(), hh.grad, ww.grad))
    return out


def close(a, b, tol=1e-10):
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype
        torch.testing.assert_close(x, y, rtol=tol, atol=tol)


def test_matches_formula_float64_with_tiles_and_temperature():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 7, 16, dtype=torch.float64, generator=g)
    w = torch.randn(101, 16, dtype=torch.float64, generator=g)
    tokens = torch.randint(0, 101, (3, 7), generator=g)
    g_lp, g_ent = torch.randn(3, 7, dtype=torch.float64), torch.randn(3, 7, dtype=torch.float64)
    chunked, ref = both(h, w, tokens, 0.7, g_lp, g_ent, chunk_tokens=4, vocab_block=17)
    close(chunked, ref)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 13), vocab=st.integers(1, 40), dim=st.integers(1, 6),
    chunk=st.integers(1, 9), block=st.integers(1, 45),
    temperature=st.sampled_from([0.25, 1.0, 1.7]),
    scale=st.sampled_from([1e-3, 1.0, 30.0]),  # 30: logits in the hundreds, one-hot softmaxes
    seed=st.integers(0, 2**16),
)
def test_property_any_tiling_any_shape(n, vocab, dim, chunk, block, temperature, scale, seed):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, dim, dtype=torch.float64, generator=g) * scale
    w = torch.randn(vocab, dim, dtype=torch.float64, generator=g)
    tokens = torch.randint(0, vocab, (n,), generator=g)
    g_lp, g_ent = torch.randn(n, dtype=torch.float64, generator=g), torch.randn(n, dtype=torch.float64, generator=g)
    chunked, ref = both(h, w, tokens, temperature, g_lp, g_ent, chunk_tokens=chunk, vocab_block=block)
    close(chunked, ref, tol=1e-9)


def test_without_entropy_and_only_hidden_grad():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(9, 8, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(50, 8, dtype=torch.float64, generator=g)
    tokens = torch.randint(0, 50, (9,), generator=g)
    lp, ent = linear_token_logprobs(h, w, tokens, compute_dtype=torch.float64, chunk_tokens=2,
                                    vocab_block=7)
    assert ent is None
    lp.sum().backward()
    h2 = h.detach().clone().requires_grad_()
    naive(h2, w, tokens, 1.0)[0].sum().backward()
    torch.testing.assert_close(h.grad, h2.grad, rtol=1e-10, atol=1e-10)


def test_bf16_inputs_are_computed_in_fp32():
    """bf16 hidden states and weight: the result equals float64 math on the same bf16 values to
    FP32 rounding, far better than a bf16 computation would be."""
    g = torch.Generator().manual_seed(2)
    h = torch.randn(64, 32, generator=g).bfloat16()
    w = torch.randn(500, 32, generator=g).bfloat16()
    tokens = torch.randint(0, 500, (64,), generator=g)
    lp, ent = linear_token_logprobs(h, w, tokens, with_entropy=True, chunk_tokens=16, vocab_block=128)
    assert lp.dtype == torch.float32
    ref_lp, ref_ent = naive(h.double(), w.double(), tokens, 1.0)
    torch.testing.assert_close(lp.double(), ref_lp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent.double(), ref_ent, rtol=1e-5, atol=1e-5)


def test_agrees_with_token_logprobs_on_logits():
    """The learner's existing token_logprobs on full logits and the chunked op give one answer."""
    g = torch.Generator().manual_seed(3)
    h = torch.randn(2, 5, 8, dtype=torch.float64, generator=g)
    w = torch.randn(30, 8, dtype=torch.float64, generator=g)
    tokens = torch.randint(0, 30, (2, 5), generator=g)
    lp, _ = linear_token_logprobs(h, w, tokens, 0.9, compute_dtype=torch.float64)
    torch.testing.assert_close(lp, token_logprobs(h @ w.T, tokens, 0.9), rtol=1e-12, atol=1e-12)


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="disagree"):
        linear_token_logprobs(torch.randn(3, 4), torch.randn(10, 5), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="must match"):
        linear_token_logprobs(torch.randn(3, 4), torch.randn(10, 4), torch.zeros(2, dtype=torch.long))


def test_split_tf32_is_exact_and_3xtf32_reaches_near_fp32_accuracy():
    """split_tf32 splits exactly; with TF32 emulated (operands rounded to 10 mantissa bits, the
    products exact in float64), three TF32 products are ≥ 100× closer to the exact product than
    one, within a few 2⁻²¹ of it (the CPU has no TF32, so the GPU's rounding is emulated here)."""
    from cispo.ops.fp32_matmul import mm_3xtf32, split_tf32

    g = torch.Generator().manual_seed(0)
    a = torch.randn(64, 256, generator=g) * 3
    b = torch.randn(256, 48, generator=g)
    hi, lo = split_tf32(a)
    assert torch.equal(hi + lo, a) and not (hi.view(torch.int32) & 8191).any()

    def tf32(x):  # round-to-nearest to 10 mantissa bits, as the tensor cores read an operand
        return x.double().frexp().mantissa.mul(2**11).round().div(2**11).ldexp(x.double().frexp().exponent)

    exact = a.double() @ b.double()
    ah, al = split_tf32(a)
    bh, bl = split_tf32(b)
    three = tf32(ah) @ tf32(bh) + tf32(ah) @ tf32(bl) + tf32(al) @ tf32(bh)
    one = tf32(a) @ tf32(b)
    scale = a.double().abs() @ b.double().abs()
    err3, err1 = ((three - exact).abs() / scale).max(), ((one - exact).abs() / scale).max()
    assert err3 < 4 * 2**-21 and err3 * 100 < err1
    # on CPU there is no TF32: the function is IEEE float32 (three partial sums' rounding)
    assert ((mm_3xtf32(a, b).double() - exact).abs() / scale).max() < 2**-20


def test_3xtf32_precision_matches_formula_on_cpu():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(9, 16, generator=g)
    w = torch.randn(50, 16, generator=g)
    tok = torch.randint(0, 50, (9,), generator=g)
    a = linear_token_logprobs(h, w, tok, 0.8, with_entropy=True, precision="3xtf32", vocab_block=16)
    b = linear_token_logprobs(h, w, tok, 0.8, with_entropy=True)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="precision"):
        linear_token_logprobs(h, w, tok, precision="tf32")
