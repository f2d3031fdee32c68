"""Shared helpers for the sandbox tests: the Docker check and a small real SWE instance.

`make_swe_instance` builds a real git repository with a pytest suite and an injected bug
(`mul` adds instead of multiplying), and returns the instance, its gold patch and the patches
the hacking tests start from. All patches are made by `git diff`, not written by hand.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

CALC_BUGGY = "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return a + b\n"
CALC_FIXED = "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return a * b\n"
TEST_BASE = ("from calc import add, mul\n\n\ndef test_add():\n    assert add(2, 3) == 5\n\n\n"
             "def test_mul_zero():\n    assert mul(0, 0) == 0\n")
TEST_NEW = TEST_BASE + "\n\ndef test_mul():\n    assert mul(3, 4) == 12\n"
F2P = ["tests/test_calc.py::test_mul"]
P2P = ["tests/test_calc.py::test_add", "tests/test_calc.py::test_mul_zero"]


def docker_ready() -> str | None:
    """None if the engine answers and the sandbox image exists, else why not."""
    try:
        from sandboxes.engine import connect
        from sandboxes.image import DEFAULT_IMAGE

        client = connect(timeout_s=5)
        client.images.get(DEFAULT_IMAGE)
    except Exception as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0]}"
    return None


def require_docker():
    why = docker_ready()
    if why:
        pytest.skip(f"needs Docker and the sandbox image (make image): {why}")


def git(repo: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@x", "HOME": str(repo), "PATH": "/usr/bin:/bin"}
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True,
                          text=True, env=env).stdout


def diff_of(repo: Path, edits: dict[str, str | None]) -> str:
    """The `git diff` that makes `edits` (path → new text, None = delete) from HEAD."""
    for rel, text in edits.items():
        p = repo / rel
        if text is None:
            p.unlink()
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
    git(repo, "add", "-A")
    out = git(repo, "diff", "--cached", "--binary", "HEAD")
    git(repo, "reset", "-q", "--hard", "HEAD")
    git(repo, "clean", "-fdq")
    return out


def make_swe_instance(tmp: Path) -> tuple[dict, str, Path]:
    """(instance, gold patch, repo dir). The archive is written next to the instances file."""
    if shutil.which("git") is None:
        pytest.skip("needs git on the host to build the test repository")
    repo = tmp / "repo"
    (repo / "tests").mkdir(parents=True)
    (repo / "calc.py").write_text(CALC_BUGGY)
    (repo / "tests" / "test_calc.py").write_text(TEST_BASE)
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    gold = diff_of(repo, {"calc.py": CALC_FIXED})
    test_patch = diff_of(repo, {"tests/test_calc.py": TEST_NEW})
    with tarfile.open(tmp / "repo.tar.gz", "w:gz") as tf:
        tf.add(repo, arcname=".")
    instance = {"instance_id": "calc-1", "problem_statement": "mul adds instead of multiplying",
                "patch": gold, "test_patch": test_patch, "FAIL_TO_PASS": json.dumps(F2P),
                "PASS_TO_PASS": json.dumps(P2P), "workdir_archive": "repo.tar.gz"}
    return instance, gold, repo
