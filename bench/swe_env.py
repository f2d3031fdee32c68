"""Throughput of the `swe` environment alone: scripted episodes on the test-repo instance.

    python bench/swe_env.py [--episodes 24] [--concurrency 1 2 4] [--out bench/results/swe_env.json]

One episode, as a policy would play it: reset (start the episode's hardened container, copy the
repository in), `run` the test suite, `read_file`, `apply_patch` the gold fix, `submit`, close
(remove the container). Episodes run `--concurrency` at a time in threads, as the rollout's
episodes do (rollout.episodes). Then the `swe` reward scores the submissions (the harness: a
fresh container per evaluation), measured separately. Prints a table and writes JSON; asserts
nothing about speed. The repository is the tiny one of tests/sandbox_fixtures.py, so this
measures the environment's own overhead (container start, exec round trips, removal), not a
real project's test time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def call(name: str, **arguments) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


def episode(inst: dict, gold: str, instances_dir: str) -> tuple[str, dict]:
    from environments.swe import SWEEnvironment

    t0 = time.monotonic()
    env = SWEEnvironment(instances_dir=instances_dir)
    try:
        env.reset(dict(inst))
        t_reset = time.monotonic() - t0
        for action in (call("run", command="python3 -m pytest -q tests"),
                       call("read_file", path="calc.py"), call("apply_patch", patch=gold),
                       call("submit")):
            env.step(action)
        patch = env.reward_inputs()["completion"]
    finally:
        t_close = time.monotonic()
        env.close()
    end = time.monotonic()
    return patch, {"reset_s": t_reset, "close_s": end - t_close, "episode_s": end - t0}


def measure(n: int, k: int, inst: dict, gold: str, d: str) -> dict:
    from rewards.swe_reward import swe_reward

    t0 = time.monotonic()
    with ThreadPoolExecutor(k) as pool:
        out = list(pool.map(lambda _: episode(inst, gold, d), range(n)))
    wall = time.monotonic() - t0
    t1 = time.monotonic()
    with ThreadPoolExecutor(k) as pool:
        scores = list(pool.map(lambda p: swe_reward(p[0], metadata=inst, instances_dir=d,
                                                    harness_timeout_s=120)["score"], out))
    score_wall = time.monotonic() - t1
    mean = lambda key: sum(o[1][key] for o in out) / n  # noqa: E731
    return {"concurrency": k, "episodes": n, "wall_s": wall, "episodes_per_min": 60 * n / wall,
            "episode_s_mean": mean("episode_s"), "reset_s_mean": mean("reset_s"),
            "close_s_mean": mean("close_s"), "resolved": sum(scores) / n,
            "scored_per_min": 60 * n / score_wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=24)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "swe_env.json"))
    a = ap.parse_args()
    from sandbox_fixtures import make_swe_instance, require_docker

    require_docker()
    d = Path(tempfile.mkdtemp(prefix="swe_env_bench_"))
    inst, gold, _ = make_swe_instance(d)
    episode(inst, gold, str(d))  # warm-up: the image's first container start
    rows = [measure(a.episodes, k, inst, gold, str(d)) for k in a.concurrency]
    print(f"swe environment, scripted episodes ({os.cpu_count()} CPUs, {platform.machine()})")
    print(f"{'conc':>4} {'episodes/min':>13} {'episode s':>10} {'reset s':>8} {'close s':>8} "
          f"{'scored/min':>11} {'resolved':>9}")
    for r in rows:
        print(f"{r['concurrency']:>4} {r['episodes_per_min']:>13.1f} {r['episode_s_mean']:>10.2f} "
              f"{r['reset_s_mean']:>8.2f} {r['close_s_mean']:>8.2f} {r['scored_per_min']:>11.1f} "
              f"{r['resolved']:>9.2f}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"cpus": os.cpu_count(), "machine": platform.machine(),
                                       "rows": rows}, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
