"""Checkpoints that resume exactly: the DeepSpeed engine state (model + optimizer, sharded per
rank) and the trainer state (step, data position, RNG) in `run_dir/checkpoints/step_N/`.

Everything else a step draws on is a function of the step index (generation seeds) or of the
restored state, so a resumed run repeats the uninterrupted run's steps. An async run's
checkpoint also keeps the next step's rollout (`kept.pkl`): it was sampled with the weights
before the checkpoint's, which no longer exist, so regenerating it would not repeat the run.
"""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path
from typing import Any

import torch

LATEST = "latest_step"
KEPT = "kept.pkl"  # the next step's rollout of an async run (pickle: the run's own file)


def save(learner, run_dir: str | Path, step: int, states: dict, kept: Any = None) -> Path:
    """states: JSON-able trainer state besides the learner (data position, schedule, ...);
    kept: a picklable object to resume with (async generation: the next step's rollout)."""
    ckpt = Path(run_dir) / "checkpoints"
    tag = f"step_{step}"
    state = {"step": step, **states, "python_rng": _jsonable(random.getstate()),
             "torch_rng": torch.get_rng_state().tolist()}
    learner.save(str(ckpt), tag, {})
    if kept is not None:
        (ckpt / tag / KEPT).write_bytes(pickle.dumps(kept))
    (ckpt / tag / "trainer_state.json").write_text(json.dumps(state))
    (ckpt / LATEST).write_text(tag)  # written last: a checkpoint is complete once named here
    return ckpt / tag


def find(run_dir: str | Path, resume: str | None) -> Path | None:
    """The checkpoint to resume from: None (fresh), "auto" (newest in run_dir, if any), or a path."""
    if not resume:
        return None
    if resume == "auto":
        latest = Path(run_dir) / "checkpoints" / LATEST
        return latest.parent / latest.read_text().strip() if latest.exists() else None
    path = Path(resume)
    if not (path / "trainer_state.json").exists():
        raise SystemExit(f"resume={resume!r}: not a checkpoint (no trainer_state.json there); "
                         f"checkpoints are run_dir/checkpoints/step_N")
    return path


def read_state(path: Path) -> dict:
    return json.loads((path / "trainer_state.json").read_text())


def read_kept(path: Path) -> Any:
    """What `save` was given as `kept`, or None."""
    f = path / KEPT
    return pickle.loads(f.read_bytes()) if f.exists() else None


def restore(learner, path: Path, state: dict, stream) -> None:
    """Learner (model + optimizer), data position and RNG, as saved."""
    learner.load(str(path.parent), path.name)
    stream.load_state(state["data"])
    random.setstate(_tupled(state["python_rng"]))
    torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))


def _jsonable(rng_state):
    version, internal, gauss = rng_state
    return [version, list(internal), gauss]


def _tupled(saved):
    version, internal, gauss = saved
    return (version, tuple(internal), gauss)
