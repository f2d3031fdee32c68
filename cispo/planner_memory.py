"""Per-GPU memory of one learner rank and of one engine GPU, term by term (bytes).

Pure arithmetic on a `Shape` and plain numbers, so each term can be tested and compared with a
measured peak. The learner model is DeepSpeed ZeRO stage 0-3 with AdamW in mixed precision
(ZeRO paper: 2 + 2 + 12 bytes per parameter in bf16), expert parallelism, sequence parallelism,
activation checkpointing and an FP32 LM head evaluated in chunks. The engine model is
tensor x pipeline parallel weights plus the KV cache of the softmax layers and the FP32
recurrent state of the lightning layers for the sequences in flight.
"""

from __future__ import annotations

from dataclasses import dataclass

from cispo.planner_model import ParamCounts, Shape

GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class LearnerLayout:
    ranks: int  # DeepSpeed ranks (learner.num_workers)
    zero_stage: int
    dtype_bytes: int  # parameters, gradients and activations
    expert_parallel: int
    sequence_parallel: int
    tokens_per_micro_batch: int  # all sequence-parallel shards together
    head_chunk_tokens: int  # 0 = the whole per-rank micro-batch
    checkpointing: bool
    prefetch_layers: int
    # with checkpointing: how many layers recompute their activations (-1: all; selective below)
    checkpoint_layers: int = -1


def zero_states(p: ParamCounts, lay: LearnerLayout) -> dict[str, float]:
    """Parameters, gradients and AdamW states held by one rank (ZeRO-k shards what it shards)."""
    b = lay.dtype_bytes
    opt_bytes = 8 + (4 if b < 4 else 0)  # Adam m, v in FP32 (+ an FP32 master copy in bf16)
    n = lay.ranks
    return {
        "params": p.total * b / (n if lay.zero_stage >= 3 else 1),
        "grads": p.total * b / (n if lay.zero_stage >= 2 else 1),
        "optimizer": p.total * opt_bytes / (n if lay.zero_stage >= 1 else 1),
    }


def gathered_layers(s: Shape, p: ParamCounts, lay: LearnerLayout) -> float:
    """ZeRO-3 working set: whole layers gathered for compute (the experts a rank holds after
    expert parallelism), `prefetch_layers` at once, plus one layer's full gradients in backward."""
    if lay.zero_stage < 3:
        return 0.0
    local_experts = -(-s.experts // lay.expert_parallel)
    layer = p.per_layer_dense + local_experts * p.per_expert
    return (lay.prefetch_layers + 1) * layer * lay.dtype_bytes


def layer_activation_bytes_per_token(s: Shape, b: int) -> dict[str, float]:
    """Bytes one token keeps for backward inside one layer (mean over the layer kinds)."""
    h, hd, kvd = s.hidden, s.heads * s.head_dim, s.kv_heads * s.head_dim
    softmax = b * (h + 3 * hd + 2 * kvd)  # input, q, k, v, attention output (flash: no T x T)
    # input, qkv, its activation, output, norm, gate, gated product; FP32 per-block KV states
    lightning = b * (h + 9 * hd) + (s.heads * s.head_dim**2 * 4 / s.block_size if s.block_size else 0)
    attn = (s.softmax_layers * softmax + s.linear_layers * lightning) / s.layers
    routed = s.top_k if s.experts > 1 else 1
    mlp = b * (h + routed * (h + 4 * s.ffn)) + (4 * s.experts if s.experts > 1 else 0)
    norms = b * 2 * h
    return {"attention": attn, "mlp": mlp, "norms": norms}


def activations(s: Shape, lay: LearnerLayout) -> dict[str, float]:
    """Activation memory of one micro-batch on one rank (its sequence-parallel share)."""
    t = lay.tokens_per_micro_batch / lay.sequence_parallel
    per_layer = sum(layer_activation_bytes_per_token(s, lay.dtype_bytes).values())
    k = 0 if not lay.checkpointing else (s.layers if lay.checkpoint_layers < 0 else min(lay.checkpoint_layers, s.layers))
    if k:  # a recomputed layer keeps its input; one layer is recomputed at a time; the rest keep all
        return {"checkpoints": k * t * s.hidden * lay.dtype_bytes,
                "layer_recompute": (s.layers - k + 1) * t * per_layer}
    return {"checkpoints": 0.0, "layer_recompute": s.layers * t * per_layer}


def sequence_parallel_buffers(s: Shape, lay: LearnerLayout) -> dict[str, float]:
    """What sequence parallelism (cispo.seqpar) adds, for the one layer in flight: a softmax
    layer's all-gathered K and V of the whole micro-batch and their gradients, K/V repeated to
    every query head for the longest sequence (up to the whole micro-batch) and their gradients;
    a lightning layer's gathered FP32 states (and their gradients in backward). Zero at size 1."""
    if lay.sequence_parallel <= 1:
        return {"sp_buffers": 0.0}
    t = lay.tokens_per_micro_batch
    kvd, hd = s.kv_heads * s.head_dim, s.heads * s.head_dim
    kv = t * 2 * lay.dtype_bytes * (2 * kvd + 2 * hd) if s.softmax_layers else 0.0
    states = 2 * lay.sequence_parallel * s.heads * s.head_dim**2 * 4 if s.linear_layers else 0.0
    return {"sp_buffers": kv + states}


def fp32_head(s: Shape, lay: LearnerLayout) -> dict[str, float]:
    """The LM head in FP32: an FP32 copy of its weight and its FP32 gradient, the final hidden
    states in FP32, and per chunk of tokens three FP32 [chunk, vocab] buffers (logits, softmax,
    gradient)."""
    t = lay.tokens_per_micro_batch / lay.sequence_parallel
    chunk = min(lay.head_chunk_tokens or t, t)
    weight = s.vocab * s.hidden
    copies = 4 + (4 if lay.dtype_bytes < 4 else 0)  # FP32 grad (+ FP32 copy of a bf16 weight)
    gathered = weight * lay.dtype_bytes if lay.zero_stage >= 3 else 0.0  # head gathered whole
    return {"head_weight": weight * copies + gathered, "head_hidden": t * s.hidden * 4,
            "head_chunk": chunk * s.vocab * 12}


def learner_terms(s: Shape, p: ParamCounts, lay: LearnerLayout, reserve_gib: float) -> dict[str, float]:
    """Every term of one learner rank's peak, in bytes."""
    return {**zero_states(p, lay), "gathered_layers": gathered_layers(s, p, lay),
            **activations(s, lay), **sequence_parallel_buffers(s, lay), **fp32_head(s, lay),
            "reserve": reserve_gib * GIB}


@dataclass(frozen=True)
class EngineLayout:
    tensor_parallel: int
    pipeline_parallel: int
    dtype_bytes: int  # weights and KV cache
    concurrency: int  # sequences in flight on the engine
    seq_tokens: int  # prompt + output window
    batched_tokens: int  # tokens per forward


def kv_bytes_per_token(s: Shape, b: int) -> float:
    """K and V of every softmax layer for one token, whole model."""
    return s.softmax_layers * 2 * s.kv_heads * s.head_dim * b


def lightning_state_bytes(s: Shape) -> float:
    """The FP32 recurrent KV state of every lightning layer for one sequence, whole model."""
    return s.linear_layers * s.heads * s.head_dim * s.head_dim * 4


def engine_terms(s: Shape, p: ParamCounts, lay: EngineLayout, reserve_gib: float) -> dict[str, float]:
    """Every term of one engine GPU, in bytes: weights split tp x pp; KV heads split over tp
    (replicated when tp exceeds the KV heads), layers over pp; a forward's FP32 logits."""
    gpus = lay.tensor_parallel * lay.pipeline_parallel
    kv_split = min(lay.tensor_parallel, s.kv_heads) * lay.pipeline_parallel
    return {
        "weights": p.total * lay.dtype_bytes / gpus,
        "kv_cache": lay.concurrency * lay.seq_tokens * kv_bytes_per_token(s, lay.dtype_bytes) / kv_split,
        "lightning_state": lay.concurrency * lightning_state_bytes(s) / gpus,
        "forward_workspace": lay.batched_tokens * (s.vocab * 4 / lay.tensor_parallel
                                                   + 4 * s.hidden * lay.dtype_bytes),
        "reserve": reserve_gib * GIB,
    }
