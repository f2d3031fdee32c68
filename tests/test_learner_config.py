"""The learner's DeepSpeed config from its keys (pure; the runs themselves are in test_learner.py)."""

import dataclasses

import pytest
from omegaconf import OmegaConf

from cispo.config import LearnerConfig, ModelConfig, ParallelConfig
from cispo.learner import deepspeed_config, worker_config


def _cfg(expert_parallel: int = 1, **kw) -> dict:
    return {**dataclasses.asdict(LearnerConfig(**kw)), "dtype": "float32", "expert_parallel": expert_parallel}


def test_defaults_are_plain_zero3():
    ds = deepspeed_config(_cfg(), n_micro=3, world_size=2)
    assert ds["zero_optimization"] == {"stage": 3}
    assert ds["gradient_accumulation_steps"] == 3 and "expert_parallel" not in ds


def test_autoep_offload_and_their_errors():
    ds = deepspeed_config(_cfg(expert_parallel=4, offload_optimizer=True, offload_params=True),
                          n_micro=1, world_size=8)
    assert ds["expert_parallel"] == {"enabled": True, "autoep_size": 4, "preset_model": "mixtral",
                                     "moe_layer_pattern": r"model\.layers\.\d+\.mlp",
                                     "use_grouped_mm": True, "gate_up_impl": "separate"}
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    with pytest.raises(ValueError, match="must divide"):
        deepspeed_config(_cfg(expert_parallel=3), n_micro=1, world_size=4)
    with pytest.raises(ValueError, match="zero_stage=3"):
        deepspeed_config(_cfg(zero_stage=2, offload_params=True), n_micro=1, world_size=1)


def test_grouped_mm_backend_and_zero3_sizes_from_the_model():
    from transformers import MiniMaxConfig, MiniMaxForCausalLM

    ds = deepspeed_config(_cfg(expert_parallel=2, grouped_mm_backend="loop"), n_micro=1, world_size=2)
    assert ds["expert_parallel"]["use_grouped_mm"] is False
    with pytest.raises(ValueError, match="grouped_mm_backend"):
        deepspeed_config(_cfg(expert_parallel=2, grouped_mm_backend="cutlass"), n_micro=1, world_size=2)
    model = MiniMaxForCausalLM(MiniMaxConfig(
        vocab_size=97, hidden_size=32, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, num_local_experts=2, num_experts_per_tok=1, block_size=4,
        layer_types=["linear_attention", "full_attention"]))
    layer = max(sum(p.numel() for p in m.parameters()) for m in model.model.layers)
    zero = deepspeed_config(_cfg(), n_micro=1, world_size=2, model=model)["zero_optimization"]
    assert zero["stage3_prefetch_bucket_size"] == 2 * layer and zero["reduce_bucket_size"] == layer
    assert "fused" not in deepspeed_config(_cfg(), n_micro=1, world_size=2)["optimizer"]["params"]  # CPU


def test_worker_config_takes_the_layout_from_the_parallel_group():
    learner = OmegaConf.structured(LearnerConfig(num_workers=4))
    par = OmegaConf.structured(ParallelConfig(expert_parallel=2, sequence_parallel=2, micro_batch_tokens=64,
                                              head_chunk_tokens=512))
    w = worker_config(learner, par, OmegaConf.structured(ModelConfig))
    assert (w["expert_parallel"], w["sequence_parallel"], w["micro_batch_tokens"], w["head_chunk_tokens"]) == \
        (2, 2, 64, 512)
    assert w["prefetch_layers"] == par.prefetch_layers
    assert deepspeed_config(w, n_micro=1, world_size=4)["expert_parallel"]["autoep_size"] == 2
    assert "expert_parallel" not in deepspeed_config({**w, "expert_parallel": 1}, n_micro=1, world_size=4)
    with pytest.raises(ValueError, match="parallel.sequence_parallel=3 must divide learner.num_workers=4"):
        worker_config(learner, OmegaConf.merge(par, {"sequence_parallel": 3}), OmegaConf.structured(ModelConfig))
