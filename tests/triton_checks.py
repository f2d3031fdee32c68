"""The graph engine's Triton kernels against float64 references (and the torch paths).

Run by tests/test_ops_decode_kernels.py: on CPU in a subprocess with TRITON_INTERPRET=1 (the
interpreter must be on before triton is imported), on a CUDA machine directly on the GPU
(`python tests/triton_checks.py [cuda]`). Each check draws fresh random inputs, poisons the
outputs first where a kernel writes into a given buffer, and compares by ‖out − ref‖ / ‖ref‖.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F


def _interpreter_fixes() -> None:
    """Two gaps of triton 3.6's CPU interpreter (it runs kernels through numpy; the compiled
    kernels take neither path):
    - every scalar is a size-1 numpy array and `range(n)` over a runtime scalar calls int() on
      it, which numpy 2.4 refuses for arrays with a dimension: take the element;
    - `tl.dot` multiplies bf16 operands as their raw uint16 bit patterns (numpy has no bf16):
      widen them to float32 first, which is what the tensor cores compute exactly."""
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interpreter._patch_lang_tensor = patched
    dot = interpreter.InterpreterBuilder.create_dot

    def widen(h):
        if h.dtype.scalar != tl.bfloat16:
            return h
        data = interpreter._convert_float(h.data, tl.bfloat16, tl.float32, None).view(np.float32)
        return interpreter.TensorHandle(data, tl.float32)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return dot(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    interpreter.InterpreterBuilder.create_dot = create_dot


DEV = "cuda" if len(sys.argv) > 1 and sys.argv[1] == "cuda" else "cpu"
FORCE = "triton"


def rel(a, b) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def bf16_tol(dtype) -> float:
    """bf16 operands: ~2^-8 per rounding. Triton's interpreter rounds float32 -> bf16 toward zero
    (seen with triton 3.6: 4.046875 -> 4.03125; torch and the GPU round to nearest even), so the
    errors of several roundings add up there instead of cancelling: twice the bound on CPU."""
    if dtype != torch.bfloat16:
        return 1e-5
    return 1e-2 if DEV == "cuda" else 2e-2


def check_rms_norm():
    from cispo.ops.rms_norm import (
        add_rms_norm,
        add_rms_norm_ref,
        gated_rms_norm,
        gated_rms_norm_ref,
    )

    for dtype in (torch.float32, torch.bfloat16):
        for alpha, beta in ((1.0, 1.0), (3.5, 0.7)):
            res, delta = (torch.randn(5, 96, device=DEV).to(dtype) for _ in range(2))
            w = (1 + 0.1 * torch.randn(96, device=DEV)).to(dtype)
            x, h = add_rms_norm(res, delta, w, 1e-5, alpha, beta, force=FORCE)
            xr, hr = add_rms_norm_ref(res, delta, w, 1e-5, alpha, beta)
            x64 = res.double() * alpha + delta.double() * beta
            h64 = w.double() * x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-5)
            assert rel(x, x64) < bf16_tol(dtype) and rel(h, h64) < 2 * bf16_tol(dtype), (dtype, rel(h, h64))
            # the interpreter rounds float32 -> bf16 toward zero (the GPU to nearest): 1-ulp differences
            assert rel(h, hr) < bf16_tol(dtype) and rel(x, xr) < bf16_tol(dtype), (rel(h, hr), rel(x, xr))
            _, h1 = add_rms_norm(res, None, w, 1e-6, force=FORCE)
            assert rel(h1, add_rms_norm_ref(res, None, w, 1e-6)[1]) < bf16_tol(dtype)
        o, g = (torch.randn(4, 64, device=DEV).to(dtype) for _ in range(2))
        w = (1 + 0.1 * torch.randn(64, device=DEV)).to(dtype)
        out = gated_rms_norm(o, g, w, 1e-6, force=FORCE)
        o64 = o.double()
        ref64 = torch.sigmoid(g.double()) * w.double() * o64 * torch.rsqrt(o64.pow(2).mean(-1, keepdim=True) + 1e-6)
        assert rel(out, ref64) < 2 * bf16_tol(dtype), rel(out, ref64)
        assert rel(out, gated_rms_norm_ref(o, g, w, 1e-6)) < 2 * bf16_tol(dtype)
    print("rms_norm ok")


def check_lightning_decode():
    from cispo.ops.lightning_decode import lightning_decode, lightning_decode_ref

    for dtype in (torch.float32, torch.bfloat16):
        S, L, H, D, nb = 6, 3, 2, 16, 5
        state = torch.randn(S + 1, L, H, D, D, device=DEV)
        state[S] = 0  # the dummy slot
        codes = torch.tensor([-1, -1, 2, -1, 0, -1, 3], device=DEV)  # slots 2 and 4 finished, 6 = dummy
        slot = torch.tensor([3, 0, 2, 6, 6], device=DEV)
        qkv = torch.randn(nb, 4 * H * D, device=DEV).to(dtype)  # a fused projection: q|k|v then gate
        decay = torch.rand(L, H, device=DEV) * 0.5 + 0.5
        layer = 1
        st_tri, st_ref = state.clone(), state.clone()
        out = torch.full((nb, H * D), float("nan"), dtype=dtype, device=DEV)
        lightning_decode(qkv[:, :3 * H * D], st_tri, layer, slot, decay, codes, out=out, force=FORCE)
        o_ref = lightning_decode_ref(qkv[:, :3 * H * D], st_ref, layer, slot, decay, codes)
        # float64: q, k, v = silu(projection) in the model dtype (the layer's definition), then the formula
        x = F.silu(qkv[:, :3 * H * D]).double().view(nb, H, 3 * D)
        q, k, v = x.split(D, -1)
        S64 = state.double()[slot, layer]
        S64 = decay.double()[layer].view(1, H, 1, 1) * S64 + k.unsqueeze(-1) * v.unsqueeze(-2)
        o64 = (q.unsqueeze(-2) @ S64).squeeze(-2).reshape(nb, H * D)
        assert not out.isnan().any()
        assert rel(out, o64) < bf16_tol(dtype), rel(out, o64)
        assert rel(out, o_ref) < bf16_tol(dtype)
        for r in (0, 1):  # running rows: state updated in place
            tol = 1e-6 if dtype == torch.float32 else bf16_tol(dtype)  # bf16: k, v rounded differently
            assert rel(st_tri[slot[r], layer], S64[r]) < tol, rel(st_tri[slot[r], layer], S64[r])
        for s in (2, 4, 6):  # finished slots and the dummy: untouched
            assert torch.equal(st_tri[s], state[s])
        assert torch.equal(st_tri[:, [0, 2]], state[:, [0, 2]])  # other layers untouched
        assert rel(st_tri, st_ref) < (1e-6 if dtype == torch.float32 else bf16_tol(dtype))
    print("lightning_decode ok")


def check_decode_attention():
    from cispo.ops.decode_attention import decode_attention, decode_attention_ref

    for dtype in (torch.float32, torch.bfloat16):
        S, M, KVH, H, D = 4, 150, 2, 6, 16
        kc = torch.randn(S + 1, M, KVH, D, device=DEV).to(dtype)
        vc = torch.randn(S + 1, M, KVH, D, device=DEV).to(dtype)
        q = torch.randn(5, H, D, device=DEV).to(dtype)
        slot = torch.tensor([2, 0, 3, 4, 1], device=DEV)
        pos = torch.tensor([0, 70, 149, 5, 64], device=DEV)
        out = decode_attention(q, kc, vc, slot, pos, 0.25, force=FORCE)
        k64 = kc.double()[slot].repeat_interleave(H // KVH, 2)
        v64 = vc.double()[slot].repeat_interleave(H // KVH, 2)
        s = torch.einsum("bhd,bmhd->bhm", q.double(), k64) * 0.25
        s = s.masked_fill((torch.arange(M, device=DEV)[None, :] > pos[:, None])[:, None], float("-inf"))
        o64 = torch.einsum("bhm,bmhd->bhd", torch.softmax(s, -1), v64)
        assert rel(out, o64) < bf16_tol(dtype), (dtype, rel(out, o64))
        assert rel(out, decode_attention_ref(q, kc, vc, slot, pos, 0.25)) < bf16_tol(dtype)
    print("decode_attention ok")


def check_moe():
    from cispo.ops.moe import (
        combine,
        combine_ref,
        route_align,
        route_align_ref,
        silu_mul,
        silu_mul_ref,
    )

    for E, k, renorm, wdt, n in ((8, 2, True, torch.float32, 37), (6, 3, False, torch.bfloat16, 130),
                                 (8, 2, True, torch.float32, 1)):
        logits = torch.randn(n, E, device=DEV).to(torch.bfloat16)
        r = route_align(logits, k, renorm, wdt, force=FORCE)
        ref = route_align_ref(logits, k, renorm, wdt)
        # the same experts with the same weights; equal probabilities (bf16 logits tie) may come
        # in either order (torch.topk leaves the order of ties unspecified)
        order, ref_order = r.ids.argsort(-1), ref.ids.argsort(-1)
        assert torch.equal(r.ids.gather(-1, order), ref.ids.gather(-1, ref_order)), (r.ids, ref.ids)
        assert torch.equal(r.offs, ref.offs)
        assert rel(r.weights.gather(-1, order), ref.weights.gather(-1, ref_order)) < (1e-6 if wdt == torch.float32 else 1e-2)
        p64 = torch.softmax(logits.double(), -1).gather(-1, r.ids)
        if renorm:
            p64 = p64 / p64.sum(-1, keepdim=True)
        assert rel(r.weights, p64) < (1e-6 if wdt == torch.float32 else 1e-2)
        flat = r.ids.reshape(-1)
        assert torch.equal(r.src[r.inv], torch.arange(n * k, device=DEV) // k)  # a permutation, pairs → tokens
        assert torch.equal(flat[torch.argsort(r.inv)].sort().values, flat.sort().values)
        assert (flat[torch.argsort(r.inv)].diff() >= 0).all()  # sorted by expert
        y = torch.randn(n * k, 40, device=DEV).to(torch.bfloat16)
        out = combine(y, r, force=FORCE)
        y64 = y.double()[r.inv].view(n, k, 40)
        o64 = (y64 * r.weights.double().unsqueeze(-1)).sum(1)
        assert rel(out, o64) < 1e-2 and rel(out, combine_ref(y, r)) < 1e-2
    gu = torch.randn(7, 2 * 48, device=DEV).to(torch.bfloat16)
    assert rel(silu_mul(gu, force=FORCE), silu_mul_ref(gu)) < 1e-2
    g64, u64 = gu.double().chunk(2, -1)
    assert rel(silu_mul(gu, force=FORCE), F.silu(g64) * u64) < 1e-2
    print("moe ok")


def check_rope_cache():
    from cispo.ops.rope_cache import rope_cache, rope_cache_ref

    for dtype in (torch.float32, torch.bfloat16):
        for R, norm in ((16, False), (8, True)):  # full rotation; M1's partial RoPE with Qwen3's q/k norms
            n, H, KVH, D, S, M = 5, 4, 2, 16, 6, 40
            y = torch.randn(n, (H + 2 * KVH) * D, device=DEV).to(dtype)
            pos = torch.tensor([0, 7, 39, 3, 12], device=DEV)
            slot = torch.tensor([2, 0, 5, 6, 6], device=DEV)
            inv = 1.0 / (1e4 ** (torch.arange(0, R, 2, device=DEV).float() / R))
            fr = torch.arange(M, device=DEV).float()[:, None] * inv[None, :]
            emb = torch.cat((fr, fr), -1)
            cos_t, sin_t = emb.cos().to(dtype), emb.sin().to(dtype)
            qn = (1 + 0.1 * torch.randn(D, device=DEV)).to(dtype), 1e-6
            kn = (1 + 0.1 * torch.randn(D, device=DEV)).to(dtype), 1e-5
            caches = [torch.full((S + 1, M, KVH, D), float("nan"), device=DEV).to(dtype) for _ in range(4)]
            q = rope_cache(y, H, KVH, cos_t, sin_t, pos, slot, caches[0], caches[1], qn if norm else None,
                           kn if norm else None, force=FORCE)
            qr = rope_cache_ref(y, H, KVH, cos_t, sin_t, pos, slot, caches[2], caches[3], qn if norm else None,
                                kn if norm else None)
            # float64 formula from the same rounded tables
            y64 = y.double()

            def f64(x, w, norm=norm, cos_t=cos_t, sin_t=sin_t, pos=pos, R=R):
                if norm:
                    x = w[0].double() * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + w[1])
                c, s_ = cos_t.double()[pos][:, None], sin_t.double()[pos][:, None]
                x1, x2 = x[..., :R // 2], x[..., R // 2:R]
                return torch.cat((x[..., :R] * c + torch.cat((-x2, x1), -1) * s_, x[..., R:]), -1)

            q64 = f64(y64[:, :H * D].view(n, H, D), qn)
            k64 = f64(y64[:, H * D:(H + KVH) * D].view(n, KVH, D), kn)
            assert rel(q, q64) < 2 * bf16_tol(dtype) and rel(q, qr) < 2 * bf16_tol(dtype), (rel(q, q64), rel(q, qr))
            for r in range(3):  # rows 3 and 4 both write the dummy slot 6
                assert rel(caches[0][slot[r], pos[r]], k64[r]) < 2 * bf16_tol(dtype)
                assert torch.equal(caches[1][slot[r], pos[r]], y[r, (H + KVH) * D:].view(KVH, D))
            written = ~caches[2].isnan()
            assert torch.equal(written, ~caches[0].isnan()) and torch.equal(written, ~caches[1].isnan())
    print("rope_cache ok")


class _Pool:
    def __init__(self, S, T, V):
        self.tok = torch.randint(0, V, (S + 1,), device=DEV)
        self.pos = torch.randint(0, 50, (S + 1,), device=DEV)
        self.info = torch.stack([torch.randint(0, T - 1, (S + 1,), device=DEV),
                                 torch.tensor([-1, -1, -1, 1, -1, 3], device=DEV)[:S + 1]])
        self.run = torch.randint(0, 3, (S + 1,), device=DEV)
        self.key = torch.randint(0, 2**32, (S + 1,), device=DEV)
        self.out_tok = torch.full((S + 1, T + 1), -7, dtype=torch.int32, device=DEV)
        self.out_lp = torch.full((S + 1, T + 1), float("nan"), device=DEV)
        self.fparams = torch.tensor([0.7, -0.01], device=DEV)
        self.iparams = torch.tensor([3, T, 2], device=DEV)
        self.stop_ids = torch.tensor([5, 9, -1, -1, -1, -1, -1, -1], device=DEV)

    def clone(self):
        c = object.__new__(_Pool)
        c.__dict__ = {k: v.clone() for k, v in self.__dict__.items()}
        return c


def check_sampling():
    from rollout.fused_sampling import sample_step, sample_step_ref, vocab_hashes
    from rollout.sampler import process_logits

    S, T, V = 5, 6, 3000
    vh = vocab_hashes(V, DEV)
    for temp, top_k, top_p in ((0.7, 0, 1.0), (1.0, 20, 0.9)):
        pool = _Pool(S, T, V)
        pool.fparams[0] = temp
        rows = torch.tensor([1, 0, 3, 5, 5, 4, 2], device=DEV)  # 5 = the dummy, 3 finished
        logits = torch.randn(len(rows), V, device=DEV) * 3
        logits[0, 9] = 40.0  # a certain stop token: finish "stop"
        logits[1, 5] = 40.0  # a stop token
        a, b = pool.clone(), pool.clone()
        if top_k or top_p < 1:
            z = process_logits(logits, temp, top_k, top_p)
            sample_step(z, rows, a, vh, None, force=FORCE)
            sample_step_ref(z, rows, b, vh, None)
        else:
            sample_step(logits, rows, a, vh, temp, force=FORCE)
            sample_step_ref(logits, rows, b, vh, temp)
        # slot S is the dummy that padded rows point at: written twice here, in an order the GPU
        # does not fix (two programs race), and never read; compare the real slots only
        for name in ("tok", "pos", "run", "out_tok"):
            assert torch.equal(getattr(a, name)[:S], getattr(b, name)[:S]), (name, getattr(a, name), getattr(b, name))
        assert torch.equal(a.info[:, :S], b.info[:, :S]), ("info", a.info, b.info)
        fin = ~b.out_lp[:S].isnan()
        assert torch.equal(fin, ~a.out_lp[:S].isnan())
        assert (a.out_lp[:S][fin] - b.out_lp[:S][fin]).abs().max() < 1e-5
        assert a.info[1, 1] == 1 and a.info[1, 0] == 1  # stopped on 9 and on 5
        assert torch.equal(a.info[:, 3], pool.info[:, 3]) and torch.equal(a.info[:, 5], pool.info[:, 5])
    print("sampling ok")


def check_engine():
    """The whole graph engine with the Triton kernels (the GPU's code path, run eagerly; under
    the interpreter on CPU) against the same engine with the torch paths: same samples, same
    routing records (M1's FP32 head, partial RoPE, top-k / top-p, repetition stop, MoE)."""
    import tempfile

    from omegaconf import OmegaConf
    from test_engine_graph import prompts_for, same_samples

    from cispo.config import ModelConfig
    from cispo.models.build import prepare
    from rollout.engines.graph import GraphEngine
    from rollout.types import SamplingParams

    path = prepare(OmegaConf.structured(ModelConfig), tempfile.mkdtemp() + "/model")
    prompts = prompts_for(path)[1:4]
    params = SamplingParams(max_new_tokens=7, top_k=12, top_p=0.95, seed=2, repetition_window=4,
                            repetition_threshold=0.2)
    opts = {"fp32_head": True, "rotary_dim": 8}
    runs = [GraphEngine(path, "float32", DEV, model_options=opts, max_slots=4, kernels=k,
                        record_routing=True, cuda_graphs=False).generate(prompts, 3, params)
            for k in ("torch", "triton")]
    same_samples(*runs, atol=1e-5 if DEV == "cpu" else 1e-4)
    pad = 0  # the pad token embeds to zeros: its router logits tie, and ties may break either way
    for a, b in zip(*runs, strict=True):
        fed = torch.tensor(a.prompt_ids + a.response_ids[:-1])
        keep = fed != pad
        assert torch.equal(a.routing[keep], b.routing[keep])
    print("engine ok")


if __name__ == "__main__":
    if DEV == "cpu":
        _interpreter_fixes()
    torch.manual_seed(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    for check in (check_rms_norm, check_lightning_decode, check_decode_attention, check_rope_cache, check_moe,
                  check_sampling):
        check()
    if len(sys.argv) > 3 and sys.argv[3] == "engine":
        check_engine()
