"""Benchmark: the tiny experiment with `rollout.async_generation` off vs on (CPU wall time).

    python bench/rollout_async.py [--runs 3] [--steps 50] [--out bench/results/rollout_async.json]
    python bench/rollout_async.py --summarise DIR     # runs already made as DIR/{false,true}_{i}

Runs `python -m cispo.train +exp=tiny trainer.total_steps=STEPS rollout.async_generation=MODE`
niced, one at a time, interleaved (off, on, off, on, ...) so a shared machine's load hits both
alike; records each run's wall time (process start to exit), its training-loop time (sum of
`time/step_s`), the load average before and after, and the last-20-step mean reward. Prints the
medians and writes JSON; asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(run_dir: Path, steps: int, mode: str) -> dict:
    load0 = os.getloadavg()
    t0 = time.monotonic()
    cmd = ["nice", "-n", "5", sys.executable, "-m", "cispo.train", "+exp=tiny", f"run_dir={run_dir}",
           f"trainer.total_steps={steps}", f"rollout.async_generation={mode}", "logging.progress=false",
           "logging.wandb_mode=disabled"]
    with open(f"{run_dir}.log", "w") as log:
        subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)
    return {"wall_s": time.monotonic() - t0, "load_before": load0, "load_after": os.getloadavg()}


def summarise_run(run_dir: Path) -> dict:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    med = lambda k: statistics.median(r[k] for r in rows if k in r)  # noqa: E731
    return {"steps": len(rows), "loop_s": sum(r["time/step_s"] for r in rows),
            "median_step_s": med("time/step_s"), "median_rollout_s": med("time/rollout_s"),
            "median_rollout_wait_s": med("time/rollout_wait_s"), "median_learn_s": med("time/learn_s"),
            "reward_last20": statistics.mean(r["reward/mean"] for r in rows[-20:]),
            "staleness_max": max(r.get("rollout/staleness", 0.0) for r in rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/rollout_async"))
    ap.add_argument("--summarise", type=Path, help="summarise runs already in this directory")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/rollout_async.json")
    args = ap.parse_args()
    base = args.summarise or args.dir
    walls: dict[str, dict] = {}
    if args.summarise is None:
        base.mkdir(parents=True, exist_ok=True)
        for i in range(1, args.runs + 1):
            for mode in ("false", "true"):
                walls[f"{mode}_{i}"] = run(base / f"{mode}_{i}", args.steps, mode)
    elif (base / "results.txt").exists():  # the shell loop's record: "MODE I WALL load_before=… load_after=…"
        for line in (base / "results.txt").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] in ("false", "true"):
                walls[f"{parts[0]}_{parts[1]}"] = {"wall_s": float(parts[2]), "load": " ".join(parts[3:])}
    runs = {d.name: {**summarise_run(d), **walls.get(d.name, {})}
            for d in sorted(base.iterdir()) if d.is_dir() and (d / "metrics.jsonl").exists()}
    out = {"runs": runs}
    for mode in ("false", "true"):
        mine = [r for k, r in runs.items() if k.startswith(mode + "_")]
        out[f"async_{mode}"] = {k: statistics.median(r[k] for r in mine)
                                for k in ("loop_s", "median_step_s", "reward_last20")}
        if all("wall_s" in r for r in mine):
            out[f"async_{mode}"]["wall_s"] = statistics.median(r["wall_s"] for r in mine)
    off, on = out["async_false"], out["async_true"]
    print(f"{'async':>6} {'runs':>5} {'median wall s':>14} {'median loop s':>14} {'s/step':>7} {'reward last20':>14}")
    for mode, r in (("false", off), ("true", on)):
        n = sum(k.startswith(mode + "_") for k in runs)
        print(f"{mode:>6} {n:>5} {r.get('wall_s', float('nan')):>14.1f} {r['loop_s']:>14.1f} "
              f"{r['median_step_s']:>7.3f} {r['reward_last20']:>14.3f}")
    print(f"speed-up (loop): {off['loop_s'] / on['loop_s']:.2f}x; (wall): "
          f"{off.get('wall_s', float('nan')) / on.get('wall_s', float('nan')):.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
