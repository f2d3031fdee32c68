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
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH")])), **env},
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    names = ["rms_norm", "lightning_decode", "decode_attention", "rope_cache", "moe", "sampling"]
    for name in names + (["engine"] if "engine" in args else []):
        assert f"{name} ok" in out.stdout, out.stdout


@pytest.mark.parametrize("seed, engine", [("0", "engine"), ("1", "")])
def test_kernels_under_the_triton_interpreter(seed, engine):
    """Seed 0 also runs the whole engine on the Triton kernels (eagerly) against its torch path."""
    pytest.importorskip("triton")
    _run("cpu", seed, engine, TRITON_INTERPRET="1")


@pytest.mark.gpu
def test_kernels_on_the_gpu():
    _run("cuda", "0", "engine")


def _compile(kernel, args: dict, **constexprs):
    """Compile `kernel` for Hopper (sm_90) ahead of time, on any machine: triton's own ptxas."""
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = {torch.bfloat16: "bf16", torch.float32: "fp32", torch.int64: "i64", torch.int32: "i32",
             torch.int16: "i16"}
    sig = {}
    for n in kernel.arg_names:
        if n in constexprs:
            sig[n] = "constexpr"
        else:
            v = args[n]
            sig[n] = "*" + names[v] if isinstance(v, torch.dtype) else ("fp32" if isinstance(v, float) else "i32")
    src = ASTSource(fn=kernel, signature=sig,
                    constexprs={(kernel.arg_names.index(c),): v for c, v in constexprs.items()})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32))


def test_kernels_compile_for_hopper():
    """The interpreter does not type-check as the compiler does: compile every kernel variant the
    engine launches (bf16 model, and float32 where it differs) for sm_90 here, without a GPU."""
    pytest.importorskip("triton")
    import torch

    from cispo.ops import decode_attention as da
    from cispo.ops import lightning_decode as ld
    from cispo.ops import moe, rms_norm, rope_cache
    from rollout import fused_sampling as fs

    bf, f32, i64, i32 = torch.bfloat16, torch.float32, torch.int64, torch.int32
    for dt in (bf, f32):
        for delta, store, scale in ((True, False, False), (False, False, False), (True, True, True)):
            _compile(rms_norm._add_rms_norm_kernel,
                     dict(res_ptr=dt, delta_ptr=dt, w_ptr=dt, x_ptr=dt, h_ptr=dt, n_cols=1024, stride_res=1024,
                          stride_delta=1024, stride_x=1024, stride_h=1024, eps=1e-5, alpha=1.0, beta=1.0),
                     HAS_DELTA=delta, STORE_X=store, SCALE_RES=scale, SCALE_DELTA=scale, BLOCK=1024)
        _compile(rms_norm._gated_rms_norm_kernel, dict(o_ptr=dt, g_ptr=dt, w_ptr=dt, out_ptr=dt, n_cols=1024,
                                                       stride_o=1024, stride_g=4096, stride_out=1024, eps=1e-6),
                 BLOCK=1024)
        _compile(ld._lightning_decode_kernel,
                 dict(qkv_ptr=dt, state_ptr=f32, slot_ptr=i64, decay_ptr=f32, codes_ptr=i64, out_ptr=dt,
                      stride_qkv=4096, stride_out=1024, layer=3, n_layers=7), H=16, D=64, BV=64)
        _compile(da._decode_attention_kernel,
                 dict(q_ptr=dt, k_ptr=dt, v_ptr=dt, slot_ptr=i64, pos_ptr=i64, out_ptr=dt, scale=0.125,
                      stride_qr=1024, stride_qh=64, stride_cs=4096, stride_cm=512, stride_ch=64,
                      stride_or=1024, stride_oh=64),
                 GROUP=2, BLOCK_H=16, D=64, BLOCK_N=64, IEEE=dt == f32)
        for norm, R in ((False, 64), (True, 32)):
            _compile(rope_cache._rope_cache_kernel,
                     dict(y_ptr=dt, cos_ptr=dt, sin_ptr=dt, pos_ptr=i64, slot_ptr=i64, k_ptr=dt, v_ptr=dt, q_ptr=dt,
                          qn_ptr=dt, kn_ptr=dt, stride_y=2048, stride_t=64, stride_cs=4096, stride_cm=512,
                          stride_ch=64, q_eps=1e-6, k_eps=1e-6),
                     H=16, KVH=8, D=64, R=R, HAS_NORM=norm)
        _compile(moe._silu_mul_kernel, dict(x_ptr=dt, out_ptr=dt, n_rows=512, n_cols=1024, stride_x=2048,
                                            stride_out=1024), BLOCK=1024)
        for wdt in (f32, dt):
            _compile(moe._combine_kernel, dict(y_ptr=dt, w_ptr=wdt, inv_ptr=i64, out_ptr=dt, n=256, n_cols=1024,
                                               stride_y=1024, stride_out=1024), K=2, BLOCK=1024,
                     ROUND_PROD=wdt != f32)
            for E, K in ((8, 2), (128, 8)):
                _compile(moe._route_kernel,
                         dict(logits_ptr=dt, n=256, stride_l=E, w_ptr=wdt, ids_ptr=i64, counts_ptr=i32),
                         E=E, K=K, BLOCK_E=E, BLOCK_K=K, BLOCK_T=64 // K, RENORM=True)
        for E, K in ((8, 2), (128, 8)):
            _compile(moe._place_kernel, dict(ids_ptr=i64, counts_ptr=i32, src_ptr=i64, inv_ptr=i64, offs_ptr=i32,
                                             n=256, n_blocks=8),
                     E=E, K=K, BLOCK_E=E, BLOCK_T=64 // K, BLOCK_B=min(256, 4096 // E), BLOCK_P=64)
        for apply in (True, False):
            _compile(fs._sample_step_kernel,
                     dict(logits_ptr=f32 if dt == f32 else bf, rows_ptr=i64, vocab=32000, stride_l=32000,
                          tok_ptr=i64, pos_ptr=i64, info_ptr=i64, info_stride=1025, run_ptr=i64, key_ptr=i64,
                          out_tok_ptr=i32, out_lp_ptr=f32, out_stride=129, scratch=128, fparams_ptr=f32,
                          iparams_ptr=i64, stop_ptr=i64),
                     APPLY_TEMP=apply, MAX_STOP=fs.MAX_STOP_IDS, BLOCK_V=2048)
