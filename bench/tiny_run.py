"""Benchmark: the tiny experiment end to end on this machine (what `make demo` trains).

    python bench/tiny_run.py [--runs 1] [--out bench/results/tiny_run.json] [-- extra overrides]
    python bench/tiny_run.py --from-run runs/tiny-XXXX     # summarise an existing run instead

Prints a table (wall time, seconds per step by stage, reward over the first and last 20 steps)
and writes the same numbers as JSON. Asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# time/generate_s: runs before dynamic sampling, when rollout and reward were timed apart
STAGES = ["time/generate_s", "time/rollout_s", "time/reward_s", "time/learn_s", "time/sync_s",
          "time/step_s"]


def summarise(run_dir: Path, wall_s: float | None) -> dict:
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    rewards = [r["reward/mean"] for r in rows]
    out = {"run_dir": str(run_dir), "steps": len(rows), "wall_s": wall_s,
           "reward_first20": statistics.mean(rewards[:20]),
           "reward_last20": statistics.mean(rewards[-20:]),
           "pearson_min": min(r["logprob/train_rollout_pearson"] for r in rows)}
    out["reward_ratio"] = out["reward_last20"] / max(out["reward_first20"], 1e-9)
    for k in STAGES:
        vals = [r[k] for r in rows if k in r]
        if vals:
            out[k.replace("time/", "median_")] = statistics.median(vals)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--from-run", type=Path)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/tiny_run.json")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    results = []
    if args.from_run:
        results.append(summarise(args.from_run, None))
    for i in range(args.runs if not args.from_run else 0):
        run_dir = Path(tempfile.mkdtemp(prefix="cispo-bench-")) / f"run{i}"
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "cispo.train", "+exp=tiny", f"run_dir={run_dir}",
                        "logging.progress=false", *args.overrides], cwd=ROOT, check=True,
                       env={**os.environ, "WANDB_MODE": "offline"})
        results.append(summarise(run_dir, time.monotonic() - t0))
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "overrides": args.overrides, "results": results}, indent=2))
    cols = ["steps", "wall_s", "median_step_s", "median_rollout_s", "median_reward_s",
            "median_learn_s", "median_sync_s", "reward_first20", "reward_last20", "reward_ratio"]
    print(" | ".join(cols))
    for r in results:
        print(" | ".join(f"{r.get(c):.3f}" if isinstance(r.get(c), float) else str(r.get(c)) for c in cols))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
