"""`python -m cispo.train` as a user runs it: a short tiny run, and the bad-input paths."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = ["step", "reward/mean", "loss/policy", "is_weight/clip_frac", "is_weight/mean",
            "logprob/train_rollout_pearson", "response/length_mean", "time/step_s"]


def train(*overrides: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cispo.train", "+exp=tiny", *overrides],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "WANDB_MODE": "offline", **(env or {})})


@pytest.mark.docker
def test_tiny_run_end_to_end_with_bad_rows(tmp_path):
    data = tmp_path / "prompts.jsonl"
    with open(data, "w") as f:
        for a in range(3):
            for b in range(3):
                f.write(json.dumps({"prompt": f"{a}+{b}=\\boxed{{", "reference": str(a + b),
                                    "data_source": "arithmetic"}) + "\n")
        f.write(json.dumps({"reference": "3"}) + "\n")             # no prompt
        f.write(json.dumps({"prompt": "1+1=\\boxed{"}) + "\n")     # no reference
    run = tmp_path / "run"
    p = train("trainer.total_steps=3", "rollout.prompts_per_step=4", "rollout.group_size=4",
              f"data.source={data}", f"run_dir={run}", "logging.progress=false")
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [0, 1, 2]
    for r in rows:
        for key in REQUIRED:
            assert key in r, key
        assert r["data/skipped_rows"] == 2  # counted, not fatal
        assert 0.0 <= r["reward/mean"] <= 1.0 and r["reward/errors"] == 0
        assert math.isfinite(r["loss/policy"]) and r["sampling/rounds"] == 1
    assert "done: 3 steps" in p.stdout and "reward/mean" in p.stdout  # the end-of-run table
    assert (run / "checkpoints" / "step_3").is_dir()
    assert list((run / "wandb").glob("offline-run-*")), "W&B offline run missing"
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(run / "final_model")
    assert model.config.model_type == "minimax"


@pytest.mark.docker
def test_dynamic_sampling_step_without_signal_completes(tmp_path):
    """A random model rarely gets a group with unequal rewards: every group is dropped, the
    refills too, and the step must still finish, learn nothing and say so."""
    run = tmp_path / "run"
    p = train("trainer.total_steps=1", "rollout.prompts_per_step=2", "rollout.group_size=2",
              "algorithm.dynamic_sampling=true", "algorithm.max_sampling_rounds=2",
              f"run_dir={run}", "logging.progress=false", "logging.wandb_mode=disabled")
    assert p.returncode == 0, p.stderr[-3000:]
    (r,) = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert r["sampling/rounds"] == 2 and r["sampling/groups_generated"] == 4
    if r["sampling/short_groups"] == 2:
        assert math.isnan(r["loss/policy"]) and r["sampling/dropped_group_frac"] == 1.0
    else:  # a lucky draw kept a group: then it learned from it
        assert math.isfinite(r["loss/policy"])


def test_unknown_config_key_lists_valid_keys():
    p = train("learner.lrr=1e-3", timeout=120)
    assert p.returncode == 2
    assert "Unknown config key 'learner.lrr'" in p.stderr
    assert "Did you mean 'learner.lr'" in p.stderr
    assert "micro_batch_size" in p.stderr and "zero_stage" in p.stderr


def test_no_docker_engine_is_one_clear_message(tmp_path):
    p = train(f"run_dir={tmp_path}", env={"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"},
              timeout=120)
    assert p.returncode == 1
    assert "No Docker engine answers" in p.stderr
    assert "sandbox.backend=process" in p.stderr  # the fallback is named, never chosen silently
    assert "Traceback" not in p.stderr


def test_missing_data_file_is_one_clear_message(tmp_path):
    p = train(f"data.source={tmp_path}/nope.jsonl", f"run_dir={tmp_path}/run",
              "sandbox.backend=process", timeout=300)
    assert p.returncode == 1
    assert "no such file" in p.stderr and "Traceback" not in p.stderr
