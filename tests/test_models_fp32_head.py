"""The FP32 LM head: FP32 forward and backward inside an otherwise bf16 model."""

from __future__ import annotations

import pytest
import torch

from cispo.models.fp32_head import FP32LMHead, apply_fp32_head
from cispo.ops.logprobs import token_logprobs


def tiny_minimax(tie: bool = False):
    from transformers import MiniMaxConfig, MiniMaxForCausalLM

    cfg = MiniMaxConfig(vocab_size=97, hidden_size=32, intermediate_size=32, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                        num_local_experts=2, num_experts_per_tok=1, block_size=4,
                        layer_types=["linear_attention", "full_attention"],
                        tie_word_embeddings=tie)
    torch.manual_seed(0)
    return MiniMaxForCausalLM(cfg)


def test_head_is_fp32_rest_stays_bf16_and_matches_float64():
    model = apply_fp32_head(tiny_minimax().to(torch.bfloat16))
    assert isinstance(model.lm_head, FP32LMHead)
    assert model.lm_head.weight.dtype == torch.float32
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    ids = torch.randint(0, 97, (2, 9))
    hidden = model.model(input_ids=ids).last_hidden_state
    assert hidden.dtype == torch.bfloat16
    logits = model(input_ids=ids).logits
    assert logits.dtype == torch.float32
    ref = hidden.double() @ model.lm_head.weight.double().T
    torch.testing.assert_close(logits.double(), ref, rtol=1e-6, atol=1e-6)


def test_backward_in_fp32_grads_in_param_dtypes():
    model = apply_fp32_head(tiny_minimax().to(torch.bfloat16))
    ids = torch.randint(0, 97, (2, 9))
    model(input_ids=ids).logits.float().logsumexp(-1).sum().backward()
    assert model.lm_head.weight.grad.dtype == torch.float32
    assert model.model.embed_tokens.weight.grad.dtype == torch.bfloat16
    # the head's weight gradient is the FP32 product of the FP32 output grad and the hidden states
    hidden = model.model(input_ids=ids).last_hidden_state.detach()
    w = model.lm_head.weight.detach().double().requires_grad_()
    (hidden.double() @ w.T).logsumexp(-1).sum().backward()
    torch.testing.assert_close(model.lm_head.weight.grad.double(), w.grad, rtol=1e-5, atol=1e-5)


def test_token_call_gives_chunked_logprobs_and_entropy():
    model = apply_fp32_head(tiny_minimax())
    ids = torch.randint(0, 97, (2, 9))
    hidden = model.model(input_ids=ids).last_hidden_state
    lp, ent = model.lm_head(hidden[:, :-1], tokens=ids[:, 1:], temperature=0.8, with_entropy=True,
                            chunk_tokens=5)
    full = model.lm_head(hidden[:, :-1])
    torch.testing.assert_close(lp, token_logprobs(full, ids[:, 1:], 0.8), rtol=1e-5, atol=1e-5)
    p = torch.softmax(full / 0.8, -1)
    torch.testing.assert_close(ent, -(p * p.log()).sum(-1), rtol=1e-5, atol=1e-5)


def test_tied_heads_are_refused_and_apply_is_idempotent():
    with pytest.raises(ValueError, match="ties lm_head"):
        apply_fp32_head(tiny_minimax(tie=True))
    model = apply_fp32_head(tiny_minimax())
    head = model.lm_head
    assert apply_fp32_head(model).lm_head is head


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_head_ignores_global_tf32_and_restores_it():
    """With TF32 switched on for the whole process, the head still computes in IEEE FP32 (error
    ~1e-6 against float64, where TF32 gives ~1e-3) and TF32 is back on afterwards."""
    mm = torch.backends.cuda.matmul
    saved = mm.fp32_precision
    mm.fp32_precision = "tf32"
    try:
        g = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(512, 1024, device="cuda", generator=g)
        head = FP32LMHead(torch.randn(4096, 1024, device="cuda", generator=g))
        ref = x.double() @ head.weight.double().T
        err_head = ((head(x).double() - ref).norm() / ref.norm()).item()
        err_tf32 = ((x @ head.weight.T).double() - ref).norm().item() / ref.norm().item()
        assert mm.fp32_precision == "tf32"
        assert err_head < 1e-5, err_head
        print(f"fp32 head rel err {err_head:.2e}; plain tf32 matmul {err_tf32:.2e}")
    finally:
        mm.fp32_precision = saved
