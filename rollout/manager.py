"""`RolloutManager`: spreads a step's prompts over the generation workers, keeps order, and
survives a worker that dies mid-step (Ray restarts it; the manager re-syncs its weights and
resends its prompts with the same seed, so no sample is lost or duplicated)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import ray
from omegaconf import OmegaConf
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

from cispo.config import ParallelConfig
from cispo.models.process import actor_env
from rollout.types import Sample, SamplingParams
from rollout.worker import GenerationWorker

log = logging.getLogger(__name__)
RESTART_TIMEOUT_S = 120.0  # how long to wait for Ray to bring a crashed worker back


class RolloutManager:
    def __init__(self, cfg: Any, model_path: str, dtype: str = "float32", trust_remote_code: bool = False,
                 model_options: dict | None = None, parallel: Any = None, env: dict | None = None,
                 scheduling: list[dict] | None = None, wait: bool = True):
        """`cfg`: the `rollout` config group; `parallel`: the `parallel` group (each engine's
        tensor x pipeline parallel size, its concurrency; None: all defaults); `env`: multi-turn
        episodes (`env_spec`), None: single-turn generation. `scheduling`: Ray options per engine
        from a placement made elsewhere (colocated with the learner, `cispo.placement`); None =
        one placement group per engine here. `wait=False` returns while the engines still load
        (call `ready()`), so other start-up work overlaps."""
        self.cfg = cfg
        self.env = env
        self.restarts = 0  # workers re-synced after a crash, over the run
        self._weights: ray.ObjectRef | list | None = None
        self._version = 0
        # how a restarted worker gets the current weights back (set by the weight hand-over;
        # None: from the object-store refs of the last sync)
        self.resync_worker: Callable[[int], None] | None = None
        opts = {"num_cpus": cfg.num_cpus_per_worker, "num_gpus": cfg.num_gpus_per_worker,
                "max_restarts": cfg.max_restarts,
                "runtime_env": {"env_vars": actor_env(cfg.torch_threads)}}
        device = "cuda" if cfg.num_gpus_per_worker > 0 else "cpu"
        parallel = parallel if parallel is not None else OmegaConf.structured(ParallelConfig)
        engine_options = engine_options_from(cfg, parallel)
        devices = parallel.rollout_tensor_parallel * parallel.rollout_pipeline_parallel
        if scheduling is None:  # one placement group per engine, or [] (Ray places freely)
            self.placement_groups = placement_groups(cfg, devices)
            scheduling = [_in_group(self.placement_groups, k, devices) for k in range(cfg.num_workers)]
        else:
            self.placement_groups = []  # owned by whoever made them
        self.workers = [
            GenerationWorker.options(**opts, **scheduling[k]).remote(
                cfg.engine, model_path, dtype, cfg.torch_threads, trust_remote_code, device,
                model_options, engine_options)
            for k in range(cfg.num_workers)
        ]
        if wait:
            self.ready()

    def ready(self) -> None:
        """Block until every engine has loaded (raises the first engine's start-up error)."""
        ray.get([w.ready.remote() for w in self.workers])

    def startup_times(self) -> dict[str, float]:
        """Engine 0's start-up parts (load, warm-up), seconds."""
        return ray.get(self.workers[0].startup_times.remote())

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

    def open_shared(self, plan: list, handles: list[list]) -> None:
        """Colocated: engine k opens `handles[k]` (its GPU's learner rank's bucket buffers) once."""
        self._shared = (plan, handles)
        ray.get([w.open_shared.remote(plan, h) for w, h in zip(self.workers, handles, strict=True)])

    def load_shared(self) -> float:
        """Colocated sync: every engine copies the weights out of the opened buffers (the learner
        filled them just before). Returns the slowest engine's seconds."""
        self._version += 1
        return max(ray.get([w.load_shared.remote(self._version) for w in self.workers]))

    def receive_weights(self) -> list:
        """Separate sync: every engine starts receiving the broadcast learner rank 0 sends at the
        same time (cispo.handover); returns the engines' Ray references (seconds each)."""
        self._version += 1
        return [w.receive_weights.remote(self._version) for w in self.workers]

    def join_weight_group(self, backend: str, addr: str, port: int, plan: list) -> list:
        """Engine k joins learner rank 0's weight group as rank k + 1; Ray references to wait on
        (together with the learner's own join: the group forms when all have called)."""
        world = len(self.workers) + 1
        return [w.join_weight_group.remote(backend, addr, port, k + 1, world, plan)
                for k, w in enumerate(self.workers)]

    def sleep(self) -> float:
        """Engines release their cache memory (colocated, while the learner trains)."""
        return max(ray.get([w.sleep.remote() for w in self.workers]))

    def wake(self) -> float:
        return max(ray.get([w.wake.remote() for w in self.workers]))

    def generate(self, prompt_ids: list[list[int]], seed: int, tasks: list[dict] | None = None) -> list[Sample]:
        """G samples per prompt; result grouped by prompt, in prompt order. With an environment
        (`env`), G multi-turn episodes per prompt; `tasks` are the prompts' data rows."""
        per = -(-len(prompt_ids) // len(self.workers))  # contiguous chunks: a group stays on one worker
        jobs = {}
        for k, w in enumerate(self.workers):
            chunk = prompt_ids[k * per:(k + 1) * per]
            if chunk:
                params = self._params(seed)  # per-sample streams: (seed, prompt, sample)
                task = None if self.env is None else (tasks or [{}] * len(prompt_ids))[k * per:(k + 1) * per]
                jobs[k] = (chunk, k * per, params, self._call(w, chunk, task, params, k * per), task)
        out = {k: self._collect(k, *job) for k, job in jobs.items()}
        return [s for k in sorted(out) for s in out[k]]

    def _call(self, w, chunk: list[list[int]], tasks: list[dict] | None, params: SamplingParams, first: int):
        if tasks is None:
            return w.generate.remote(chunk, self.cfg.group_size, params, first, self._version)
        return w.generate_episodes.remote(chunk, tasks, self.cfg.group_size, params, first,
                                          self._version, self.env)

    def _collect(self, k: int, chunk: list[list[int]], first: int, params: SamplingParams,
                 ref, tasks: list[dict] | None = None) -> list[Sample]:
        """Worker k's samples; if it crashed (or came back restarted, with stale weights), wait
        for Ray's restart, re-sync it and resend the same chunk with the same seed."""
        counted = False
        deadline = time.monotonic() + RESTART_TIMEOUT_S
        while True:
            try:
                if ref is None:
                    w = self.workers[k]
                    if self.resync_worker is not None:
                        self.resync_worker(k)
                    else:
                        ray.get(w.load_weights.remote(self._weights, self._version))
                    ref = self._call(w, chunk, tasks, params, first)
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
        for pg in self.placement_groups:
            ray.util.remove_placement_group(pg)


def env_spec(env: Any) -> dict | None:
    """What every worker needs to run episodes, as plain values, from the `env` config group
    (None when env.name is empty: single-turn). Users' files travel as source text."""
    if env is None or not env.name:
        return None
    from environments.registry import get_environment, load_modules, read_modules

    modules = read_modules(list(env.modules))
    load_modules(modules)
    get_environment(env.name)  # an unknown name fails here, before any worker starts
    limits = {k: env[k] for k in ("max_turns", "max_total_tokens", "episode_timeout_s",
                                  "step_timeout_s", "max_observation_tokens")}
    return {"name": env.name, "options": OmegaConf.to_container(env.options, resolve=True)
            if OmegaConf.is_config(env.options) else dict(env.options),
            "modules": [list(m) for m in modules], "limits": limits}


def engine_options_from(cfg: Any, parallel: Any) -> dict:
    """The engine's own settings from `rollout.*` and the engine keys of `parallel.*` (what each
    engine accepts differs)."""
    tensor_parallel, pipeline_parallel = parallel.rollout_tensor_parallel, parallel.rollout_pipeline_parallel
    if cfg.engine in ("hf", "graph") and tensor_parallel * pipeline_parallel != 1:
        raise ValueError(f"rollout.engine={cfg.engine} runs on one device per engine: set "
                         "parallel.rollout_tensor_parallel=1 and parallel.rollout_pipeline_parallel=1 "
                         "(model parallel engines need rollout.engine=vllm)")
    if cfg.engine == "hf":
        return {"max_prompts_per_batch": cfg.max_prompts_per_batch, "record_routing": cfg.routing_replay}
    if cfg.engine == "graph":
        share = -(-cfg.prompts_per_step * cfg.group_size // max(cfg.num_workers, 1))
        return {"max_slots": parallel.rollout_concurrency or share,
                "prefill_tokens": parallel.rollout_batched_tokens,
                "gpu_memory_fraction": cfg.gpu_memory_fraction, "cuda_graphs": cfg.cuda_graphs,
                "record_routing": cfg.routing_replay, "max_new_tokens": cfg.max_new_tokens}
    if cfg.routing_replay:
        raise ValueError(f"rollout.routing_replay needs rollout.engine=hf or graph (got {cfg.engine!r})")
    if cfg.engine == "vllm":
        opts = {"tensor_parallel_size": tensor_parallel, "pipeline_parallel_size": pipeline_parallel,
                "max_num_batched_tokens": parallel.rollout_batched_tokens}
        if parallel.rollout_concurrency:
            opts["max_num_seqs"] = parallel.rollout_concurrency
        return {**opts, **cfg.vllm}
    return {}


def placement_groups(cfg: Any, devices: int = 1) -> list:
    """One placement group per engine: `devices` (tensor x pipeline parallel) bundles of
    {GPU: num_gpus_per_worker, CPU: num_cpus_per_worker}, packed (a tensor-parallel engine's GPUs
    talk over NVLink; STRICT_PACK for one device, PACK beyond, since an engine may span nodes).
    `rollout.placement_groups`: auto (with GPUs), on, off. Waits until Ray reserved them."""
    from ray.util.placement_group import placement_group

    mode = cfg.placement_groups
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"rollout.placement_groups must be auto, on or off, got {mode!r}")
    if mode == "off" or (mode == "auto" and cfg.num_gpus_per_worker <= 0):
        return []
    bundle = {"CPU": cfg.num_cpus_per_worker}
    if cfg.num_gpus_per_worker > 0:
        bundle["GPU"] = cfg.num_gpus_per_worker
    strategy = "STRICT_PACK" if devices == 1 else "PACK"
    groups = [placement_group([dict(bundle) for _ in range(devices)], strategy=strategy)
              for _ in range(cfg.num_workers)]
    ready = [g.ready() for g in groups]
    done, _ = ray.wait(ready, num_returns=len(ready), timeout=RESTART_TIMEOUT_S)
    if len(done) < len(ready):
        for g in groups:
            ray.util.remove_placement_group(g)
        raise RuntimeError(f"Ray could not reserve {cfg.num_workers} engine placement groups of "
                           f"{devices} x {bundle} within {RESTART_TIMEOUT_S} s: the "
                           "cluster lacks these resources (lower rollout.num_workers or the per-worker needs)")
    return groups


def _in_group(groups: list, k: int, devices: int) -> dict:
    """Actor options placing worker k in bundle 0 of its group. A tensor-parallel engine's own
    processes (vLLM's Ray executor) land in the group's other bundles: child tasks are captured."""
    if not groups:
        return {}
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    strategy = PlacementGroupSchedulingStrategy(groups[k], placement_group_bundle_index=0,
                                                placement_group_capture_child_tasks=True)
    opts: dict = {"scheduling_strategy": strategy}
    if devices > 1:
        opts["num_gpus"] = 0  # the engine's model-parallel workers hold the group's GPUs
    return opts
