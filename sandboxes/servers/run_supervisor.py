"""Runs INSIDE a run container as its PID 1: starts each program as the sandbox user, and resets.

Why: a `docker exec` costs tens to hundreds of milliseconds of engine and runc work on a busy
2-core machine; a fork here costs about one. This process is uid 0 with only CAP_SETUID,
CAP_SETGID and CAP_KILL (all others dropped, no-new-privileges); every program runs as uid 10001
with no capabilities at all, so it can neither signal, ptrace nor read the fds of this process.

Protocol (JSON lines over stdin/stdout; stdout carries nothing else):
  {"id", "argv", "stdin_b64", "timeout_s", "output_limit", "env"}
→ {"id", "exit_code", "stdout_b64", "stderr_b64", "timed_out", "truncated", "oom_killed",
   "duration_s"}
→ {"id", "reset": {"procs": n, "files": n}}   (after every run; the host replaces the container
   unless both are 0)
Standard library only. The host still keeps its own, longer, wall clock on every answer.
"""
import base64
import json
import os
import select
import signal
import subprocess
import sys
import time

UID = 10001
WORK_DIRS = ("/work", "/tmp", "/dev/shm", "/dev/mqueue")
CLEAN = ("ipcrm --all 2>/dev/null; chmod -R u+rwX /work /tmp /dev/shm 2>/dev/null; "
         "find /work /tmp /dev/shm /dev/mqueue -mindepth 1 -delete 2>/dev/null; "
         "find /work /tmp /dev/shm /dev/mqueue -mindepth 1 2>/dev/null | wc -l")


def drop():
    os.setgroups([])
    os.setgid(UID)
    os.setuid(UID)  # from uid 0: clears every capability


def oom_count():
    for path in ("/sys/fs/cgroup/memory/memory.oom_control", "/sys/fs/cgroup/memory.events"):
        try:
            for line in open(path):
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
        except OSError:
            pass
    return 0


def reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def others():
    return [p for p in os.listdir("/proc") if p.isdigit() and p != "1"]


def kill_all():
    try:
        os.kill(-1, signal.SIGKILL)  # everything but this process, atomically
    except ProcessLookupError:
        pass


def reset():
    deadline = time.monotonic() + 5
    while True:
        kill_all()
        reap()
        left = others()
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.005)
    r = subprocess.run(["sh", "-c", CLEAN], capture_output=True, text=True, preexec_fn=drop,
                       env={"PATH": "/usr/bin:/bin"}, timeout=10)
    reap()
    try:
        files = int(r.stdout.strip() or "-1")
    except ValueError:
        files = -1
    return {"procs": len(others()), "files": files}


def run(req):
    argv, limit = req["argv"], int(req["output_limit"])
    stdin = base64.b64decode(req.get("stdin_b64", ""))
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8",
           "PYTHONDONTWRITEBYTECODE": "1", **(req.get("env") or {})}
    oom0 = oom_count()
    t0 = time.monotonic()
    deadline = t0 + float(req["timeout_s"])

    def child():
        os.setsid()
        drop()
        os.chdir("/work")
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)

    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, preexec_fn=child, env=env, close_fds=True)
    bufs = {p.stdout.fileno(): bytearray(), p.stderr.fileno(): bytearray()}
    open_fds = set(bufs)
    win = p.stdin.fileno()
    os.set_blocking(win, False)
    pending = memoryview(stdin)
    if not pending:
        p.stdin.close()
        win = None
    timed_out = truncated = False
    exited_at = None
    while open_fds:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        if exited_at is None and p.poll() is not None:
            exited_at = time.monotonic()
        if exited_at is not None and time.monotonic() - exited_at > 0.05:
            break  # the program is gone; a daemon it left holds the pipes open (reset kills it)
        # Wake up now and then: the program may exit while something it started keeps the
        # pipes open, and its end is what ends the run.
        r, w, _ = select.select(list(open_fds), [win] if win is not None else [], [],
                                min(left, 0.05))
        if w:
            try:
                n = os.write(win, pending[:65536])
                pending = pending[n:]
            except (BrokenPipeError, BlockingIOError, OSError):
                pending = pending[:0]
            if not pending:
                p.stdin.close()
                win = None
        for fd in r:
            chunk = os.read(fd, 65536)
            if not chunk:
                open_fds.discard(fd)
                continue
            buf = bufs[fd]
            room = limit - len(buf)
            buf += chunk[:max(room, 0)]
            if len(chunk) > room:
                truncated = True
        if truncated:
            break
    if timed_out or truncated:
        kill_all()
    if win is not None:
        try:
            p.stdin.close()
        except OSError:
            pass
    try:
        code = p.wait(timeout=max(0.0, deadline - time.monotonic()) + 1)
    except subprocess.TimeoutExpired:  # output closed but the process lingers: over time
        kill_all()
        timed_out = True
        code = p.wait()
    dur = time.monotonic() - t0
    if code < 0:
        code = 128 - code  # signalled: the shell convention (137 = SIGKILL)
    return {"exit_code": None if (timed_out or truncated) else code,
            "stdout_b64": base64.b64encode(bufs[p.stdout.fileno()]).decode(),
            "stderr_b64": base64.b64encode(bufs[p.stderr.fileno()]).decode(),
            "timed_out": timed_out, "truncated": truncated,
            "oom_killed": oom_count() > oom0, "duration_s": dur}


def main():
    out = sys.stdout
    for line in sys.stdin:
        try:
            req = json.loads(line)
        except ValueError:
            continue
        rid = req.get("id")
        if req.get("ping"):
            resp = {"id": rid, "pong": True}
            out.write(json.dumps(resp) + "\n")
            out.flush()
            continue
        try:
            resp = dict(run(req), id=rid)
        except Exception as e:  # cannot start the program: an answer, not a crash
            resp = {"id": rid, "error": f"{type(e).__name__}: {e}"[:500]}
        out.write(json.dumps(resp) + "\n")
        out.flush()
        out.write(json.dumps({"id": rid, "reset": reset()}) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
