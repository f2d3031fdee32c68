"""A run killed after its step-3 checkpoint and resumed repeats the uninterrupted run exactly, in sync
and in async (one-step off-policy) generation."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["rollout.prompts_per_step=4", "rollout.group_size=4", "logging.progress=false",
         "logging.wandb_mode=disabled", "trainer.save_every=3"]


def cmd(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cispo.train", "+exp=tiny", f"run_dir={run_dir}", *SMALL, *extra]


def rows(run_dir: Path) -> list[dict]:
    out = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in out] == list(range(6)), "a step is missing or repeated"
    return out


# per step: the loss, and what says which prompts it trained on and what they scored
SAME = ("loss/policy", "data/epoch", "reward/mean", "response/length_mean", "rollout/staleness")


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_kill_and_resume_reproduces_losses(tmp_path, mode):
    """async: the checkpoint after step 3 is written while step 4's rollout (prompts drawn,
    sampled with the weights before step 3's update) is already done; the resumed run must
    train step 4 on exactly those samples, then carry on as the uninterrupted run did."""
    extra = ["trainer.total_steps=6", f"rollout.async_generation={str(mode == 'async').lower()}"]
    full = tmp_path / "full"
    subprocess.run(cmd(full, *extra), cwd=ROOT, check=True, capture_output=True)

    part = tmp_path / "part"
    proc = subprocess.Popen(cmd(part, *extra), cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = part / "checkpoints" / "latest_step"
    deadline = time.monotonic() + 400
    while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started (Ray, actors)
    proc.wait()
    assert latest.read_text() == "step_3", "the run finished before it could be killed"

    p = subprocess.run(cmd(part, *extra, "resume=auto"), cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    # exactly: same data, seeds, weights and optimizer state (and, async, the kept rollout)
    assert [{k: r[k] for k in SAME} for r in rows(part)] == [{k: r[k] for k in SAME} for r in rows(full)]
    staleness = {r["rollout/staleness"] for r in rows(full)[1:]}
    assert staleness == ({1.0} if mode == "async" else {0.0})
    assert (part / "checkpoints" / "step_3" / "kept.pkl").exists() == (mode == "async")


def test_resume_path_must_be_a_checkpoint(tmp_path):
    p = subprocess.run(cmd(tmp_path / "r", f"resume={tmp_path}"), cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 1 and "not a checkpoint" in p.stderr
