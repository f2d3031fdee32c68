"""Varlen flash attention for packed rows (cispo/models/varlen_attention.py) and the learner's
fast-path switches (cispo/models/speed.py)."""

from __future__ import annotations

import pytest
import torch

from cispo.models.varlen_attention import NAME, set_attention, varlen_attention_forward
from cispo.packing import pack


def tiny(device="cpu", dtype=torch.float32, layers=("linear_attention", "full_attention"), head_dim=16):
    from transformers import MiniMaxConfig, MiniMaxForCausalLM

    cfg = MiniMaxConfig(vocab_size=97, hidden_size=64, intermediate_size=64, num_hidden_layers=len(layers),
                        num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim, num_local_experts=2,
                        num_experts_per_tok=1, block_size=16, layer_types=list(layers),
                        attn_implementation="sdpa")
    torch.manual_seed(0)
    return MiniMaxForCausalLM(cfg).to(device=device, dtype=dtype).eval()


def register():
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, varlen_attention_forward)


def test_unpacked_rows_are_sdpa_and_packed_rows_refuse_cpu():
    model = tiny()
    ids = torch.randint(0, 97, (2, 9))
    ref = model(input_ids=ids).logits
    register()
    set_attention(model, NAME)
    assert torch.equal(model(input_ids=ids).logits, ref)
    with pytest.raises(ValueError, match="CUDA"):
        model(**pack([[1, 2, 3], [4, 5, 6, 7]]).model_kwargs())


def test_checkpoint_layers_and_plan():
    from cispo.models.speed import checkpoint_layers, layers_to_checkpoint

    model = tiny(layers=("linear_attention", "linear_attention", "full_attention"))
    with pytest.raises(RuntimeError, match="gradient_checkpointing_enable"):
        checkpoint_layers(model, 1)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    layers = model.model.layers
    assert checkpoint_layers(model, 2) == 2
    # lightning layers (more activations per token) first, the later one first
    assert [m.gradient_checkpointing for m in layers] == [True, True, False]
    assert checkpoint_layers(model, 1) == 1 and [m.gradient_checkpointing for m in layers] == [False, True, False]
    assert checkpoint_layers(model, None) == 3 and all(m.gradient_checkpointing for m in layers)
    assert checkpoint_layers(model, 0) == 0 and not any(m.gradient_checkpointing for m in layers)
    # 8 layers of 10 GB, checkpoints 1 GB: 80 GB fits 100 GB; 50 GB needs the fewest k with
    # (8 - k)·10 + k·1 + 10 ≤ 50, i.e. 90 - 9k ≤ 50 → k = 5
    assert layers_to_checkpoint(8, 10, 1, 100) == 0
    assert layers_to_checkpoint(8, 10, 1, 50) == 5
    assert layers_to_checkpoint(8, 10, 1, 5) == 8


def test_zero3_tuning_from_layer_size():
    from cispo.models.speed import autoep_grouped_mm, zero3_tuning

    model = tiny()
    layer = sum(p.numel() for p in model.model.layers[0].parameters())
    z = zero3_tuning(model, prefetch_layers=2, world_size=2)
    assert z["stage3_prefetch_bucket_size"] == 2 * max(layer, sum(p.numel() for p in model.model.layers[1].parameters()))
    assert "stage3_param_persistence_threshold" not in z
    assert zero3_tuning(model, 2, 1)["stage3_param_persistence_threshold"] > max(p.numel() for p in model.parameters())
    assert autoep_grouped_mm("fused_gate_up") == {"use_grouped_mm": True, "gate_up_impl": "fused"}
    with pytest.raises(ValueError, match="grouped_mm_backend"):
        autoep_grouped_mm("cutlass")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_packed_varlen_equals_each_sequence_alone():
    """One packed row through flash varlen = each sequence alone through sdpa (bf16, softmax
    layers with GQA, head dim 64), logits and a gradient. (Lightning layers on packed rows:
    tests/test_models_lightning.py.)"""
    model = tiny("cuda", torch.bfloat16, layers=("full_attention", "full_attention"), head_dim=64)
    seqs = [torch.randint(0, 97, (n,)).tolist() for n in (70, 5, 130, 33)]
    alone = [model(input_ids=torch.tensor([s], device="cuda")).logits[0].float() for s in seqs]
    register()
    set_attention(model, NAME)
    p = pack(seqs)
    kw = {k: (v.cuda() if torch.is_tensor(v) else v) for k, v in p.model_kwargs().items()}
    packed = model(**kw).logits[0].float()
    a = 0
    for s, ref in zip(seqs, alone, strict=True):
        got = packed[a:a + len(s)]
        err = float((got - ref).abs().max() / ref.abs().max())
        assert err < 3e-2, err  # bf16 end to end
        a += len(s)
    # gradients flow through the flash varlen call
    model.train()
    q = model.model.layers[0].self_attn.q_proj.weight
    q.grad = None
    model(**kw).logits.float().square().mean().backward()
    assert q.grad is not None and torch.isfinite(q.grad.float()).all() and q.grad.abs().sum() > 0
