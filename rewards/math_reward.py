"""The `math` reward: last `\\boxed{}` answer vs the reference, judged by math-verify in a sandbox.

1.0 if equivalent, 0.0 otherwise; no boxed answer → 0.0 without a sandbox call. The verdict runs
in a warm sandboxed worker (see sandboxes.scoring) because parsing model output with sympy can
be made to hang or eat memory; the worker is killed and replaced over its limits.
"""

from __future__ import annotations

import threading

from rewards.boxed import complete_open_box, last_boxed
from rewards.registry import reward
from sandboxes.scoring import ScoringPool, WorkerSpec

_pool: ScoringPool | None = None
_pool_lock = threading.Lock()
_verdict_timeout_s = 10.0


def configure(spec: WorkerSpec, num_workers: int, verdict_timeout_s: float) -> ScoringPool:
    """Start the process-wide scoring pool with these settings (the RewardManager calls this)."""
    global _pool, _verdict_timeout_s
    with _pool_lock:
        if _pool is not None:
            _pool.close()
        _pool = ScoringPool(spec, num_workers)
        _verdict_timeout_s = verdict_timeout_s
        return _pool


def pool() -> ScoringPool:
    global _pool
    with _pool_lock:
        if _pool is None:  # used standalone (a test, a notebook): default settings
            _pool = ScoringPool(WorkerSpec(), 1)
        return _pool


def shutdown() -> None:
    global _pool
    with _pool_lock:
        if _pool is not None:
            _pool.close()
            _pool = None


@reward("math")
def math_reward(completion: str, reference=None, prompt: str = "", **_) -> float:
    answer = last_boxed(complete_open_box(prompt, completion))
    if answer is None or reference is None:
        return 0.0
    gold = str(reference)
    # math-verify wants LaTeX delimiters to find the expression; the box is the clearest.
    resp = pool().request({"gold": f"\\boxed{{{gold}}}" if "\\boxed" not in gold else gold,
                           "answer": f"\\boxed{{{answer}}}"}, _verdict_timeout_s)
    if "error" in resp:
        raise RuntimeError(f"math-verify: {resp['error']}")
    return 1.0 if resp.get("verdict") else 0.0
