"""The math verdict path through a real Docker container (--network none), and the
non-isolated process backend that must be chosen explicitly."""

import pytest

from sandboxes.engine import DockerUnavailable, connect
from sandboxes.scoring import SandboxTimeout, ScoringPool, WorkerSpec


@pytest.mark.docker
def test_docker_scoring_worker_is_hardened_and_replaced_after_timeout():
    pool = ScoringPool(WorkerSpec(), 1)
    try:
        container = pool._all[0].channel.container
        container.reload()
        host = container.attrs["HostConfig"]
        assert host["NetworkMode"] == "none"
        assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["ALL"]
        assert host["Memory"] == host["MemorySwap"] == 512 << 20
        assert container.attrs["Config"]["User"].startswith("10001")
        assert pool.request({"gold": "\\boxed{1/2}", "answer": "\\boxed{0.5}"}, 10)["verdict"] is True
        assert pool.request({"gold": "\\boxed{3}", "answer": "\\boxed{4}"}, 10)["verdict"] is False
        with pytest.raises(SandboxTimeout):  # a power tower: sympy would never finish
            pool.request({"gold": "\\boxed{3}", "answer": "\\boxed{9^{9^{9^{9^{9}}}}}"}, 2)
        assert pool.stats["timeouts"] == 1 and pool.stats["restarts"] == 1
        assert container.id not in [c.id for c in connect().containers.list(all=True)]
        assert pool.request({"gold": "\\boxed{3}", "answer": "\\boxed{3}"}, 10)["verdict"] is True
    finally:
        pool.close()


@pytest.mark.docker
def test_math_reward_through_registry():
    from rewards import get_reward
    from rewards.math_reward import shutdown

    math = get_reward("math")
    try:
        assert math(completion="3}", reference="3", prompt="1+2=\\boxed{") == 1.0
        assert math(completion="4}", reference="3", prompt="1+2=\\boxed{") == 0.0
        assert math(completion="3", reference="3", prompt="1+2=\\boxed{") == 0.0  # unclosed
        assert math(completion="so \\boxed{\\frac{1}{2}}", reference="0.5") == 1.0
    finally:
        shutdown()


def test_process_backend_answers_the_same_protocol():
    pool = ScoringPool(WorkerSpec(backend="process"), 1)
    try:
        assert pool.request({"gold": "\\boxed{2}", "answer": "\\boxed{2}"}, 30)["verdict"] is True
    finally:
        pool.close()


def test_unreachable_engine_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/none.sock")
    with pytest.raises(DockerUnavailable, match="sandbox.backend=process"):
        connect()
