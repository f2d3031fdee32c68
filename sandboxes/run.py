"""Run one program in a sandbox and say what happened.

    python -m sandboxes.run [--image I] [--timeout S] [--memory M] [--stdin F] [--language L] FILE

prints one JSON object: {returncode, stdout, stderr, timed_out, oom_killed, duration_s, ...}.
`run_code` is the same from Python. The `docker` backend runs the program in a warm, hardened
container of a pool (one pool per image and memory size, made on first use); the `process`
backend runs it as a local subprocess with rlimits and NO isolation, and only when asked for.
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass

from sandboxes import sizes
from sandboxes.image import DEFAULT_IMAGE

log = logging.getLogger(__name__)

# language → (file name, interpreter argv). Programs are files, so tracebacks name a real file.
LANGUAGES = {
    "python": ("main.py", ["python3", "main.py"]),
    "bash": ("main.sh", ["bash", "main.sh"]),
    "sh": ("main.sh", ["sh", "main.sh"]),
}
OUTPUT_LIMIT = 1 << 20  # bytes of stdout and of stderr kept; a run over it is killed
ARG_CHUNK = 30_000  # characters; the kernel caps one argv string at 128 KiB (4 bytes/char worst)
MAX_SOURCE = 1_500_000  # the whole argv must stay under ~2 MiB
POOL_SIZE = int(os.environ.get("CISPO_SANDBOX_POOL_SIZE", "2"))  # warm containers per pool
# "supervisor" (fast) or "exec" (no capability at all, slower): see docs/sandboxes.md
POOL_MODE = os.environ.get("CISPO_SANDBOX_POOL_MODE", "supervisor")

# Writes the program from its arguments, then becomes the interpreter (so its exit status and
# signals are the program's own).
_LAUNCH = ('f=$1; n=$2; shift 2; : > "$f"; i=0; '
           'while [ $i -lt $n ]; do printf %s "$1" >> "$f" || exit 126; shift; i=$((i+1)); done; '
           'exec "$@"')


@dataclass
class RunResult:
    returncode: int | None  # None when killed by the sandbox (timeout, output limit)
    stdout: str
    stderr: str
    timed_out: bool
    oom_killed: bool
    duration_s: float
    output_truncated: bool = False  # stdout or stderr went over OUTPUT_LIMIT: run killed there
    isolated: bool = True  # False for the `process` backend

    def to_json(self) -> str:
        return json.dumps(asdict(self))


_pools: dict[tuple[str, int], object] = {}
_pools_lock = threading.Lock()
_warned_process = False


def pool_for(image: str, memory_mb: int, size: int | None = None, mode: str | None = None):
    """The process-wide warm pool for this image and memory size (made on first use; size and
    mode only matter then)."""
    from sandboxes.pool import SandboxPool

    key = (image, memory_mb)
    with _pools_lock:
        if key not in _pools:
            _pools[key] = SandboxPool(image, size or POOL_SIZE, memory_mb=memory_mb,
                                      mode=mode or POOL_MODE)
        return _pools[key]


def shutdown() -> None:
    """Remove every warm container made by run_code in this process."""
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for p in pools:
        p.close()


atexit.register(shutdown)


def _check(language: str, source: str) -> None:
    if language not in LANGUAGES:
        raise ValueError(f"language={language!r}: choose one of {sorted(LANGUAGES)}")
    if len(source.encode()) > MAX_SOURCE:
        raise ValueError(f"program is {len(source.encode())} bytes; the limit is {MAX_SOURCE}")


def run_code(source: str, *, language: str = "python", stdin: str = "", timeout_s: float = 10,
             memory_mb: int | str = 512, image: str | None = None,
             backend: str = "docker") -> RunResult:
    """Run `source` with `stdin`; the wall clock and memory limits are enforced from outside
    (`memory_mb`: MB, or Docker's size syntax such as "256m" or "1g": `sandboxes.sizes`)."""
    _check(language, source)
    memory_mb = sizes.memory_mb(memory_mb, "memory_mb")  # "512m" and 512 share one pool
    if backend == "process":
        return _run_process(source, language, stdin, timeout_s, memory_mb)
    if backend != "docker":
        raise ValueError(f"backend={backend!r}: use 'docker' or 'process' (not isolated)")
    fname, argv = LANGUAGES[language]
    chunks = [source[i:i + ARG_CHUNK] for i in range(0, len(source), ARG_CHUNK)]
    cmd = ["sh", "-c", _LAUNCH, "sh", fname, str(len(chunks)), *chunks, *argv]
    pool = pool_for(image or DEFAULT_IMAGE, memory_mb)
    res = pool.run(cmd, stdin=stdin.encode(), timeout_s=timeout_s)
    return RunResult(
        returncode=res.exit_code, stdout=res.stdout.decode(errors="replace"),
        stderr=res.stderr.decode(errors="replace"), timed_out=res.timed_out,
        oom_killed=res.oom_killed, duration_s=round(res.duration_s, 4),
        output_truncated=res.truncated)


def _run_process(source: str, language: str, stdin: str, timeout_s: float,
                 memory_mb: int) -> RunResult:
    """A local subprocess with rlimits: time and memory are bounded, nothing is isolated
    (it can read your files, use the network, and leave `setsid` daemons behind)."""
    global _warned_process
    if not _warned_process:
        log.warning("sandbox backend 'process': model-written code runs as a plain local "
                    "subprocess with rlimits and NO isolation")
        _warned_process = True
    fname, argv = LANGUAGES[language]
    mem = memory_mb << 20
    out_cap = max(OUTPUT_LIMIT, 64 << 20)

    def limits() -> None:  # in the child, before exec
        os.setsid()  # its own process group, so a timeout kills its children too
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_FSIZE, (out_cap, out_cap))
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    with tempfile.TemporaryDirectory(prefix="cispo-run-") as d:
        with open(os.path.join(d, fname), "w") as f:
            f.write(source)
        paths = {k: os.path.join(d, f".{k}") for k in ("stdin", "stdout", "stderr")}
        with open(paths["stdin"], "w") as f:
            f.write(stdin)
        t0 = time.monotonic()
        with open(paths["stdin"], "rb") as i, open(paths["stdout"], "wb") as o, \
                open(paths["stderr"], "wb") as e:
            p = subprocess.Popen(argv, cwd=d, stdin=i, stdout=o, stderr=e, preexec_fn=limits,
                                 env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                      "HOME": d, "PYTHONDONTWRITEBYTECODE": "1"})
            timed_out = False
            try:
                rc = p.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out, rc = True, None
            try:
                os.killpg(p.pid, 9)
            except (ProcessLookupError, PermissionError):
                pass
            p.wait()
        dur = time.monotonic() - t0

        def read(k: str) -> tuple[str, bool]:
            with open(paths[k], "rb") as f:
                data = f.read(OUTPUT_LIMIT + 1)
            return data[:OUTPUT_LIMIT].decode(errors="replace"), len(data) > OUTPUT_LIMIT

        (out, t1), (err, t2) = read("stdout"), read("stderr")
    # RLIMIT_AS shows up as a MemoryError, not a kill: the nearest thing to an OOM verdict.
    oom = rc not in (0, None) and "MemoryError" in err[-2000:]
    return RunResult(rc, out, err, timed_out, oom, round(dur, 4), t1 or t2, isolated=False)


def _memory_arg(text: str) -> int:
    try:
        return sizes.memory_mb(text, "--memory")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sandboxes.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", help="the program to run")
    ap.add_argument("--image", default=None, help=f"sandbox image (default {DEFAULT_IMAGE})")
    ap.add_argument("--timeout", type=float, default=10, help="wall-clock limit, seconds")
    ap.add_argument("--memory", type=_memory_arg, default=512,
                    help="memory limit: MB, or Docker's syntax (256m, 1g, 512MiB)")
    ap.add_argument("--stdin", default=None, help="file fed to the program's stdin")
    ap.add_argument("--language", default=None, choices=sorted(LANGUAGES),
                    help="default: from the file's extension (.sh → bash), else python")
    ap.add_argument("--backend", default="docker", choices=["docker", "process"],
                    help="'process' runs locally with NO isolation")
    args = ap.parse_args(argv)
    language = args.language or ("bash" if args.file.endswith(".sh") else "python")
    try:
        with open(args.file) as f:
            source = f.read()
        stdin = ""
        if args.stdin:
            with open(args.stdin) as f:
                stdin = f.read()
        res = run_code(source, language=language, stdin=stdin, timeout_s=args.timeout,
                       memory_mb=args.memory, image=args.image, backend=args.backend)
    except (OSError, ValueError, RuntimeError) as e:  # SandboxError, DockerUnavailable
        print(f"sandboxes.run: {e}", file=sys.stderr)
        return 2
    finally:
        shutdown()
    print(res.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
