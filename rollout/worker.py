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
        t0 = time.time()
        setup_actor(torch_threads)
        self.device = device
        self.engine = make_engine(engine, model_path, dtype, device, trust_remote_code, model_options,
                                  **(engine_options or {}))
        self.init_times = {"engine": time.time() - t0}
        if device.startswith("cuda"):  # compile the generation path's kernels before step 0
            t0 = time.time()
            self.engine.generate([[1, 2, 3, 4, 5, 6, 7, 8]] * 2, 2, SamplingParams(4, seed=0), 0)
            self.init_times["warm_up"] = time.time() - t0

        self.version = 0  # which weight sync this worker holds; 0 = the initial checkpoint

    def ready(self) -> int:
        return self.version

    def startup_times(self) -> dict[str, float]:
        return dict(self.init_times)

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

    # --- colocated: the learner rank's bucket buffers on this GPU, opened once (CUDA IPC) -----

    def open_shared(self, plan: list, handles: list) -> int:
        """Open the learner's flat bucket buffers (cispo.weight_sync.BucketHandle) and keep them
        for every later sync; returns the bytes mapped."""
        from cispo.weight_sync import open_buckets

        self._shared = open_buckets(plan, handles)
        return sum(f.numel() * f.element_size() for _, f in self._shared)

    def load_shared(self, version: int) -> float:
        """Copy the weights out of the opened buffers into the engine; seconds taken."""
        from cispo.weight_sync import load_buckets

        t0 = time.perf_counter()
        names: set[str] = set()

        def load(bucket: dict[str, torch.Tensor]) -> None:
            self.engine.load_state_dict(bucket, strict=False)
            names.update(bucket)

        load_buckets(self._shared, load)
        self.engine.check_complete(names)
        self.version = version
        return time.perf_counter() - t0

    # --- separate: the weight group with learner rank 0 (NCCL; gloo on CPU) --------------------

    def join_weight_group(self, backend: str, addr: str, port: int, rank: int, world_size: int,
                          plan: list) -> None:
        from cispo.weight_sync import make_group

        self._wplan = plan
        self._wgroup = make_group(backend, addr, port, rank, world_size)

    def receive_weights(self, version: int) -> float:
        """Receive one broadcast of every bucket (learner rank 0 sends at the same time)."""
        from cispo.weight_sync import broadcast_recv

        t0 = time.perf_counter()
        names: set[str] = set()

        def load(bucket: dict[str, torch.Tensor]) -> None:
            self.engine.load_state_dict(bucket, strict=False)
            names.update(bucket)

        broadcast_recv(self._wgroup, self._wplan, self.device, load)
        self.engine.check_complete(names)
        self.version = version
        return time.perf_counter() - t0

    # --- engine memory while the learner trains on the same GPU --------------------------------

    def sleep(self) -> float:
        t0 = time.perf_counter()
        self.engine.sleep()
        return time.perf_counter() - t0

    def wake(self) -> float:
        t0 = time.perf_counter()
        self.engine.wake()
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
        forget = getattr(self.engine, "forget_turns", None)
        try:
            return run_episodes(prompts, tasks, group_size, first_index, lambda: cls(**options),
                                self.engine.tokenizer, partial(decode, params=params),
                                EpisodeLimits(**env["limits"]), params.max_new_tokens, forget=forget)
        finally:
            if forget is not None:  # whatever a failed call left kept
                forget()


class StaleWeights(RuntimeError):
    pass
