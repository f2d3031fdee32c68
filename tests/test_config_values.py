"""Settings that conflict are refused before any worker starts, with the key to change."""

from pathlib import Path

from omegaconf import OmegaConf

from cispo.config import Config
from cispo.config_check import local_ray_problems, value_problems


def _cfg(**parallel):
    cfg = OmegaConf.structured(Config)
    cfg.data.max_prompt_tokens, cfg.rollout.max_new_tokens = 100, 50
    for k, v in parallel.items():
        cfg.parallel[k] = v
    return cfg


def test_defaults_have_no_problems():
    assert value_problems(OmegaConf.structured(Config)) == []


def test_token_budget_below_the_longest_sequence_names_the_key_and_the_minimum():
    [msg] = value_problems(_cfg(micro_batch_tokens=120))
    assert "parallel.micro_batch_tokens=120" in msg and "at least 150" in msg
    assert value_problems(_cfg(micro_batch_tokens=150)) == []


def test_window_schedule_counts_its_largest_window():
    cfg = _cfg(micro_batch_tokens=150)
    cfg.schedule.windows = [50, 80]
    [msg] = value_problems(cfg)
    assert "at least 180" in msg


def test_sequence_parallel_needs_packing():
    cfg = _cfg(sequence_parallel=2)
    cfg.learner.num_workers = 2
    [msg] = value_problems(cfg)
    assert "parallel.micro_batch_tokens" in msg
    cfg.parallel.micro_batch_tokens = 256
    assert value_problems(cfg) == []


def test_routing_replay_needs_padded_rows():
    cfg = _cfg(micro_batch_tokens=256)
    cfg.rollout.routing_replay = True
    [msg] = value_problems(cfg)
    assert "parallel.micro_batch_tokens=0" in msg


def test_train_refuses_before_starting_anything(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "cispo.train", "+exp=tiny", f"run_dir={tmp_path}",
                        "parallel.micro_batch_tokens=10"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "parallel.micro_batch_tokens=10 is smaller than the longest sequence" in r.stderr
    assert not (tmp_path / "base_model").exists()  # nothing was built


def test_a_layout_the_ranks_cannot_hold_is_refused():
    cfg = _cfg(expert_parallel=3, sequence_parallel=0)
    cfg.learner.num_workers = 4
    problems = value_problems(cfg)
    assert "parallel.expert_parallel=3 must divide learner.num_workers=4" in problems
    assert "parallel.sequence_parallel=0: use 1 for off" in problems
    cfg = _cfg(placement="shared")
    assert any("parallel.placement='shared'" in p for p in value_problems(cfg))


def test_head_settings_need_the_fp32_head():
    cfg = _cfg(head_chunk_tokens=1024)
    cfg.model.fp32_lm_head = False
    [msg] = value_problems(cfg)
    assert "parallel.head_chunk_tokens=1024" in msg and "model.fp32_lm_head=true" in msg


def test_head_precision_is_one_of_the_known_paths():
    cfg = _cfg()
    cfg.learner.head_precision = "tf32"
    [msg] = value_problems(cfg)
    assert "learner.head_precision='tf32'" in msg and "split_bf16" in msg
    cfg.learner.head_precision = "ieee"
    cfg.model.fp32_lm_head = False  # the reference path's name is fine without the FP32 head
    assert value_problems(cfg) == []


def test_a_declared_key_is_not_called_unknown(tmp_path):
    """Setting an empty dict (a dict of free keys) works without Hydra's `+`, as the docs write it."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "cispo.train", "+exp=tiny", f"run_dir={tmp_path}",
                        "algorithm.loss_options={trust_region_mask: true}", "--cfg", "job"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "Unknown config key" not in r.stderr, r.stderr
    assert "trust_region_mask: true" in r.stdout


# --- issue 21: every value checked up front, all problems in one message, exit 2 -------------

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str, timeout: int = 120):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-X", "importtime", "-m", "cispo.train", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_every_numeric_key_has_a_range_and_every_rule_a_key():
    from cispo.config_check import _declared
    from cispo.config_rules import CHECKED_ELSEWHERE, RULES, numeric_keys

    missing = set(numeric_keys(Config)) - set(RULES) - set(CHECKED_ELSEWHERE)
    assert not missing, f"numeric keys without an allowed range in cispo/config_rules.py: {missing}"
    assert [k for k in [*RULES, *CHECKED_ELSEWHERE] if not _declared(k)] == []


def test_values_out_of_range_are_one_message_exit_2_before_torch_is_imported(tmp_path):
    r = _run("trainer.total_steps=-1", "rollout.group_size=0", "model.dtype=fp16", "+trainer.foo=1",
             "rollout.top_p=1.5", f"run_dir={tmp_path}")
    assert r.returncode == 2
    err = r.stderr
    assert "config: 5 problems (nothing was started):" in err
    for text in ("trainer.total_steps=-1: must be >= 1", "rollout.group_size=0: must be >= 1",
                 "model.dtype='fp16': use one of float32, bfloat16", "Unknown config key 'trainer.foo'",
                 "rollout.top_p=1.5: must be <= 1"):
        assert text in err, text
    assert "Traceback" not in err and not (tmp_path / "base_model").exists()
    # checked before the heavy imports: a typo costs about a second, not torch's and Ray's start
    assert not [ln for ln in err.splitlines() if ln.startswith("import time:") and "| torch" in ln]


def test_a_config_group_without_its_plus_gets_the_hint(tmp_path):
    r = _run("exp=tiny", f"run_dir={tmp_path}")
    assert r.returncode == 2 and "select one with +exp=tiny" in r.stderr


def test_plus_keys_only_under_dicts_that_take_free_keys():
    from cispo.config_check import check_or_exit

    conf = ROOT / "conf"
    argv = check_or_exit(conf, "config", ["+exp=tiny", "+reward.options.math.timeout_s=3",
                                          "reward.options.code.mode=all",
                                          "algorithm.loss_options={trust_region_mask: true}"])
    assert argv == ["+exp=tiny", "++reward.options.math.timeout_s=3", "++reward.options.code.mode=all",
                    "++algorithm.loss_options={trust_region_mask: true}"]
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(conf), version_base=None):
        cfg = compose("config", overrides=argv)
    assert cfg.reward.options.code.mode == "all" and cfg.reward.options.math.timeout_s == 3
    assert cfg.algorithm.loss_options.trust_region_mask is True
    import pytest

    for bad in ("+trainer.foo=1", "++learner.lrr=1"):
        with pytest.raises(SystemExit) as e:
            check_or_exit(conf, "config", ["+exp=tiny", bad])
        assert e.value.code == 2


def test_a_type_error_names_its_override(capsys):
    import pytest

    from cispo.config_check import check_or_exit

    with pytest.raises(SystemExit):
        check_or_exit(ROOT / "conf", "config", ["+exp=tiny", "trainer.total_steps=abc", "learner.lr=1e-5"])
    err = capsys.readouterr().err
    assert "config: 1 problem" in err and "trainer.total_steps=abc:" in err and "learner.lr" not in err


def test_group_size_one_with_group_advantages():
    cfg = _cfg()
    cfg.rollout.group_size = 1
    [msg] = value_problems(cfg)
    assert "rollout.group_size=1" in msg and "use >= 2" in msg


def test_every_experiment_passes_the_rules():
    from hydra import compose, initialize_config_dir

    from cispo.config_rules import rule_problems

    for exp in sorted(p.stem for p in (ROOT / "conf" / "exp").glob("*.yaml")):
        with initialize_config_dir(str(ROOT / "conf"), version_base=None):
            assert rule_problems(compose("config", overrides=[f"+exp={exp}"])) == [], exp


def test_help_says_how_to_select_an_experiment():
    r = _run("--help")
    assert r.returncode == 0 and "Select one with +exp=NAME" in r.stdout


def test_a_sweep_is_checked_key_by_key_and_its_values_per_job():
    from cispo.config_check import check_or_exit

    argv = ["+exp=tiny", "trainer.total_steps=10,20", "-m"]
    assert check_or_exit(ROOT / "conf", "config", argv) == argv


def test_sandbox_placement_is_checked():
    cfg = OmegaConf.structured(Config)
    cfg.sandbox.placement = "remote"
    [msg] = value_problems(cfg)
    assert "sandbox.placement='remote'" in msg and "actors" in msg
    cfg.sandbox.placement = "actors"
    assert value_problems(cfg) == []
    # scorer actors need a cluster with sandbox nodes to join: a local Ray has none
    [msg] = local_ray_problems(cfg)
    assert "ray.address" in msg and "sandbox.placement=local" in msg
    cfg.ray.address = "auto"
    assert local_ray_problems(cfg) == []


# --- the GPU branches' keys (issues 15, 16, 22): rules that follow the code's own lists ---------

def test_choice_rules_follow_the_codes_lists():
    """A rule's choices are the values the code accepts: a new head precision, transport or
    placement that the rules do not list would be refused at start-up."""
    import rollout.engines as engines
    from cispo.config_rules import RULES
    from cispo.models.fp32_head import HEAD_PRECISIONS
    from cispo.models.speed import GROUPED_MM_BACKENDS
    from cispo.placement import PLACEMENTS, TRANSPORTS

    assert RULES["learner.head_precision"].values == HEAD_PRECISIONS
    assert set(RULES["learner.grouped_mm_backend"].values) == set(GROUPED_MM_BACKENDS)
    assert RULES["parallel.placement"].values == PLACEMENTS
    assert RULES["rollout.sync_transport"].values == TRANSPORTS
    engines.discover()  # what importing every engine module registers, against the source scan
    if not engines._import_errors:
        assert engines.declared_names() == set(engines.ENGINES)
    assert {"hf", "graph", "vllm"} <= engines.declared_names()


def test_gpu_keys_are_checked_up_front():
    cfg = _cfg()
    cfg.rollout.engine, cfg.rollout.gpu_memory_fraction = "grpah", 0.0
    cfg.learner.checkpoint_layers, cfg.rollout.sync_transport = -2, "nccl"
    cfg.logging.profile_learn_step = -1
    problems = value_problems(cfg)
    assert len(problems) == 5, problems
    for text in ("rollout.engine='grpah': use one of graph, hf, vllm", "rollout.gpu_memory_fraction=0.0: must be > 0",
                 "learner.checkpoint_layers=-2: must be >= -1", "rollout.sync_transport='nccl': use one of",
                 "logging.profile_learn_step=-1: must be >= 0"):
        assert any(text in p for p in problems), text
    cfg = _cfg()
    cfg.learner.offload_while_generating = True  # separate placement: nothing to make room for
    [msg] = value_problems(cfg)
    assert "learner.offload_while_generating=true" in msg and "parallel.placement=colocated" in msg
    cfg.parallel.placement = "colocated"
    assert value_problems(cfg) == []


def test_multi_turn_episodes_need_an_engine_that_continues_contexts():
    cfg = _cfg()
    cfg.env.name, cfg.rollout.engine = "calc", "graph"
    [msg] = value_problems(cfg)
    assert "env.name='calc'" in msg and "rollout.engine=hf" in msg
    cfg.rollout.engine = "hf"
    assert value_problems(cfg) == []
