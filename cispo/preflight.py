"""`python -m cispo.train +exp=NAME ray.address=auto preflight=true`: check the cluster, train nothing.

Joins the Ray cluster the run would use (or, without `ray.address`, looks at this machine) and
checks, with a task pinned to each node:

- the node answers within `TASK_TIMEOUT_S`;
- `run_dir` is shared: the driver writes a token in run_dir/.preflight/, every node reads it and
  writes one of its own, which the driver reads back. Learner ranks write checkpoint shards there
  and engines load run_dir/base_model, so every node that may run them must see the same files
  (sandbox nodes, which Ray gives no CPUs to, only score and are exempt);
- on the nodes that score (those advertising `sandbox.resource` with `sandbox.placement=actors`,
  else this machine): a Docker engine answers, the sandbox image is there, and one hardened
  container runs a program (`sandboxes.health.check`);
- the GPUs the run asks for, and (with actors) at least `cluster.cpu_nodes` sandbox nodes.

Prints a table, writes run_dir/preflight.json, exits 1 naming what to fix.
"""

from __future__ import annotations

import json
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any

from cispo.config_check import local_ray_problems, resource_problems, value_problems

TASK_TIMEOUT_S = 120.0  # a node's checks (a Docker run included) must finish within this


def node_checks(run_dir: str, token: str, node_key: str, docker: dict | None) -> dict:
    """What one node sees: the driver's token in run_dir, its own written back, and (for a
    scoring node) the sandbox check. Runs on that node."""
    import os
    import socket

    out: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
    probe = Path(run_dir) / ".preflight" / token
    try:
        seen = (probe / "driver").read_text()
        out["run_dir"] = "shared" if seen == token else f"differs ({seen[:20]!r})"
    except OSError as e:
        out["run_dir"] = f"not shared: {probe / 'driver'} is not readable here ({e.strerror})"
    try:
        (probe / f"node-{node_key}").write_text(token)
    except OSError as e:
        out["run_dir_write"] = f"cannot write {probe}: {e.strerror}"
    if docker is not None:
        from sandboxes.health import check  # on this node, with this node's engine

        out["sandbox"] = check(docker["image"], docker["backend"])
    return out


def run_preflight(cfg: Any) -> dict:
    """Check, print, write run_dir/preflight.json; exits 1 when something would stop the run."""
    run_dir = Path(cfg.run_dir).resolve()
    token = secrets.token_hex(8)
    probe = run_dir / ".preflight" / token
    probe.mkdir(parents=True, exist_ok=True)
    (probe / "driver").write_text(token)
    actors = cfg.sandbox.placement == "actors"
    docker = {"image": cfg.sandbox.image, "backend": cfg.sandbox.backend}
    if cfg.ray.address:
        nodes, problems = _cluster(cfg, str(run_dir), token, docker if actors else None)
        if not actors:  # the trainer's process scores: this machine needs the engine
            nodes[0]["sandbox"] = _here(docker)
    else:
        nodes = [{"where": "this machine", "role": "driver", "node_id": "local",
                  **node_checks(str(run_dir), token, "local", docker)}]
        problems = []
    for n in nodes:  # the other direction: what each node wrote, read here
        written = probe / f"node-{n['node_id']}"
        if n.get("run_dir") == "shared" and not (written.exists() and written.read_text() == token):
            n["run_dir"] = "not shared: the file it wrote is not visible to the driver"
        problems += _node_problems(n)
    problems = value_problems(cfg) + ([] if cfg.ray.address else local_ray_problems(cfg)) + problems
    shutil.rmtree(probe, ignore_errors=True)
    try:
        probe.parent.rmdir()  # unless another check is under way there
    except OSError:
        pass
    result = {"ok": not problems, "run_dir": str(run_dir), "nodes": nodes, "problems": problems}
    (run_dir / "preflight.json").write_text(json.dumps(result, indent=2) + "\n")
    print(format_table(result))
    print(f"written: {run_dir / 'preflight.json'}")
    if problems:
        sys.exit(1)
    return result


def _here(docker: dict) -> dict:
    from sandboxes.health import check

    return check(docker["image"], docker["backend"])


def _cluster(cfg: Any, run_dir: str, token: str, docker: dict | None) -> tuple[list[dict], list[str]]:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy


    if not ray.is_initialized():
        ray.init(address=cfg.ray.address, log_to_driver=False, logging_level="WARNING")
    me = ray.get_runtime_context().get_node_id()
    res_name = cfg.sandbox.resource
    task = ray.remote(num_cpus=0, max_retries=0)(node_checks)
    nodes, pending = [], {}
    for n in ray.nodes():
        r = n.get("Resources", {})
        sandbox = r.get(res_name, 0) >= 1
        role = ("driver" if n["NodeID"] == me else
                "sandbox" if sandbox and not r.get("GPU") else
                f"gpu x{int(r['GPU'])}" if r.get("GPU") else "cpu")
        if sandbox and role != "sandbox":
            role += " + sandbox"
        row = {"where": f"{n.get('NodeManagerAddress')} ({n.get('NodeManagerHostname')})",
               "role": role, "node_id": n["NodeID"], "slots": int(r.get(res_name, 0)),
               "answered": bool(n.get("Alive"))}
        nodes.append(row)
        if n.get("Alive"):
            ref = task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
                               ).remote(run_dir, token, n["NodeID"], docker if sandbox else None)
            pending[ref] = row
    ready, late = ray.wait(list(pending), num_returns=len(pending), timeout=TASK_TIMEOUT_S)
    for ref in ready:
        try:
            pending[ref].update(ray.get(ref))
        except Exception as e:
            pending[ref].update(answered=False, error=str(e).splitlines()[-1][:300])
    for ref in late:
        pending[ref].update(answered=False, error=f"no answer within {TASK_TIMEOUT_S:g} s")
    nodes.sort(key=lambda n: (n["role"] != "driver", n["role"], n["where"]))
    problems = list(resource_problems(cfg, ray.cluster_resources().get("GPU", 0), "the Ray cluster"))
    if docker is not None:
        have = sum(1 for n in nodes if "sandbox" in n["role"] and n["answered"])
        want = max(1, cfg.cluster.cpu_nodes)
        if have < want:
            problems.append(f"sandbox.placement=actors: {have} node(s) advertise the '{res_name}' "
                            f"resource, the run plans {want} (cluster.cpu_nodes); start them with "
                            f"ray start --resources='{{\"{res_name}\": N}}' (launch/)")
    return nodes, problems


def _node_problems(n: dict) -> list[str]:
    where = f"{n['where']} [{n['role']}]"
    if not n.get("answered", True):
        return [f"{where}: does not answer ({n.get('error', 'Ray lists it as dead')})"]
    out = []
    if n["role"] != "sandbox" and n.get("run_dir") != "shared":
        out.append(f"{where}: run_dir {n.get('run_dir')}; put run_dir on a filesystem every "
                   "node mounts at the same path (NFS, Lustre; a ReadWriteMany volume on Kubernetes)")
    if n.get("run_dir_write"):
        out.append(f"{where}: {n['run_dir_write']}")
    sb = n.get("sandbox")
    if sb is not None and not sb.get("ok"):
        out += [f"{where}: {p}" for p in sb.get("problems", [])]
    return out


def format_table(result: dict) -> str:
    rows = [("node", "role", "answers", "run_dir", "docker", "image", "sandbox run")]
    for n in result["nodes"]:
        sb = n.get("sandbox") or {}
        run_dir = n.get("run_dir", "-")
        rows.append((n["where"][:40], n["role"], "yes" if n.get("answered", True) else "NO",
                     "shared" if run_dir == "shared" else ("-" if n["role"] == "sandbox" and run_dir != "shared"
                                                           else "NO"),
                     sb.get("docker") or ("-" if not sb else "NO"),
                     sb.get("image") or "-", sb.get("run") or ("-" if not sb else "NO")))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    verdict = "preflight: ok" if result["ok"] else f"preflight: {len(result['problems'])} problem(s)"
    return "\n".join([*lines, verdict, *[f"  - {p}" for p in result["problems"]]])
