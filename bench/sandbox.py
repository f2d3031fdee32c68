"""Benchmark: what a sandboxed code run, a scoring verdict and a SWE evaluation cost here.

    python bench/sandbox.py [--runs 30] [--seconds 10] [--swe 4] [--out bench/results/sandbox.json]

Measures (medians unless said otherwise):
- bare `python3 -c pass` on the host (same build as the image's), paired with
  `python3 -c pass` through `sandboxes.run` on a warm pool, in both pool modes (`supervisor`:
  a JSON round trip to the container's PID 1; `exec`: a `docker exec`); the reset between
  runs is outside the latency and inside the throughput;
- cold: a fresh hardened container per run (`docker run --rm`-equivalent through the SDK);
- sustained runs/s with as many client threads as pool containers, for --seconds;
- scoring-worker verdict overhead: a `ping` round trip to a warm worker (docker and process);
- SWE evaluations per minute on the test repository (tests/sandbox_fixtures.py), 1 and 2 at once.
Prints a table and writes JSON. Asserts nothing about speed.
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
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def ms(xs: list[float]) -> float:
    return round(statistics.median(xs) * 1000, 1)


# The same interpreter build as the image's (Debian bookworm's python3.11) when the host has
# it; a pyenv shim on PATH would add ~100 ms of bash and skew the baseline.
PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def host_pass() -> None:
    subprocess.run([PY, "-c", "pass"], check=True)


def bench_warm(n: int, seconds: float, mode: str) -> dict:
    """Warm-pool numbers for one pool mode, keys prefixed with the mode."""
    from sandboxes import run
    from sandboxes.image import DEFAULT_IMAGE

    run.shutdown()
    pool = run.pool_for(DEFAULT_IMAGE, 512, mode=mode)
    for _ in range(3):  # warm up: first runs pay for page cache and engine caches
        run.run_code("pass")
    pool.wait_idle()

    def warm(src: str, lang: str = "python") -> float:
        pool.wait_idle()  # one run at a time; the background reset is not in the latency
        t = time.perf_counter()
        r = run.run_code(src, language=lang)
        dt = time.perf_counter() - t
        assert r.returncode == 0, r
        return dt

    res = {}
    # Paired and interleaved (host, warm, host, warm, ...): this machine is shared, so its load
    # drifts; the per-pair difference is the added latency under the same load.
    host_t, warm_t = [], []
    for _ in range(n):
        host_t += timed(host_pass, 1)
        warm_t.append(warm("pass"))
    res["host_python_pass_ms"] = ms(host_t)
    res["warm_python_pass_ms"] = ms(warm_t)
    res["warm_added_ms"] = ms([w - h for w, h in zip(warm_t, host_t, strict=True)])
    res["warm_sh_true_ms"] = ms([warm("true", "sh") for _ in range(n)])
    # Bare interpreter start inside a sandbox (same cgroup limits), timed from inside.
    inside = run.run_code(
        "import subprocess, statistics, time\nts = []\nfor _ in range(N):\n"
        "    t = time.perf_counter(); subprocess.run(['python3', '-c', 'pass'])\n"
        "    ts.append(time.perf_counter() - t)\nprint(statistics.median(ts))\n"
        .replace("N", str(n)), timeout_s=120)
    res["inside_python_pass_ms"] = round(float(inside.stdout) * 1000, 1)
    res["warm_added_vs_inside_ms"] = round(res["warm_python_pass_ms"]
                                           - res["inside_python_pass_ms"], 1)
    # Sustained: one client thread per container; each run's reset is included.
    count, stop = [0], time.monotonic() + seconds
    lock = threading.Lock()

    def client_loop():
        while time.monotonic() < stop:
            assert run.run_code("pass").returncode == 0
            with lock:
                count[0] += 1

    t0 = time.monotonic()
    threads = [threading.Thread(target=client_loop) for _ in range(pool.size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    res["sustained_runs_per_s"] = round(count[0] / (time.monotonic() - t0), 1)
    res["pool_size"] = pool.size
    res["pool_stats"] = dict(pool.stats)
    run.shutdown()
    return {f"{mode}_{k}": v for k, v in res.items()}


def bench_cold(n: int) -> dict:
    """A fresh hardened container per run, the `docker run --rm` way (through the SDK)."""
    from sandboxes.engine import connect
    from sandboxes.hardening import SANDBOX_UID, container_kwargs, tmpfs_opts
    from sandboxes.image import DEFAULT_IMAGE

    client = connect()
    kw = container_kwargs(kind="bench", memory_mb=512, cpus=1.0, pids_limit=128,
                          tmpfs={"/work": tmpfs_opts(64, 8192, uid=SANDBOX_UID, mode="0700")},
                          user=f"{SANDBOX_UID}:{SANDBOX_UID}")
    kw["detach"] = False

    def cold():
        client.containers.run(DEFAULT_IMAGE, ["python3", "-c", "pass"], remove=True, **kw)

    host_t, cold_t = [], []
    for _ in range(n):
        host_t += timed(host_pass, 1)
        cold_t += timed(cold, 1)
    return {"cold_python_pass_ms": ms(cold_t),
            "cold_added_ms": ms([c - h for c, h in zip(cold_t, host_t, strict=True)])}


def bench_scoring(n: int) -> dict:
    from sandboxes.scoring import ScoringPool, WorkerSpec

    res = {}
    for backend in ("docker", "process"):
        pool = ScoringPool(WorkerSpec(backend=backend), 1)
        try:
            w = pool._all[0]
            for _ in range(5):
                w.request({"ping": True}, 10)
            res[f"verdict_overhead_{backend}_ms"] = round(statistics.median(
                timed(lambda w=w: w.request({"ping": True}, 10), n * 5)) * 1000, 2)
            res[f"math_verdict_{backend}_ms"] = ms(timed(lambda p=pool: p.request(
                {"gold": "\\boxed{\\frac{1}{2}}", "answer": "\\boxed{0.5}"}, 30), n))
        finally:
            pool.close()
    return res


def bench_swe(k: int) -> dict:
    from sandbox_fixtures import make_swe_instance

    from sandboxes.swe import evaluate

    d = Path(tempfile.mkdtemp(prefix="cispo-bench-swe-"))
    inst, gold, _ = make_swe_instance(d)
    r = evaluate(inst, gold, timeout_s=120, instances_dir=str(d))  # warm-up, and a check
    assert r["resolved"], r
    res = {}
    for workers in (1, 2):
        t0 = time.monotonic()
        with ThreadPoolExecutor(workers) as ex:
            reps = list(ex.map(lambda _: evaluate(inst, gold, timeout_s=120,
                                                  instances_dir=str(d)), range(k)))
        wall = time.monotonic() - t0
        assert all(x["resolved"] for x in reps)
        res[f"swe_evals_per_min_w{workers}"] = round(k / wall * 60, 1)
        res[f"swe_eval_median_s_w{workers}"] = round(
            statistics.median(x["duration_s"] for x in reps), 2)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=30, help="samples per latency median")
    ap.add_argument("--seconds", type=float, default=10, help="sustained-throughput window")
    ap.add_argument("--swe", type=int, default=4, help="SWE evaluations per setting")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/sandbox.json")
    args = ap.parse_args()
    t0 = time.monotonic()
    load_start = round(os.getloadavg()[0], 2)
    res = {**bench_cold(max(5, args.runs // 3)),
           **bench_warm(args.runs, args.seconds, "supervisor"),
           **bench_warm(args.runs, args.seconds, "exec"),
           **bench_scoring(args.runs), **bench_swe(args.swe)}
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(),
               "python": platform.python_version(),
               "loadavg_1m_at_start": load_start,
               "loadavg_1m_at_end": round(os.getloadavg()[0], 2)}
    out = {"machine": machine, "args": {k: str(v) for k, v in vars(args).items()},
           "results": res, "bench_wall_s": round(time.monotonic() - t0, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"{'measure':34s} {'value':>10s}")
    for key, v in res.items():
        if not isinstance(v, dict):
            print(f"{key:34s} {v:>10}")
    print(f"machine: {machine}\nwrote {args.out}")


if __name__ == "__main__":
    main()
