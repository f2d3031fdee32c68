"""`GenerationWorker`: a Ray actor that owns one engine."""

from __future__ import annotations

import time

import ray
import torch

from cispo.models.process import setup_actor
from rollout.engines import make_engine
from rollout.types import Sample, SamplingParams


@ray.remote
class GenerationWorker:
    def __init__(self, engine: str, model_path: str, dtype: str, torch_threads: int,
                 trust_remote_code: bool = False, device: str = "cpu",
                 model_options: dict | None = None, engine_options: dict | None = None):
        setup_actor(torch_threads)
        self.engine = make_engine(engine, model_path, dtype, device, trust_remote_code, model_options,
                                  **(engine_options or {}))

        self.version = 0  # which weight sync this worker holds; 0 = the initial checkpoint

    def ready(self) -> int:
        return self.version

    def load_weights(self, weights: dict[str, torch.Tensor] | list, version: int) -> float:
        """A whole state dict, or a list of object-store refs of buckets (cispo.weight_sync),
        loaded one bucket at a time; returns seconds spent."""
        t0 = time.perf_counter()
        if isinstance(weights, dict):
            self.engine.load_state_dict(weights)
        else:
            names: set[str] = set()
            for ref in weights:
                bucket = ray.get(ref)
                self.engine.load_state_dict(bucket, strict=False)
                names.update(bucket)
                del bucket  # one bucket in memory at a time
            self.engine.check_complete(names)
        self.version = version
        return time.perf_counter() - t0

    def generate(self, prompts: list[list[int]], group_size: int, params: SamplingParams,
                 first_index: int, version: int) -> list[Sample]:
        # A worker Ray restarted after a crash comes back with the initial weights: refuse, so
        # the manager re-syncs it instead of silently sampling from a stale policy.
        if version != self.version:
            raise StaleWeights(f"worker holds weights v{self.version}, step needs v{version}")
        return self.engine.generate(prompts, group_size, params, first_index)

    def generate_episodes(self, prompts: list[list[int]], tasks: list[dict], group_size: int,
                          params: SamplingParams, first_index: int, version: int,
                          env: dict) -> list[Sample]:
        """G multi-turn episodes per prompt (rollout.episodes) in environment `env["name"]`,
        each with a fresh environment built from `env["options"]`; `tasks` are the data rows."""
        if version != self.version:
            raise StaleWeights(f"worker holds weights v{self.version}, step needs v{version}")
        from functools import partial

        from environments.registry import get_environment, load_modules
        from rollout.episodes import EpisodeLimits, run_episodes

        decode = getattr(self.engine, "decode_turns", None)
        if decode is None:
            raise ValueError(f"rollout.engine={type(self.engine).__name__} cannot continue token "
                             "contexts (decode_turns): env.name needs rollout.engine=hf")
        load_modules(env.get("modules", []))
        cls, options = get_environment(env["name"]), dict(env.get("options") or {})
        return run_episodes(prompts, tasks, group_size, first_index, lambda: cls(**options),
                            self.engine.tokenizer, partial(decode, params=params),
                            EpisodeLimits(**env["limits"]), params.max_new_tokens)


class StaleWeights(RuntimeError):
    pass
