"""RewardManager: scores a batch concurrently; every call has a wall clock and a failure policy.

A call that raises, times out or returns a non-finite value gets `reward.error_score` (default
0) and is counted in the step's metrics; the batch always completes.
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from rewards.registry import get_reward

log = logging.getLogger(__name__)


class RewardManager:
    def __init__(self, cfg: Any, sandbox_cfg: Any):
        self.cfg = cfg
        self.sandbox_cfg = sandbox_cfg
        self._pool = ThreadPoolExecutor(max_workers=cfg.max_concurrency, thread_name_prefix="reward")
        names = set(cfg.sources.values()) | {cfg.default}
        self.fns = {n: get_reward(n) for n in names}
        if "math" in names:
            self._start_math_sandbox()

    def _start_math_sandbox(self) -> None:
        from rewards import math_reward
        from sandboxes.scoring import WorkerSpec

        s = self.sandbox_cfg
        spec = WorkerSpec(backend=s.backend, image=s.image, memory_mb=s.memory_mb, cpus=s.cpus,
                          pids_limit=s.pids_limit, start_timeout_s=s.start_timeout_s)
        if s.backend == "process":
            log.warning("sandbox.backend=process: math verdicts run in local subprocesses with "
                        "rlimits but NO isolation")
        self.sandbox = math_reward.configure(spec, s.num_workers, s.verdict_timeout_s)

    def reward_name(self, data_source: str) -> str:
        return self.cfg.sources.get(data_source, self.cfg.default)

    def score(self, items: list[dict]) -> tuple[list[float], dict[str, float]]:
        """items: dicts with completion, reference, prompt, data_source, metadata.
        Returns (scores in order, metrics)."""
        t0 = time.monotonic()
        futures = []
        for it in items:
            fn = self.fns[self.reward_name(it["data_source"])]
            kwargs = {"completion": it["completion"], "reference": it["reference"],
                      "prompt": it["prompt"], "metadata": it.get("metadata", {})}
            futures.append(self._pool.submit(_timed, fn, kwargs))
        scores: list[float] = []
        errors = timeouts = 0
        latencies = []
        deadline = time.monotonic() + self.cfg.timeout_s
        for fut in futures:
            try:
                value, dt = fut.result(timeout=max(0.0, deadline - time.monotonic()))
                latencies.append(dt)
                value = float(value)
                if not math.isfinite(value):
                    raise ValueError(f"reward returned {value}")
                scores.append(value)
            except FutureTimeout:
                timeouts += 1
                scores.append(self.cfg.error_score)
            except Exception as e:
                errors += 1
                if errors <= 3:
                    log.warning("reward call failed (scored %s): %s: %s", self.cfg.error_score,
                                type(e).__name__, e)
                scores.append(self.cfg.error_score)
        latencies.sort()
        metrics = {
            "reward/errors": float(errors),
            "reward/timeouts": float(timeouts),
            "reward/latency_p50_s": latencies[len(latencies) // 2] if latencies else 0.0,
            "reward/latency_p99_s": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else 0.0,
            "time/reward_s": time.monotonic() - t0,
        }
        if hasattr(self, "sandbox"):
            metrics["sandbox/restarts"] = float(self.sandbox.stats["restarts"])
        return scores, metrics

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if hasattr(self, "sandbox"):
            from rewards import math_reward

            math_reward.shutdown()


def _timed(fn, kwargs):
    t = time.monotonic()
    return fn(**kwargs), time.monotonic() - t
