"""Rollouts generated ahead of the learner, at most `max_staleness` weight syncs old.

    ahead = RolloutsAhead(produce, k, start, total, kept)
    for step in ...:
        ro = ahead.take(step)      # this step's rollout; starts generating step + k
        ... learn ...
        ahead.settle()             # the engines finish what they sample with the old weights
        ... sync weights ...

k = 0 is synchronous: `take` generates the step's rollout itself, with the newest weights. With
k >= 1 one thread generates rollouts in step order while the learner trains, and the rollout of
step t is sampled with the weights after update max(t - k, 0): the first k + 1 rollouts use the
initial weights, and from then on each rollout is exactly k updates old when it is trained on
(k = 1: one-step off-policy, as rollout.async_generation always was). The schedule is fixed, not
timing-dependent, so a run repeats itself and resumes exactly: a checkpoint after step s keeps
the finished rollouts of steps s + 1 .. s + k (`kept()`), sampled with weights it no longer
holds, and the resumed run takes them instead of sampling again.

Overlap: one rollout is in flight while the learner trains (the rollout of step s + k during
step s); the others wait finished. A larger k makes the data staler (ScaleRL's off-policyness
axis) but keeps the engines and the learner in lock-step, because each sync waits for the last
rollout of the weights it replaces (`settle`).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def max_staleness(cfg: Any) -> int:
    """The run's k: rollout.max_staleness with rollout.async_generation, else 0 (synchronous)."""
    return int(cfg.rollout.max_staleness) if cfg.rollout.async_generation else 0


def done(result: Any) -> futures.Future:
    f: futures.Future = futures.Future()
    f.set_result(result)
    return f


class RolloutsAhead:
    def __init__(self, produce: Callable[[int], Any], max_staleness: int, start: int, total: int,
                 kept: list | tuple = ()):
        """`produce(step)` makes one step's rollout; `kept`: finished rollouts of steps start,
        start + 1, ... from a checkpoint (at most `max_staleness` are used)."""
        if max_staleness < 0:
            raise ValueError(f"max_staleness={max_staleness}: use 0 (synchronous) or more")
        self.produce, self.k, self.total = produce, max_staleness, total
        self.pool = ThreadPoolExecutor(1, "rollout") if self.k else None
        self.pending: dict[int, futures.Future] = {}
        if not self.k:
            return
        for i, ro in enumerate(list(kept)[:self.k]):
            self.pending[start + i] = done(ro)
        for step in range(start + len(self.pending), min(start + self.k, total)):
            self.pending[step] = self.pool.submit(produce, step)

    def take(self, step: int) -> Any:
        """Step `step`'s rollout (waits for it); queues the rollout of step + k, which samples
        with the weights the engines hold now."""
        if not self.k:
            return self.produce(step)
        ro = self.pending.pop(step).result()
        ahead = step + self.k
        if ahead < self.total and ahead not in self.pending:
            self.pending[ahead] = self.pool.submit(self.produce, ahead)
        return ro

    def settle(self) -> None:
        """Wait for every queued rollout: they all sample with the weights the next sync
        replaces (a sync must not change the weights under a running generation)."""
        futures.wait(list(self.pending.values()))

    def kept(self) -> list:
        """The finished rollouts of the next steps, in step order (call after `settle`)."""
        return [self.pending[s].result() for s in sorted(self.pending)]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def to_checkpoint(rollouts: list, version: int) -> dict | None:
    """What a checkpoint keeps of the next steps' finished rollouts (`RolloutsAhead.kept`), with
    how many syncs behind the checkpoint's weights (`version`) each was sampled."""
    return {"rollouts": rollouts, "behind": [version - r.version for r in rollouts]} if rollouts else None


def from_checkpoint(saved: dict | None, k: int) -> list[tuple[Any, int]]:
    """(rollout, syncs behind) from `to_checkpoint`'s dict, the first k (k = 0, a synchronous
    resume: none, it samples again). Reads the one-rollout form of earlier versions too."""
    if not saved or not k:
        return []
    if "rollout" in saved:
        return [(saved["rollout"], saved["behind"])]
    return list(zip(saved["rollouts"], saved["behind"], strict=True))[:k]
