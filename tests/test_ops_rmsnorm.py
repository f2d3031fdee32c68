"""Fused RMSNorm (cispo/ops/rmsnorm.py) against transformers' MiniMaxRMSNorm: output, grad x,
grad w. FP32: to FP32 rounding (1e-5 relative). bf16: within 2 bf16 ulps (2⁻⁶ relative), since
transformers' autograd rounds its intermediate gradients to bf16 and ours are FP32 until the end
(and the interpreter truncates where the GPU rounds to nearest)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def compare(device: str) -> dict[str, list[float]]:
    from transformers.models.minimax.modeling_minimax import MiniMaxRMSNorm

    from cispo.ops.rmsnorm import rms_norm

    out = {}
    g = torch.Generator(device=device).manual_seed(0)
    for dt in (torch.float32, torch.bfloat16):
        n = 48 if device == "cpu" else 6144
        m = MiniMaxRMSNorm(n, eps=1e-6).to(device=device, dtype=dt)
        with torch.no_grad():
            m.weight.copy_(torch.randn(n, generator=g, device=device))
        x = torch.randn(3, 7, n, generator=g, device=device).to(dt) * 3
        dy = torch.randn(3, 7, n, generator=g, device=device).to(dt)
        res = []
        for fused in (False, True):
            xx = x.clone().requires_grad_()
            m.weight.grad = None
            y = rms_norm(xx, m.weight, m.variance_epsilon) if fused else m(xx)
            (y.float() * dy.float()).sum().backward()
            res.append((y.detach(), xx.grad, m.weight.grad.clone()))
        errs = []
        for a, b in zip(*res, strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape
            errs.append(float((a.float() - b.float()).abs().max() / b.float().abs().max()))
        out[str(dt)] = errs
    return out


def check(out):
    assert max(out["torch.float32"]) <= 1e-5, out
    assert max(out["torch.bfloat16"]) <= 2**-6, out


def test_rmsnorm_kernels_in_the_triton_interpreter():
    pytest.importorskip("triton")
    code = ("import json, sys; sys.path[:0] = [sys.argv[1], sys.argv[1] + '/tests']; "
            "from test_ops_rmsnorm import compare; print(json.dumps(compare('cpu')))")
    res = subprocess.run([sys.executable, "-c", code, str(ROOT)], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "TRITON_INTERPRET": "1"}, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    check(json.loads(res.stdout.strip().splitlines()[-1]))


def test_patch_keeps_cpu_on_transformers_code():
    from transformers import MiniMaxConfig, MiniMaxForCausalLM

    from cispo.ops.rmsnorm import patch_rmsnorm

    cfg = MiniMaxConfig(vocab_size=97, hidden_size=32, intermediate_size=32, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=2,
                        num_experts_per_tok=1, block_size=4, layer_types=["linear_attention", "full_attention"])
    torch.manual_seed(0)
    model = MiniMaxForCausalLM(cfg).eval()
    ids = torch.randint(0, 97, (2, 9))
    before = model(input_ids=ids).logits
    # per layer: input and post-attention norms; lightning layers also normalise their output
    assert patch_rmsnorm(model) == 2 * 2 + 1 + 1
    if os.environ.get("TRITON_INTERPRET") != "1":
        assert torch.equal(model(input_ids=ids).logits, before)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_rmsnorm_matches_transformers():
    out = compare("cuda")
    print(out)
    check(out)
