"""The weight hand-over from the learner group to the engines, one class per transport
(`cispo.placement.choose_transport`): `start()` once after both sides are up, `sync()` after
every update (metrics: `sync/bytes`, `sync/seconds` = the learner's side, `sync/load_s` = the
slowest engine's side, `sync/buckets`, `sync/gb_per_s`), and `resync_worker(k)` for an engine
that Ray restarted after a crash (it comes back with the initial weights)."""

from __future__ import annotations

import logging
from typing import Any

import ray

log = logging.getLogger(__name__)


class ObjectStoreHandover:
    """CPU: each bucket copied to host memory and put in the Ray object store once; every engine
    reads the same copies (rollout.manager keeps the refs for restarted engines)."""

    name = "object_store"

    def __init__(self, learner: Any, rollout: Any, bucket_mb: float):
        self.learner, self.rollout, self.bucket_mb = learner, rollout, bucket_mb

    def start(self) -> None:
        pass

    def sync(self) -> dict[str, float]:
        refs, stats = self.learner.weight_buckets(self.bucket_mb)
        return {**stats, "sync/load_s": self.rollout.sync_weights(refs)}


class SharedBucketHandover:
    """Colocated: learner rank r keeps flat bucket buffers on its GPU, engine k (on rank
    k mod W's GPU) opened them once by CUDA IPC handle; a sync refills and copies out."""

    name = "ipc"

    def __init__(self, learner: Any, rollout: Any, bucket_mb: float, engine_rank: list[int]):
        self.learner, self.rollout, self.bucket_mb = learner, rollout, bucket_mb
        self.engine_rank = engine_rank

    def start(self) -> None:
        opened = self.learner.open_shared_buckets(self.bucket_mb, set(self.engine_rank))
        self.plan = next(o[0] for o in opened if o is not None)
        self.handles = [opened[r][1] for r in self.engine_rank]
        self.rollout.open_shared(self.plan, self.handles)
        self.rollout.resync_worker = self.resync_worker
        log.info("weight sync: %d bucket buffers opened by CUDA IPC / shared memory", len(self.plan))

    def sync(self) -> dict[str, float]:
        stats = self.learner.fill_shared_buckets()
        return {**stats, "sync/load_s": self.rollout.load_shared()}

    def resync_worker(self, k: int) -> None:
        w = self.rollout.workers[k]
        ray.get(w.open_shared.remote(self.plan, self.handles[k]))
        ray.get(w.load_shared.remote(self.rollout.version))


class BroadcastHandover:
    """Separate: learner rank 0 and the engines form a weight group of their own (NCCL on GPU,
    gloo on CPU); every sync, rank 0 broadcasts bucket by bucket while the engines receive.
    An engine restarted after a crash gets the weights through the object store at once, and
    the group is formed anew (with the new process) before the next broadcast."""

    name = "broadcast"

    def __init__(self, learner: Any, rollout: Any, bucket_mb: float, backend: str):
        self.learner, self.rollout, self.bucket_mb, self.backend = learner, rollout, bucket_mb, backend
        self.broken = False

    def start(self) -> None:
        self.plan = self.learner.weight_plan(self.bucket_mb)
        self._form()
        self.rollout.resync_worker = self.resync_worker

    def _form(self) -> None:
        addr, port = self.learner.weight_group_address()
        world = len(self.rollout.workers) + 1
        ray.get(self.learner.join_weight_group(self.backend, addr, port, world)
                + self.rollout.join_weight_group(self.backend, addr, port, self.plan))
        self.broken = False
        log.info("weight sync: %s group of learner rank 0 + %d engines at %s:%d", self.backend,
                 world - 1, addr, port)

    def sync(self) -> dict[str, float]:
        if self.broken:
            self._form()
        recv = self.rollout.receive_weights()
        sent = self.learner.broadcast_weights(self.bucket_mb)
        _, stats = ray.get(sent)[0]
        return {**stats, "sync/load_s": max(ray.get(recv))}

    def resync_worker(self, k: int) -> None:
        refs, _ = self.learner.weight_buckets(self.bucket_mb)
        ray.get(self.rollout.workers[k].load_weights.remote(refs, self.rollout.version))
        self.broken = True


def make_handover(transport: str, learner: Any, rollout: Any, bucket_mb: float, on_gpu: bool,
                  engine_rank: list[int] | None = None):
    if transport == "object_store":
        return ObjectStoreHandover(learner, rollout, bucket_mb)
    if transport == "ipc":
        return SharedBucketHandover(learner, rollout, bucket_mb,
                                    engine_rank or [0] * len(rollout.workers))
    if transport == "broadcast":
        return BroadcastHandover(learner, rollout, bucket_mb, "nccl" if on_gpu else "gloo")
    raise ValueError(f"unknown weight transport {transport!r}")
