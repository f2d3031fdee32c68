"""`RolloutManager`: spreads a step's prompts over the generation workers, keeps order, and
survives a worker that dies mid-step (Ray restarts it; the manager re-syncs its weights and
resends its prompts with the same seed, so no sample is lost or duplicated)."""

from __future__ import annotations

import logging
import time
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

from cispo.models.process import actor_env
from rollout.types import Sample, SamplingParams
from rollout.worker import GenerationWorker

log = logging.getLogger(__name__)
RESTART_TIMEOUT_S = 120.0  # how long to wait for Ray to bring a crashed worker back


class RolloutManager:
    def __init__(self, cfg: Any, model_path: str, dtype: str = "float32", trust_remote_code: bool = False,
                 model_options: dict | None = None):
        self.cfg = cfg
        self.restarts = 0  # workers re-synced after a crash, over the run
        self._weights: ray.ObjectRef | list | None = None
        self._version = 0
        opts = {"num_cpus": cfg.num_cpus_per_worker, "num_gpus": cfg.num_gpus_per_worker,
                "max_restarts": cfg.max_restarts,
                "runtime_env": {"env_vars": actor_env(cfg.torch_threads)}}
        device = "cuda" if cfg.num_gpus_per_worker > 0 else "cpu"
        engine_options = engine_options_from(cfg)
        self.workers = [
            GenerationWorker.options(**opts).remote(cfg.engine, model_path, dtype, cfg.torch_threads,
                                                    trust_remote_code, device, model_options, engine_options)
            for _ in range(cfg.num_workers)
        ]
        ray.get([w.ready.remote() for w in self.workers])

    @property
    def version(self) -> int:
        """How many weight syncs the workers have taken (0: the initial checkpoint)."""
        return self._version

    def sync_weights(self, weights: ray.ObjectRef | list[ray.ObjectRef]) -> float:
        """Every worker loads the same weights: one object-store ref of a whole state dict, or
        the refs of its buckets (one copy each in the object store, read by all). Returns the
        slowest worker's load seconds."""
        self._weights, self._version = weights, self._version + 1
        return max(ray.get([w.load_weights.remote(weights, self._version) for w in self.workers]))

    def generate(self, prompt_ids: list[list[int]], seed: int) -> list[Sample]:
        """G samples per prompt; result grouped by prompt, in prompt order."""
        per = -(-len(prompt_ids) // len(self.workers))  # contiguous chunks: a group stays on one worker
        jobs = {}
        for k, w in enumerate(self.workers):
            chunk = prompt_ids[k * per:(k + 1) * per]
            if chunk:
                params = self._params(seed)  # per-sample streams: (seed, prompt, sample)
                ref = w.generate.remote(chunk, self.cfg.group_size, params, k * per, self._version)
                jobs[k] = (chunk, k * per, params, ref)
        out = {k: self._collect(k, *job) for k, job in jobs.items()}
        return [s for k in sorted(out) for s in out[k]]

    def _collect(self, k: int, chunk: list[list[int]], first: int, params: SamplingParams,
                 ref) -> list[Sample]:
        """Worker k's samples; if it crashed (or came back restarted, with stale weights), wait
        for Ray's restart, re-sync it and resend the same chunk with the same seed."""
        counted = False
        deadline = time.monotonic() + RESTART_TIMEOUT_S
        while True:
            try:
                if ref is None:
                    w = self.workers[k]
                    ray.get(w.load_weights.remote(self._weights, self._version))
                    ref = w.generate.remote(chunk, self.cfg.group_size, params, first, self._version)
                return ray.get(ref)
            except (RayActorError, ActorUnavailableError, RayTaskError) as e:
                if isinstance(e, RayTaskError) and "StaleWeights" not in str(e):
                    raise  # a real error inside generation: not ours to hide
                if not counted:
                    counted = True
                    self.restarts += 1
                    if self.restarts > self.cfg.max_restarts * len(self.workers):
                        raise RuntimeError(f"generation workers restarted {self.restarts} times") from e
                    log.warning("generation worker %d lost its state (%s); re-syncing and resending",
                                k, type(e).__name__)
                if time.monotonic() > deadline:
                    raise RuntimeError(f"generation worker {k} did not come back within "
                                       f"{RESTART_TIMEOUT_S} s") from e
                time.sleep(0.5)
                ref = None

    def _params(self, seed: int) -> SamplingParams:
        c = self.cfg
        return SamplingParams(c.max_new_tokens, c.temperature, c.top_p, c.top_k, seed,
                              c.repetition_window, c.repetition_threshold)

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w)


def engine_options_from(cfg: Any) -> dict:
    """The engine's own settings from `rollout.*` (what each engine accepts differs)."""
    if cfg.engine == "hf":
        return {"max_prompts_per_batch": cfg.max_prompts_per_batch, "record_routing": cfg.routing_replay}
    if cfg.routing_replay:
        raise ValueError(f"rollout.routing_replay needs rollout.engine=hf (got {cfg.engine!r})")
    return {}
