"""`RolloutManager`: spreads a step's prompts over the generation workers, keeps order."""

from __future__ import annotations

from typing import Any

import ray

from cispo.models.process import actor_env
from rollout.types import Sample, SamplingParams
from rollout.worker import GenerationWorker


class RolloutManager:
    def __init__(self, cfg: Any, model_path: str, dtype: str = "float32", trust_remote_code: bool = False):
        self.cfg = cfg
        opts = {"num_cpus": cfg.num_cpus_per_worker, "num_gpus": cfg.num_gpus_per_worker,
                "runtime_env": {"env_vars": actor_env(cfg.torch_threads)}}
        self.workers = [
            GenerationWorker.options(name=None, **opts).remote(
                cfg.engine, model_path, dtype, cfg.torch_threads, trust_remote_code,
                "cuda" if cfg.num_gpus_per_worker > 0 else "cpu")
            for _ in range(cfg.num_workers)
        ]
        ray.get([w.ready.remote() for w in self.workers])

    def sync_weights(self, state_ref: ray.ObjectRef) -> None:
        """Every worker loads the same weights (one copy in the object store, read by all)."""
        ray.get([w.load_weights.remote(state_ref) for w in self.workers])

    def generate(self, prompt_ids: list[list[int]], seed: int) -> list[Sample]:
        """G samples per prompt; result grouped by prompt, in prompt order."""
        n = len(self.workers)
        per = -(-len(prompt_ids) // n)  # contiguous chunks keep each group on one worker
        futures = []
        for k, w in enumerate(self.workers):
            chunk = prompt_ids[k * per:(k + 1) * per]
            if not chunk:
                continue
            params = SamplingParams(self.cfg.max_new_tokens, self.cfg.temperature, self.cfg.top_p,
                                    self.cfg.top_k, seed=seed * 1000 + k)
            futures.append(w.generate.remote(chunk, self.cfg.group_size, params, k * per))
        return [s for part in ray.get(futures) for s in part]

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w)
