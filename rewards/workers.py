"""Where reward calls run, and how a call that overruns its wall clock is ended.

`ProcessPool`: warm worker processes (forkserver children, each its own process group). A call
is sent over a pipe; if no answer comes within the limit the whole process group is SIGKILLed and
a fresh worker takes its place. This stops anything: a `while True`, a sympy simplification stuck
in C, a subprocess the reward started. (`signal.alarm` would only interrupt the main thread, and
only between bytecodes.)

`run_in_thread`: for rewards whose untrusted work is already bounded elsewhere (a sandbox
container killed at its own limit, a Ray actor). The manager stops waiting at the limit; the
abandoned thread is counted, since a thread cannot be killed.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import queue
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class CallResult:
    status: str  # "ok" | "error" | "timeout"
    value: Any = None  # the reward's return value when ok
    error: str | None = None  # "Type: message" when error/timeout
    latency_s: float = 0.0


def invoke(fn: Callable, kwargs: dict) -> Any:
    """Call a reward, awaiting it if it is `async def`."""
    out = fn(**kwargs)
    if inspect.isawaitable(out):
        out = asyncio.run(_await(out))
    return out


async def _await(aw):
    return await aw


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:1000]


# --- process workers -------------------------------------------------------------------------

def _child_main() -> None:
    """Entry point of a worker process: `python -c ... <read fd> <write fd> <memory_mb> paths...`.

    Receives (fn, kwargs) pickles, answers ("ok", value) or ("error", text). A plain subprocess
    (not multiprocessing's spawn/forkserver) so that the parent's `__main__` is never re-imported
    and a script without an `if __name__ == "__main__"` guard still works.
    """
    import sys
    from multiprocessing.connection import Connection

    rfd, wfd, memory_mb, *modules = sys.argv[1:]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the manager's to handle
    if int(memory_mb) > 0:
        import resource

        lim = int(memory_mb) << 20
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    inbox, outbox = Connection(int(rfd), writable=False), Connection(int(wfd), readable=False)
    from rewards.registry import load_module

    for path in modules:  # same module names as in the manager, so pickled references resolve
        load_module(path)
    outbox.send(("ready", None))
    while True:
        try:
            msg = inbox.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        try:
            fn, kwargs = msg
            value = invoke(fn, kwargs)
            outbox.send(("ok", value))
        except BaseException as e:  # noqa: BLE001  (a reward's failure is an answer, not a crash)
            try:
                outbox.send(("error", _describe(e)))
            except Exception:
                return


class ProcessWorker:
    def __init__(self, modules: list[str], memory_mb: int, start_timeout_s: float = 60.0):
        import subprocess
        import sys
        from multiprocessing.connection import Connection

        c_read, p_write = os.pipe()  # parent → child
        p_read, c_write = os.pipe()  # child → parent
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from rewards.workers import _child_main; _child_main()",
             str(c_read), str(c_write), str(memory_mb), *modules],
            pass_fds=(c_read, c_write), env=env, stdin=subprocess.DEVNULL,
            start_new_session=True)  # own process group: the kill reaches what the reward spawns
        os.close(c_read)
        os.close(c_write)
        self.outbox = Connection(p_write, readable=False)
        self.inbox = Connection(p_read, writable=False)
        if not self.inbox.poll(start_timeout_s):
            self.kill()
            raise RuntimeError(f"reward worker did not start within {start_timeout_s:.0f} s")
        status, detail = self._recv()
        if status != "ready":
            raise RuntimeError(f"reward worker failed to start: {detail}")

    def _recv(self):
        try:
            return self.inbox.recv()
        except (EOFError, OSError):
            self.kill()
            return ("error", f"reward worker died (exit code {self.proc.returncode})")

    def call(self, fn: Callable, kwargs: dict, timeout_s: float) -> CallResult:
        t0 = time.monotonic()
        try:
            self.outbox.send((fn, kwargs))
        except Exception as e:  # unpicklable function or arguments, or a dead worker
            return CallResult("error", error=f"cannot send the call to a worker process "
                              f"({_describe(e)}); a process-isolated reward must be a "
                              "module-level function with picklable arguments",
                              latency_s=time.monotonic() - t0)
        if not self.inbox.poll(timeout_s):
            self.kill()
            return CallResult("timeout", error=f"no result within {timeout_s:g} s (worker killed)",
                              latency_s=time.monotonic() - t0)
        status, value = self._recv()
        dt = time.monotonic() - t0
        if status == "ok":
            return CallResult("ok", value=value, latency_s=dt)
        return CallResult("error", error=value, latency_s=dt)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        for c in (self.outbox, self.inbox):
            try:
                c.close()
            except (AttributeError, OSError):
                pass

    def close(self) -> None:
        try:
            self.outbox.send(None)
            self.proc.wait(1)
        except Exception:
            pass
        self.kill()  # also reaps anything the reward left running in its process group


class ProcessPool:
    """`size` warm workers shared by the manager's threads; a killed worker is replaced."""

    def __init__(self, size: int, modules: list[str], memory_mb: int | str = 0):
        from sandboxes.sizes import memory_mb as to_mb

        # MB or Docker's size syntax ("8g"); 0 = no limit
        self.modules, self.memory_mb = list(modules), to_mb(memory_mb, "reward.worker_memory_mb")
        self._idle: queue.Queue[ProcessWorker | None] = queue.Queue()
        self._lock = threading.Lock()
        self._all: list[ProcessWorker] = []
        self.restarts = 0
        for _ in range(size):
            self._idle.put(None)  # started on first use

    def call(self, fn: Callable, kwargs: dict, timeout_s: float) -> CallResult:
        w = self._idle.get()
        try:
            if w is None or not w.alive:
                if w is not None:
                    with self._lock:
                        self.restarts += 1
                w = ProcessWorker(self.modules, self.memory_mb)
                with self._lock:
                    self._all.append(w)
            return w.call(fn, kwargs, timeout_s)
        except Exception as e:
            return CallResult("error", error=_describe(e))
        finally:
            self._idle.put(w if w is not None and w.alive else None)

    def close(self) -> None:
        with self._lock:
            workers, self._all = self._all, []
        for w in workers:
            w.close()


# --- threads ---------------------------------------------------------------------------------

def run_in_thread(fn: Callable, kwargs: dict, timeout_s: float) -> CallResult:
    """Run in a daemon thread; stop waiting at the limit (the thread is abandoned, not killed)."""
    box: dict[str, Any] = {}

    def target():
        try:
            box["value"] = invoke(fn, kwargs)
        except BaseException as e:  # noqa: BLE001
            box["error"] = _describe(e)
            box["trace"] = traceback.format_exc(limit=-3)

    t0 = time.monotonic()
    th = threading.Thread(target=target, daemon=True, name="reward-call")
    th.start()
    th.join(timeout_s)
    dt = time.monotonic() - t0
    if th.is_alive():
        return CallResult("timeout", error=f"no result within {timeout_s:g} s (thread abandoned)",
                          latency_s=dt)
    if "error" in box:
        return CallResult("error", error=box["error"], latency_s=dt)
    return CallResult("ok", value=box.get("value"), latency_s=dt)
