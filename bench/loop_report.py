"""The step-time breakdown and learning summary of one training run (bench/gpu_loop.sh).

    python bench/loop_report.py RUN_DIR [--t0 EPOCH_SECONDS] [--out loop.json] [--label NAME]

Reads RUN_DIR/metrics.jsonl (one row per step, cispo.train). `--t0`: when the command was
started (the shell's clock), for the time to step 0 as a user sees it; without it, the loop's
own clock (from its imports) is used. Prints a short table and writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

STAGES = ["time/step_s", "time/rollout_s", "time/rollout_wait_s", "time/learn_s", "time/sync_s",
          "sync/seconds", "sync/load_s", "colocate/sleep_s", "colocate/wake_s", "colocate/offload_s",
          "colocate/reload_s", "time/reward_s"]


def _median(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if key in r and isinstance(r[key], (int, float)) and math.isfinite(r[key])]
    return statistics.median(vals) if vals else None


def _mean(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if key in r and math.isfinite(r[key])]
    return sum(vals) / len(vals) if vals else None


def report(run_dir: Path, t0: float | None = None, label: str = "", warm_from: int = 1) -> dict:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    if not rows:
        return {"label": label, "steps": 0}
    first = rows[0]
    # the loop's clock starts at its imports; the shell's t0 is earlier (interpreter start)
    offset = 0.0
    if t0 is not None and "startup/to_step0_s" in first and "time/since_start_s" in first:
        loop_start = _loop_start_epoch(run_dir)
        offset = (loop_start - t0) if loop_start is not None else 0.0
    steady = rows[warm_from:] or rows
    out = {"label": label, "run_dir": str(run_dir), "steps": len(rows),
           "to_step0_start_s": first.get("startup/to_step0_s", float("nan")) + offset,
           "to_step0_done_s": first.get("startup/step0_done_s", float("nan")) + offset,
           "step0_s": first.get("time/step_s"),
           "startup": {k.removeprefix("startup/"): v for k, v in first.items() if k.startswith("startup/")},
           "median": {k: _median(steady, k) for k in STAGES if _median(steady, k) is not None},
           "sync_bytes": first.get("sync/bytes"),
           "response_length_median": _median(steady, "response/length_mean"),
           "learn_tokens_per_s": _median(steady, "perf/learn_tokens_per_s"),
           "reward_first20": _mean(rows[:20], "reward/mean"),
           "reward_last20": _mean(rows[-20:], "reward/mean"),
           "wall_s": rows[-1].get("time/since_start_s", float("nan")) + offset}
    # when (wall clock since the command) the trailing 20-step mean reward first reached 0.6
    rewards = [r.get("reward/mean", float("nan")) for r in rows]
    out["reached_0.6_at_s"] = None
    for i in range(19, len(rows)):
        window = [x for x in rewards[i - 19:i + 1] if math.isfinite(x)]
        if window and sum(window) / len(window) >= 0.6:
            out["reached_0.6_at_s"] = rows[i].get("time/since_start_s", float("nan")) + offset
            out["reached_0.6_at_step"] = i
            break
    return out


def _loop_start_epoch(run_dir: Path) -> float | None:
    p = run_dir / "startup.json"
    if p.exists():
        return json.loads(p.read_text()).get("t0")
    return None


def table(r: dict) -> str:
    if not r.get("steps"):
        return f"{r.get('label', '')}: no steps logged"
    m = r["median"]

    def f(key, scale=1.0, unit="s"):
        v = m.get(key)
        return "-" if v is None else (f"{v * scale:.0f} ms" if unit == "ms" else f"{v:.3f} s")

    lines = [f"== {r['label']}: {r['steps']} steps, wall {r['wall_s']:.0f} s",
             f"  to step 0: start {r['to_step0_start_s']:.1f} s, done {r['to_step0_done_s']:.1f} s "
             f"(step 0 {r['step0_s']:.1f} s)",
             f"  median step {f('time/step_s')} = rollout {f('time/rollout_s')} (scoring "
             f"{f('time/reward_s', 1e3, 'ms')}) + learn {f('time/learn_s')} "
             f"+ sync {f('time/sync_s', 1e3, 'ms')} (learner side {f('sync/seconds', 1e3, 'ms')}, "
             f"engine load {f('sync/load_s', 1e3, 'ms')})",
             f"  colocate: sleep {f('colocate/sleep_s', 1e3, 'ms')}, wake {f('colocate/wake_s', 1e3, 'ms')}, "
             f"offload {f('colocate/offload_s', 1e3, 'ms')}, reload {f('colocate/reload_s', 1e3, 'ms')}",
             f"  reward first20 {r['reward_first20']:.3f} last20 {r['reward_last20']:.3f}; "
             f"last20>=0.6 at {r['reached_0.6_at_s'] and round(r['reached_0.6_at_s'])} s"]
    s = r["startup"]
    parts = [k for k in s if "/" not in k and k not in ("to_step0_s", "step0_done_s")]
    lines.append("  start-up: " + ", ".join(f"{k.removesuffix('_s')} {s[k]:.1f}" for k in parts))
    det = [k for k in s if "/" in k]
    if det:
        lines.append("    " + ", ".join(f"{k.removesuffix('_s')} {s[k]:.1f}" for k in det))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--t0", type=float, default=None)
    ap.add_argument("--label", default="")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    r = report(a.run_dir, a.t0, a.label or a.run_dir.name)
    if a.out:
        a.out.write_text(json.dumps(r, indent=1))
    print(table(r))


if __name__ == "__main__":
    main()
