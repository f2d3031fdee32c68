"""Colocated placement: the learner and the engines take turns on the GPU they share.

Two phases, each step:

    ROLLOUT  engines awake (cache memory taken as they generate); the learner's optimizer state,
             FP32 master weights and gradients offloaded to host memory (if
             `learner.offload_while_generating`); its bf16 parameters stay for the weight sync
    TRAIN    engines asleep (their cache/state memory released, weights kept); the learner
             resident

    rollout → to_train() → learn → to_rollout() → weight sync → [checkpoint] → rollout → ...

The weight sync runs in the ROLLOUT phase (engines awake: an engine that keeps its weights off
the GPU while asleep, as vLLM's sleep mode does, must have them back before loading new ones).
A checkpoint needs the learner's whole state: `learner_on_gpu()` brings it back for the save.
Transitions are idempotent and only call what changes. With `active=False` (separate placement,
or asynchronous generation, where rollout and learning overlap) every call does nothing; with
`sleep=False` (`rollout.sleep_while_training=false`) the engines keep their memory throughout.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class GpuShare:
    def __init__(self, learner: Any, rollout: Any, active: bool, offload: bool, sleep: bool = True):
        self.learner, self.rollout = learner, rollout
        self.active, self.offload, self.sleep = active, offload and active, sleep and active
        # at start-up both are fully on the GPU (the learner just built, the engines just loaded)
        self.engines_awake = True
        self.learner_resident = True

    @property
    def phase(self) -> str:
        if self.engines_awake and not self.learner_resident:
            return "rollout"
        if not self.engines_awake and self.learner_resident:
            return "train"
        return "both"  # start-up, or offloading off (the learner never leaves)

    def to_train(self) -> dict[str, float]:
        """Before the learner's passes: engines sleep, the learner's state comes back."""
        out: dict[str, float] = {}
        if not self.active:
            return out
        if self.engines_awake and self.sleep:
            out["colocate/sleep_s"] = _timed(self.rollout.sleep)
            self.engines_awake = False
        if not self.learner_resident:
            out["colocate/reload_s"] = _timed(self.learner.reload)
            self.learner_resident = True
        return out

    def to_rollout(self) -> dict[str, float]:
        """After the learner's update, before the weight sync: the learner's state leaves (if
        offloading), the engines wake."""
        out: dict[str, float] = {}
        if not self.active:
            return out
        if self.offload and self.learner_resident:
            out["colocate/offload_s"] = _timed(self.learner.offload)
            self.learner_resident = False
        if not self.engines_awake:
            out["colocate/wake_s"] = _timed(self.rollout.wake)
            self.engines_awake = True
        return out

    @contextmanager
    def learner_on_gpu(self) -> Iterator[None]:
        """The learner's whole state on the GPU for the body (a checkpoint), as it was after."""
        was = self.learner_resident
        if not was:
            self.learner.reload()
            self.learner_resident = True
        try:
            yield
        finally:
            if not was:
                self.learner.offload()
                self.learner_resident = False


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
