"""The `math` reward: last `\\boxed{}` answer vs the reference, judged by math-verify in a sandbox.

1.0 if equivalent under the normalisation policy (rewards.math_normalize) and math-verify,
gold first. No boxed answer → 0 without a sandbox call; a reference of None → skip. Verdicts the
policy decides alone (plain integers, choice letters, set vs tuple, over-long answers) need no
sandbox; the rest go to a warm sandboxed worker (sandboxes.scoring), because parsing model
output with sympy can be made to hang in C or eat memory: the worker is killed and replaced at
its wall clock, and the answer scores 0. It returns a plain float (callers compare it with
1.0); how often there was no box, a verdict timed out, or math-verify raised is counted in
`reward/math/{no_box,verdict_timeouts,parse_errors}_total` (see `stats`).
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any

from rewards.boxed import complete_open_box, last_boxed
from rewards.math_normalize import normalize, quick_verdict
from rewards.registry import reward

log = logging.getLogger(__name__)

SERVER = "math_verdict_server.py"  # sandboxes/servers/
CACHE_SIZE = 65536  # distinct (reference, answer) verdicts kept in memory (a few MB)
_pool = None
_pool_lock = threading.Lock()
_settings = {"verdict_timeout_s": 10.0, "soft_timeout_s": 3}
_counts = {"no_box": 0, "verdict_timeouts": 0, "parse_errors": 0}  # since the process started


def configure(spec: Any, num_workers: int, verdict_timeout_s: float, soft_timeout_s: int = 3):
    """Start the process-wide scoring pool with these settings (the manager's setup does this)."""
    global _pool
    from sandboxes.scoring import ScoringPool

    with _pool_lock:
        if _pool is not None:
            _pool.close()
        _pool = ScoringPool(spec, num_workers)
        _sandbox_verdict.cache_clear()  # new settings or image: verdicts are asked afresh
        _settings.update(verdict_timeout_s=float(verdict_timeout_s),
                         soft_timeout_s=int(soft_timeout_s))
        return _pool


def pool():
    global _pool
    from sandboxes.scoring import ScoringPool, WorkerSpec

    with _pool_lock:
        if _pool is None:  # used standalone (a test, a notebook, the CLI): default settings
            _pool = ScoringPool(WorkerSpec(server=SERVER), 1)
        return _pool


def shutdown() -> None:
    global _pool
    with _pool_lock:
        if _pool is not None:
            _pool.close()
            _pool = None


def setup(options: dict, sandbox_cfg: Any) -> None:
    """Manager hook: a pool shaped by `cfg.sandbox` (defaults when there is none)."""
    from sandboxes.scoring import WorkerSpec

    s = sandbox_cfg
    if s is None:
        spec, n, limit = WorkerSpec(server=SERVER), 1, 10.0
    else:
        if s.backend == "process":
            log.warning("sandbox.backend=process: math verdicts run in local subprocesses with "
                        "rlimits but NO isolation")
        spec = WorkerSpec(server=SERVER, backend=s.backend, image=s.image, memory_mb=s.memory_mb,
                          cpus=s.cpus, pids_limit=s.pids_limit, start_timeout_s=s.start_timeout_s)
        n, limit = s.num_workers, s.verdict_timeout_s
    configure(spec, n, limit, int(options.get("soft_timeout_s", 3)))


def stats() -> dict[str, float]:
    with _pool_lock:
        p = _pool
    out = {f"reward/math/{k}_total": float(v) for k, v in _counts.items()}
    if p is not None:
        out.update({"sandbox/restarts": float(p.stats["restarts"]),
                    "sandbox/timeouts": float(p.stats["timeouts"])})
    return out


def verdict(gold: str, answer: str) -> dict[str, float]:
    """Equivalence of two answer strings: {"score", "timeout", "parse_error"}."""
    out = {"score": 0.0, "timeout": 0.0, "parse_error": 0.0}
    quick = quick_verdict(gold, answer)
    if quick is not None:
        out["score"] = float(quick)
        return out
    result = _sandbox_verdict(normalize(gold), normalize(answer), _settings["soft_timeout_s"],
                              _settings["verdict_timeout_s"])
    if result == "equal":
        out["score"] = 1.0
    elif result == "timeout":
        out["timeout"] = 1.0
    elif result == "parse_error":
        out["parse_error"] = 1.0
    return out


@functools.lru_cache(maxsize=CACHE_SIZE)
def _sandbox_verdict(g: str, a: str, soft_timeout_s: int, verdict_timeout_s: float) -> str:
    """"equal" | "different" | "timeout" | "parse_error", from a warm sandboxed worker.

    Cached: the G samples of a group share a reference and often an answer, and a repeated
    answer that hung the verdict would hang it again (a crash raises and is not cached).
    """
    from sandboxes.scoring import SandboxTimeout

    # math-verify finds an expression by its LaTeX delimiters; the box is the clearest.
    req = {"gold": g if "\\boxed" in g else f"\\boxed{{{g}}}", "answer": f"\\boxed{{{a}}}",
           "soft_timeout_s": soft_timeout_s}
    try:
        resp = pool().request(req, verdict_timeout_s)
    except SandboxTimeout:  # the model's answer hung the verdict: it is not a correct answer
        _counts["verdict_timeouts"] += 1
        return "timeout"
    if "error" in resp:  # math-verify raised on this answer: not a correct answer either
        _counts["parse_errors"] += 1
        return "parse_error"
    return "equal" if resp.get("verdict") else "different"


@reward("math", isolation="thread", setup=setup, teardown=shutdown, stats=stats, sandbox=True,
        needs_reference=True)
def math_reward(completion: str, reference: Any = None, prompt: str = "") -> float | None:
    if reference is None:
        return None  # nothing to compare with: skip rather than teach "0"
    answer = last_boxed(complete_open_box(prompt or "", completion))
    if answer is None:
        _counts["no_box"] += 1
        return 0.0
    return verdict(str(reference), answer)["score"]
