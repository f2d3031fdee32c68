"""Scoring throughput through scorer actors (sandbox.placement=actors) on 1 and on 2 sandbox nodes.

    python bench/scorers.py [--n 400] [--slots 2] [--out bench/results/scorers.json]

First the same workload in this process (sandbox.placement=local, this machine's engine: the
path without Ray). Then it starts a Ray cluster on this machine (tests/loopback_cluster.py): a
head with no Docker engine (DOCKER_HOST points nowhere, as on a KubeRay head) and sandbox nodes,
each a `ray start --num-cpus=0 --resources='{"sandbox": SLOTS}'` on this machine's Docker
engine; this process is the driver. For 1 and then 2 sandbox nodes it builds a RewardManager
with scorer actors (sandbox.placement=actors) and scores `--n` math items whose verdicts all need
the sandbox (radicals and pi: a math-verify round trip to a warm container each; every pair
distinct, so no verdict cache answers), in batches of 64, after a warm-up batch.

On a 2-core machine the two "nodes" share the same two cores and the same Docker engine, so
this shows the path works and spreads calls over the nodes, not a speed-up. Prints a table and
writes JSON. Asserts nothing about speed.
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
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]


def measure(nodes: int, n: int, slots: int, batch: int, seed: int) -> dict:
    from math_reward import items_of, typical_pairs  # bench/math_reward.py's workloads
    from omegaconf import OmegaConf

    from cispo.config import RewardConfig, SandboxConfig
    from rewards.manager import RewardManager

    cfg = OmegaConf.structured(RewardConfig(max_concurrency=slots))
    sandbox = OmegaConf.structured(SandboxConfig(placement="actors" if nodes else "local",
                                                 num_workers=slots * max(nodes, 1), nodes_wait_s=60.0))
    t0 = time.monotonic()
    with RewardManager(cfg, sandbox) as mgr:
        start_s = time.monotonic() - t0
        rng = random.Random(seed)
        mgr.score(items_of(typical_pairs(batch, rng, integers=0.0, fractions=0.0)))  # warm-up
        items = items_of(typical_pairs(n, rng, integers=0.0, fractions=0.0))
        scorers = mgr._scorers
        before = scorers.calls_by_node() if scorers else {}
        lat, errors = [], 0.0
        t1 = time.monotonic()
        for k in range(0, n, batch):
            _, m = mgr.score(items[k:k + batch])
            lat.append(m["reward/math/latency_p50_s"])
            errors += m["reward/errors"] + m["reward/timeouts"]
        dt = time.monotonic() - t1
        after = scorers.calls_by_node() if scorers else {"local": n}
        per_node = sorted(after[k] - before.get(k, 0) for k in after)
    return {"placement": "actors" if nodes else "local", "sandbox_nodes": nodes,
            "scorers": int(m.get("sandbox/scorers_up", 0)),
            "slots": int(m.get("sandbox/scorer_slots", slots)), "items": n, "seconds": round(dt, 2),
            "items_per_s": round(n / dt, 1),
            "latency_p50_ms": round(1000 * sorted(lat)[len(lat) // 2], 1),
            "calls_per_node": per_node, "errors": errors, "scorers_start_s": round(start_s, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=400, help="verdicts per measurement")
    ap.add_argument("--slots", type=int, default=2, help="the sandbox resource of each node")
    ap.add_argument("--batch", type=int, default=64, help="items per RewardManager.score call")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "scorers.json"))
    args = ap.parse_args()

    from loopback_cluster import NOWHERE, LoopbackCluster

    load_before = os.getloadavg()
    # the same workload in this process, on this machine's engine: the path without Ray
    rows = [measure(0, args.n, args.slots, args.batch, seed=0)]
    with LoopbackCluster() as c:
        # Ray reads its auth settings when it is imported: set them first
        os.environ.update({k: c.env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")})
        os.environ["DOCKER_HOST"] = NOWHERE  # the driver has no engine: all scoring is remote
        import ray
        c.start_head(num_cpus=1, env={"DOCKER_HOST": NOWHERE})
        sandbox = {"sandbox": args.slots}
        c.add_node(resources=sandbox)
        c.wait_for_nodes(2)
        ray.init(address=c.address, logging_level="WARNING", log_to_driver=False)
        rows.append(measure(1, args.n, args.slots, args.batch, seed=1))
        c.add_node(resources=sandbox)
        c.wait_for_nodes(3)
        rows.append(measure(2, args.n, args.slots, args.batch, seed=2))
        ray.shutdown()
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(),
               "python": platform.python_version(),
               "loadavg_1m_before": round(load_before[0], 2),
               "loadavg_1m_after": round(os.getloadavg()[0], 2)}
    cols = ["placement", "sandbox_nodes", "scorers", "slots", "items", "seconds", "items_per_s",
            "latency_p50_ms", "calls_per_node", "errors", "scorers_start_s"]
    print(f"scorer actors on loopback sandbox nodes, {os.cpu_count()} CPUs shared by all nodes "
          f"(load {machine['loadavg_1m_before']} → {machine['loadavg_1m_after']})")
    print(" | ".join(f"{c:>14}" for c in cols))
    for r in rows:
        print(" | ".join(f"{r[c]!s:>14}" for c in cols))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    out.write_text(json.dumps({"bench": "scorers", "machine": machine, "args": settings,
                               "results": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
