"""Memory sizes in Docker's syntax (256m, 1g, 512MiB) or plain MB, everywhere one is given: the
CLI, the config, the Python API (issue 14: `python -m sandboxes.run --memory 256m FILE` was
refused)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from sandbox_fixtures import docker_ready

from sandboxes.sizes import memory_mb

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("value, mb", [
    (512, 512), ("512", 512), (0, 0), ("0", 0), (2048.0, 2048),
    ("256m", 256), ("256M", 256), ("256mb", 256), ("256MiB", 256), ("512MiB", 512),
    ("1g", 1024), ("1G", 1024), ("1GB", 1024), ("2GiB", 2048), ("1.5g", 1536), ("0.5g", 512),
    ("1t", 1 << 20), ("262144k", 256), ("262144KiB", 256), ("268435456b", 256),
    ("1048577k", 1024), (" 256 m ", 256),  # a part of a MB rounds down; spaces are fine
])
def test_accepted_forms(value, mb):
    assert memory_mb(value) == mb


@pytest.mark.parametrize("value", ["", "m", "-1", -5, "1.5", 1.5, "12 parsecs", "1gg", "g1",
                                   "1bb", "1e9", True, None, [512], "100k", "1b"])
def test_refused_forms_name_the_key_and_the_syntax(value):
    with pytest.raises(ValueError, match=r"sandbox\.memory_mb=.*(256m|below 1 MB|whole)"):
        memory_mb(value, "sandbox.memory_mb")


def _run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    prog = tmp_path / "big.py"
    # 150 MB: fits under 256m, not under 128m (the process backend's limit is its address space)
    prog.write_text("x = bytearray(150 << 20)\nprint('allocated')\n")
    return subprocess.run([sys.executable, "-m", "sandboxes.run", *args, str(prog)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli_takes_docker_sizes_process_backend(tmp_path):
    ok = _run_cli(tmp_path, "--backend", "process", "--memory", "512m")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["stdout"] == "allocated\n"
    small = json.loads(_run_cli(tmp_path, "--backend", "process", "--memory", "0.125g").stdout)
    assert small["oom_killed"] and small["returncode"] != 0  # 0.125g = 128 MB, enforced
    bad = _run_cli(tmp_path, "--backend", "process", "--memory", "256 parsecs")
    assert bad.returncode == 2 and "--memory='256 parsecs'" in bad.stderr and "256m" in bad.stderr


@pytest.mark.docker
def test_cli_takes_docker_sizes_in_the_sandbox(tmp_path):
    if why := docker_ready():
        pytest.skip(f"needs Docker and the sandbox image (make image): {why}")
    r = _run_cli(tmp_path, "--memory", "256m")  # the command from issue 14, as it was refused
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["stdout"] == "allocated\n" and res["isolated"] is True
    small = json.loads(_run_cli(tmp_path, "--memory", "128MiB").stdout)
    assert small["oom_killed"]


def test_python_api_takes_docker_sizes():
    from sandboxes.hardening import container_kwargs
    from sandboxes.run import run_code
    from sandboxes.scoring import WorkerSpec

    r = run_code("x = bytearray(150 << 20)", backend="process", memory_mb="128m")
    assert r.oom_killed
    assert run_code("x = bytearray(150 << 20)", backend="process", memory_mb="1g").returncode == 0
    assert WorkerSpec(memory_mb="1g").memory_mb == 1024
    kw = container_kwargs(kind="run", memory_mb="512MiB", cpus=1, pids_limit=8, tmpfs={}, user="1")
    assert kw["mem_limit"] == kw["memswap_limit"] == "512m"
    with pytest.raises(ValueError, match="memory_mb='lots'"):
        run_code("pass", backend="process", memory_mb="lots")


def test_reward_workers_take_docker_sizes():
    from rewards.workers import ProcessPool

    pool = ProcessPool(1, [], memory_mb="8g")
    try:
        assert pool.memory_mb == 8192
    finally:
        pool.close()


def test_config_takes_docker_sizes_and_refuses_nonsense():
    from hydra import compose, initialize_config_dir

    from cispo.config_check import value_problems
    from cispo.planner import build_plan

    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        cfg = compose("config", overrides=["+exp=tiny", "sandbox.memory_mb=2g",
                                           "reward.worker_memory_mb=4GiB"])
    assert cfg.sandbox.memory_mb == "2g"
    assert value_problems(cfg) == []
    assert build_plan(cfg)["sandbox"]["memory_gib"] == cfg.sandbox.num_workers * 2
    cfg.sandbox.memory_mb = 512  # a plain integer is still MB
    assert value_problems(cfg) == []
    cfg.sandbox.memory_mb, cfg.reward.worker_memory_mb = "2 gallons", "-1"
    problems = value_problems(cfg)
    assert any(p.startswith("sandbox.memory_mb='2 gallons'") for p in problems), problems
    assert any(p.startswith("reward.worker_memory_mb='-1'") for p in problems), problems
    assert OmegaConf.to_container(cfg)["sandbox"]["memory_mb"] == "2 gallons"  # kept as written
