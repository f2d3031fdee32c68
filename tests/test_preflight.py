"""`preflight=true` on one machine (no ray.address): this machine scores, so its Docker engine,
the image and run_dir are checked; the report names what is missing. The cluster case runs in
tests/test_scorers_cluster.py (two Ray nodes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cispo.preflight import format_table, node_checks

ROOT = Path(__file__).resolve().parent.parent


def test_a_node_that_cannot_see_run_dir_says_so(tmp_path):
    out = node_checks(str(tmp_path / "elsewhere"), "t0k3n", "n1", None)
    assert out["run_dir"].startswith("not shared:") and "elsewhere/.preflight/t0k3n/driver" in out["run_dir"]
    assert "cannot write" in out["run_dir_write"]
    (tmp_path / ".preflight" / "t0k3n").mkdir(parents=True)
    (tmp_path / ".preflight" / "t0k3n" / "driver").write_text("t0k3n")
    out = node_checks(str(tmp_path), "t0k3n", "n1", None)
    assert out["run_dir"] == "shared" and (tmp_path / ".preflight" / "t0k3n" / "node-n1").read_text() == "t0k3n"


def test_the_table_lists_every_problem():
    result = {"ok": False, "nodes": [
        {"where": "10.0.0.1 (head)", "role": "driver", "answered": True, "run_dir": "shared"},
        {"where": "10.0.0.9 (cpu-1)", "role": "sandbox", "answered": True, "run_dir": "shared",
         "sandbox": {"ok": False, "docker": None, "image": None, "run": None}}],
        "problems": ["10.0.0.9 (cpu-1) [sandbox]: No Docker engine answers"]}
    text = format_table(result)
    assert "preflight: 1 problem(s)" in text and "No Docker engine answers" in text
    assert text.splitlines()[2].split()[:3] == ["10.0.0.9", "(cpu-1)", "sandbox"]


def _preflight(tmp_path, **env):
    return subprocess.run([sys.executable, "-m", "cispo.train", "+exp=tiny", "preflight=true",
                           f"run_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT), **env})


@pytest.mark.docker
def test_this_machine_passes_with_docker_and_the_image(tmp_path):
    from sandbox_fixtures import require_docker

    require_docker()
    p = _preflight(tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr[-2000:]
    assert "preflight: ok" in p.stdout
    report = json.loads((tmp_path / "preflight.json").read_text())
    [node] = report["nodes"]
    assert node["run_dir"] == "shared" and node["sandbox"]["ok"] and node["sandbox"]["run"]
    assert not (tmp_path / ".preflight").exists()  # its probe files are removed


def test_no_docker_engine_is_named_and_fails(tmp_path):
    p = _preflight(tmp_path, DOCKER_HOST="unix:///nonexistent/docker.sock")
    assert p.returncode == 1
    assert "preflight: 1 problem(s)" in p.stdout
    assert "No Docker engine answers at DOCKER_HOST=unix:///nonexistent/docker.sock" in p.stdout
    assert not json.loads((tmp_path / "preflight.json").read_text())["ok"]
