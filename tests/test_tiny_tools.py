"""`python -m cispo.train +exp=tiny_tools` as a user runs it, cut to 3 small steps: multi-turn
episodes in the calc environment through Ray, the math + tool_use rewards, the masked update,
and the `env/` metrics in metrics.jsonl."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.docker
@pytest.mark.slow  # ~90 s on 2 cores: Ray, a DeepSpeed rank, two engines
def test_tiny_tools_steps_end_to_end(tmp_path):
    run = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "cispo.train", "+exp=tiny_tools", "trainer.total_steps=3",
                        "rollout.prompts_per_step=4", "rollout.group_size=4", f"run_dir={run}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "WANDB_MODE": "offline"})
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    for r in rows:
        for key in ("env/turns_mean", "env/tool_calls_mean", "env/errors", "env/episode_s",
                    "reward/math/mean", "reward/tool_use/mean"):
            assert key in r, key
        assert 1.0 <= r["env/turns_mean"] <= 2.0 and r["env/episode_s"] > 0
        assert r["logprob/train_rollout_pearson"] > 0.99  # the masked trajectory: same tokens, same log-probs
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert samples and all(s["prompt"].endswith("=\\boxed{") and "%" in s["prompt"] for s in samples)
