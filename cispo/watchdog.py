"""A watchdog process per run: when the training process dies, however it dies (SIGKILL, an OOM
kill, a crash), what it started is gone within seconds instead of at the next run's start.

`start(run_dir)` spawns `python -m cispo.watchdog` in its own session, joined to the driver by a
pipe whose write end only the driver holds (the fd is close-on-exec, so the processes the driver
starts do not keep it). While the driver lives, the watchdog notes the driver's descendants
every second (Ray's GCS, raylet, dashboard and runtime-env agents, worker and actor processes,
reward worker processes; each by pid and start time, so a reused pid is never touched). When
the pipe reads end-of-file the driver is gone: the watchdog sends SIGTERM to those still alive,
SIGKILL after a grace period, then removes the sandbox containers whose owner process no longer
exists (`sandboxes.hardening.sweep_orphans`: by label and owner, never another live run's), and
appends one line to `run_dir/watchdog.log`. A joined cluster (`ray.address`) is not the
driver's descendant and is left alone: Ray itself removes a dead driver's actors there.

A normal exit ends the same way, after the driver's own clean-up: the watchdog then usually finds
nothing left.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

POLL_S = 1.0  # how often the descendants are noted
GRACE_S = 3.0  # SIGTERM to SIGKILL
_write_ends: list[int] = []  # held open for the driver's lifetime


def start(run_dir: str | Path) -> subprocess.Popen:
    """Start the watchdog of this process (the driver)."""
    read_end, write_end = os.pipe()  # both close-on-exec: no child of the driver inherits them
    log = Path(run_dir) / "watchdog.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "cispo.watchdog", str(os.getpid()), str(read_end), str(log)],
                            pass_fds=(read_end,), start_new_session=True, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=Path(__file__).resolve().parent.parent)
    os.close(read_end)
    _write_ends.append(write_end)
    return proc


def watch(driver_pid: int, fd: int) -> dict[int, float]:
    """Note the driver's descendants until `fd` reads end-of-file; returns {pid: start time}."""
    import psutil

    me, seen = os.getpid(), {}
    try:
        driver = psutil.Process(driver_pid)
    except psutil.NoSuchProcess:
        return seen
    while True:
        try:
            for p in driver.children(recursive=True):
                if p.pid != me:
                    seen.setdefault(p.pid, p.create_time())
        except psutil.Error:  # the driver is exiting
            pass
        ready, _, _ = select.select([fd], [], [], POLL_S)
        if ready and not os.read(fd, 1):
            return seen


def stop(seen: dict[int, float]) -> int:
    """SIGTERM, then SIGKILL after GRACE_S, to the noted processes still alive. Returns how many
    were alive."""

    alive = [(pid, created) for pid, created in seen.items() if _same(pid, created) is not None]
    for pid, created in alive:
        _signal(pid, created, "terminate")
    left = _wait(alive, GRACE_S)
    for pid, created in left:
        _signal(pid, created, "kill")
    _wait(left, GRACE_S)
    return len(alive)


def _signal(pid: int, created: float, how: str) -> None:
    import psutil

    p = _same(pid, created)
    try:
        if p is not None:
            getattr(p, how)()
    except psutil.Error:
        pass


def _same(pid: int, created: float):
    """The process `pid` if it is still the one noted (same start time) and not a zombie (dead,
    only not reaped: an orphan's parent may be a pid 1 that never reaps)."""
    import psutil

    try:
        p = psutil.Process(pid)
        return p if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE else None
    except psutil.Error:
        return None


def _wait(procs: list[tuple[int, float]], timeout: float) -> list[tuple[int, float]]:
    """Those of `procs` (pid, start time) still running after up to `timeout` seconds (zombies
    count as gone)."""
    deadline = time.monotonic() + timeout
    while True:
        procs = [(pid, c) for pid, c in procs if _same(pid, c) is not None]
        if not procs or time.monotonic() >= deadline:
            return procs
        time.sleep(0.1)


def sweep_containers() -> int:
    try:
        from sandboxes.engine import connect
        from sandboxes.hardening import sweep_orphans

        return sweep_orphans(connect(timeout_s=5.0))
    except Exception:  # noqa: BLE001  (no Docker engine: no containers to remove)
        return 0


def main(argv: list[str]) -> int:
    driver_pid, fd, log = int(argv[0]), int(argv[1]), Path(argv[2])
    seen = watch(driver_pid, fd)
    t0 = time.monotonic()
    stopped = stop(seen)
    removed = sweep_containers()
    if stopped or removed:
        with open(log, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} driver {driver_pid} gone: stopped {stopped} "
                    f"of its processes, removed {removed} sandbox containers in "
                    f"{time.monotonic() - t0:.1f} s\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
