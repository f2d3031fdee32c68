"""k-step off-policy generation (`rollout.max_staleness`, cispo.staleness) against its schedule
worked out by hand: the rollout of step t samples with the weights after update max(t - k, 0), no
sync lands while a rollout is sampling, and a loop resumed from `kept()` repeats the
uninterrupted one. The Ray/DeepSpeed loop itself: tests/test_resume.py (kill -9, k = 1 and 2)."""

import threading
import time
from dataclasses import dataclass, field

import pytest

from cispo.staleness import RolloutsAhead, from_checkpoint, to_checkpoint


@dataclass
class Rollout:
    step: int
    version: int  # the weights (updates applied) it sampled with
    prompts: list
    data_after: int


@dataclass
class FakeLoop:
    """Engines holding a weight version, a prompt counter, a learner that adds one update per step."""

    version: int = 0  # synced to the engines
    learner: int = 0  # updates made
    position: int = 0  # prompts drawn
    busy: threading.Lock = field(default_factory=threading.Lock)
    log: list = field(default_factory=list)

    def produce(self, step: int) -> Rollout:
        with self.busy:  # sampling
            v = self.version
            time.sleep(0.002)
            prompts = list(range(self.position, self.position + 2))
            self.position += 2
            assert self.version == v, "a sync changed the weights under a running rollout"
            return Rollout(step, v, prompts, self.position)

    def sync(self) -> None:
        assert self.busy.acquire(blocking=False), "sync while a rollout is sampling"
        self.version = self.learner
        self.busy.release()

    def run(self, k: int, start: int, stop: int, total: int, kept=()) -> list:
        ahead = RolloutsAhead(self.produce, k, start, total, kept)
        for step in range(start, stop):
            ro = ahead.take(step)
            assert ro.step == step
            self.log.append((step, ro.version, ro.prompts, self.learner - ro.version))
            self.learner += 1  # learn
            ahead.settle()
            self.sync()
        out = ahead.kept()
        ahead.close()
        return out


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_rollout_t_samples_with_the_weights_after_update_t_minus_k(k):
    loop = FakeLoop()
    assert loop.run(k, 0, 10, 10) == []
    assert [v for _, v, _, _ in loop.log] == [max(t - k, 0) for t in range(10)]
    # staleness when trained on: min(t, k); the prompts are drawn in step order
    assert [s for *_, s in loop.log] == [min(t, k) for t in range(10)]
    assert [p for _, _, p, _ in loop.log] == [[2 * t, 2 * t + 1] for t in range(10)]


@pytest.mark.parametrize("k", [1, 2, 4])
def test_resume_from_the_kept_rollouts_repeats_the_run(k):
    full = FakeLoop()
    full.run(k, 0, 9, 9)
    part = FakeLoop()
    kept = part.run(k, 0, 4, 9)  # "checkpoint" after step 3: learner at 4 updates
    assert [r.step for r in kept] == list(range(4, 4 + k))
    saved = to_checkpoint(kept, part.version)
    assert saved["behind"] == [part.version - max(t - k, 0) for t in range(4, 4 + k)]
    # a new process: the checkpoint's weights (4 updates), the stream after the kept rollouts
    resumed = FakeLoop(version=4, learner=4, position=kept[-1].data_after, log=list(part.log))
    restored = from_checkpoint(saved, k)
    for ro, behind in restored:
        ro.version = resumed.version - behind
    resumed.run(k, 4, 9, 9, [ro for ro, _ in restored])
    assert resumed.log == full.log


def test_from_checkpoint_takes_at_most_k_and_reads_the_one_rollout_form():
    a, b = Rollout(4, 3, [], 10), Rollout(5, 3, [], 12)
    saved = to_checkpoint([a, b], 4)
    assert from_checkpoint(saved, 2) == [(a, 1), (b, 1)]
    assert from_checkpoint(saved, 1) == [(a, 1)]  # resumed with a smaller k: the rest is sampled again
    assert from_checkpoint(saved, 0) == [] and from_checkpoint(None, 2) == []
    assert from_checkpoint({"rollout": a, "behind": 1}, 3) == [(a, 1)]
    assert to_checkpoint([], 4) is None


def test_negative_staleness_is_refused():
    with pytest.raises(ValueError, match="max_staleness"):
        RolloutsAhead(lambda s: s, -1, 0, 3)


def test_async_staleness_below_one_is_refused_before_start():
    from omegaconf import OmegaConf

    from cispo.config import Config
    from cispo.config_check import value_problems

    cfg = OmegaConf.structured(Config)
    cfg.rollout.async_generation, cfg.rollout.max_staleness = True, 0
    [msg] = value_problems(cfg)
    assert "rollout.max_staleness=0" in msg and "async_generation=false" in msg
    cfg.rollout.max_staleness = 8  # ScaleRL's
    assert value_problems(cfg) == []
