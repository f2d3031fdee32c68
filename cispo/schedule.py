"""M1's staged output window: 40K -> 48K -> ... -> 80K, with ε_high and gradient clip per stage.

The report moves to the next window when the perplexity of the generated text has converged and
the 99th-percentile response length nears the window; late stages use a lower ε_high and
gradient-clip threshold. Here that is a small state machine over per-step statistics:

    sched = WindowSchedule(cfg.schedule, cfg.algorithm.eps_high, cfg.learner.grad_clip)
    settings = sched.current()                        # stage 0: window, eps_high, grad_clip
    ...each step...
    change = sched.update(stats_from_samples(samples))    # or generation_stats(lengths, lp_sums)
    if change: apply change.window / change.eps_high / change.grad_clip
    metrics.update(sched.metrics())                   # schedule/*

Everything here is pure Python on numbers; the trainer applies the settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


class ScheduleError(ValueError):
    """A schedule config that cannot work; the message says what to change."""


def p99(lengths: list[int] | list[float]) -> float:
    """99th percentile (nearest rank) of response lengths."""
    if not lengths:
        raise ValueError("p99 of no lengths")
    xs = sorted(lengths)
    return float(xs[max(0, math.ceil(0.99 * len(xs)) - 1)])


def perplexity(logprob_sum: float, tokens: int) -> float:
    """exp(mean negative log-prob) of generated tokens (their sampling log-probs)."""
    return math.exp(-logprob_sum / tokens) if tokens else float("nan")


def generation_stats(lengths: list[int], logprob_sums: list[float]) -> dict[str, float]:
    """One step's statistics from its samples: response lengths and the sum of each response's
    sampling log-probs (rollout Sample.logprobs)."""
    return {"p99_length": p99(lengths), "perplexity": perplexity(sum(logprob_sums), sum(lengths))}


def stats_from_samples(samples: list[Any]) -> dict[str, float]:
    """`generation_stats` of a step's rollout samples (anything with `response_ids`, `logprobs`)."""
    return generation_stats([len(s.response_ids) for s in samples],
                            [float(sum(s.logprobs)) for s in samples])


def relative_change(history: list[float], span: int) -> float:
    """|mean(last span) - mean(span before)| / mean(span before); inf until 2*span values."""
    if len(history) < 2 * span:
        return math.inf
    before = sum(history[-2 * span:-span]) / span
    last = sum(history[-span:]) / span
    return abs(last - before) / abs(before) if before else math.inf


@dataclass
class StageSettings:
    stage: int
    window: int  # rollout.max_new_tokens
    eps_high: float  # algorithm.eps_high
    grad_clip: float  # learner.grad_clip
    reason: str = ""


@dataclass
class WindowSchedule:
    """Decides, step by step, whether to move to the next window. `cfg` is a ScheduleConfig."""

    cfg: Any
    default_eps_high: float
    default_grad_clip: float
    stage: int = 0
    steps_in_stage: int = 0
    ppl_history: list[float] = field(default_factory=list)
    last: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        w, e, g = list(self.cfg.windows), list(self.cfg.eps_high), list(self.cfg.grad_clip)
        if any(b <= a for a, b in zip(w, w[1:], strict=False)):
            raise ScheduleError(f"schedule.windows must increase stage by stage, got {w}")
        for name, xs in (("eps_high", e), ("grad_clip", g)):
            if xs and len(xs) != len(w):
                raise ScheduleError(f"schedule.{name} has {len(xs)} values for {len(w)} windows: "
                                    f"give one per window or leave it empty")
        if not 0 < self.cfg.p99_fraction <= 1:
            raise ScheduleError(f"schedule.p99_fraction={self.cfg.p99_fraction} must be in (0, 1]")

    @property
    def enabled(self) -> bool:
        return len(self.cfg.windows) > 0

    @property
    def last_stage(self) -> bool:
        return self.stage >= len(self.cfg.windows) - 1

    def current(self, reason: str = "") -> StageSettings:
        c = self.cfg
        return StageSettings(
            stage=self.stage, window=c.windows[self.stage],
            eps_high=c.eps_high[self.stage] if c.eps_high else self.default_eps_high,
            grad_clip=c.grad_clip[self.stage] if c.grad_clip else self.default_grad_clip,
            reason=reason)

    def ready(self) -> tuple[bool, str]:
        """Whether the current stage has settled: (decision, why)."""
        c, s = self.cfg, self.last
        window = c.windows[self.stage]
        if self.steps_in_stage < c.min_steps_per_stage:
            return False, f"{self.steps_in_stage} < {c.min_steps_per_stage} steps in stage"
        frac = s["p99_length"] / window
        if frac < c.p99_fraction:
            return False, f"p99 length {frac:.2f} of the window < {c.p99_fraction}"
        change = relative_change(self.ppl_history, c.ppl_window)
        if change >= c.ppl_rel_tol:
            return False, f"perplexity still moving ({change:.3f} >= {c.ppl_rel_tol})"
        return True, (f"p99 length {s['p99_length']:.0f} = {frac:.2f} of {window}, "
                      f"perplexity change {change:.3f} < {c.ppl_rel_tol}")

    def update(self, stats: dict[str, float]) -> StageSettings | None:
        """Feed one step's `generation_stats`; returns the new stage's settings when it advances."""
        if not self.enabled:
            return None
        self.last = dict(stats)
        self.ppl_history.append(float(stats["perplexity"]))
        self.steps_in_stage += 1
        if self.last_stage:
            return None
        ok, why = self.ready()
        if not ok:
            return None
        self.stage += 1
        self.steps_in_stage = 0
        self.ppl_history = []  # the plateau test restarts at the new window
        return self.current(reason=why)

    def metrics(self) -> dict[str, float]:
        """The `schedule/` metric group (empty when the schedule is off)."""
        if not self.enabled:
            return {}
        cur = self.current()
        out = {"schedule/stage": float(cur.stage), "schedule/window": float(cur.window),
               "schedule/eps_high": cur.eps_high, "schedule/grad_clip": cur.grad_clip,
               "schedule/steps_in_stage": float(self.steps_in_stage)}
        if self.last:
            out["schedule/p99_length_frac"] = self.last["p99_length"] / cur.window
            out["schedule/perplexity"] = self.last["perplexity"]
        change = relative_change(self.ppl_history, self.cfg.ppl_window)
        if math.isfinite(change):
            out["schedule/ppl_rel_change"] = change
        return out

    def state_dict(self) -> dict:
        """What a checkpoint keeps to resume the schedule exactly."""
        return {"stage": self.stage, "steps_in_stage": self.steps_in_stage,
                "ppl_history": list(self.ppl_history), "last": dict(self.last)}

    def load_state_dict(self, state: dict) -> None:
        if state["stage"] >= max(len(self.cfg.windows), 1):
            raise ScheduleError(f"checkpoint is at schedule stage {state['stage']} but "
                                f"schedule.windows has {len(self.cfg.windows)} stages")
        self.stage, self.steps_in_stage = state["stage"], state["steps_in_stage"]
        self.ppl_history, self.last = list(state["ppl_history"]), dict(state["last"])
