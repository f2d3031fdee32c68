"""`GenerationWorker`: a Ray actor that owns one engine."""

from __future__ import annotations

import ray
import torch

from cispo.models.process import setup_actor
from rollout.engines import make_engine
from rollout.types import Sample, SamplingParams


@ray.remote
class GenerationWorker:
    def __init__(self, engine: str, model_path: str, dtype: str, torch_threads: int,
                 trust_remote_code: bool = False, device: str = "cpu"):
        setup_actor(torch_threads)
        self.engine = make_engine(engine, model_path, dtype, device, trust_remote_code)

    def ready(self) -> bool:
        return True

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.engine.load_state_dict(state_dict)

    def generate(self, prompts: list[list[int]], group_size: int, params: SamplingParams,
                 first_index: int) -> list[Sample]:
        return self.engine.generate(prompts, group_size, params, first_index)
