"""A warm pool of hardened containers: each run is a `docker exec` into a ready container, and the
container's writable state is reset (or the container replaced) before anyone else uses it.

Why exec into a warm container: `docker run` costs ~0.4 s of engine and runc work on a 2-core
machine; an exec costs a few tens of milliseconds. Why reset is enough: the root filesystem is
read-only, so the only state a run can leave is processes, files on the tmpfs mounts, and SysV /
POSIX IPC objects; the reset kills every process of the sandbox user, removes those files and
objects, and checks that nothing is left. A container whose reset fails or cannot be checked is
destroyed and replaced, never reused.

The container's PID 1 is `tini` running `sleep infinity` as `nobody` (a different uid from the
sandbox user), so sandboxed code can neither signal nor ptrace it, and orphans are reaped.
"""

from __future__ import annotations

import atexit
import base64
import json
import queue
import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass

from sandboxes import sizes
from sandboxes.errors import SandboxError
from sandboxes.hardening import (
    KEEPER_UID,
    SANDBOX_UID,
    container_kwargs,
    sweep_orphans,
    tmpfs_opts,
)
from sandboxes.image import DEFAULT_IMAGE

SANDBOX_USER = f"{SANDBOX_UID}:{SANDBOX_UID}"
KILL_EXIT = 137  # 128 + SIGKILL: how an exec reports a process the kernel or we killed

# Runs as the sandbox user after every run. `kill -9 -1` reaches every process of this uid in
# the container except the shell itself (and never PID 1, which is another uid); the kernel
# does it under the task-list lock, so a fork bomb cannot outrun it. Then every writable place
# is emptied and the leftovers are counted: the pool replaces the container unless both are 0.
RESET_SCRIPT = r"""
kill -9 -1 2>/dev/null
n=0
while :; do
  left=0
  for p in /proc/[0-9]*; do [ "$p" != /proc/$$ ] && [ -O "$p" ] && left=$((left+1)); done
  [ $left -eq 0 ] && break
  n=$((n+1)); [ $n -gt 50 ] && break
  kill -9 -1 2>/dev/null; sleep 0.02
done
ipcrm --all 2>/dev/null
chmod -R u+rwX /work /tmp /dev/shm 2>/dev/null
find /work /tmp /dev/shm /dev/mqueue -mindepth 1 -delete 2>/dev/null
files=$(find /work /tmp /dev/shm /dev/mqueue -mindepth 1 2>/dev/null | wc -l)
oom=$(cat /sys/fs/cgroup/memory/memory.oom_control /sys/fs/cgroup/memory.events 2>/dev/null | sed -n 's/^oom_kill //p' | head -1)
echo "procs=$left files=$files oom=${oom:-0}"
"""


@dataclass
class ExecResult:
    exit_code: int | None  # None: killed by us (timeout, output limit) or unknown
    stdout: bytes
    stderr: bytes
    timed_out: bool
    truncated: bool  # output went over the limit; the run was killed at that point
    duration_s: float
    oom_killed: bool = False


def work_tmpfs(work_mb: int, extra: dict[str, str] | None) -> dict[str, str]:
    """The writable mounts of a run container: /work (the program's, size- and inode-capped,
    only the sandbox user's) and a small /tmp, plus any extra ones."""
    tmpfs = {"/work": tmpfs_opts(work_mb, 8192, uid=SANDBOX_UID, mode="0700"),
             "/tmp": tmpfs_opts(16, 1024)}
    tmpfs.update(extra or {})
    return tmpfs


class Sandbox:
    """One hardened, warm container. Not thread-safe: the pool hands it to one run at a time."""

    def __init__(self, client, *, image: str, memory_mb: int, cpus: float, pids_limit: int,
                 work_mb: int, kind: str = "run", extra_tmpfs: dict[str, str] | None = None):
        self.client = client
        tmpfs = work_tmpfs(work_mb, extra_tmpfs)
        kwargs = container_kwargs(kind=kind, memory_mb=memory_mb, cpus=cpus,
                                  pids_limit=pids_limit, tmpfs=tmpfs,
                                  user=f"{KEEPER_UID}:{KEEPER_UID}", init=True)
        self.container = client.containers.run(
            image, ["sleep", "infinity"], name=f"cispo-{kind}-{uuid.uuid4().hex[:10]}", **kwargs)
        self.oom_kills = 0  # the cgroup's oom_kill counter after the last reset
        self.uses = 0

    def exec(self, argv: list[str], *, stdin: bytes = b"", timeout_s: float,
             output_limit: int, user: str = SANDBOX_USER, workdir: str = "/work",
             env: dict[str, str] | None = None) -> ExecResult:
        """Run argv to completion, the deadline, or the output limit, whichever comes first.

        On a deadline or the output limit the run is killed from outside (every process of the
        sandbox user) before this returns; the caller must still reset before reuse.
        """
        api = self.client.api
        t0 = time.monotonic()
        deadline = t0 + timeout_s
        eid = api.exec_create(self.container.id, argv, stdin=True, stdout=True, stderr=True,
                              user=user, workdir=workdir, environment=env)["Id"]
        sock = api.exec_start(eid, socket=True)
        raw: socket.socket = sock._sock
        writer = threading.Thread(target=_feed, args=(raw, stdin), daemon=True)
        writer.start()
        out, err = bytearray(), bytearray()
        timed_out = truncated = False
        try:
            while True:
                frame = _read_frame(raw, deadline)
                if frame is None:
                    timed_out = True
                    break
                stream, payload = frame
                if stream == -1:  # end of stream: the process has exited
                    break
                buf = err if stream == 2 else out
                room = output_limit - len(buf)
                if len(payload) > room:
                    buf += payload[:max(room, 0)]
                    truncated = True
                    break
                buf += payload
        finally:
            _hang_up(sock)  # first: the engine must not sit blocked writing output to us
            if timed_out or truncated:
                self.kill_all()
        exit_code = None
        if not (timed_out or truncated):
            exit_code = _exit_code(api, eid)
        return ExecResult(exit_code, bytes(out), bytes(err), timed_out, truncated,
                          time.monotonic() - t0)

    def kill_all(self) -> None:
        """Kill every process of the sandbox user, from outside the run."""
        api = self.client.api
        try:
            eid = api.exec_create(self.container.id, ["sh", "-c", "kill -9 -1"],
                                  user=SANDBOX_USER)["Id"]
            sock = api.exec_start(eid, socket=True)
            try:
                deadline = time.monotonic() + 5
                while (frame := _read_frame(sock._sock, deadline)) and frame[0] != -1:
                    pass
            finally:
                _hang_up(sock)
            if frame is None or _exit_code(api, eid) != 0:
                raise SandboxError("kill did not finish")
        except Exception:  # no room to start even `kill` (pids limit): kill the container
            self.destroy()

    def reset(self) -> tuple[bool, int]:
        """(clean, new OOM kills since the last reset). Not clean → the caller must destroy it."""
        try:
            res = self.exec(["sh", "-c", RESET_SCRIPT], timeout_s=10, output_limit=4096)
        except Exception:
            return False, 0
        fields = dict(kv.split("=", 1) for kv in res.stdout.decode(errors="replace").split()
                      if "=" in kv)
        try:
            oom = int(fields.get("oom", "0"))
            clean = res.exit_code == 0 and fields["procs"] == "0" and fields["files"] == "0"
        except (KeyError, ValueError):
            return False, 0
        new_ooms, self.oom_kills = oom - self.oom_kills, oom
        return clean, new_ooms

    def destroy(self) -> None:
        try:
            self.container.remove(force=True)
        except Exception:  # already gone (removed by a sweep, or the engine restarted)
            pass


class SupervisedSandbox:
    """A run container whose PID 1 is sandboxes/servers/run_supervisor.py: a run is one JSON
    round trip over the attach socket instead of a `docker exec` (milliseconds, not tens or
    hundreds of them). Same interface as Sandbox for the pool.

    The supervisor keeps CAP_SETUID/CAP_SETGID (to start programs as the sandbox user) and
    CAP_KILL (to kill everything they leave); everything else is dropped, and the programs
    themselves run with no capabilities. The host keeps its own wall clock on every answer.
    """

    GRACE_S = 5.0  # host-side margin over the supervisor's own deadline

    def __init__(self, client, *, image: str, memory_mb: int, cpus: float, pids_limit: int,
                 work_mb: int, kind: str = "run", extra_tmpfs: dict[str, str] | None = None):
        from pathlib import Path

        self.client = client
        tmpfs = work_tmpfs(work_mb, extra_tmpfs)
        kwargs = container_kwargs(kind=kind, memory_mb=memory_mb, cpus=cpus,
                                  pids_limit=pids_limit, tmpfs=tmpfs, user="0:0")
        kwargs["cap_add"] = ["SETUID", "SETGID", "KILL"]
        kwargs.pop("detach")
        source = (Path(__file__).parent / "servers" / "run_supervisor.py").read_text()
        self.container = client.containers.create(
            image, ["python3", "-u", "-c", source], name=f"cispo-{kind}-{uuid.uuid4().hex[:10]}",
            stdin_open=True, tty=False, **kwargs)
        self.sock = self.container.attach_socket(
            params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
        self.raw: socket.socket = self.sock._sock
        self.container.start()
        self._buf = b""
        self._id = 0
        self.oom_kills = 0
        self.uses = 0
        try:
            self._call({"ping": True}, 60)
        except Exception:
            self.destroy()
            raise

    def _send(self, req: dict) -> int:
        self._id += 1
        self.raw.sendall((json.dumps(dict(req, id=self._id)) + "\n").encode())
        return self._id

    def _readline(self, deadline: float) -> dict:
        while b"\n" not in self._buf:
            frame = _read_frame(self.raw, deadline)
            if frame is None:
                raise TimeoutError("supervisor did not answer in time")
            stream, payload = frame
            if stream == -1:
                raise SandboxError("supervisor exited")
            if stream == 1:  # stderr (2) is the supervisor's own diagnostics: not protocol
                self._buf += payload
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def _call(self, req: dict, timeout_s: float) -> dict:
        rid = self._send(req)
        resp = self._readline(time.monotonic() + timeout_s)
        if resp.get("id") != rid:
            raise SandboxError(f"supervisor answered out of order: {str(resp)[:200]}")
        return resp

    def exec(self, argv: list[str], *, stdin: bytes = b"", timeout_s: float,
             output_limit: int, env: dict[str, str] | None = None, **_) -> ExecResult:
        t0 = time.monotonic()
        try:
            resp = self._call({"argv": argv, "stdin_b64": base64.b64encode(stdin).decode(),
                               "timeout_s": timeout_s, "output_limit": output_limit,
                               "env": env}, timeout_s + self.GRACE_S)
        except TimeoutError:  # the supervisor did not stop it: the host does, container and all
            self.destroy()
            return ExecResult(None, b"", b"", True, False, time.monotonic() - t0)
        if "error" in resp:
            raise SandboxError(f"could not start the program: {resp['error']}")
        return ExecResult(resp["exit_code"], base64.b64decode(resp["stdout_b64"]),
                          base64.b64decode(resp["stderr_b64"]), resp["timed_out"],
                          resp["truncated"], time.monotonic() - t0, resp["oom_killed"])

    def reset(self) -> tuple[bool, int]:
        """Read the supervisor's report of its reset after the last run."""
        try:
            resp = self._readline(time.monotonic() + 15)
            r = resp["reset"]
            return r["procs"] == 0 and r["files"] == 0 and resp["id"] == self._id, 0
        except Exception:
            return False, 0

    def kill_all(self) -> None:
        self.destroy()

    def destroy(self) -> None:
        try:
            _hang_up(self.sock)
        except Exception:
            pass
        try:
            self.container.remove(force=True)
        except Exception:  # already gone
            pass


def _hang_up(sock) -> None:
    # shutdown, not just close: the SDK's response object holds another reference to the
    # socket, and a close alone would leave the engine blocked writing output nobody reads.
    try:
        sock._sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def _feed(raw: socket.socket, data: bytes) -> None:
    """Write stdin, then half-close so the program sees end of file."""
    try:
        if data:
            raw.sendall(data)
        raw.shutdown(socket.SHUT_WR)
    except OSError:  # the program exited (or was killed) without reading all of it
        pass


def _read_exact(raw: socket.socket, n: int, deadline: float) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        raw.settimeout(left)
        try:
            got = raw.recv(min(n - len(chunks), 1 << 20))
        except TimeoutError:
            return None
        except OSError:
            got = b""
        if not got:
            return b""
        chunks += got
    return bytes(chunks)


def _read_frame(raw: socket.socket, deadline: float) -> tuple[int, bytes] | None:
    """One multiplexed frame (8-byte header: stream id, 3 zero bytes, big-endian size).
    (-1, b"") at end of stream; None at the deadline."""
    header = _read_exact(raw, 8, deadline)
    if header is None:
        return None
    if len(header) < 8:
        return -1, b""
    size = struct.unpack(">I", header[4:])[0]
    payload = _read_exact(raw, size, deadline)
    if payload is None:
        return None
    return header[0], payload


def _exit_code(api, eid: str) -> int | None:
    # The stream can close a moment before the engine records the exit code.
    for _ in range(50):
        info = api.exec_inspect(eid)
        if not info.get("Running"):
            return info.get("ExitCode")
        time.sleep(0.005)
    return None


class SandboxPool:
    """`size` warm containers; at most `size` runs at once (a run waits for a free container)."""

    def __init__(self, image: str = DEFAULT_IMAGE, size: int = 2, *, memory_mb: int | str = 512,
                 cpus: float = 1.0, pids_limit: int = 128, work_mb: int = 64,
                 output_limit_bytes: int = 1 << 20, kind: str = "run",
                 extra_tmpfs: dict[str, str] | None = None, mode: str = "supervisor"):
        from sandboxes.engine import connect

        if mode not in MODES:
            raise ValueError(f"pool mode {mode!r}: choose one of {sorted(MODES)}")
        self.mode = mode
        if size < 1:
            raise ValueError(f"pool size {size}: need at least one container")
        self.client = connect()
        sweep_orphans(self.client)
        memory_mb = sizes.memory_mb(memory_mb, "memory_mb")
        self._spec = dict(image=image, memory_mb=memory_mb, cpus=cpus, pids_limit=pids_limit,
                          work_mb=work_mb, kind=kind, extra_tmpfs=extra_tmpfs)
        self.image, self.memory_mb, self.size = image, memory_mb, size
        self.output_limit = output_limit_bytes
        self.stats = {"runs": 0, "timeouts": 0, "oom_kills": 0, "truncated": 0,
                      "resets": 0, "replacements": 0, "replace_failures": 0}
        self._lock = threading.Lock()
        self._idle: queue.Queue[Sandbox | None] = queue.Queue()
        self._recyclers: list[threading.Thread] = []
        self._closed = False
        self._all: set[Sandbox] = set()
        try:
            for _ in range(size):
                self._idle.put(self._new())
        except Exception as e:
            self.close()
            raise SandboxError(f"could not start sandbox container from image {image!r}: {e}\n"
                               "  Build the default image with `python -m sandboxes.image build`"
                               " or name an existing one.") from e
        atexit.register(self.close)

    def _new(self) -> Sandbox:
        sb = MODES[self.mode](self.client, **self._spec)
        with self._lock:
            self._all.add(sb)
        return sb

    def _drop(self, sb: Sandbox) -> None:
        sb.destroy()
        with self._lock:
            self._all.discard(sb)

    def run(self, argv: list[str], *, stdin: bytes = b"", timeout_s: float,
            env: dict[str, str] | None = None, wait_s: float = 600) -> ExecResult:
        """Run argv as the sandbox user in /work of a clean container; the container is reset
        before its next use (in the background unless this run went wrong)."""
        if self._closed:
            raise SandboxError("sandbox pool is closed")
        try:
            sb = self._idle.get(timeout=wait_s)
        except queue.Empty:
            raise SandboxError(f"no sandbox container free within {wait_s} s") from None
        if sb is None:  # a replacement failed earlier: try once more now
            try:
                sb = self._new()
            except Exception as e:
                self._idle.put(None)
                raise SandboxError(f"sandbox container could not be started: {e}") from e
        try:
            res = sb.exec(argv, stdin=stdin, timeout_s=timeout_s, output_limit=self.output_limit,
                          env=env)
        except Exception as e:
            self._recycle(sb, healthy=False)
            raise SandboxError(f"sandbox run failed: {type(e).__name__}: {e}") from e
        sb.uses += 1
        with self._lock:
            self.stats["runs"] += 1
            self.stats["timeouts"] += res.timed_out
            self.stats["truncated"] += res.truncated
        if res.exit_code == KILL_EXIT or res.timed_out or res.truncated:
            # Was it the OOM killer? The exec mode's reset reads the cgroup's counter (the
            # supervisor already said); do it now.
            res.oom_killed = self._recycle(sb, healthy=True) or res.oom_killed
        else:
            t = threading.Thread(target=self._recycle, args=(sb, True), daemon=True)
            with self._lock:
                self._recyclers = [r for r in self._recyclers if r.is_alive()] + [t]
            t.start()
        with self._lock:
            self.stats["oom_kills"] += res.oom_killed
        return res

    def _recycle(self, sb: Sandbox, healthy: bool) -> bool:
        """Reset sb and put it back, or replace it. Returns whether an OOM kill was seen."""
        clean, ooms = sb.reset() if healthy else (False, 0)
        with self._lock:
            self.stats["resets"] += 1
        if clean and not self._closed:
            self._idle.put(sb)
            return ooms > 0
        self._drop(sb)
        if self._closed:
            return ooms > 0
        try:
            new = self._new()
            with self._lock:
                self.stats["replacements"] += 1
        except Exception:  # engine trouble: the next run retries and reports the error
            new = None
            with self._lock:
                self.stats["replace_failures"] += 1
        self._idle.put(new)
        return ooms > 0

    def wait_idle(self, timeout_s: float = 30) -> None:
        """Wait for background resets to finish (tests and benchmarks look at a settled pool)."""
        deadline = time.monotonic() + timeout_s
        for t in list(self._recyclers):
            t.join(timeout=max(0.0, deadline - time.monotonic()))

    def containers(self) -> list:
        with self._lock:
            return [sb.container for sb in self._all]

    def close(self) -> None:
        """Remove every container of this pool (waits for background resets first)."""
        self._closed = True
        for t in list(self._recyclers):
            t.join(timeout=15)
        with self._lock:
            boxes, self._all = list(self._all), set()
        for sb in boxes:
            sb.destroy()

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# "supervisor": runs are JSON round trips to a PID-1 supervisor (fast; keeps 3 capabilities
# for PID 1 only). "exec": runs are `docker exec`s into a `sleep` container (every capability
# dropped; tens to hundreds of ms more per run). docs/sandboxes.md compares them.
MODES = {"supervisor": SupervisedSandbox, "exec": Sandbox}
