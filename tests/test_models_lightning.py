"""Lightning attention: transformers' loop against the formula (CPU), and the fla path against
transformers' loop, forward and gradients (GPU, run on the lent machine)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cispo.models.lightning import patch_lightning_attention

gpu = [pytest.mark.gpu,
       pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def lightning_layer(layer_idx=1, layers=4, heads=4, head_dim=16, block=8, dtype=torch.float64,
                    device="cpu", seed=0):
    from transformers import MiniMaxConfig
    from transformers.models.minimax.modeling_minimax import MiniMaxLightningAttention

    cfg = MiniMaxConfig(hidden_size=heads * head_dim, num_attention_heads=heads, head_dim=head_dim,
                        num_hidden_layers=layers, block_size=block,
                        layer_types=["linear_attention"] * layers)
    torch.manual_seed(seed)
    layer = MiniMaxLightningAttention(cfg, layer_idx)
    for lin in (layer.qkv_proj, layer.output_gate, layer.out_proj):
        torch.nn.init.normal_(lin.weight, std=(heads * head_dim) ** -0.5)
    return layer.to(device=device, dtype=dtype)


def m1_slopes(heads: int, layer_idx: int, layers: int) -> torch.Tensor:
    """M1's per-head decay 2^(−8(h+1)/H), times the per-layer factor of MiniMax-Text-01's code."""
    h = torch.arange(heads, dtype=torch.float64)
    return 2.0 ** (-8 * (h + 1) / heads) * (1 - layer_idx / (layers - 1 + 1e-5) + 1e-5)


def formula(layer, x, slopes):
    """o_t = Σ_{s≤t} exp(−λ_h (t−s)) (q_t·k_s) v_s, then RMSNorm, sigmoid gate, out_proj."""
    b, t, _ = x.shape
    hd, d = layer.num_attention_heads, layer.head_dim
    q, k, v = F.silu(layer.qkv_proj(x)).view(b, t, hd, 3 * d).split(d, -1)
    pos = torch.arange(t, dtype=x.dtype)
    dist = pos[:, None] - pos[None, :]
    decay = torch.exp(-slopes.to(x.dtype)[:, None, None] * dist.clamp(min=0)) * (dist >= 0)
    scores = torch.einsum("bthd,bshd->bhts", q, k) * decay
    o = torch.einsum("bhts,bshd->bthd", scores, v).reshape(b, t, hd * d)
    return layer.out_proj(torch.sigmoid(layer.output_gate(x)) * layer.norm(o))


@pytest.mark.parametrize("layer_idx", [0, 2, 3])
def test_transformers_loop_is_decayed_linear_attention_with_m1_slopes(layer_idx):
    layer = lightning_layer(layer_idx=layer_idx)
    torch.testing.assert_close(layer.slope_rate.reshape(-1).double(), m1_slopes(4, layer_idx, 4),
                               rtol=1e-6, atol=0)
    x = torch.randn(2, 29, 64, dtype=torch.float64)  # 29: 3 full blocks of 8 and a partial one
    out, _ = layer(x, None, None)
    # 1e-6, not float64 rounding: transformers builds its decay tables in float32 at init
    assert rel(out, formula(layer, x, m1_slopes(4, layer_idx, 4))) < 1e-6


def test_patched_layer_on_cpu_keeps_the_loop():
    from transformers import MiniMaxConfig, MiniMaxForCausalLM

    cfg = MiniMaxConfig(vocab_size=40, hidden_size=32, intermediate_size=32, num_hidden_layers=2,
                        num_attention_heads=4, head_dim=8, num_key_value_heads=2, block_size=4,
                        num_local_experts=2, num_experts_per_tok=1,
                        layer_types=["linear_attention", "full_attention"])
    torch.manual_seed(0)
    model = MiniMaxForCausalLM(cfg).eval()
    ids = torch.randint(0, 40, (2, 11))
    before = model(input_ids=ids).logits
    assert patch_lightning_attention(model) == 1
    torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=0, atol=0)


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def run(layer, x, **kw):
    x = x.detach().clone().requires_grad_()
    out, _ = layer(x, None, None, **kw)
    # drawn in float64 then cast: randn in float32 and float64 gives different numbers
    g = torch.randn(out.shape, dtype=torch.float64, device=out.device,
                    generator=torch.Generator(device=out.device).manual_seed(5)).to(out.dtype)
    (out * g).sum().backward()
    grads = [x.grad] + [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    return out.detach(), grads


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 5e-3), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("layer_idx", [0, 5])
def test_fla_matches_transformers_forward_and_grads(dtype, tol, layer_idx):
    """fla vs transformers' loop run in float64 on the same weights: outputs and the gradients of
    the input and of every weight (qkv, gate, out, norm)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    ref_layer = lightning_layer(layer_idx=layer_idx, layers=8, heads=8, head_dim=64, block=256,
                                device="cuda", dtype=torch.float64)
    x = torch.randn(2, 1000, 512, device="cuda", dtype=torch.float64)
    ref_out, ref_grads = run(ref_layer, x)
    layer = lightning_layer(layer_idx=layer_idx, layers=8, heads=8, head_dim=64, block=256,
                            device="cuda", dtype=dtype)
    layer.load_state_dict(ref_layer.state_dict())
    patch_lightning_attention(torch.nn.ModuleList([layer]))
    out, grads = run(layer, x.to(dtype))
    errs = [rel(out, ref_out)] + [rel(a, b) for a, b in zip(grads, ref_grads, strict=True)]
    print(f"{dtype} layer {layer_idx}: out {errs[0]:.1e}, grads {[f'{e:.1e}' for e in errs[1:]]}")
    assert max(errs) < tol, errs


for mark in gpu:
    test_fla_matches_transformers_forward_and_grads = mark(test_fla_matches_transformers_forward_and_grads)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fla_varlen_packed_equals_each_sequence_alone():
    """Three sequences packed into one row (cu_seqlens, or position_ids restarting at 0) give what
    transformers' loop gives for each sequence on its own: the state restarts at boundaries."""
    layer = lightning_layer(layer_idx=2, layers=8, heads=8, head_dim=64, block=256, device="cuda",
                            dtype=torch.float64)
    lens = [300, 517, 65]
    xs = [torch.randn(1, n, 512, device="cuda", dtype=torch.float64) for n in lens]
    ref = torch.cat([layer(x, None, None)[0] for x in xs], dim=1)
    fast = lightning_layer(layer_idx=2, layers=8, heads=8, head_dim=64, block=256, device="cuda",
                           dtype=torch.float32)
    fast.load_state_dict(layer.state_dict())
    patch_lightning_attention(torch.nn.ModuleList([fast]))
    packed = torch.cat(xs, dim=1).float()
    cu = torch.tensor([0, 300, 817, 882], device="cuda")
    out_cu, _ = fast(packed, None, None, cu_seq_lens_q=cu)
    pos = torch.cat([torch.arange(n, device="cuda") for n in lens])[None]
    out_pos, _ = fast(packed, None, None, position_ids=pos)
    assert rel(out_cu, ref) < 5e-3 and rel(out_pos, ref) < 5e-3, (rel(out_cu, ref), rel(out_pos, ref))
    unpacked, _ = fast(packed, None, None)  # without boundaries it is a different function
    assert rel(unpacked, ref) > 1e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_whole_hybrid_model_logits_and_grads_match_after_patch():
    from transformers import MiniMaxConfig, MiniMaxForCausalLM

    cfg = MiniMaxConfig(vocab_size=1000, hidden_size=256, intermediate_size=256, num_hidden_layers=4,
                        num_attention_heads=4, head_dim=64, num_key_value_heads=2, block_size=256,
                        num_local_experts=4, num_experts_per_tok=2,
                        layer_types=["linear_attention"] * 3 + ["full_attention"])
    torch.manual_seed(0)
    model = MiniMaxForCausalLM(cfg).cuda().float()
    ids = torch.randint(0, 1000, (2, 700), device="cuda")
    ref = model(input_ids=ids, use_cache=False).logits
    ref.float().logsumexp(-1).sum().backward()
    ref_g = model.model.layers[0].self_attn.qkv_proj.weight.grad.clone()
    model.zero_grad()
    with torch.no_grad():
        ref_cache = model(input_ids=ids, use_cache=True).past_key_values.get_linear_cache(0).clone()
    assert patch_lightning_attention(model) == 3
    out = model(input_ids=ids, use_cache=False).logits
    out.float().logsumexp(-1).sum().backward()
    g = model.model.layers[0].self_attn.qkv_proj.weight.grad
    with torch.no_grad():  # a prefill through fla leaves the same state for decoding
        res = model(input_ids=ids, use_cache=True)
    cache = res.past_key_values.get_linear_cache(0)
    errs = (rel(out, ref), rel(g, ref_g), rel(res.logits, ref), rel(cache, ref_cache))
    print("logits {:.1e}, layer-0 qkv grad {:.1e}, prefill logits {:.1e}, state {:.1e}".format(*errs))
    assert 0 < errs[0] < 5e-3 and errs[1] < 2e-2 and errs[2] < 5e-3 and errs[3] < 5e-3, errs


class _LinearCache:
    """The two methods of transformers' MiniMaxCache that a lightning layer calls."""

    def __init__(self):
        self.states = {}

    def get_linear_cache(self, i):
        return self.states.get(i)

    def set_linear_cache(self, i, state):
        self.states[i] = state


def _decode(layer, x, step):
    """Token by token from a zero state (as after an empty prefill) through `step`."""
    from cispo.models.lightning import fp32_state_decode

    b, h, d = x.shape[0], layer.num_attention_heads, layer.head_dim
    cache = _LinearCache()
    cache.set_linear_cache(layer.layer_idx, torch.zeros(b, h, d, d, dtype=x.dtype))
    fn = fp32_state_decode if step == "fp32" else (lambda m, xt, mask, c: type(m).forward(m, xt, None, mask, c))
    outs = [fn(layer, x[:, t:t + 1], None, cache)[0] for t in range(x.shape[1])]
    return torch.cat(outs, dim=1), cache.get_linear_cache(layer.layer_idx)


def test_fp32_state_decode_equals_the_full_pass_in_float64():
    layer = lightning_layer(layer_idx=1)
    x = torch.randn(2, 21, 64, dtype=torch.float64)
    out, state = _decode(layer, x, "fp32")
    assert state.dtype == torch.float32  # kept in FP32 whatever the model's dtype
    assert rel(out, formula(layer, x, m1_slopes(4, 1, 4))) < 1e-6


def test_fp32_state_decode_of_a_bf16_layer_is_closer_to_the_formula_than_transformers_step():
    """M1 keeps the lightning state in FP32: over a long response transformers' bf16 state drifts."""
    ref_layer = lightning_layer(layer_idx=0, heads=2, head_dim=32)
    x = torch.randn(1, 300, 64, dtype=torch.float64)
    ref = formula(ref_layer, x, m1_slopes(2, 0, 4))
    layer = lightning_layer(layer_idx=0, heads=2, head_dim=32, dtype=torch.bfloat16)
    xb = x.to(torch.bfloat16)
    ours, state = _decode(layer, xb, "fp32")
    theirs, _ = _decode(layer, xb, "transformers")
    assert state.dtype == torch.float32 and ours.dtype == torch.bfloat16
    err_ours, err_theirs = rel(ours.double(), ref), rel(theirs.double(), ref)
    assert err_ours < 0.5 * err_theirs, (err_ours, err_theirs)



@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_tokens_after_a_kept_state_equal_the_whole_pass():
    """A multi-turn episode's new tokens go through fla's chunked kernel from the kept state
    (`initial_state`): a prefill, then the rest from its state, equals one pass over everything."""
    layer = lightning_layer(layer_idx=2, layers=8, heads=8, head_dim=64, block=256, device="cuda",
                            dtype=torch.float64)
    x = torch.randn(2, 700, 512, device="cuda", dtype=torch.float64)
    ref = layer(x, None, None)[0]
    fast = lightning_layer(layer_idx=2, layers=8, heads=8, head_dim=64, block=256, device="cuda",
                           dtype=torch.float32)
    fast.load_state_dict(layer.state_dict())
    patch_lightning_attention(torch.nn.ModuleList([fast]))
    cache = _LinearCache()
    first, _ = fast(x[:, :613].float(), None, None, past_key_values=cache)  # leaves the FP32 state
    assert cache.get_linear_cache(2).dtype == torch.float32
    rest, _ = fast(x[:, 613:].float(), None, None, past_key_values=cache)  # 87 tokens from it
    assert cache.get_linear_cache(2).shape == (2, 8, 64, 64)
    # the float32 fla tolerance of the tests above
    assert rel(torch.cat([first, rest], 1), ref) < 5e-3
    assert rel(rest, ref[:, 613:]) < 5e-3
    alone, _ = fast(x[:, 613:].float(), None, None)  # the same tokens from a zero state differ
    assert rel(alone, ref[:, 613:]) > 1e-2
