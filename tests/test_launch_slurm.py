"""launch/slurm/train.sbatch end to end on one machine (issue 6, point 3; issue 20): fake `srun`
and `scontrol` run each "node's" step locally, so the script starts a real 3-node Ray cluster on
loopback (head, one GPU-worker raylet, one CPU sandbox node of a heterogeneous job) and runs a
few steps of `tiny` through it, scored by a scorer actor on the sandbox node."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SBATCH = ROOT / "launch" / "slurm" / "train.sbatch"

# `srun [options] CMD...`: drop SLURM's options, run CMD here (its node is this machine). All
# "nodes" share this machine's CPUs and one GCS: node k's step starts 10 s after node 1's, so
# their raylets do not all register at once on a loaded 2-core machine.
FAKE_SRUN = r"""#!/usr/bin/env bash
while (($#)); do
  case "$1" in
    -w|--nodelist) [[ "$2" =~ ([0-9]+)$ ]] && sleep $(( BASH_REMATCH[1] > 1 ? 10 * (BASH_REMATCH[1] - 1) : 0 )); shift 2 ;;
    -N|--nodes|-n|--ntasks) shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
echo "fake srun: $*" >&2
exec "$@"
"""
# `scontrol show hostnames node[0-1]` -> node0, node1
FAKE_SCONTROL = r"""#!/usr/bin/env bash
[[ "$1 $2" == "show hostnames" ]] || { echo "fake scontrol: only 'show hostnames'" >&2; exit 2; }
list=$3
if [[ "$list" =~ ^(.*)\[([0-9]+)-([0-9]+)\]$ ]]; then
  for ((i = BASH_REMATCH[2]; i <= BASH_REMATCH[3]; i++)); do echo "${BASH_REMATCH[1]}$i"; done
else
  tr ',' '\n' <<<"$list"
fi
"""


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def node_ports(ports: list[int]) -> str:
    names = ["node-manager-port", "object-manager-port", "metrics-export-port",
             "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port"]
    return " ".join(f"--{k}={p}" for k, p in zip(names, ports, strict=True))


def ray_processes_under(temp_dir: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and temp_dir in (proc / "cmdline").read_text():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_fake_scontrol_expands_node_lists(tmp_path):
    shim = tmp_path / "scontrol"
    shim.write_text(FAKE_SCONTROL)
    shim.chmod(0o755)
    out = subprocess.run([str(shim), "show", "hostnames", "gpu[3-5]"], capture_output=True, text=True)
    assert out.stdout.split() == ["gpu3", "gpu4", "gpu5"]


def test_sandbox_node_count_must_leave_a_head(tmp_path):
    bin_dir = _fake_bin(tmp_path)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
           "PYTHON": sys.executable, "SLURM_JOB_NODELIST": "node[0-1]", "CISPO_SANDBOX_NODES": "2"}
    p = subprocess.run(["bash", str(SBATCH), "+exp=tiny"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and "CISPO_SANDBOX_NODES=2: use 0 to 1" in p.stderr, p.stderr


def test_a_python_without_ray_is_named(tmp_path):
    env = {**os.environ, "SLURM_JOB_NODELIST": "node0", "PYTHON": "/usr/bin/python3",
           "PYTHONPATH": ""}  # the system python, which has neither ray nor cispo
    p = subprocess.run(["bash", str(SBATCH)], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and "/usr/bin/python3 cannot import ray and cispo" in p.stderr


def _fake_bin(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


@pytest.mark.docker
@pytest.mark.slow
def test_sbatch_runs_tiny_on_a_ray_cluster_with_a_sandbox_node(tmp_path):
    bin_dir = _fake_bin(tmp_path)
    # a short private temp dir: Ray's socket paths must stay under 108 characters, and other
    # Ray instances on this machine stay untouched
    temp_dir = tempfile.mkdtemp(prefix="cispo-sl-", dir="/tmp")
    gcs, client, dash, *ports = free_ports(21)
    # PATH holds no `ray`: the script must find it from PYTHON (an unactivated venv)
    path = ":".join(p for p in os.environ["PATH"].split(":")
                    if not (Path(p) / "ray").exists())
    env = {**os.environ,
           "PATH": f"{bin_dir}:{path}",
           "PYTHONPATH": str(ROOT), "PYTHON": sys.executable, "WANDB_MODE": "offline",
           # a heterogeneous job: component 0 = the GPU nodes, component 1 = the CPU nodes
           "SLURM_JOB_NODELIST": "node[0-2]", "SLURM_JOB_NODELIST_HET_GROUP_0": "node[0-1]",
           "SLURM_JOB_NODELIST_HET_GROUP_1": "node2", "SLURM_JOB_ID": "1",
           "RAY_HEAD_IP": "127.0.0.1", "RAY_NODE_IP": "127.0.0.1", "RAY_PORT": str(gcs),
           "CISPO_RAY_HEAD_ARGS": f"--num-cpus=2 --temp-dir={temp_dir} "
                                  f"--ray-client-server-port={client} --dashboard-port={dash} "
                                  f"{node_ports(ports[:6])}",
           "CISPO_RAY_WORKER_ARGS": f"--num-cpus=2 {node_ports(ports[6:12])}",
           "CISPO_RAY_SANDBOX_ARGS": node_ports(ports[12:18]), "CISPO_SANDBOX_SLOTS": "2"}
    run = tmp_path / "run"
    try:
        p = subprocess.run(["bash", str(SBATCH), "+exp=tiny", "trainer.total_steps=2",
                            "rollout.prompts_per_step=4", "rollout.group_size=4",
                            f"run_dir={run}", "logging.progress=false",
                            # W&B is not what this test is about
                            "logging.wandb_mode=disabled"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        log = p.stdout[-3000:] + p.stderr[-4000:]
        assert p.returncode == 0, log
        assert "3 Ray nodes up" in p.stdout and "1 sandbox node(s)" in p.stdout, log
        assert "-m ray.scripts.scripts start --head" in p.stderr
        assert "--address=127.0.0.1" in p.stderr and "--num-cpus=0 --num-gpus=0" in p.stderr
        assert "'sandbox': 2.0" in p.stdout  # the sandbox node's slots, in the cluster's resources
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert len(rows) == 2
        # every sample scored by the scorer on the sandbox node (sandbox.placement=actors)
        assert rows[-1]["sandbox/scorers_up"] == 1.0 and rows[-1]["sandbox/scorer_nodes"] == 1.0
        assert rows[-1]["sandbox/scorer_calls_total"] == 2 * 4 * 4
        assert all(r["reward/errors"] == 0 for r in rows)
    finally:
        left = ray_processes_under(temp_dir)
        for pid in left:  # only ever the processes of this test's own Ray cluster
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not left, f"the script left Ray processes running: {left}"
