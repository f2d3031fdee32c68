"""Warm scoring workers: a long-lived sandboxed process that answers JSON-lines requests.

A verdict then costs one round trip, not a container start. A worker that exceeds its wall
clock, dies, or runs out of memory is killed and replaced; the request that caused it gets a
`SandboxError` (the reward manager scores it by policy and counts it).

Backends:
- `docker`: one hardened container per worker (`--network none`, memory = memory+swap, pids and
  CPU limits, all capabilities dropped, no-new-privileges, read-only root with a small tmpfs,
  unprivileged user), stdin/stdout attached through the Docker SDK.
- `process`: a local subprocess with rlimits. NOT isolated; only when configured explicitly.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from sandboxes import sizes
from sandboxes.errors import SandboxError, SandboxTimeout
from sandboxes.hardening import LABEL, SANDBOX_UID, container_kwargs, tmpfs_opts
from sandboxes.hardening import sweep_orphans as _sweep

SERVERS = Path(__file__).parent / "servers"
__all__ = ["LABEL", "SandboxError", "SandboxTimeout", "ScoringPool", "ScoringWorker",
           "WorkerSpec", "sweep_orphans"]


@dataclass
class WorkerSpec:
    server: str = "math_verdict_server.py"  # file in sandboxes/servers/
    backend: str = "docker"
    image: str = "cispo-sandbox:bookworm-1"
    memory_mb: int | str = 512  # MB, or Docker's size syntax ("1g"): sandboxes.sizes
    cpus: float = 1.0
    pids_limit: int = 64
    start_timeout_s: float = 60.0

    def __post_init__(self):
        self.memory_mb = sizes.memory_mb(self.memory_mb, "memory_mb")

    def source(self) -> str:
        return (SERVERS / self.server).read_text()


class _DockerChannel:
    """stdin/stdout of a fresh hardened container, through the engine's attach socket."""

    def __init__(self, spec: WorkerSpec):
        from sandboxes.engine import connect

        self.client = connect()
        # The same lockdown as every other sandbox (sandboxes.hardening); the server is PID 1
        # here because it is the only thing the container ever runs.
        self.container = self.client.containers.create(
            spec.image, command=["python3", "-u", "-c", spec.source()],
            name=f"cispo-scorer-{uuid.uuid4().hex[:10]}",
            stdin_open=True, tty=False,
            **container_kwargs(kind="scorer", memory_mb=spec.memory_mb, cpus=spec.cpus,
                               pids_limit=spec.pids_limit, tmpfs={"/tmp": tmpfs_opts(16, 1024)},
                               user=f"{SANDBOX_UID}:{SANDBOX_UID}"),
        )
        self.sock = self.container.attach_socket(
            params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
        self.raw: socket.socket = self.sock._sock
        self.container.start()
        self._buf = b""
        self._stderr = b""

    def send(self, data: bytes) -> None:
        self.raw.sendall(data)

    def readline(self, deadline: float) -> bytes:
        # Attach streams are multiplexed: 8-byte header (stream id, 3 zero bytes, big-endian size).
        while b"\n" not in self._buf:
            stream, payload = self._read_frame(deadline)
            if stream == 2:
                self._stderr = (self._stderr + payload)[-4000:]
            else:
                self._buf += payload
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def _read_exact(self, n: int, deadline: float) -> bytes:
        chunks = b""
        while len(chunks) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SandboxTimeout("no answer within the wall-clock limit")
            self.raw.settimeout(left)
            try:
                got = self.raw.recv(n - len(chunks))
            except TimeoutError as e:
                raise SandboxTimeout("no answer within the wall-clock limit") from e
            if not got:
                raise SandboxError(f"sandbox exited ({self.exit_detail()})")
            chunks += got
        return chunks

    def _read_frame(self, deadline: float) -> tuple[int, bytes]:
        header = self._read_exact(8, deadline)
        stream, size = header[0], struct.unpack(">I", header[4:])[0]
        return stream, self._read_exact(size, deadline)

    def exit_detail(self) -> str:
        try:
            self.container.reload()
            st = self.container.attrs["State"]
            return f"exit {st.get('ExitCode')}, oom_killed={st.get('OOMKilled')}, stderr={self._stderr[-300:]!r}"
        except Exception:
            return f"stderr={self._stderr[-300:]!r}"

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            try:
                self.container.remove(force=True)
            except Exception:
                pass


class _ProcessChannel:
    """The same protocol over a local subprocess: rlimits, but NO isolation."""

    def __init__(self, spec: WorkerSpec):
        mem = spec.memory_mb << 20

        def limits():  # runs in the child before exec
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
            os.setsid()

        self.proc = subprocess.Popen([sys.executable, "-u", "-c", spec.source()],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, preexec_fn=limits)
        self._buf = b""

    def send(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def readline(self, deadline: float) -> bytes:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise SandboxTimeout("no answer within the wall-clock limit")
            got = os.read(fd, 65536)
            if not got:
                raise SandboxError(f"scorer process exited ({self.proc.poll()})")
            self._buf += got
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def close(self) -> None:
        try:
            os.killpg(self.proc.pid, 9)
        except ProcessLookupError:
            pass
        self.proc.wait()


class ScoringWorker:
    """One warm sandboxed server; `request` sends one JSON object and returns the answer."""

    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.channel = None
        self.requests = 0
        self._start()

    def _start(self) -> None:
        if self.spec.backend == "docker":
            self.channel = _DockerChannel(self.spec)
        elif self.spec.backend == "process":
            self.channel = _ProcessChannel(self.spec)
        else:
            raise ValueError(f"sandbox.backend={self.spec.backend!r}: use 'docker' or 'process'")
        try:
            self._roundtrip({"id": 0, "ping": True}, self.spec.start_timeout_s)
        except SandboxError as e:
            self.close()
            raise SandboxError(f"sandbox worker did not start: {e}") from e

    def _roundtrip(self, req: dict, timeout_s: float) -> dict:
        self.channel.send((json.dumps(req) + "\n").encode())
        line = self.channel.readline(time.monotonic() + timeout_s)
        try:
            return json.loads(line)
        except ValueError as e:
            raise SandboxError(f"bad answer from sandbox: {line[:200]!r}") from e

    def request(self, req: dict, timeout_s: float) -> dict:
        """One request; on timeout/crash the worker is replaced and SandboxError raised."""
        self.requests += 1
        req = dict(req, id=self.requests)
        try:
            resp = self._roundtrip(req, timeout_s)
        except SandboxError:
            self.restart()
            raise
        if resp.get("id") != req["id"]:
            self.restart()
            raise SandboxError(f"sandbox answered out of order: {resp}")
        return resp

    def restart(self) -> None:
        self.close()
        self._start()

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None


class ScoringPool:
    """A fixed number of warm workers shared by threads; each request takes a free one."""

    def __init__(self, spec: WorkerSpec, num_workers: int = 1):
        if spec.backend == "docker":
            sweep_orphans()
        self.spec = spec
        self._idle: queue.Queue[ScoringWorker] = queue.Queue()
        self._all: list[ScoringWorker] = []
        self.stats = {"requests": 0, "timeouts": 0, "crashes": 0, "restarts": 0}
        self._lock = threading.Lock()
        for _ in range(num_workers):
            w = ScoringWorker(spec)
            self._all.append(w)
            self._idle.put(w)
        atexit.register(self.close)

    def request(self, req: dict, timeout_s: float) -> dict:
        w = self._idle.get()
        try:
            with self._lock:
                self.stats["requests"] += 1
            return w.request(req, timeout_s)
        except SandboxTimeout:
            with self._lock:
                self.stats["timeouts"] += 1
                self.stats["restarts"] += 1
            raise
        except SandboxError:
            with self._lock:
                self.stats["crashes"] += 1
                self.stats["restarts"] += 1
            raise
        finally:
            self._idle.put(w)

    def close(self) -> None:
        for w in self._all:
            w.close()
        self._all.clear()


def sweep_orphans() -> int:
    """Remove sandbox containers left by crashed runs on this host (owner process gone)."""
    return _sweep()
