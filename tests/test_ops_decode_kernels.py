"""The graph engine's Triton kernels (norms, lightning decode, decode attention, MoE routing and
combine, fused sampling) against float64 references and their torch paths: on CPU through
Triton's interpreter (a subprocess: TRITON_INTERPRET must be set before triton is imported), on
a GPU compiled. The checks themselves are in tests/triton_checks.py."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*args, **env):
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "triton_checks.py"), *args],
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    for name in ("rms_norm", "lightning_decode", "decode_attention", "rope_cache", "moe", "sampling"):
        assert f"{name} ok" in out.stdout, out.stdout


@pytest.mark.parametrize("seed", ["0", "1"])
def test_kernels_under_the_triton_interpreter(seed):
    pytest.importorskip("triton")
    _run("cpu", seed, TRITON_INTERPRET="1")


@pytest.mark.gpu
def test_kernels_on_the_gpu():
    _run("cuda", "0")
