"""A run killed after its step-3 checkpoint and resumed repeats the uninterrupted run exactly."""

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


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)), f"duplicated or unordered steps: {steps}"
    return {r["step"]: r["loss/policy"] for r in rows}


@pytest.mark.docker
@pytest.mark.slow
def test_kill_and_resume_reproduces_losses(tmp_path):
    full = tmp_path / "full"
    subprocess.run(cmd(full, "trainer.total_steps=6"), cwd=ROOT, check=True, capture_output=True)

    part = tmp_path / "part"
    proc = subprocess.Popen(cmd(part, "trainer.total_steps=6"), cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = part / "checkpoints" / "latest_step"
    deadline = time.monotonic() + 400
    while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started (Ray, actors)
    proc.wait()
    assert latest.read_text() == "step_3", "the run finished before it could be killed"

    p = subprocess.run(cmd(part, "trainer.total_steps=6", "resume=auto"), cwd=ROOT,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    assert losses(part) == losses(full)  # exactly: same data, seeds, weights and optimizer state


def test_resume_path_must_be_a_checkpoint(tmp_path):
    p = subprocess.run(cmd(tmp_path / "r", f"resume={tmp_path}"), cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 1 and "not a checkpoint" in p.stderr
