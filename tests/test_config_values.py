"""Settings that conflict are refused before any worker starts, with the key to change."""

from omegaconf import OmegaConf

from cispo.config import Config
from cispo.config_check import value_problems


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
    assert r.returncode == 1
    assert "config: parallel.micro_batch_tokens=10 is smaller than the longest sequence" in r.stderr
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
    assert "learner.head_precision=tf32" in msg and "split_bf16" in msg
    cfg.learner.head_precision = "ieee"
    cfg.model.fp32_lm_head = False  # the reference path's name is fine without the FP32 head
    assert value_problems(cfg) == []


def test_a_declared_key_is_not_called_unknown(tmp_path):
    """Setting an empty dict's keys needs Hydra's `+`; that error is Hydra's to explain, not
    "unknown key 'algorithm.loss_options'. Did you mean 'algorithm.loss_options'?"."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "cispo.train", "+exp=tiny", f"run_dir={tmp_path}",
                        "algorithm.loss_options={trust_region_mask: true}"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0 and "Unknown config key" not in r.stderr
    assert "+algorithm.loss_options" in r.stderr  # Hydra's hint
