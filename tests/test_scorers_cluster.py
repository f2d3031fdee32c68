"""Issue 20, point 1: a 2-node Ray cluster on loopback (two `ray start` on this machine). The
sandbox node advertises `sandbox: 4` and has Docker; the head and the driver have DOCKER_HOST
pointing nowhere. `python -m cispo.train +exp=tiny sandbox.placement=actors` trains with every
sample scored by scorer actors on the sandbox node, and a scorer killed (SIGKILL, from outside)
in the middle of a step loses no sample. The pre-flight check passes on that cluster and fails,
naming the driver's missing Docker engine, when the scoring would happen there.

Slow (about 4 minutes on the 2-core CI machine: two Ray nodes, a DeepSpeed learner, warm
sandbox containers), so it is marked `slow`; the scorer logic itself is covered in seconds by
tests/test_scorers.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from loopback_cluster import NOWHERE, ROOT, LoopbackCluster
from sandbox_fixtures import require_docker

# Weight 0 in the score: it says where it runs, and once (the 20th call in some scorer process,
# during the second step) it stops to let the test kill its scorer from outside.
VICTIM = '''
import os, time
from rewards import reward

_calls = [0]


@reward("victim", isolation="thread", sandbox=True)
def victim(completion):
    _calls[0] += 1
    hooks = os.environ["CISPO_TEST_DIR"]
    if _calls[0] == 20:
        try:
            os.close(os.open(os.path.join(hooks, "armed"), os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            pass
        else:
            with open(os.path.join(hooks, "pid.tmp"), "w") as f:
                f.write(str(os.getpid()))
            os.replace(os.path.join(hooks, "pid.tmp"), os.path.join(hooks, "pid"))
            time.sleep(120)  # the test kills this process here
    return {"score": 0.0, "on_sandbox_node": float(os.environ.get("CISPO_TEST_NODE") == "sandbox")}
'''
STEPS, PROMPTS, G = 3, 8, 4


@pytest.mark.docker
@pytest.mark.slow
def test_tiny_scores_on_the_sandbox_node_and_a_killed_scorer_loses_nothing(tmp_path):
    require_docker()
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (tmp_path / "victim.py").write_text(VICTIM)
    head_env = {"DOCKER_HOST": NOWHERE, "CISPO_TEST_NODE": "head"}
    sandbox_env = {"CISPO_TEST_NODE": "sandbox", "CISPO_TEST_DIR": str(hooks)}
    with LoopbackCluster() as c:
        driver_env = {**c.env, **head_env, "WANDB_MODE": "disabled"}
        c.start_head(num_cpus=4, env=head_env)
        c.add_node(num_cpus=0, resources={"sandbox": 4}, env=sandbox_env)
        c.wait_for_nodes(2)
        base = [sys.executable, "-m", "cispo.train", "+exp=tiny", f"ray.address={c.address}",
                "logging.progress=false", "logging.wandb_mode=disabled"]

        # pre-flight: both nodes answer, run_dir is shared, Docker + image on the sandbox node
        pf = subprocess.run([*base, "sandbox.placement=actors", "preflight=true",
                             f"run_dir={tmp_path / 'pf'}"], cwd=ROOT, env=driver_env,
                            capture_output=True, text=True, timeout=300)
        assert pf.returncode == 0, pf.stdout[-3000:] + pf.stderr[-3000:]
        report = json.loads((tmp_path / "pf" / "preflight.json").read_text())
        sandbox = [n for n in report["nodes"] if n["role"] == "sandbox"]
        assert len(report["nodes"]) == 2 and len(sandbox) == 1
        assert sandbox[0]["sandbox"]["ok"] and sandbox[0]["sandbox"]["image"] == "current"
        assert all(n["run_dir"] == "shared" for n in report["nodes"])
        # ... and it says so when the scoring would need the driver's (missing) engine
        pf = subprocess.run([*base, "sandbox.placement=local", "preflight=true",
                             f"run_dir={tmp_path / 'pf2'}"], cwd=ROOT, env=driver_env,
                            capture_output=True, text=True, timeout=300)
        assert pf.returncode == 1 and "No Docker engine answers at DOCKER_HOST" in pf.stdout, \
            pf.stdout[-3000:]

        run = tmp_path / "run"
        train = subprocess.Popen(
            [*base, f"trainer.total_steps={STEPS}", f"rollout.prompts_per_step={PROMPTS}",
             f"rollout.group_size={G}", "sandbox.placement=actors", "sandbox.scorers_per_node=2",
             f"reward.modules=[{tmp_path / 'victim.py'}]",
             "+reward.sources.arithmetic={math: 1.0, victim: 0.0}", f"run_dir={run}"],
            cwd=ROOT, env=driver_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 600
            while not (hooks / "pid").exists() and train.poll() is None:
                assert time.monotonic() < deadline, "no scorer reached its 20th call"
                time.sleep(0.2)
            assert train.poll() is None, train.stdout.read()[-4000:]
            killed = int((hooks / "pid").read_text())
            os.kill(killed, 9)  # a scorer actor, with calls in flight, mid-step
            out, _ = train.communicate(timeout=600)
        finally:
            if train.poll() is None:
                train.kill()
        assert train.returncode == 0, out[-5000:]

    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == STEPS
    for r in rows:  # every sample of every step scored, on the sandbox node
        assert r["reward/skipped"] == 0 and r["reward/errors"] == 0 and r["reward/timeouts"] == 0, r
        assert r["reward/victim/on_sandbox_node"] == 1.0
        assert r["sandbox/scorer_nodes"] >= 1.0
    last = rows[-1]
    assert last["sandbox/scorer_deaths_total"] == 1.0 and last["sandbox/scorer_retries_total"] >= 1
    assert last["sandbox/scorer_lost_total"] == 0.0
    # each (sample, reward) answered exactly once (a killed call by its retry), all by the one
    # sandbox node (its calls-by-node log has a single entry)
    assert last["sandbox/scorer_calls_total"] == STEPS * PROMPTS * G * 2
    by_node = [line for line in out.splitlines() if "scorer calls by node" in line]
    assert by_node and by_node[-1].rstrip().endswith(f": {STEPS * PROMPTS * G * 2}}}"), by_node
