"""`python -m cispo.train` as a user runs it: a short tiny run, and the bad-input paths."""

import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = ["step", "reward/mean", "loss/policy", "is_weight/clip_frac", "is_weight/mean",
            "logprob/train_rollout_pearson", "response/length_mean", "time/step_s"]


def train(*overrides: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cispo.train", "+exp=tiny", *overrides],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "WANDB_MODE": "offline", **(env or {})})


def py(cmd: str) -> list[str]:
    """A printed `python -m ...` command line, run with this interpreter."""
    argv = shlex.split(cmd)
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


@pytest.mark.docker
def test_tiny_run_end_to_end_with_bad_rows_ctrl_c_and_resume(tmp_path):
    """A user's first hour (issues 4 and 21): a run with bad data rows, without a terminal,
    stopped with Ctrl-C and resumed with the command it printed; then everything there is to
    look at: progress lines, train.log, samples.jsonl, the end table, W&B's folder, the curves."""
    data = tmp_path / "prompts.jsonl"
    with open(data, "w") as f:
        for a in range(3):
            for b in range(3):
                f.write(json.dumps({"prompt": f"{a}+{b}=\\boxed{{", "reference": str(a + b),
                                    "data_source": "arithmetic"}) + "\n")
        f.write(json.dumps({"reference": "3"}) + "\n")             # line 10: no prompt
        f.write(json.dumps({"prompt": "1+1=\\boxed{"}) + "\n")     # line 11: no reference
        f.write('{"prompt": "2+2=\\\\boxed{", "reference": \n')  # line 12: cut short
    run = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "cispo.train", "+exp=tiny", "trainer.total_steps=6", "rollout.prompts_per_step=4",
         "rollout.group_size=4", f"data.source={data}", f"run_dir={run}", "logging.progress_every_s=0.001",
         "resume=auto"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "WANDB_MODE": "offline"})
    deadline = time.monotonic() + 600
    while first.poll() is None and time.monotonic() < deadline and not (
            (run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().strip()):
        time.sleep(0.05)
    first.send_signal(signal.SIGINT)  # Ctrl-C, as a terminal sends it to the foreground process
    out1, err1 = first.communicate(timeout=600)
    assert first.returncode == 130, (out1 + err1)[-3000:]
    said = out1 + err1
    assert "resume=auto: no checkpoint" in said and "starting fresh" in said
    assert f"skipping data row {data}:12: not JSON" in said and f"{data}:10" in said
    assert "step 1/6  reward" in out1  # plain progress lines: stdout is not a terminal
    stop = re.search(r"stopped after step (\d) of 6 \(Ctrl-C\); checkpoint: (\S+)", err1)
    assert stop and (run / "checkpoints" / f"step_{stop.group(1)}").is_dir(), err1[-2000:]
    assert "Traceback" not in err1
    resume = re.search(r"^resume: (.*)$", err1, re.M).group(1)
    assert f"run_dir={run}" in resume and resume.endswith("resume=auto")

    p = subprocess.run(py(resume), cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "WANDB_MODE": "offline"})
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert [r["step"] for r in rows] == list(range(6))
    for r in rows:
        for key in REQUIRED:
            assert key in r, key
        assert r["data/skipped_rows"] == 3  # counted, not fatal
        assert 0.0 <= r["reward/mean"] <= 1.0 and r["reward/errors"] == 0
        assert math.isfinite(r["loss/policy"]) and r["sampling/rounds"] == 1
    # the end table compares two windows that share no step
    assert "done: 6 steps" in p.stdout and "first 3 steps" in p.stdout and "last 3 steps" in p.stdout
    assert (run / "checkpoints" / "step_6").is_dir()
    offline = sorted((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 2, "W&B offline run missing"  # one folder per start, one W&B run id
    run_id = (run / "wandb_run_id").read_text().strip()
    assert all(d.name.endswith(run_id) for d in offline)
    both = run / "wandb" / f"offline-run-*-{run_id}"
    assert f"W&B (offline): {both} (2 folders: one per start)" in p.stdout
    assert f"wandb sync {both}" in p.stdout
    # every step's line in train.log (both runs), a few samples per step
    log_steps = {int(m) for m in re.findall(r"\] - step (\d+)/6", (run / "train.log").read_text())}
    assert log_steps == {1, 2, 3, 4, 5, 6}
    samples = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    assert sorted({s["step"] for s in samples}) == list(range(6))
    assert all(sum(s["step"] == k for s in samples) == 4 for k in range(6))  # logging.samples_per_step
    assert set(samples[0]) == {"step", "prompt", "completion", "reward", "finish_reason", "response_tokens"}
    assert samples[0]["prompt"].endswith("=\\boxed{")
    # the curves of this run, as a user would draw them
    r = subprocess.run([sys.executable, "-m", "cispo.report", str(run)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (run / "report" / "reward_mean.png").read_bytes()[:4] == b"\x89PNG"
    assert (run / "report" / "curves.png").stat().st_size > 10_000
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
