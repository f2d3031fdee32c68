"""Placement choice (cispo.placement) and the colocated GPU's turn-taking (cispo.colocate)."""

import subprocess
import sys
import textwrap

import pytest

from cispo.colocate import GpuShare
from cispo.placement import choose_transport, plan_layout


@pytest.mark.parametrize("placement,on_gpu,requested,expected", [
    ("colocated", True, "auto", "ipc"),
    ("separate", True, "auto", "broadcast"),
    ("colocated", False, "auto", "object_store"),
    ("separate", False, "auto", "object_store"),
    ("colocated", False, "ipc", "ipc"),  # CPU: shared-memory files
    ("separate", False, "broadcast", "broadcast"),  # CPU: gloo
    ("colocated", False, "broadcast", "broadcast"),  # CPU: gloo has no one-rank-per-GPU rule
    ("separate", True, "object_store", "object_store"),
])
def test_transport_follows_placement(placement, on_gpu, requested, expected):
    assert choose_transport(placement, on_gpu, requested) == expected


@pytest.mark.parametrize("placement,requested,match", [
    ("separate", "ipc", "needs parallel.placement=colocated"),
    ("colocated", "broadcast", "cannot hold two ranks on one GPU"),
    ("nearby", "auto", "parallel.placement must be one of"),
    ("colocated", "carrier_pigeon", "rollout.sync_transport must be one of"),
])
def test_transport_refuses_what_cannot_work(placement, requested, match):
    with pytest.raises(ValueError, match=match):
        choose_transport(placement, True, requested)


def test_colocated_layout_one_bundle_per_learner_rank_with_its_engines():
    lay = plan_layout("colocated", learners=2, learner_cpus=1, learner_gpus=0.5, engines=4,
                      engine_cpus=2, engine_gpus=0.25)
    assert lay.engine_rank == [0, 1, 0, 1]
    assert lay.bundles == [{"CPU": 5.0, "GPU": 1.0}, {"CPU": 5.0, "GPU": 1.0}]
    one = plan_layout("colocated", 1, 1, 0.5, 1, 1, 0.5)  # small_gpu: one GPU, halves
    assert one.bundles == [{"CPU": 2.0, "GPU": 1.0}] and one.engine_rank == [0]
    cpu = plan_layout("colocated", 1, 1, 0, 2, 1, 0)
    assert cpu.bundles == [{"CPU": 3.0}] and cpu.engine_rank == [0, 0]


def test_separate_layout_reserves_learner_gpus_only_when_there_are_any():
    assert plan_layout("separate", 2, 1, 1, 2, 1, 1).learner_bundles == [{"CPU": 1.0, "GPU": 1.0}] * 2
    lay = plan_layout("separate", 2, 1, 0, 2, 1, 0)
    assert lay.bundles == [] and lay.learner_bundles == [] and lay.engine_rank == []


def test_colocated_layout_refuses_more_than_one_gpu_per_bundle_and_model_parallel_engines():
    with pytest.raises(ValueError, match=r"0.5 \+ 2 x 0.5 = 1.5 GPUs"):
        plan_layout("colocated", 1, 1, 0.5, 2, 1, 0.5)
    with pytest.raises(ValueError, match="tensor/pipeline-parallel engines"):
        plan_layout("colocated", 1, 1, 0.5, 1, 1, 0.5, engine_devices=2)


def test_config_check_reports_placement_problems_before_anything_starts():
    from omegaconf import OmegaConf

    from cispo.config import Config
    from cispo.config_check import value_problems

    cfg = OmegaConf.structured(Config)
    assert value_problems(cfg) == []
    cfg.parallel.placement = "colocated"
    cfg.learner.num_gpus_per_worker = cfg.rollout.num_gpus_per_worker = 1.0
    assert any("1.0 + 2 x 1.0 = 3 GPUs" in p for p in value_problems(cfg))


PROBE = textwrap.dedent('''
    import ray
    from cispo.placement import plan_layout, reserve, release

    ray.init(num_cpus=8, num_gpus=2, include_dashboard=False, log_to_driver=False)

    @ray.remote
    class Probe:
        def gpus(self):
            return ray.get_gpu_ids()

    lay = plan_layout("colocated", 2, 1, 0.5, 4, 1, 0.25)
    where = reserve(lay, timeout_s=60)
    learners = [Probe.options(num_cpus=1, num_gpus=0.5, **o).remote() for o in where.learner]
    engines = [Probe.options(num_cpus=1, num_gpus=0.25, **o).remote() for o in where.engines]
    lg = ray.get([a.gpus.remote() for a in learners])
    eg = ray.get([a.gpus.remote() for a in engines])
    print("LEARNERS", lg, "ENGINES", eg)
    assert len({tuple(g) for g in lg}) == 2, lg                 # the two ranks on different GPUs
    for k, g in enumerate(eg):
        assert g == lg[lay.engine_rank[k]], (k, g, lg)          # engine k on its rank's GPU
    release(where)
    ray.shutdown()
    print("OK")
''')


def test_colocated_placement_puts_each_engine_on_its_learner_ranks_gpu():
    """Through Ray itself, with two logical GPUs (no GPU needed): a Ray of its own, in a child
    process, so the session's CPU-only Ray is left alone."""
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
    assert "OK" in out.stdout, out.stdout[-2000:] + out.stderr[-3000:]


class Recorder:
    """Stands in for LearnerGroup / RolloutManager: records the calls the state machine makes."""

    def __init__(self, calls: list, name: str):
        self.calls, self.name = calls, name

    def __getattr__(self, method):
        return lambda: self.calls.append(f"{self.name}.{method}")


def test_gpu_share_takes_turns_and_only_calls_what_changes():
    calls: list[str] = []
    share = GpuShare(Recorder(calls, "learner"), Recorder(calls, "engines"), active=True, offload=True)
    assert share.phase == "both"  # start-up: everything on the GPU
    share.to_rollout()  # after the first sync
    assert calls == ["learner.offload"] and share.phase == "rollout"
    share.to_rollout()  # idempotent
    assert calls == ["learner.offload"]
    m = share.to_train()
    assert calls[1:] == ["engines.sleep", "learner.reload"] and share.phase == "train"
    assert set(m) == {"colocate/sleep_s", "colocate/reload_s"}
    share.to_train()
    assert len(calls) == 3
    m = share.to_rollout()
    assert calls[3:] == ["learner.offload", "engines.wake"] and share.phase == "rollout"
    assert set(m) == {"colocate/offload_s", "colocate/wake_s"}
    with share.learner_on_gpu():  # a checkpoint in the rollout phase
        assert calls[5:] == ["learner.reload"] and share.learner_resident
    assert calls[6:] == ["learner.offload"] and share.phase == "rollout"


def test_gpu_share_without_offload_keeps_the_learner_and_inactive_does_nothing():
    calls: list[str] = []
    share = GpuShare(Recorder(calls, "learner"), Recorder(calls, "engines"), active=True, offload=False)
    for _ in range(2):
        share.to_train()
        share.to_rollout()
    assert calls == ["engines.sleep", "engines.wake"] * 2
    with share.learner_on_gpu():
        pass
    assert len(calls) == 4
    calls.clear()
    off = GpuShare(Recorder(calls, "learner"), Recorder(calls, "engines"), active=False, offload=True)
    assert off.to_train() == {} and off.to_rollout() == {} and calls == []
    awake = GpuShare(Recorder(calls, "learner"), Recorder(calls, "engines"), active=True, offload=True,
                     sleep=False)
    for _ in range(2):
        awake.to_train()
        awake.to_rollout()
    assert calls == ["learner.offload", "learner.reload", "learner.offload"]  # engines keep theirs
