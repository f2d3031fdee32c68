"""Math reward throughput: verdicts/s through the RewardManager with the kill-safe sandbox workers.

    python bench/math_reward.py [--workers 2] [--n 1500] [--out runs/bench/math_reward.json]

Workloads (each item is one completion with a boxed answer and a reference; half right):
- `typical`: the mix of answer forms in math RL data: 70% integers, 20% fractions/decimals,
  10% short expressions (radicals, pi). Plain numbers are compared exactly on the host
  (rewards.math_normalize); the expressions go to the sandbox.
- `symbolic`: radicals and pi only: every verdict is a math-verify round trip to a warm,
  kill-safe container. This is the sandbox's own rate.
- `labelled`: the 62 labelled cases of tests/math_cases.py (intervals, sets, units...), each
  distinct pair asked once per cache clear (repeated across clears).
- `group`: RL-shaped: references from `symbolic`, each answered 8 times from a few candidate
  answers (as a prompt's G samples are): repeats are served by the verdict cache.

The verdict cache is cleared before each workload (and between `labelled` repeats), so only
`group` measures it.

Prints a table and writes JSON. Asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def typical_pairs(n: int, rng: random.Random, integers: float = 0.7, fractions: float = 0.2
                  ) -> list[tuple[str, str]]:
    """n distinct (reference, answer) pairs, half equivalent (no repeat can hit a cache)."""
    out: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    i = 0
    while len(out) < n:
        i += 1
        right = i % 2 == 0
        u = rng.random()
        if u < integers:
            g = rng.randint(-5000, 50000)
            pair = (str(g), str(g if right else g + rng.randint(1, 9)))
        elif u < integers + fractions:
            p, q = rng.randint(1, 400), rng.randint(2, 400)
            a = f"\\frac{{{p}}}{{{q}}}"
            if rng.random() < 0.5 and q in (2, 4, 5, 8, 10, 16, 20, 25, 40, 50, 80, 100):
                a = str(p / q)
            pair = (f"\\frac{{{p}}}{{{q}}}", a if right else f"\\frac{{{p + 1}}}{{{q}}}")
        else:
            k = rng.randint(2, 5000)
            forms = [(f"{k}\\sqrt{{2}}", f"\\sqrt{{{2 * k * k}}}"), (f"\\frac{{\\pi}}{{{k}}}", f"\\pi/{k}")]
            g, a = forms[rng.randrange(2)]
            pair = (g, a if right else f"{k + 1}\\sqrt{{3}}")
        if pair not in seen:
            seen.add(pair)
            out.append(pair)
    return out


def group_pairs(n: int, rng: random.Random, group: int = 8) -> list[tuple[str, str]]:
    """RL-shaped: n // group references (symbolic forms: all sandboxed), each answered
    `group` times from a few candidates (the right one in two forms, two wrong ones), as the
    G samples of a prompt are. Repeated pairs hit the verdict cache: that is the point."""
    out = []
    for g, a in typical_pairs(n // group, rng, integers=0.0, fractions=0.0):
        wrong = [f"{g}+1", f"2{g}"]
        for _ in range(group):
            out.append((g, rng.choice([g, a, *wrong])))
    return out


def items_of(pairs: list[tuple[str, str]]) -> list[dict]:
    return [{"completion": f"... so the answer is \\boxed{{{a}}}.", "reference": g, "prompt": "",
             "data_source": "math", "metadata": {}} for g, a in pairs]


def run(workload: str, pairs: list[tuple[str, str]], mgr, batch: int) -> dict:
    from rewards import math_reward

    items = items_of(pairs)
    mgr.score(items_of(typical_pairs(16, random.Random(1), 0.0, 0.0)))  # warm the containers
    t0 = time.monotonic()
    m: dict = {}
    lat50, lat99, errors, timeouts = [], [], 0.0, 0.0
    for k in range(0, len(items), batch):
        if workload != "group":
            math_reward._sandbox_verdict.cache_clear()
        _, m = mgr.score(items[k:k + batch])
        lat50.append(m["reward/math/latency_p50_s"])
        lat99.append(m["reward/math/latency_p99_s"])
        errors += m["reward/errors"]
        timeouts += m["reward/timeouts"]
    dt = time.monotonic() - t0
    return {"workload": workload, "verdicts": len(items), "seconds": round(dt, 3),
            "verdicts_per_s": round(len(items) / dt, 1),
            "latency_p50_ms": round(1000 * sorted(lat50)[len(lat50) // 2], 2),
            "latency_p99_ms": round(1000 * max(lat99), 2),
            "errors": errors, "timeouts": timeouts,
            "sandbox_restarts": m.get("sandbox/restarts", 0.0)}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2, help="sandbox containers (one per core)")
    ap.add_argument("--n", type=int, default=1500, help="verdicts per workload")
    ap.add_argument("--batch", type=int, default=512, help="items per RewardManager.score call")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench" / "math_reward.json"))
    args = ap.parse_args()

    from math_cases import CASES
    from omegaconf import OmegaConf

    from cispo.config import RewardConfig, SandboxConfig
    from rewards.manager import RewardManager

    load_before = os.getloadavg()
    rng = random.Random(0)
    labelled = [(g, a) for cases in CASES.values() for g, a, _ in cases]
    workloads = {
        "typical": typical_pairs(args.n, rng),
        "symbolic": typical_pairs(args.n, rng, integers=0.0, fractions=0.0),
        "labelled": (labelled * (args.n // len(labelled) + 1))[:args.n],
        "group": group_pairs(args.n, rng),
    }
    cfg = OmegaConf.structured(RewardConfig(max_concurrency=2 * args.workers))
    sandbox = OmegaConf.structured(SandboxConfig(num_workers=args.workers))
    t0 = time.monotonic()
    rows = []
    with RewardManager(cfg, sandbox) as mgr:
        start_s = time.monotonic() - t0
        for name, pairs in workloads.items():
            # labelled: one batch per pass over the 62 distinct pairs, so none repeats in a batch
            rows.append(run(name, pairs, mgr, len(labelled) if name == "labelled" else args.batch))
    # the machine may be shared: the load average says how much else was running
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(),
               "python": platform.python_version(), "processor": _cpu_model(),
               "loadavg_1m_before": round(load_before[0], 2),
               "loadavg_1m_after": round(os.getloadavg()[0], 2)}
    cols = ["workload", "verdicts", "seconds", "verdicts_per_s", "latency_p50_ms",
            "latency_p99_ms", "errors", "timeouts", "sandbox_restarts"]
    print(f"math reward, {args.workers} sandbox workers (docker), {os.cpu_count()} CPUs "
          f"(load {machine['loadavg_1m_before']} → {machine['loadavg_1m_after']}); "
          f"pool start {start_s:.1f} s")
    print(" | ".join(f"{c:>15}" for c in cols))
    for r in rows:
        print(" | ".join(f"{r[c]!s:>15}" for c in cols))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"bench": "math_reward", "workers": args.workers,
                               "pool_start_s": round(start_s, 2), "machine": machine,
                               "results": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
