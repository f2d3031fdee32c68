"""A Ray cluster of several nodes on this machine, for tests and benchmarks: a head and worker
nodes, each a real `ray start` with its own ports and environment (e.g. a sandbox node with the
`sandbox` resource and Docker, a head whose DOCKER_HOST points nowhere), under one private temp
dir. `stop()` kills only this cluster's processes; other Ray instances on the machine (other
tests, other users) are left alone."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NODE_PORT_FLAGS = ("node-manager-port", "object-manager-port", "metrics-export-port",
                   "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port")
NOWHERE = "unix:///nonexistent/docker.sock"  # a DOCKER_HOST at which no engine answers


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class LoopbackCluster:
    def __init__(self):
        # short: Ray's socket paths must stay under 108 characters
        self.temp_dir = tempfile.mkdtemp(prefix="cispo-lc-", dir="/tmp")
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "token",
                    "RAY_AUTH_TOKEN": secrets.token_hex(16), "RAY_DEDUP_LOGS": "0"}
        self.env.pop("RAY_ADDRESS", None)
        self.address: str | None = None
        self.logs: list[Path] = []

    def _start(self, args: list[str], env: dict | None, ports: list[int]) -> None:
        log = Path(self.temp_dir) / f"start-{len(self.logs)}.log"
        self.logs.append(log)
        cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--node-ip-address=127.0.0.1",
               f"--temp-dir={self.temp_dir}", *args,
               *(f"--{k}={p}" for k, p in zip(NODE_PORT_FLAGS, ports, strict=True))]
        with open(log, "w") as f:
            subprocess.run(cmd, env={**self.env, **(env or {})}, stdout=f, stderr=subprocess.STDOUT,
                           check=True, timeout=300)

    def start_head(self, num_cpus: int, env: dict | None = None) -> str:
        gcs, client, dash, *ports = free_ports(9)
        self._start(["--head", f"--port={gcs}", f"--num-cpus={num_cpus}", "--num-gpus=0",
                     "--include-dashboard=false", f"--ray-client-server-port={client}",
                     f"--dashboard-port={dash}"], env, ports)
        self.address = f"127.0.0.1:{gcs}"
        return self.address

    def add_node(self, num_cpus: int = 0, resources: dict | None = None,
                 env: dict | None = None) -> None:
        args = [f"--address={self.address}", f"--num-cpus={num_cpus}", "--num-gpus=0"]
        if resources:
            args.append(f"--resources={json.dumps(resources)}")
        self._start(args, env, free_ports(6))

    def wait_for_nodes(self, n: int, timeout_s: float = 120.0) -> None:
        """Until `n` nodes are alive (asked from a fresh process: the caller may have a Ray of
        its own initialised)."""
        code = ("import ray,sys,time; ray.init(address=sys.argv[1], logging_level='ERROR', "
                "log_to_driver=False); d=time.monotonic()+float(sys.argv[3])\n"
                "while sum(x['Alive'] for x in ray.nodes()) < int(sys.argv[2]):\n"
                "    assert time.monotonic() < d, ray.nodes(); time.sleep(1)")
        subprocess.run([sys.executable, "-c", code, self.address, str(n), str(timeout_s)],
                       env=self.env, check=True, timeout=timeout_s + 60)

    def processes(self) -> list[int]:
        """This cluster's processes: those whose command line names its temp dir."""
        pids = []
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and self.temp_dir in (proc / "cmdline").read_text():
                    pids.append(int(proc.name))
            except OSError:
                continue
        return pids

    def stop(self) -> list[int]:
        """Kill this cluster's processes (raylets, GCS; their workers exit with them); returns
        those that were still running after a grace period."""
        for sig in (15, 9):
            for pid in self.processes():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 10
            while self.processes() and time.monotonic() < deadline:
                time.sleep(0.5)
        left = self.processes()
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return left

    def __enter__(self) -> LoopbackCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
