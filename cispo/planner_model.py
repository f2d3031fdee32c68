"""The model's shape and parameter counts, from its config alone (no weights, no GPU).

`resolve_config(model_cfg)` finds the HF config a run will load: the built-in tiny model, a local
directory, the MiniMax-M1 shape (docs/design.md §1) for the M1 hub ids (no hub access needed), or a
hub id already in the local HF cache. `shape_of(config)` reduces it to the numbers the planner's
arithmetic uses, and `param_counts(shape)` counts parameters the way transformers lays them out
for `MiniMaxForCausalLM` (tests compare with instantiated models).

Active parameters follow the M1 report's convention: per token, excluding the embedding and the
output head (45.9B of 456B for M1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# MiniMax-M1 / MiniMax-Text-01 (docs/design.md §1: the M1 report and the released config.json):
# 80 layers, hidden 6144, 64 heads x 128, 8 KV heads in the softmax layers, one softmax layer
# after every 7 lightning layers, 32 experts top-2, expert FFN 9216, vocab 200,064,
# RoPE theta 1e7, lightning block 256, untied output head.
M1_SHAPE_KWARGS: dict[str, Any] = {
    "vocab_size": 200_064, "hidden_size": 6144, "intermediate_size": 9216,
    "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8,
    "head_dim": 128, "num_local_experts": 32, "num_experts_per_tok": 2,
    "layer_types": ["full_attention" if (i + 1) % 8 == 0 else "linear_attention"
                    for i in range(80)],
    "block_size": 256, "max_position_embeddings": 10_240_000,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10_000_000.0},
    "tie_word_embeddings": False,
}
KNOWN_SHAPES = {
    "MiniMaxAI/MiniMax-M1-80k-hf": M1_SHAPE_KWARGS,
    "MiniMaxAI/MiniMax-M1-40k-hf": M1_SHAPE_KWARGS,
    "MiniMaxAI/MiniMax-Text-01-hf": M1_SHAPE_KWARGS,
}


class PlanError(ValueError):
    """A config the planner cannot plan; the message says what to change."""


@dataclass(frozen=True)
class Shape:
    """What the memory arithmetic needs to know about a decoder-only model."""

    vocab: int
    hidden: int
    layers: int
    softmax_layers: int  # full (softmax) attention layers; the rest are lightning (linear)
    heads: int
    kv_heads: int
    head_dim: int
    experts: int  # 1 = a dense MLP
    top_k: int
    ffn: int  # expert (or dense MLP) intermediate size
    tied_head: bool
    block_size: int  # lightning attention block (0: no lightning layers)
    minimax: bool  # MiniMax layout (lightning layers with output gate, MoE with router)

    @property
    def linear_layers(self) -> int:
        return self.layers - self.softmax_layers

    def as_dict(self) -> dict:
        return asdict(self)


def resolve_config(model_cfg: Any) -> Any:
    """The transformers config the run would load for `model_cfg` (cispo.config.ModelConfig)."""
    name = model_cfg.name
    if name == "tiny":
        from cispo.models.build import tiny_minimax_config
        from cispo.models.tokenizer import build_char_tokenizer

        tok = build_char_tokenizer()
        return tiny_minimax_config(model_cfg.tiny, len(tok), tok.pad_token_id, tok.bos_token_id,
                                   tok.eos_token_id)
    if name in KNOWN_SHAPES:
        from transformers import MiniMaxConfig

        return MiniMaxConfig(**KNOWN_SHAPES[name])
    from transformers import AutoConfig

    try:  # a local directory, or a hub id already in the HF cache: never the network
        return AutoConfig.from_pretrained(name, trust_remote_code=model_cfg.trust_remote_code,
                                          local_files_only=True)
    except Exception as e:  # not local, not cached
        raise PlanError(
            f"the planner needs the model's config.json and cannot find it for model.name={name!r} "
            f"({type(e).__name__}). Pass a local directory holding config.json "
            f"(model.name=/path/to/model), or download it once with "
            f"`huggingface-cli download {name} config.json`.") from None


def shape_of(config: Any) -> Shape:
    """Reduce an HF config to a `Shape`; MiniMax exactly, other causal LMs as dense softmax models."""
    g = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = g.num_attention_heads
    head_dim = getattr(g, "head_dim", None) or g.hidden_size // heads
    kv = getattr(g, "num_key_value_heads", None) or heads
    if g.model_type == "minimax":
        kinds = list(g.layer_types)
        return Shape(vocab=g.vocab_size, hidden=g.hidden_size, layers=g.num_hidden_layers,
                     softmax_layers=sum(k == "full_attention" for k in kinds), heads=heads,
                     kv_heads=kv, head_dim=head_dim, experts=g.num_local_experts,
                     top_k=g.num_experts_per_tok, ffn=g.intermediate_size,
                     tied_head=bool(g.tie_word_embeddings), block_size=g.block_size, minimax=True)
    experts = getattr(g, "num_local_experts", None) or getattr(g, "num_experts", None) or 1
    top_k = getattr(g, "num_experts_per_tok", None) or 1
    ffn = getattr(g, "moe_intermediate_size", None) if experts > 1 else None
    return Shape(vocab=g.vocab_size, hidden=g.hidden_size, layers=g.num_hidden_layers,
                 softmax_layers=g.num_hidden_layers, heads=heads, kv_heads=kv, head_dim=head_dim,
                 experts=experts, top_k=top_k, ffn=ffn or g.intermediate_size,
                 tied_head=bool(getattr(g, "tie_word_embeddings", False)), block_size=0,
                 minimax=False)


@dataclass(frozen=True)
class ParamCounts:
    total: int
    active: int  # per token, excluding embedding and output head (the M1 report's convention)
    embedding: int
    head: int  # 0 when tied to the embedding
    experts: int  # all expert weights (the part expert parallelism splits)
    per_layer_dense: float  # mean non-expert parameters of one layer (attention, norms, router)
    per_expert: int  # one expert's weights in one layer

    def as_dict(self) -> dict:
        return asdict(self)


def _attention_params(s: Shape, softmax: bool) -> int:
    h, hd = s.hidden, s.heads * s.head_dim
    if softmax:  # q, k, v, o without bias (MiniMax, Llama-style)
        return h * hd + 2 * h * s.kv_heads * s.head_dim + hd * h
    # lightning: fused qkv, out_proj, output_gate, a norm over the heads' outputs
    return 3 * h * hd + hd * h + h * hd + hd


def param_counts(s: Shape) -> ParamCounts:
    """Parameter counts of `MiniMaxForCausalLM` (exact) or a dense/MoE Llama-style model (approx.)."""
    per_expert = 3 * s.hidden * s.ffn  # gate, up, down
    router = s.hidden * s.experts if s.experts > 1 else 0
    norms = 2 * s.hidden  # input and post-attention RMSNorm
    attn = (s.softmax_layers * _attention_params(s, True)
            + s.linear_layers * _attention_params(s, False))
    dense = attn + s.layers * (router + norms)
    experts = s.layers * s.experts * per_expert
    embedding = s.vocab * s.hidden
    head = 0 if s.tied_head else s.vocab * s.hidden
    total = embedding + head + dense + experts + s.hidden  # + final norm
    active = dense + s.layers * s.top_k * per_expert + s.hidden
    return ParamCounts(total=total, active=active, embedding=embedding, head=head,
                       experts=experts, per_layer_dense=dense / s.layers, per_expert=per_expert)
