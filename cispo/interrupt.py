"""Ctrl-C (and SLURM's SIGTERM) ends a run cleanly: the current step finishes, a checkpoint is
written (`trainer.save_on_interrupt`, default on), and the run prints a short message with the
exact command that resumes it. A second Ctrl-C stops at once, still without a traceback, naming
the newest checkpoint there is.

    stopped after step 7 of 100 (Ctrl-C); checkpoint: runs/a/checkpoints/step_7
    resume: python -m cispo.train +exp=tiny trainer.total_steps=100 run_dir=runs/a resume=auto

Ray's processes and the reward workers do not see the terminal's Ctrl-C (Ray starts actors in
process groups of their own, and the reward workers ignore SIGINT), so the step in flight can
finish.
"""

from __future__ import annotations

import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from cispo import checkpoint

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C'd program

_run_dir: Path | None = None
_command: str | None = None


def remember(cfg: Any) -> None:
    """Note the run's folder and command line, for the message of a Ctrl-C at any point."""
    global _run_dir, _command
    _run_dir = Path(cfg.run_dir)
    _command = resume_command(_run_dir)


def resume_command(run_dir: Path) -> str:
    """The command line this run was started with, with `run_dir=<its folder> resume=auto`."""
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
    except Exception:  # noqa: BLE001  (main() called without Hydra's launcher)
        overrides = [a for a in sys.argv[1:] if "=" in a and not a.startswith("-")]
    kept = [o for o in overrides if o.lstrip("+~").split("=")[0] not in ("run_dir", "resume")]
    return shlex.join(["python", "-m", "cispo.train", *kept, f"run_dir={run_dir}", "resume=auto"])


class StopRequest:
    """While active (a `with` block in the main thread): the first SIGINT/SIGTERM sets
    `requested` (the loop finishes its step and stops), a second raises KeyboardInterrupt."""

    def __init__(self):
        self.requested = False
        self.signal_name = ""
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def _handler(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"\n{self.signal_name}: finishing this step, then a checkpoint and stop "
              f"(Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def stopped(step: int, total: int, why: str, saved: Path | None) -> None:
    """The message after a requested stop, then exit 130."""
    where = f"checkpoint: {saved}" if saved else _newest()
    print(f"stopped after step {step} of {total} ({why}); {where}", file=sys.stderr)
    print(f"resume: {_command or resume_command(_run_dir or Path('.'))}", file=sys.stderr, flush=True)
    sys.exit(EXIT_INTERRUPTED)


def stopped_at_once() -> None:
    """The message after a second Ctrl-C (or one during start-up), then exit 130."""
    if _run_dir is None:
        print("\nstopped (Ctrl-C) before the run started; nothing to resume", file=sys.stderr)
    else:
        print(f"\nstopped at once (Ctrl-C); {_newest()}", file=sys.stderr)
        print(f"resume: {_command}", file=sys.stderr, flush=True)
    sys.exit(EXIT_INTERRUPTED)


def _newest() -> str:
    ckpt = checkpoint.find(_run_dir, "auto") if _run_dir is not None else None
    if ckpt is None:
        return "no checkpoint yet: resuming starts the run over"
    return f"newest checkpoint: {ckpt}"
