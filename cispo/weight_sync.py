"""Learner → generation-engine weight sync, bucket by bucket.

The learner's parameters are cut into buckets of about `bucket_mb` (consecutive parameters of
one dtype; a parameter larger than a bucket is a bucket of its own). Under ZeRO-3 each bucket's
parameters are gathered together (`deepspeed.zero.GatheredParameters` over that bucket only), so
a rank never holds more than one bucket of full weights at a time, never the whole model. All
learner ranks iterate the buckets together (the gathers are collectives); rank 0 ships them:

- CPU / Ray: each bucket is copied to CPU and put in the Ray object store (`to_object_store`);
  every generation worker reads the same copies.
- GPU, engines on GPUs of their own (`parallel.placement=separate`): an NCCL group between
  learner rank 0 (group rank 0) and the engines; each bucket is flattened into one buffer and
  broadcast (`broadcast_send` / `broadcast_recv`). The group is a process group of its own
  (`make_group`: a TCPStore + ProcessGroupNCCL), beside the learner's DeepSpeed group, so engines
  never join the training collectives. On CPU the same code runs over gloo (that is how it is
  tested here).
- GPU, engines on the learner's GPUs (`parallel.placement=colocated`): `SharedBuckets`. The
  learner rank keeps one flat buffer per bucket on its GPU for the whole run; each engine on that
  GPU opens every buffer once through a CUDA IPC handle (`BucketHandle`, torch's `reduce_tensor`)
  and keeps it. A sync is then the ZeRO-3 gathers + one copy into each buffer on the learner
  side and one device-to-device copy out of it on the engine side: no host memory, no
  serialisation, nothing sent but a Ray call. On CPU the buffers are shared-memory files instead
  (the same code path, testable without a GPU).

Only parameters travel: buffers (e.g. lightning decay rates) are not trained and engines hold
their own. Each sync reports bytes, seconds and GB/s.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta

import torch

Entry = tuple[str, tuple[int, ...], torch.dtype]  # (name, full shape, dtype)


def param_entries(module: torch.nn.Module) -> list[Entry]:
    """(name, full shape, dtype) of every parameter; ZeRO-3 keeps the full shape in `ds_shape`."""
    return [(n, tuple(getattr(p, "ds_shape", p.shape)), p.dtype) for n, p in module.named_parameters()]


def plan_buckets(entries: list[Entry], bucket_bytes: int) -> list[list[Entry]]:
    """Consecutive parameters of one dtype, each bucket up to `bucket_bytes` (a larger
    parameter goes alone). Every parameter lands in exactly one bucket, in order."""
    if bucket_bytes <= 0:
        raise ValueError(f"sync bucket size must be > 0 bytes, got {bucket_bytes}")
    buckets: list[list[Entry]] = []
    size = 0
    for e in entries:
        nbytes = _numel(e[1]) * _itemsize(e[2])
        if not buckets or e[2] != buckets[-1][-1][2] or size + nbytes > bucket_bytes:
            buckets.append([])
            size = 0
        buckets[-1].append(e)
        size += nbytes
    return buckets


def iter_buckets(module: torch.nn.Module, bucket_bytes: int,
                 zero3: bool) -> Iterator[tuple[list[Entry], dict[str, torch.Tensor]]]:
    """Yield (bucket plan, {name: full tensor}) per bucket; every learner rank must iterate it
    to the end together. The tensors are valid only until the next bucket (ZeRO-3 releases
    them), so copy what you keep."""
    named = dict(module.named_parameters())
    for bucket in plan_buckets(param_entries(module), bucket_bytes):
        params = [named[n] for n, _, _ in bucket]
        with _gathered(params, zero3):
            yield bucket, {n: p.data.reshape(shape) for (n, shape, _), p in zip(bucket, params, strict=True)}


@dataclass(frozen=True)
class BucketHandle:
    """How a process on the same machine opens one flat bucket buffer of a learner rank without
    copying it: a CUDA IPC handle (`cuda`: torch's `reduce_tensor` of the buffer, i.e. its rebuild
    function and arguments) or, for CPU buffers, a shared-memory file (`path`). Picklable: it
    travels through Ray once, when the engine opens the buffers."""

    numel: int
    dtype: torch.dtype
    cuda: tuple | None = None
    path: str | None = None

    def open(self) -> torch.Tensor:
        """The buffer itself (a CUDA tensor on the same device, or a mapping of the same file);
        keep it: opening is the expensive part, reading it is a copy."""
        if self.cuda is not None:
            rebuild, args = self.cuda
            return rebuild(*args)
        return torch.from_file(self.path, shared=True, size=self.numel, dtype=self.dtype)


class SharedBuckets:
    """A learner rank's flat bucket buffers for colocated engines (see the module docstring).

    Made once per run from the bucket plan; `fill` gathers (ZeRO-3) and copies the current
    weights in, bucket by bucket; `handles()` lets engines open the same memory. On CUDA the
    buffers live on `device`; on CPU they are files in a private directory under /dev/shm
    (removed by `close`)."""

    def __init__(self, plan: list[list[Entry]], device: torch.device | str, shm_dir: str | None = None):
        self.plan, self.device = plan, torch.device(device)
        self.dir = None
        self.flats: list[torch.Tensor] = []
        if self.device.type != "cuda":
            root = shm_dir or ("/dev/shm" if os.path.isdir("/dev/shm") else None)
            self.dir = tempfile.mkdtemp(prefix="cispo-weights-", dir=root)
        for k, bucket in enumerate(plan):
            numel, dtype = sum(_numel(s) for _, s, _ in bucket), bucket[0][2]
            if self.device.type == "cuda":
                self.flats.append(torch.empty(numel, dtype=dtype, device=self.device))
            else:
                path = os.path.join(self.dir, f"bucket{k:05d}")
                self.flats.append(torch.from_file(path, shared=True, size=numel, dtype=dtype))
        self.nbytes = sum(f.numel() * f.element_size() for f in self.flats)

    def handles(self) -> list[BucketHandle]:
        if self.device.type == "cuda":
            from torch.multiprocessing.reductions import reduce_tensor

            return [BucketHandle(f.numel(), f.dtype, cuda=reduce_tensor(f)) for f in self.flats]
        return [BucketHandle(f.numel(), f.dtype, path=os.path.join(self.dir, f"bucket{k:05d}"))
                for k, f in enumerate(self.flats)]

    def fill(self, module: torch.nn.Module, bucket_bytes: int, zero3: bool, write: bool = True) -> dict[str, float]:
        """Copy the module's current weights into the buffers (all learner ranks call it together
        under ZeRO-3: the gathers are collectives; `write=False` ranks only take part in them).
        Returns when the copies are done, so a reader may start at once."""
        t0 = time.perf_counter()
        for k, (bucket, tensors) in enumerate(iter_buckets(module, bucket_bytes, zero3)):
            if bucket != self.plan[k]:
                raise RuntimeError(f"weight bucket {k} changed since the buffers were made "
                                   f"({bucket[0][0]} ... vs {self.plan[k][0][0]} ...)")
            if write:
                torch.cat([t.reshape(-1) for t in tensors.values()], out=self.flats[k])
        _synchronize(self.device)
        return sync_stats(self.nbytes if write else 0, time.perf_counter() - t0, len(self.plan))

    def close(self) -> None:
        self.flats = []
        if self.dir is not None:
            import shutil

            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


def open_buckets(plan: list[list[Entry]], handles: list[BucketHandle]) -> list[tuple[list[Entry], torch.Tensor]]:
    """Engine side, once per run: (bucket, its opened buffer) pairs to read every sync."""
    if len(plan) != len(handles):
        raise ValueError(f"{len(handles)} bucket handles for a plan of {len(plan)} buckets")
    out = []
    for bucket, h in zip(plan, handles, strict=True):
        flat = h.open()
        if flat.numel() != sum(_numel(s) for _, s, _ in bucket) or flat.dtype != bucket[0][2]:
            raise ValueError(f"bucket buffer of {flat.numel()} {flat.dtype} does not match its plan")
        out.append((bucket, flat))
    return out


def load_buckets(opened: list[tuple[list[Entry], torch.Tensor]],
                 load: Callable[[dict[str, torch.Tensor]], None]) -> dict[str, float]:
    """Engine side, every sync: `load` each bucket's tensors (views of the shared buffer: `load`
    must copy them, as `load_state_dict` does); returns when the copies are done, so the learner
    may overwrite the buffers afterwards."""
    t0, nbytes, device = time.perf_counter(), 0, None
    for bucket, flat in opened:
        load(unflatten(flat, bucket))
        nbytes += flat.numel() * flat.element_size()
        device = flat.device
    if device is not None:
        _synchronize(device)
    return sync_stats(nbytes, time.perf_counter() - t0, len(opened))


def to_object_store(module: torch.nn.Module, bucket_bytes: int, zero3: bool, is_sender: bool,
                    put: Callable) -> tuple[list, dict[str, float]]:
    """CPU path: each bucket copied to CPU and `put` (ray.put) by the sender; (refs, stats)."""
    t0, nbytes, refs = time.perf_counter(), 0, []
    for _, tensors in iter_buckets(module, bucket_bytes, zero3):
        if is_sender:
            cpu = {n: t.detach().to("cpu", copy=True) for n, t in tensors.items()}
            nbytes += sum(t.numel() * t.element_size() for t in cpu.values())
            refs.append(put(cpu))
    return refs, sync_stats(nbytes, time.perf_counter() - t0, len(refs))


def make_group(backend: str, addr: str, port: int, rank: int, world_size: int,
               timeout_s: float = 600.0):
    """A process group of its own (not the default one) between learner rank 0 (rank 0) and
    the engines (ranks 1..): a TCPStore hosted by rank 0 plus a NCCL or gloo group over it."""
    import torch.distributed as dist

    store = dist.TCPStore(addr, port, world_size, is_master=rank == 0,
                          timeout=timedelta(seconds=timeout_s), wait_for_workers=False)
    if backend == "nccl":
        return dist.ProcessGroupNCCL(store, rank, world_size)
    if backend == "gloo":
        return dist.ProcessGroupGloo(store, rank, world_size, timedelta(seconds=timeout_s))
    raise ValueError(f"weight-sync backend must be 'nccl' or 'gloo', got {backend!r}")


def broadcast_send(group, module: torch.nn.Module, bucket_bytes: int, zero3: bool, is_sender: bool,
                   device: torch.device | str) -> tuple[list[list[Entry]], dict[str, float]]:
    """GPU path, learner side: all learner ranks gather bucket by bucket; the sender (learner
    rank 0, rank 0 of `group`) broadcasts each bucket as one flat buffer. Receivers must know
    the plan first: `plan_buckets(param_entries(module), bucket_bytes)` (send it through Ray)."""
    t0, nbytes, plan = time.perf_counter(), 0, []
    for bucket, tensors in iter_buckets(module, bucket_bytes, zero3):
        plan.append(bucket)
        if is_sender:
            flat = torch.cat([t.reshape(-1) for t in tensors.values()]).to(device)
            group.broadcast(flat, 0).wait()
            nbytes += flat.numel() * flat.element_size()
    _synchronize(device)
    return plan, sync_stats(nbytes, time.perf_counter() - t0, len(plan))


def broadcast_recv(group, plan: list[list[Entry]], device: torch.device | str,
                   load: Callable[[dict[str, torch.Tensor]], None]) -> dict[str, float]:
    """GPU path, engine side: receive each bucket of `plan` and `load` it ({name: tensor})."""
    t0, nbytes = time.perf_counter(), 0
    for bucket in plan:
        flat = torch.empty(sum(_numel(s) for _, s, _ in bucket), dtype=bucket[0][2], device=device)
        group.broadcast(flat, 0).wait()
        nbytes += flat.numel() * flat.element_size()
        load(unflatten(flat, bucket))
    _synchronize(device)
    return sync_stats(nbytes, time.perf_counter() - t0, len(plan))


def unflatten(flat: torch.Tensor, bucket: list[Entry]) -> dict[str, torch.Tensor]:
    out, at = {}, 0
    for name, shape, _ in bucket:
        n = _numel(shape)
        out[name] = flat[at:at + n].view(shape)
        at += n
    return out


def sync_stats(nbytes: int, seconds: float, buckets: int) -> dict[str, float]:
    return {"sync/bytes": float(nbytes), "sync/seconds": seconds, "sync/buckets": float(buckets),
            "sync/gb_per_s": nbytes / 1e9 / max(seconds, 1e-9)}


def _gathered(params: list, zero3: bool):
    if not zero3:
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def _synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
