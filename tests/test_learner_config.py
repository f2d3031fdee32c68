"""The learner's DeepSpeed config from its keys (pure; the runs themselves are in test_learner.py)."""

import dataclasses

import pytest

from cispo.config import LearnerConfig
from cispo.learner import deepspeed_config


def _cfg(**kw) -> dict:
    return {**dataclasses.asdict(LearnerConfig(**kw)), "dtype": "float32"}


def test_defaults_are_plain_zero3():
    ds = deepspeed_config(_cfg(), n_micro=3, world_size=2)
    assert ds["zero_optimization"] == {"stage": 3}
    assert ds["gradient_accumulation_steps"] == 3 and "expert_parallel" not in ds


def test_autoep_offload_and_their_errors():
    ds = deepspeed_config(_cfg(expert_parallel_size=4, offload_optimizer=True, offload_params=True),
                          n_micro=1, world_size=8)
    assert ds["expert_parallel"] == {"enabled": True, "autoep_size": 4, "preset_model": "mixtral",
                                     "moe_layer_pattern": r"model\.layers\.\d+\.mlp"}
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    with pytest.raises(ValueError, match="must divide"):
        deepspeed_config(_cfg(expert_parallel_size=3), n_micro=1, world_size=4)
    with pytest.raises(ValueError, match="zero_stage=3"):
        deepspeed_config(_cfg(zero_stage=2, offload_params=True), n_micro=1, world_size=1)
