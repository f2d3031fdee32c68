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
                                     "moe_layer_pattern": r"model\.layers\.\d+\.mlp"}
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    with pytest.raises(ValueError, match="must divide"):
        deepspeed_config(_cfg(expert_parallel=3), n_micro=1, world_size=4)
    with pytest.raises(ValueError, match="zero_stage=3"):
        deepspeed_config(_cfg(zero_stage=2, offload_params=True), n_micro=1, world_size=1)


def test_worker_config_takes_the_layout_from_the_parallel_group():
    learner = OmegaConf.structured(LearnerConfig(num_workers=4))
    par = OmegaConf.structured(ParallelConfig(expert_parallel=2, sequence_parallel=2, micro_batch_tokens=64,
                                              head_chunk_tokens=512))
    w = worker_config(learner, par, OmegaConf.structured(ModelConfig))
    assert (w["expert_parallel"], w["sequence_parallel"], w["micro_batch_tokens"], w["head_chunk_tokens"]) == \
        (2, 2, 64, 512)
    assert deepspeed_config(w, n_micro=1, world_size=4)["expert_parallel"]["autoep_size"] == 2
    assert "expert_parallel" not in deepspeed_config({**w, "expert_parallel": 1}, n_micro=1, world_size=4)
    with pytest.raises(ValueError, match="parallel.sequence_parallel=3 must divide learner.num_workers=4"):
        worker_config(learner, OmegaConf.merge(par, {"sequence_parallel": 3}), OmegaConf.structured(ModelConfig))
