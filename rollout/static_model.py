"""A transformers causal LM as the graph engine computes it: static weights, prefill, decode step.

`StaticModel(model)` reads a loaded transformers model — MiniMax (lightning + softmax attention,
sparse MoE), Llama / Qwen2 / Qwen3 (dense), Qwen3-MoE (sparse) — into a flat list of layers and
re-points some of its parameters at fused buffers (q|k|v|gate of a lightning layer, q|k|v of a
softmax layer, gate|up of a dense MLP): the module keeps its names, so `load_state_dict` of the
module writes straight into the buffers the engine computes with, and a captured CUDA graph sees
new weights without being captured again. Nothing else is copied; the few derived tensors (the
FP32 head's bf16 pieces, the lightning decay) are refreshed by `refresh` after a load.

The math is the learner's model, op for op where the rounding matters (`cispo.models.build.
load_model` with the same options): MiniMax's decoder layer (the residual is the *normed* input,
scaled by the alpha/beta factors), lightning attention with the decay read from each layer's own
`slope_rate` buffer and the state in FP32, M1's partial RoPE (the rotary embedding's own
`inv_freq`, whatever width `apply_m1_partial_rope` gave it), routing softmax in float32, and the
FP32 LM head computed FP32-accurately (see `Head`).

Two forwards:
  prefill(seqs, ...)  eager, packed: several token lists back to back in one [N, hidden] batch;
                      lightning layers through fla's chunked kernel with `cu_seqlens` on CUDA (a
                      torch chunked form on CPU), writing each sequence's final FP32 state; softmax
                      layers through SDPA per sequence, writing K/V. No LM head: the engine feeds
                      a prompt's last token as the first decode step.
  decode(rows, pool, ...)  one token for each row: rows are slot indices into the engine's static
                      pool (`rollout.engines.graph.SlotPool`); no host syncs, no Python branches on
                      tensor values, so the engine can capture it in a CUDA graph per batch size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cispo.models.rope import partial_rotary
from cispo.ops.decode_attention import decode_attention
from cispo.ops.fp32_matmul import bf16_parts, bf16_parts_needed, mm_3xtf32, mm_bf16_parts, no_tf32
from cispo.ops.lightning_decode import lightning_decode
from cispo.ops.moe import combine, grouped_mm, has_grouped_mm, route_align, silu_mul
from cispo.ops.rms_norm import add_rms_norm, gated_rms_norm
from cispo.ops.rope_cache import rope_cache
from rollout.fused_sampling import sample_step
from rollout.sampler import process_logits

# router class → (renormalise the top-k weights?, their dtype: None = float32, else the model's)
ROUTERS = {"MiniMaxTopKRouter": "minimax", "Qwen3MoeTopKRouter": "qwen3_moe"}


@dataclass
class Layer:
    kind: str  # "lightning" | "softmax"
    ln1: torch.Tensor
    ln1_eps: float
    ln2: torch.Tensor
    ln2_eps: float
    attn_alpha: float = 1.0
    attn_beta: float = 1.0
    mlp_alpha: float = 1.0
    mlp_beta: float = 1.0
    # lightning: w_in = [q|k|v per head (transformers' layout) ; output gate], norm, out
    lin_index: int = -1
    w_in: torch.Tensor | None = None
    o_norm: torch.Tensor | None = None
    o_norm_eps: float = 1e-6
    w_out: torch.Tensor | None = None
    # softmax
    kv_index: int = -1
    w_qkv: torch.Tensor | None = None
    b_qkv: torch.Tensor | None = None
    q_norm: tuple | None = None  # (weight, eps), Qwen3
    k_norm: tuple | None = None
    w_o: torch.Tensor | None = None
    b_o: torch.Tensor | None = None
    scale: float = 1.0
    # MLP: dense [gate|up] + down, or MoE
    mlp: str = "dense"
    w_gu: torch.Tensor | None = None
    b_gu: torch.Tensor | None = None
    w_down: torch.Tensor | None = None
    b_down: torch.Tensor | None = None
    moe_index: int = -1
    router: torch.Tensor | None = None
    experts_gu: torch.Tensor | None = None  # [E, 2I, hidden] (transformers' layout)
    experts_down: torch.Tensor | None = None  # [E, hidden, I]
    top_k: int = 0
    renorm: bool = True
    route_dtype: torch.dtype = torch.float32


@dataclass
class Shapes:
    hidden: int
    vocab: int
    lin_layers: int = 0
    lin_heads: int = 0
    lin_dim: int = 0
    kv_layers: int = 0
    heads: int = 0
    kv_heads: int = 0
    head_dim: int = 0
    moe_layers: int = 0
    top_k: int = 0


class Head:
    """The LM head as the learner computes it.

    An FP32 head (`cispo.models.fp32_head.FP32LMHead`) computes float32 logits in IEEE FP32 in
    the learner. Run as such, a [B, hidden] × [hidden, V] product goes to the float32 CUDA cores
    (~1/15 of the bf16 tensor-core rate on Hopper): at B = 256, hidden 1024, V = 32K that is
    ~17 GFLOP, ~0.3 ms a step, as long as the whole rest of the decode step. Here, when the
    hidden states are bf16 (a bf16 model on CUDA), the product runs on the bf16 tensor cores from
    exact bf16 pieces of the FP32 weight (`cispo.ops.fp32_matmul.mm_bf16_parts`): one piece when
    the weight holds bf16 values (DeepSpeed's bf16 mode trains it so, and a bf16 checkpoint loads
    so), three otherwise; every bf16×bf16 product is exact in float32 and the sum accumulates in
    float32, so the logits are the FP32 product up to summation order. float32 models (CPU) use
    IEEE float32 (`no_tf32`); a head that is not FP32 computes in the model dtype, as in the
    learner.
    """

    def __init__(self, module, hidden_dtype: torch.dtype):
        from cispo.models.fp32_head import FP32LMHead

        self.module = module
        self.weight = module.weight
        self.fp32 = isinstance(module, FP32LMHead) or (
            module.weight.dtype == torch.float32 and hidden_dtype != torch.float32)
        self.bias = getattr(module, "bias", None)
        self.hidden_dtype = hidden_dtype
        self.parts = 0
        self.parts_t: torch.Tensor | None = None
        self.mode = self._mode()
        self.refresh()

    def _mode(self) -> str:
        if not self.fp32:
            return "native"
        if self.hidden_dtype == torch.bfloat16 and self.weight.is_cuda and self.bias is None and _has_mm_out_dtype(self.weight.device):
            return "bf16_parts"
        if self.hidden_dtype != torch.float32 and self.weight.is_cuda:
            return "3xtf32"
        return "ieee"

    def refresh(self) -> bool:
        """Recompute the bf16 pieces after the weight changed; True when their number changed
        (captured graphs then compute with a different shape and must be captured again)."""
        if self.mode != "bf16_parts":
            return False
        with torch.no_grad():
            parts = bf16_parts_needed(self.weight)
            changed = parts != self.parts
            if changed or self.parts_t is None:
                self.parts_t = bf16_parts(self.weight, parts)
            else:
                self.parts_t.copy_(bf16_parts(self.weight, parts))
            self.parts = parts
        return changed

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        if self.mode == "native":
            return F.linear(h, self.weight, self.bias)
        if self.mode == "bf16_parts":
            return mm_bf16_parts(h, self.parts_t, self.parts)
        if self.mode == "3xtf32":
            out = mm_3xtf32(h.float(), self.weight.t())
        else:
            with no_tf32():
                out = h.float() @ self.weight.float().t()
        return out if self.bias is None else out + self.bias.float()


_MM_OUT_DTYPE: dict = {}


def _has_mm_out_dtype(device) -> bool:
    """torch.mm(bf16, bf16, out_dtype=float32) exists on this device (torch >= 2.8 on CUDA)."""
    key = str(device)
    if key not in _MM_OUT_DTYPE:
        try:
            a = torch.ones(16, 16, dtype=torch.bfloat16, device=device)
            _MM_OUT_DTYPE[key] = torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
        except (RuntimeError, TypeError, NotImplementedError):
            _MM_OUT_DTYPE[key] = False
    return _MM_OUT_DTYPE[key]


def _fuse(params: list, dim: int = 0) -> torch.Tensor:
    """One buffer holding the parameters side by side; each parameter becomes a view into it."""
    with torch.no_grad():
        fused = torch.cat([p.detach() for p in params], dim=dim).contiguous()
        at = 0
        for p in params:
            n = p.shape[dim]
            p.data = fused.narrow(dim, at, n)
            at += n
    return fused


def _norm(module) -> tuple[torch.Tensor, float]:
    return module.weight, float(getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6)))


class StaticModel:
    def __init__(self, model, kernels: str | None = None):
        """`model`: a transformers causal LM on its device, in eval mode (the engine's own copy:
        some of its parameters are re-pointed at fused buffers). `kernels`: None (Triton on
        CUDA, torch on CPU), "torch" or "triton"."""
        cfg = model.config
        if getattr(cfg, "hidden_act", "silu") != "silu":
            raise ValueError(f"the graph engine supports silu MLPs, this model uses {cfg.hidden_act!r}")
        self.model = model
        self.config = cfg
        self.force = kernels
        self.device = model.get_input_embeddings().weight.device
        self.dtype = model.get_input_embeddings().weight.dtype
        self.normed_residual = cfg.model_type == "minimax"  # MiniMax: the residual is the normed input
        base = model.get_decoder()
        self.embed = base.embed_tokens.weight
        self.final_norm = _norm(base.norm)
        rot = base.rotary_emb
        if "dynamic" in str(getattr(rot, "rope_type", "default")):
            raise ValueError("the graph engine needs a static rotary embedding (no dynamic RoPE)")
        self.inv_freq = rot.inv_freq.float()
        self.rope_scale = float(getattr(rot, "attention_scaling", 1.0))
        self.head = Head(model.get_output_embeddings(), self.dtype)
        self.shapes = Shapes(hidden=cfg.hidden_size, vocab=self.head.weight.shape[0])
        self.layers: list[Layer] = []
        slopes = []
        for i, dl in enumerate(base.layers):
            self.layers.append(self._layer(i, dl, slopes))
        self.slope = torch.stack(slopes) if slopes else torch.zeros(0, device=self.device)  # [L_lin, H]
        self.decay = torch.exp(-self.slope)
        self._rope_table: tuple | None = None
        self.grouped_mm_ok = has_grouped_mm(self.device, self.dtype)  # else a masked fallback (tests)

    # -- reading the model -------------------------------------------------------------------
    def _layer(self, i: int, dl, slopes: list) -> Layer:
        s = self.shapes
        ln1, e1 = _norm(dl.input_layernorm)
        ln2, e2 = _norm(dl.post_attention_layernorm)
        L = Layer(kind="softmax", ln1=ln1, ln1_eps=e1, ln2=ln2, ln2_eps=e2)
        for name in ("attn_alpha", "attn_beta", "mlp_alpha", "mlp_beta"):
            setattr(L, name, float(getattr(dl, f"{name}_factor", 1.0)))
        layer_types = getattr(self.config, "layer_types", None) or []
        attn = dl.self_attn
        if hasattr(attn, "qkv_proj") and hasattr(attn, "slope_rate"):  # MiniMax lightning attention
            L.kind = "lightning"
            H, D = attn.num_attention_heads, attn.head_dim
            if s.lin_layers and (H, D) != (s.lin_heads, s.lin_dim):
                raise ValueError("lightning layers of different head counts are not supported")
            s.lin_heads, s.lin_dim = H, D
            L.lin_index = s.lin_layers
            s.lin_layers += 1
            L.w_in = _fuse([attn.qkv_proj.weight, attn.output_gate.weight])
            L.o_norm, L.o_norm_eps = _norm(attn.norm)
            L.w_out = attn.out_proj.weight
            slopes.append(attn.slope_rate.reshape(H).float())
        elif all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")):
            if i < len(layer_types) and layer_types[i] not in ("full_attention",):
                raise ValueError(f"layer {i} is {layer_types[i]!r}: the graph engine supports full "
                                 "softmax attention and MiniMax lightning attention")
            if getattr(attn, "sliding_window", None) and getattr(self.config, "use_sliding_window", True):
                raise ValueError("sliding-window attention is not supported by the graph engine")
            H = self.config.num_attention_heads
            KVH = getattr(self.config, "num_key_value_heads", H) or H
            D = attn.head_dim
            if s.kv_layers and (H, KVH, D) != (s.heads, s.kv_heads, s.head_dim):
                raise ValueError("softmax layers of different head shapes are not supported")
            s.heads, s.kv_heads, s.head_dim = H, KVH, D
            L.kv_index = s.kv_layers
            s.kv_layers += 1
            L.w_qkv = _fuse([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
            biases = [getattr(m, "bias", None) for m in (attn.q_proj, attn.k_proj, attn.v_proj)]
            if any(b is not None for b in biases):
                if not all(b is not None for b in biases):
                    raise ValueError("q/k/v projections with biases on some only are not supported")
                L.b_qkv = _fuse(biases)
            if hasattr(attn, "q_norm"):
                L.q_norm, L.k_norm = _norm(attn.q_norm), _norm(attn.k_norm)
            L.w_o, L.b_o = attn.o_proj.weight, attn.o_proj.bias
            L.scale = float(attn.scaling)
        else:
            raise ValueError(f"layer {i}: unsupported attention module {type(attn).__name__}")
        mlp = getattr(dl, "mlp", None) or getattr(dl, "block_sparse_moe", None)
        if hasattr(mlp, "experts") and hasattr(mlp, "gate"):
            router = mlp.gate
            kind = ROUTERS.get(type(router).__name__)
            if kind is None or not hasattr(mlp.experts, "gate_up_proj") or getattr(mlp, "shared_expert", None) is not None:
                raise ValueError(f"layer {i}: unsupported MoE block ({type(mlp).__name__}, router "
                                 f"{type(router).__name__}); supported routers: {sorted(ROUTERS)}")
            if getattr(mlp.experts, "has_bias", False) or getattr(mlp.experts, "is_transposed", False):
                raise ValueError(f"layer {i}: experts with biases or transposed weights are not supported")
            L.mlp = "moe"
            L.moe_index = s.moe_layers
            s.moe_layers += 1
            L.router = router.weight
            L.experts_gu, L.experts_down = mlp.experts.gate_up_proj, mlp.experts.down_proj
            L.top_k = int(router.top_k)
            s.top_k = L.top_k
            if kind == "minimax":
                L.renorm, L.route_dtype = True, torch.float32
            else:
                L.renorm, L.route_dtype = bool(router.norm_topk_prob), self.dtype
        elif all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")):
            L.w_gu = _fuse([mlp.gate_proj.weight, mlp.up_proj.weight])
            if mlp.gate_proj.bias is not None:
                L.b_gu = _fuse([mlp.gate_proj.bias, mlp.up_proj.bias])
            L.w_down, L.b_down = mlp.down_proj.weight, mlp.down_proj.bias
        else:
            raise ValueError(f"layer {i}: unsupported MLP module {type(mlp).__name__}")
        return L

    def refresh(self, names) -> bool:
        """After `load_state_dict` of `names`: recompute what is derived from them. Returns True
        when captured graphs must be dropped (the head's bf16 piece count changed)."""
        names = set(names)
        head_names = {n for n, p in self.model.named_parameters() if p is self.head.weight}
        changed = False
        if names & head_names:
            changed = self.head.refresh()
        if any("slope_rate" in n for n in names):
            with torch.no_grad():
                lin = [L for L in self.layers if L.kind == "lightning"]
                mods = [m for m in self.model.modules() if hasattr(m, "slope_rate") and hasattr(m, "qkv_proj")]
                for L, m in zip(lin, mods, strict=True):
                    self.slope[L.lin_index] = m.slope_rate.reshape(-1).float()
                self.decay.copy_(torch.exp(-self.slope))
        return changed

    def weight_bytes(self) -> int:
        seen, n = set(), 0
        for t in [p for p in self.model.parameters()] + [self.head.parts_t]:
            if t is not None and t.untyped_storage().data_ptr() not in seen:
                seen.add(t.untyped_storage().data_ptr())
                n += t.untyped_storage().nbytes()
        return n

    # -- shared pieces -----------------------------------------------------------------------
    def ensure_rope(self, positions: int) -> None:
        """Tabulate cos / sin for positions [0, positions) (outside any graph: a decode step
        then gathers two rows instead of recomputing them in eight element-wise kernels)."""
        if self._rope_table is not None and self._rope_table[0].shape[0] >= positions:
            return
        pos = torch.arange(positions, device=self.device)
        freqs = pos.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)  # as transformers' rotary embedding, entry for entry
        self._rope_table = ((emb.cos() * self.rope_scale).to(self.dtype), (emb.sin() * self.rope_scale).to(self.dtype))

    def _rope(self, pos: torch.Tensor):
        """cos, sin [n, 1, rotary width] in the model dtype, as transformers' rotary embedding."""
        cos, sin = self._rope_table
        return cos[pos][:, None, :], sin[pos][:, None, :]

    def _qkv(self, L: Layer, h: torch.Tensor, pos: torch.Tensor):
        """Rotated q [n, H, D], k [n, KVH, D], v [n, KVH, D] of a softmax layer."""
        s = self.shapes
        n = h.shape[0]
        y = F.linear(h, L.w_qkv, L.b_qkv)
        hd, kd = s.heads * s.head_dim, s.kv_heads * s.head_dim
        q = y[:, :hd].view(n, s.heads, s.head_dim)
        k = y[:, hd:hd + kd].view(n, s.kv_heads, s.head_dim)
        v = y[:, hd + kd:].view(n, s.kv_heads, s.head_dim)
        if L.q_norm is not None:
            q = add_rms_norm(q, None, L.q_norm[0], L.q_norm[1], force=self.force)[1]
            k = add_rms_norm(k, None, L.k_norm[0], L.k_norm[1], force=self.force)[1]
        cos, sin = self._rope(pos)
        # partial_rotary works on [B, H, T, D]: here T = 1 per row (decode) or per token (prefill)
        q, k = partial_rotary(q.unsqueeze(2), k.unsqueeze(2), cos, sin)
        return q.squeeze(2), k.squeeze(2), v

    def _mlp(self, L: Layer, h: torch.Tensor):
        """(output, routing or None)."""
        if L.mlp == "dense":
            return F.linear(silu_mul(F.linear(h, L.w_gu, L.b_gu), force=self.force), L.w_down, L.b_down), None
        r = route_align(F.linear(h, L.router), L.top_k, L.renorm, L.route_dtype, force=self.force)
        xs = h.index_select(0, r.src)
        g = grouped_mm(xs, L.experts_gu.transpose(1, 2), r.offs, self.grouped_mm_ok)
        y = grouped_mm(silu_mul(g, force=self.force), L.experts_down.transpose(1, 2), r.offs, self.grouped_mm_ok)
        return combine(y, r, force=self.force), r

    def _layers(self, x: torch.Tensor, attention, on_routing=None) -> torch.Tensor:
        """The decoder stack on [n, hidden] embeddings; `attention(L, h)` gives a layer's
        attention output. Returns the final normed hidden states."""
        carry, delta, a, b = x, None, 1.0, 1.0
        keep_x = not self.normed_residual
        for L in self.layers:
            xs, h = add_rms_norm(carry, delta, L.ln1, L.ln1_eps, a, b, store_x=keep_x, force=self.force)
            att = attention(L, h)
            carry = h if self.normed_residual else xs
            xs, h = add_rms_norm(carry, att, L.ln2, L.ln2_eps, L.attn_alpha, L.attn_beta, store_x=keep_x,
                                 force=self.force)
            carry = h if self.normed_residual else xs
            delta, r = self._mlp(L, h)
            if r is not None and on_routing is not None:
                on_routing(L, r)
            a, b = L.mlp_alpha, L.mlp_beta
        return add_rms_norm(carry, delta, self.final_norm[0], self.final_norm[1], a, b, store_x=False,
                            force=self.force)[1]

    # -- decode ------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, rows: torch.Tensor, pool, vocab_hash: torch.Tensor, sampling) -> None:
        """One decode step for the slots in `rows` ([nb] int64; padded rows name the dummy slot):
        feed each slot's next token at its position, sample the next one, advance the slot.
        `sampling` = (temperature, top_k, top_p) baked into the step (top-k / top-p only:
        the temperature alone is read from pool.fparams on the Triton path)."""
        s = self.shapes
        nb = rows.shape[0]
        pos = pool.pos[rows]
        codes = pool.info[1]
        col = None
        if pool.out_route is not None:
            t, running = pool.info[0, rows], pool.info[1, rows] < 0
            col = torch.where(running, t, torch.full_like(t, pool.out_route.shape[1] - 1))

        def attention(L: Layer, h):
            if L.kind == "lightning":
                y = F.linear(h, L.w_in)
                split = 3 * s.lin_heads * s.lin_dim
                o = lightning_decode(y[:, :split], pool.state, L.lin_index, rows, self.decay, codes,
                                     force=self.force)
                return F.linear(gated_rms_norm(o, y[:, split:], L.o_norm, L.o_norm_eps, force=self.force), L.w_out)
            kc, vc = pool.k_cache[L.kv_index], pool.v_cache[L.kv_index]
            q = rope_cache(F.linear(h, L.w_qkv, L.b_qkv), s.heads, s.kv_heads, *self._rope_table, pos, rows, kc, vc,
                           L.q_norm, L.k_norm, force=self.force)
            o = decode_attention(q, kc, vc, rows, pos, L.scale, force=self.force)
            return F.linear(o.view(nb, -1), L.w_o, L.b_o)

        def record(L: Layer, r):
            pool.out_route[rows, col, L.moe_index] = r.ids.to(torch.int16)

        h = self._layers(F.embedding(pool.tok[rows], self.embed), attention,
                         record if col is not None else None)
        logits = self.head.logits(h)
        temperature, top_k, top_p = sampling
        if top_k or top_p < 1.0:
            sample_step(process_logits(logits, temperature, top_k, top_p), rows, pool, vocab_hash, None,
                        force=self.force)
        else:
            sample_step(logits, rows, pool, vocab_hash, temperature, force=self.force)

    # -- prefill -----------------------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, seqs: list[list[int]], write_state, write_kv, record_routing: bool = False):
        """Run the packed token lists (each non-empty) through the model, no head. For each
        lightning layer `write_state(lin_index, states [n_seqs, H, D, D] float32)`; for each
        softmax layer `write_kv(kv_index, k [N, KVH, D], v, seq_of_token [N], pos [N])`.
        Returns each sequence's routing ([len, moe_layers, k] int16, CPU) when recording."""
        dev = self.device
        lens = [len(q) for q in seqs]
        self.ensure_rope(max(lens))
        ids = torch.tensor([t for q in seqs for t in q], dtype=torch.long)
        pos = torch.cat([torch.arange(n) for n in lens])
        seg = torch.cat([torch.full((n,), i) for i, n in enumerate(lens)])
        cu_cpu = torch.tensor([0] + lens).cumsum(0)
        ids, pos, seg, cu = (t.to(dev, non_blocking=True) for t in (ids, pos, seg, cu_cpu))
        s = self.shapes
        routes: list[torch.Tensor] = []

        def attention(L: Layer, h):
            if L.kind == "lightning":
                y = F.linear(h, L.w_in)
                split = 3 * s.lin_heads * s.lin_dim
                qkv = F.silu(y[:, :split])
                o, states = lightning_prefill(qkv, self.slope[L.lin_index], s.lin_heads, s.lin_dim, cu, cu_cpu, lens)
                write_state(L.lin_index, states)
                return F.linear(gated_rms_norm(o, y[:, split:], L.o_norm, L.o_norm_eps, force=self.force), L.w_out)
            q, k, v = self._qkv(L, h, pos)
            write_kv(L.kv_index, k, v, seg, pos)
            outs, a = [], 0
            for n in lens:
                # [1, heads, n, D]; SDPA's causal mask within one sequence, GQA by enable_gqa
                qs, ks, vs = (t[a:a + n].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
                o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=L.scale,
                                                   enable_gqa=s.kv_heads != s.heads)
                outs.append(o[0].transpose(0, 1))
                a += n
            return F.linear(torch.cat(outs).reshape(len(ids), -1), L.w_o, L.b_o)

        self._layers(F.embedding(ids, self.embed), attention,
                     (lambda L, r: routes.append(r.ids.to(torch.int16))) if record_routing else None)
        if not record_routing:
            return None
        table = torch.stack(routes, dim=1).cpu() if routes else torch.zeros(len(ids), 0, 0, dtype=torch.int16)
        return list(table.split(lens))


def lightning_prefill(qkv, slope, H: int, D: int, cu, cu_cpu, lens):
    """Lightning attention over packed sequences: (o [N, H·D] in qkv's dtype, final FP32 states
    [n_seqs, H, D, D]). On CUDA fla's `chunk_simple_gla` (the learner's kernel) with cu_seqlens;
    on CPU a chunked form in float32, one sequence at a time."""
    N = qkv.shape[0]
    if qkv.is_cuda:
        from fla.ops.simple_gla import chunk_simple_gla

        q, k, v = qkv.view(1, N, H, 3 * D).split(D, dim=-1)
        o, states = chunk_simple_gla(q, k, v, g_gamma=-slope, scale=1.0, cu_seqlens=cu.long(),
                                     cu_seqlens_cpu=cu_cpu, output_final_state=True)
        return o.reshape(N, H * D), states.float()
    x = qkv.view(N, H, 3 * D).float()
    outs, states, a = [], [], 0
    for n in lens:
        q, k, v = x[a:a + n].transpose(0, 1).split(D, dim=-1)  # [H, n, D]
        o, S = _chunked_decayed_attention(q, k, v, slope)
        outs.append(o.transpose(0, 1).reshape(n, H * D))
        states.append(S)
        a += n
    return torch.cat(outs).to(qkv.dtype), torch.stack(states)


def _chunked_decayed_attention(q, k, v, slope, block: int = 64):
    """o_t = Σ_{s≤t} e^{−λ(t−s)} (q_t·k_s) v_s per head, and the final state Σ_s e^{−λ(T−1−s)} k_sᵀ v_s,
    in float32 blocks (intra-block masked product + inter-block state), as transformers' loop."""
    H, T, D = q.shape
    lam = slope.view(H, 1, 1)
    S = q.new_zeros(H, D, D)
    outs = []
    for a in range(0, T, block):
        b = min(a + block, T)
        qb, kb, vb = q[:, a:b], k[:, a:b], v[:, a:b]
        i = torch.arange(b - a, device=q.device, dtype=torch.float32)
        diff = i[:, None] - i[None, :]
        intra = torch.where(diff >= 0, torch.exp(-lam * diff.clamp(min=0)), torch.zeros((), device=q.device))
        o = ((qb @ kb.transpose(-1, -2)) * intra) @ vb
        o = o + (qb * torch.exp(-lam * (i[:, None] + 1))) @ S
        outs.append(o)
        S = torch.exp(-lam * (b - a)) * S + (kb * torch.exp(-lam * (b - a - 1 - i[:, None]))).transpose(-1, -2) @ vb
    return torch.cat(outs, dim=1), S
