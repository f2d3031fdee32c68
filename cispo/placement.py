"""Where the generation engines sit relative to the learner, and how weights reach them.

`parallel.placement`:
- `colocated`: every engine shares a GPU with a learner rank (engine k with rank k mod W). One
  Ray placement group holds a bundle per learner rank; the rank and its engines are scheduled
  into that bundle, so they land on the same GPU (and node) whatever the cluster. The GPU takes
  turns (cispo.colocate): engines generate, then sleep while the learner trains. Weights go by
  CUDA IPC (`ipc`: cispo.weight_sync.SharedBuckets).
- `separate`: engines on GPUs of their own (one placement group per engine, as before, and one
  for the learner ranks). Weights go by NCCL broadcast from learner rank 0 (`broadcast`).

`rollout.sync_transport` (auto | object_store | ipc | broadcast) picks the hand-over; `auto`
means: ipc for colocated GPUs, broadcast for separate GPUs, the Ray object store on CPU. On CPU
`ipc` uses shared-memory files and `broadcast` gloo: the same code paths, runnable in tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PLACEMENTS = ("colocated", "separate")
TRANSPORTS = ("auto", "object_store", "ipc", "broadcast")


def choose_transport(placement: str, on_gpu: bool, requested: str = "auto") -> str:
    """The weight hand-over for a placement (see the module docstring)."""
    if placement not in PLACEMENTS:
        raise ValueError(f"parallel.placement must be one of {PLACEMENTS}, got {placement!r}")
    if requested not in TRANSPORTS:
        raise ValueError(f"rollout.sync_transport must be one of {TRANSPORTS}, got {requested!r}")
    if requested == "auto":
        if not on_gpu:
            return "object_store"
        return "ipc" if placement == "colocated" else "broadcast"
    if on_gpu and requested == "ipc" and placement == "separate":
        raise ValueError("rollout.sync_transport=ipc shares the learner's GPU memory: it needs "
                         "parallel.placement=colocated (engines on the learner's GPUs)")
    if on_gpu and requested == "broadcast" and placement == "colocated":
        raise ValueError("rollout.sync_transport=broadcast puts learner rank 0 and the engines in "
                         "one NCCL group, which cannot hold two ranks on one GPU: with "
                         "parallel.placement=colocated use ipc (or object_store)")
    return requested


@dataclass
class Layout:
    """Which Ray bundle each learner rank and engine goes to (colocated), or none (separate)."""

    placement: str
    bundles: list[dict[str, float]] = field(default_factory=list)  # colocated: one per learner rank
    engine_rank: list[int] = field(default_factory=list)  # colocated: the learner rank engine k shares
    learner_bundles: list[dict[str, float]] = field(default_factory=list)  # separate, with GPUs


def plan_layout(placement: str, learners: int, learner_cpus: float, learner_gpus: float,
                engines: int, engine_cpus: float, engine_gpus: float, engine_devices: int = 1) -> Layout:
    """The bundles of a placement, without Ray (pure: tested on its own)."""
    if placement not in PLACEMENTS:
        raise ValueError(f"parallel.placement must be one of {PLACEMENTS}, got {placement!r}")
    if placement == "separate":
        if learner_gpus <= 0:
            return Layout(placement)  # CPU learner: Ray places the ranks freely, as before
        return Layout(placement, learner_bundles=[_bundle(learner_cpus, learner_gpus)
                                                  for _ in range(learners)])
    if engine_devices != 1:
        raise ValueError("parallel.placement=colocated runs each engine on one GPU beside a learner "
                         "rank; tensor/pipeline-parallel engines need parallel.placement=separate")
    rank = [k % learners for k in range(engines)]
    bundles = []
    for r in range(learners):
        n = rank.count(r)
        gpus = learner_gpus + n * engine_gpus
        if (learner_gpus > 0 or engine_gpus > 0) and gpus > 1.0 + 1e-9:
            raise ValueError(
                f"parallel.placement=colocated puts learner rank {r} and {n} engine(s) on one GPU, "
                f"but they ask for {learner_gpus} + {n} x {engine_gpus} = {gpus:g} GPUs: lower "
                "learner.num_gpus_per_worker / rollout.num_gpus_per_worker (e.g. 0.5 each)")
        bundles.append(_bundle(learner_cpus + n * engine_cpus, gpus))
    return Layout(placement, bundles, rank)


def _bundle(cpus: float, gpus: float) -> dict[str, float]:
    b = {"CPU": float(cpus)}
    if gpus > 0:
        b["GPU"] = float(gpus)
    return b


@dataclass
class Reserved:
    """Ray options per learner rank and per engine (None: the rollout manager places engines
    itself, one placement group each), and the groups to remove at the end."""

    learner: list[dict[str, Any]] | None
    engines: list[dict[str, Any]] | None
    groups: list = field(default_factory=list)


def reserve(layout: Layout, timeout_s: float = 120.0) -> Reserved:
    """Create the layout's placement groups and wait until Ray has reserved them."""
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    specs = layout.bundles or layout.learner_bundles
    if not specs:
        return Reserved(None, None)
    # colocated: each bundle one GPU of one node; the ranks' bundles may spread over nodes
    group = placement_group([dict(b) for b in specs], strategy="PACK")
    ready, _ = ray.wait([group.ready()], timeout=timeout_s)
    if not ready:
        ray.util.remove_placement_group(group)
        raise RuntimeError(f"Ray could not reserve the {layout.placement} placement {specs} within "
                           f"{timeout_s:.0f} s: the cluster lacks these resources")

    def at(i: int) -> dict[str, Any]:
        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(
            group, placement_group_bundle_index=i, placement_group_capture_child_tasks=True)}

    learners = [at(i) for i in range(len(specs))]
    engines = [at(r) for r in layout.engine_rank] if layout.placement == "colocated" else None
    return Reserved(learners, engines, [group])


def release(reserved: Reserved) -> None:
    import ray

    for g in reserved.groups:
        ray.util.remove_placement_group(g)
