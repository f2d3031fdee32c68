"""Every shipped experiment passes the start-up checks, and `plan=true` plans the layout the
learner and the engines are built with (issue 14, item 1: the layout is set in one place)."""

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_dir

import cispo.learner as learner_mod
from cispo.config_check import resource_problems, value_problems
from cispo.learner import LearnerGroup, deepspeed_config
from cispo.planner import build_plan
from rollout.manager import engine_options_from

ROOT = Path(__file__).resolve().parent.parent
EXPS = sorted(p.stem for p in (ROOT / "conf" / "exp").glob("*.yaml"))


def config(*overrides: str):
    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        return compose("config", overrides=list(overrides))


def test_the_experiments_are_all_here():
    assert {"tiny", "small_gpu", "ablation", "m1_40k", "m1_80k"} <= set(EXPS)


@pytest.mark.parametrize("exp", EXPS)
def test_experiment_passes_the_start_up_checks_and_plans(exp):
    from cispo.train import algorithm_modules

    cfg = config(f"+exp={exp}")  # composing checks every key against the schema
    assert value_problems(cfg) == []
    assert algorithm_modules(cfg.algorithm) == []  # its loss and advantage are registered
    assert build_plan(cfg)["fits"]


class _Worker:
    """Stands in for the LearnerWorker actor class: records what LearnerGroup starts each rank
    with (the constructor arguments), so the layout is read without Ray or DeepSpeed."""

    started: list[tuple] = []

    def __init__(self, opts):
        self.opts = opts
        self.ready = SimpleNamespace(remote=lambda: None)

    @classmethod
    def options(cls, **opts):
        return cls(opts)

    def remote(self, *args):
        _Worker.started.append(args)
        return self


@pytest.mark.parametrize("exp", EXPS)
def test_plan_is_the_layout_the_learner_and_engines_are_built_with(exp, monkeypatch):
    cfg = config(f"+exp={exp}")
    plan = build_plan(cfg)
    _Worker.started = []
    monkeypatch.setattr(learner_mod, "LearnerWorker", _Worker)
    monkeypatch.setattr(learner_mod.ray, "get", lambda refs: refs)
    per_minibatch = cfg.rollout.prompts_per_step * cfg.rollout.group_size // cfg.algorithm.num_minibatches
    group = LearnerGroup(cfg.learner, cfg.parallel, cfg.model, "/model", per_minibatch, 1.0)
    ranks = _Worker.started
    assert [a[0] for a in ranks] == list(range(cfg.learner.num_workers))
    _, world, _, _, wcfg, n_micro, _ = ranks[0]  # what every rank builds its engine from
    ds = deepspeed_config(wcfg, n_micro, world)
    lr = plan["learner"]
    assert lr["ranks"] == world
    assert lr["expert_parallel"] == ds.get("expert_parallel", {}).get("autoep_size", 1)
    assert lr["sequence_parallel"] == wcfg["sequence_parallel"] == group.sp
    assert lr["micro_batch_tokens"] == wcfg["micro_batch_tokens"]
    shards = group._shards(list(range(4 * world)))  # the items each rank is handed
    assert len({tuple(s) for s in shards}) == lr["data_parallel"]
    assert all(shards[r] == shards[r - r % group.sp] for r in range(world))  # SP groups share items
    ro = plan["rollout"]
    if cfg.rollout.engine == "vllm":
        opts = engine_options_from(cfg.rollout, cfg.parallel)
        assert (opts["tensor_parallel_size"], opts["pipeline_parallel_size"]) == \
            (ro["tensor_parallel"], ro["pipeline_parallel"])
        assert opts.get("max_num_seqs", ro["concurrency_per_engine"]) == ro["concurrency_per_engine"]
    else:
        assert ro["tensor_parallel"] * ro["pipeline_parallel"] == 1


@pytest.mark.parametrize("exp", ["m1_80k", "m1_40k"])
def test_m1_experiments_need_only_the_cluster(exp):
    cfg = config(f"+exp={exp}")
    assert value_problems(cfg) == []
    [msg] = resource_problems(cfg, 0, "this machine (local Ray)")
    assert "needs 512 GPUs" in msg and "ray.address=auto" in msg
    assert resource_problems(cfg, 512, "the Ray cluster") == []


def test_m1_80k_command_stops_where_it_needs_the_cluster(tmp_path):
    r = subprocess.run([sys.executable, "-m", "cispo.train", "+exp=m1_80k", f"run_dir={tmp_path}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith("resources: this run needs 512 GPUs")
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "base_model").exists()  # nothing was downloaded or built


def test_a_joined_cluster_without_the_gpus_is_one_message(ray_local, monkeypatch):
    import cispo.train as train

    cfg = config("+exp=small_gpu", "ray.address=auto")  # asks for 0.5 + 0.5 GPU; this Ray has none
    monkeypatch.setattr(train, "NODES_WAIT_S", 0.0)  # no nodes are coming
    with pytest.raises(SystemExit, match=r"resources: this run needs 1 GPUs .*the Ray cluster has 0: add GPU nodes"):
        train.start_ray(cfg)
