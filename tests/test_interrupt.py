"""Ctrl-C ends a run with a short message and the exact resume command; after SIGKILL the
run's processes and containers are gone within seconds (the watchdog). Issue 21."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cispo import interrupt

ROOT = Path(__file__).resolve().parent.parent


def test_first_ctrl_c_asks_to_stop_after_the_step_the_second_stops_at_once(capsys):
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN under nohup / `&`
    with interrupt.StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
        assert stop.requested and stop.signal_name == "Ctrl-C"
        assert "finishing this step" in capsys.readouterr().err
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGINT) is before  # restored


def test_sigterm_is_a_stop_request_too():
    """SLURM sends SIGTERM before its time limit ends a job."""
    with interrupt.StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        assert stop.requested and stop.signal_name == "SIGTERM"


def test_resume_command_keeps_the_overrides_and_sets_run_dir_and_resume(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", ["cispo/train.py", "+exp=tiny", "trainer.total_steps=7", "resume=null",
                                      "run_dir=runs/${now:%H}", "reward.sources.x={math: 1.0}", "--cfg"])
    cmd = interrupt.resume_command(tmp_path / "run dir")
    assert cmd == ("python -m cispo.train +exp=tiny trainer.total_steps=7 'reward.sources.x={math: 1.0}' "
                   f"'run_dir={tmp_path / 'run dir'}' resume=auto")


def test_a_ctrl_c_before_any_checkpoint_says_resuming_starts_over(tmp_path, capsys, monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setattr(sys, "argv", ["train.py", "+exp=tiny"])
    interrupt.remember(SimpleNamespace(run_dir=str(tmp_path)))
    with pytest.raises(SystemExit) as e:
        interrupt.stopped_at_once()
    assert e.value.code == 130
    err = capsys.readouterr().err
    assert "no checkpoint yet: resuming starts the run over" in err
    assert f"resume: python -m cispo.train +exp=tiny run_dir={tmp_path} resume=auto" in err


def test_the_watchdog_stops_a_killed_drivers_processes(tmp_path):
    """Without Ray or Docker: a driver starts the watchdog and two children (one ignoring
    SIGTERM), and is SIGKILLed; the children are gone within seconds, and the log says so."""
    import psutil

    driver = subprocess.Popen([sys.executable, "-c", f"""
import subprocess, sys, time
from cispo import watchdog
watchdog.start({str(tmp_path)!r})
kids = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]),
        subprocess.Popen([sys.executable, "-c",
                          "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])]
print(" ".join(str(k.pid) for k in kids), flush=True)
time.sleep(600)
"""], cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True)
    kids = [psutil.Process(int(x)) for x in driver.stdout.readline().split()]
    time.sleep(2.5)  # the watchdog notes descendants every second
    driver.kill()
    driver.wait()
    t0 = time.monotonic()
    gone, alive = psutil.wait_procs(kids, timeout=30)
    assert not alive, "the killed driver's children outlived it"
    assert time.monotonic() - t0 < 15  # seconds, not "at the next start"
    for _ in range(50):
        if (tmp_path / "watchdog.log").exists():
            break
        time.sleep(0.1)
    assert "gone: stopped 2 of its processes" in (tmp_path / "watchdog.log").read_text()


@pytest.mark.docker
def test_after_sigkill_the_runs_ray_processes_and_containers_are_gone(tmp_path):
    import psutil
    from sandbox_fixtures import require_docker

    require_docker()
    from sandboxes.engine import connect
    from sandboxes.hardening import LABEL, OWNER_LABEL

    run = tmp_path / "run"
    driver = subprocess.Popen([sys.executable, "-m", "cispo.train", "+exp=tiny", "trainer.total_steps=500",
                               "rollout.prompts_per_step=4", "rollout.group_size=4", f"run_dir={run}",
                               "logging.wandb_mode=disabled"], cwd=ROOT, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while driver.poll() is None and time.monotonic() < deadline and not (
            (run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().strip()):
        time.sleep(0.2)
    assert driver.poll() is None, "the run ended before it could be killed"
    procs = psutil.Process(driver.pid).children(recursive=True)
    ray_procs = [p for p in procs if "ray" in " ".join(p.cmdline()).lower() or "raylet" in p.name()]
    assert ray_procs, [p.name() for p in procs]
    client = connect()
    owner = f"{os.uname().nodename}:{driver.pid}"

    def containers():
        return [c for c in client.containers.list(all=True, filters={"label": LABEL})
                if c.labels.get(OWNER_LABEL) == owner]

    assert containers(), "the run's math sandbox should be up"
    run_procs = [p for p in procs if "cispo.watchdog" not in " ".join(p.cmdline())]
    driver.kill()  # SIGKILL, the driver alone: no atexit, no finally
    driver.wait()
    t0 = time.monotonic()

    def running(p) -> bool:  # a zombie is dead, only not reaped (pid 1 may never reap it)
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    while any(running(p) for p in run_procs) and time.monotonic() - t0 < 30:
        time.sleep(0.2)
    assert not [p for p in run_procs if running(p)]
    while containers() and time.monotonic() - t0 < 30:
        time.sleep(0.5)
    assert not containers()
    assert time.monotonic() - t0 < 30
    assert "gone: stopped" in (run / "watchdog.log").read_text()
