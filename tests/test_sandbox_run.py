"""Code runs, test cases, scoring workers and the sweep, against the real engine."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from sandbox_fixtures import require_docker

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module", autouse=True)
def engine():
    require_docker()
    yield
    from sandboxes import run
    from sandboxes.engine import connect
    from sandboxes.hardening import own_containers

    run.shutdown()
    assert own_containers(connect()) == []


def test_run_code_returns_everything():
    from sandboxes.run import run_code

    r = run_code("import sys\nprint(input()[::-1])\nprint('e', file=sys.stderr)\nsys.exit(4)",
                 stdin="abc\n", timeout_s=10)
    assert (r.returncode, r.stdout, r.stderr, r.timed_out, r.oom_killed, r.isolated) == \
        (4, "cba\n", "e\n", False, False, True)
    assert json.loads(r.to_json())["returncode"] == 4


def test_bash_and_a_large_program():
    from sandboxes.run import run_code

    assert run_code("echo $((6 * 7))", language="bash").stdout == "42\n"
    big = "x = 0\n" + "x += 1\n" * 60_000 + "print(x)\n"  # ~420 KB: several argv chunks
    assert run_code(big, timeout_s=20).stdout == "60000\n"


def test_cli_prints_one_json_object(tmp_path):
    prog = tmp_path / "p.py"
    prog.write_text("import sys\nprint(sys.stdin.read().upper(), end='')\n")
    inp = tmp_path / "in.txt"
    inp.write_text("hi\n")
    out = subprocess.run([sys.executable, "-m", "sandboxes.run", "--timeout", "5", "--memory",
                          "128", "--stdin", str(inp), str(prog)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["stdout"] == "HI\n" and res["returncode"] == 0 and res["isolated"] is True


def test_missing_image_is_one_clear_error():
    from sandboxes.errors import SandboxError
    from sandboxes.run import run_code

    with pytest.raises(SandboxError, match="sandboxes.image build"):
        run_code("pass", image="cispo-no-such-image:0")


def test_testcases_verdicts():
    from sandboxes.testcases import run_testcases

    prog = ("import sys\na, b = map(float, input().split())\n"
            "if a < 0: sys.exit(1)\nif a > 100:\n    while True: pass\nprint(a / b)\n")
    cases = [("1 3\n", "0.333333333\n"), ("1 4\n", "0.3\n"), ("-1 1\n", "x\n"),
             ("1000 1\n", "1000\n")]
    got = run_testcases(prog, cases, checker="float", timeout_s=1.5)
    assert [v.status for v in got] == ["ok", "wrong_answer", "runtime_error", "timeout"]
    assert [v.passed for v in got] == [True, False, False, False]
    oom = run_testcases("x = b'x' * (1 << 30)\n", [("", "")], memory_mb=128)
    assert oom[0].status == "oom"


def test_scoring_pool_keeps_its_contract_on_the_shared_hardening():
    from sandboxes.scoring import SandboxTimeout, ScoringPool, WorkerSpec

    pool = ScoringPool(WorkerSpec(memory_mb=512), 1)
    try:
        assert pool.request({"gold": "\\boxed{3}", "answer": "\\boxed{3}"}, 30)["verdict"] is True
        c = pool._all[0].channel.container
        c.reload()
        hc = c.attrs["HostConfig"]
        assert hc["NetworkMode"] == "none" and hc["CapDrop"] == ["ALL"] and hc["ReadonlyRootfs"]
        slow = "\\boxed{" + "+".join(f"x^{{{i}}}" for i in range(4000)) + "}"  # seconds of sympy
        with pytest.raises(SandboxTimeout):
            pool.request({"gold": slow, "answer": slow}, 0.3)
        assert pool.stats["timeouts"] == 1 and pool.stats["restarts"] == 1
        assert pool.request({"gold": "\\boxed{2}", "answer": "\\boxed{3}"}, 30)["verdict"] is False
    finally:
        pool.close()


def test_sweep_removes_only_containers_of_dead_owners():
    from sandboxes.engine import connect
    from sandboxes.hardening import LABEL, OWNER_LABEL, owner, sweep_orphans
    from sandboxes.image import DEFAULT_IMAGE

    client = connect()
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that existed and is gone: a "crashed run"
    host = owner().rpartition(":")[0]
    orphan = client.containers.create(DEFAULT_IMAGE, ["true"], network_mode="none",
                                      labels={LABEL: "run", OWNER_LABEL: f"{host}:{dead.pid}"})
    mine = client.containers.create(DEFAULT_IMAGE, ["true"], network_mode="none",
                                     labels={LABEL: "run", OWNER_LABEL: owner()})
    try:
        assert sweep_orphans(client) >= 1
        ids = {c.id for c in client.containers.list(all=True, filters={"label": LABEL})}
        assert orphan.id not in ids and mine.id in ids
    finally:
        mine.remove(force=True)
        try:
            orphan.remove(force=True)
        except Exception:
            pass


def test_supervisor_keeps_only_three_capabilities_for_pid_1():
    from sandboxes.pool import SandboxPool

    with SandboxPool(size=1, memory_mb=128, mode="supervisor") as pool:
        c = pool.containers()[0]
        c.reload()
        hc = c.attrs["HostConfig"]
        assert hc["CapDrop"] == ["ALL"] and sorted(hc["CapAdd"]) == ["KILL", "SETGID", "SETUID"]
        assert hc["SecurityOpt"] == ["no-new-privileges"] and hc["ReadonlyRootfs"]
        r = pool.run(["sh", "-c", "grep -E '^Cap(Eff|Prm)' /proc/self/status; id -u"],
                     timeout_s=10)
        assert r.stdout.decode().split() == ["CapPrm:", "0000000000000000", "CapEff:",
                                    "0000000000000000", "10001"], r
    with pytest.raises(ValueError, match="choose one of"):
        SandboxPool(size=1, mode="fast")


def test_containers_of_a_crashed_run_are_swept():
    """A real crash: a process makes a warm pool and is SIGKILLed (no atexit, no close)."""
    from sandboxes.engine import connect
    from sandboxes.hardening import owner, sweep_orphans

    code = ("import os, signal\nfrom sandboxes.pool import SandboxPool\n"
            "p = SandboxPool(size=2, memory_mb=128)\nprint(os.getpid(), flush=True)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == -9, out.stderr
    crashed = f"{owner().rpartition(':')[0]}:{out.stdout.strip()}"
    client = connect()

    def left():
        return client.containers.list(all=True, filters={"label": f"cispo.owner={crashed}"})

    assert len(left()) == 2  # the crash left its containers behind...
    assert sweep_orphans(client) >= 2  # ...and the next start sweeps them
    assert left() == []
