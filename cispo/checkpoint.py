"""Checkpoints: the DeepSpeed engine state (model + optimizer, sharded) plus the trainer state
(step, data position, RNG) in `run_dir/checkpoints/step_N/`, and `latest` naming the newest."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch


def trainer_state(step: int, data_state: dict) -> dict:
    return {"step": step, "data": data_state, "python_rng": random.getstate(),
            "torch_rng": torch.get_rng_state().tolist()}


def save(learner, run_dir: str | Path, step: int, data_state: dict) -> Path:
    ckpt = Path(run_dir) / "checkpoints"
    tag = f"step_{step}"
    state = trainer_state(step, data_state)
    learner.save(str(ckpt), tag, {"trainer": state})
    (ckpt / tag / "trainer_state.json").write_text(json.dumps(state, default=str))
    (ckpt / "latest_step").write_text(tag)
    return ckpt / tag
