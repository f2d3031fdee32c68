"""The learner's GPU fast paths, switched on a loaded model in place (issue 22).

`enable_fast_paths(model)`: the FP32 head computes log-probs with the fused Triton kernels
(`head_precision="split_bf16"`, cispo.ops.fused_head), packed softmax attention goes through flash
attention's varlen kernel (cispo.models.varlen_attention), RMSNorms through one Triton kernel each
way (cispo.ops.rmsnorm). `disable_fast_paths` restores transformers' code and the IEEE torch head
(benchmarks compare the two on one engine). Each path keeps its CPU behaviour: on CPU nothing
changes but the head's default, whose CPU fallback is the IEEE path.

`checkpoint_layers(model, n)`: selective activation checkpointing: recompute the activations of n
decoder layers in backward (None: all, 0: none), choosing the layers that hold the most.
`layers_to_checkpoint(...)`: the smallest n that fits a memory budget (the planner's estimate).

`zero3_tuning(model, prefetch_layers, world_size)`: ZeRO-3 bucket and prefetch sizes from the
model's layer size and the plan's `parallel.prefetch_layers` instead of DeepSpeed's defaults.
"""

from __future__ import annotations

import torch
from torch import nn


def enable_fast_paths(model: nn.Module, head_precision: str = "split_bf16", cuda: bool | None = None) -> dict:
    """`cuda`: whether the model will run on CUDA (default: whether its parameters are there now;
    the learner passes True before DeepSpeed moves it)."""
    from cispo.models.fp32_head import FP32LMHead
    from cispo.models.varlen_attention import enable_varlen_attention
    from cispo.ops.rmsnorm import patch_rmsnorm

    head = model.get_output_embeddings()
    if isinstance(head, FP32LMHead):
        head.precision = head_precision
    if cuda is None:
        cuda = any(p.is_cuda for p in model.parameters())
    on_gpu = torch.cuda.is_available() and cuda
    return {"head": getattr(head, "precision", "model"),
            "varlen_attention": enable_varlen_attention(model) if on_gpu else False,
            "fused_rmsnorm": patch_rmsnorm(model) if on_gpu else 0}


def disable_fast_paths(model: nn.Module) -> dict:
    from cispo.models.fp32_head import FP32LMHead
    from cispo.models.varlen_attention import set_attention

    head = model.get_output_embeddings()
    if isinstance(head, FP32LMHead):
        head.precision = "ieee"
    set_attention(model, "sdpa")
    n = 0
    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm") and "forward" in module.__dict__:
            del module.forward  # back to the class's forward
            n += 1
    return {"head": getattr(head, "precision", "model"), "varlen_attention": False, "fused_rmsnorm": 0,
            "restored_rmsnorm": n}


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks (modules with a `gradient_checkpointing` switch), in order."""
    return [m for m in model.modules() if hasattr(m, "gradient_checkpointing")
            and type(m).__name__.endswith("DecoderLayer")]


def checkpoint_layers(model: nn.Module, n: int | None) -> int:
    """Recompute the activations of n decoder layers in backward (None: every layer; 0: none):
    those with the most activations per token first (MoE + lightning before MoE + softmax with
    flash attention, cispo.planner_memory's estimate), then from the last layer down. Needs
    `model.gradient_checkpointing_enable()` to have been called once (it installs the function);
    returns how many layers recompute."""
    layers = decoder_layers(model)
    if n is None:
        n = len(layers)

    def weight(i_layer):
        i, layer = i_layer
        lightning = type(getattr(layer, "self_attn", None)).__name__.endswith("LightningAttention")
        return (0 if lightning else 1, -i)

    chosen = {i for i, _ in sorted(enumerate(layers), key=weight)[:max(0, n)]}
    for i, layer in enumerate(layers):
        if i in chosen and getattr(layer, "_gradient_checkpointing_func", None) is None:
            raise RuntimeError("call model.gradient_checkpointing_enable() before checkpoint_layers")
        layer.gradient_checkpointing = i in chosen
    return len(chosen)


def layers_to_checkpoint(n_layers: int, layer_bytes: float, checkpoint_bytes: float,
                         budget_bytes: float) -> int:
    """The fewest layers to recompute so that the activations fit `budget_bytes`: each layer kept
    costs `layer_bytes`, each recomputed one `checkpoint_bytes` (its input) plus one layer's
    worth while it is recomputed. 0 when everything fits; n_layers when even that does not."""
    if n_layers * layer_bytes <= budget_bytes:
        return 0
    for k in range(1, n_layers + 1):
        if (n_layers - k) * layer_bytes + k * checkpoint_bytes + layer_bytes <= budget_bytes:
            return k
    return n_layers


def zero3_tuning(model: nn.Module, prefetch_layers: int, world_size: int) -> dict:
    """ZeRO-3 knobs from the plan: DeepSpeed's defaults (prefetch 5e7 elements, reduce buckets
    5e8) are fixed numbers, a quarter of one 2.59B layer here and many layers of a small model.
    Prefetch `prefetch_layers` whole layers (the planner's `gathered_layers` term counts exactly
    that), keep at most one more live, reduce one layer's gradients at a time. On one rank
    nothing is partitioned, so every parameter is persistent (no gather/release per forward)."""
    layers = decoder_layers(model)
    layer = max((sum(p.numel() for p in m.parameters()) for m in layers), default=0)
    biggest = max((p.numel() for p in model.parameters()), default=0)
    if not layer:
        return {}
    cfg = {
        "stage3_prefetch_bucket_size": int(prefetch_layers * layer),
        "stage3_max_live_parameters": int((prefetch_layers + 1) * layer),
        "stage3_max_reuse_distance": int((prefetch_layers + 1) * layer),
        "reduce_bucket_size": int(layer),
        "allgather_bucket_size": int(layer),
    }
    if world_size == 1:
        cfg["stage3_param_persistence_threshold"] = int(biggest + 1)
    return cfg


def limit_fla_autotune(max_configs: int = 1) -> int:
    """Cut every fla autotuner down to `max_configs` configs (those with 4 warps and 2–3 stages
    first), so a first call compiles a handful of kernels instead of hundreds of variants. For
    short benchmark runs: the kept config is a reasonable one, not the tuned best. Returns how
    many autotuners were cut. Call before the first fla kernel runs."""
    import sys

    import fla.ops.simple_gla  # noqa: F401 - loads the kernels chunk_simple_gla uses
    from triton.runtime.autotuner import Autotuner

    def rank(c):
        big_tile = any(isinstance(v, int) and v > 64 for v in c.kwargs.values())
        return (c.num_warps != 4, c.num_stages not in (2, 3), big_tile)

    n, seen = 0, set()
    for name, mod in list(sys.modules.items()):
        if not name.startswith("fla.") or mod is None:
            continue
        for obj in list(vars(mod).values()):
            while obj is not None and id(obj) not in seen:  # heuristics wrap the autotuner: unwrap
                seen.add(id(obj))
                if isinstance(obj, Autotuner) and len(obj.configs) > max_configs:
                    obj.configs = sorted(obj.configs, key=rank)[:max_configs]
                    n += 1
                obj = getattr(obj, "fn", None)
    return n


# AutoEP's expert computation (DeepSpeed 0.19.8 `expert_parallel` keys), by name: `grouped_mm`
# (torch._grouped_mm, gate and up as two grouped GEMMs: DeepSpeed's default), `fused_gate_up`
# (one grouped GEMM for gate and up), `loop` (one GEMM per expert, a host sync per call).
GROUPED_MM_BACKENDS = {
    "grouped_mm": {"use_grouped_mm": True, "gate_up_impl": "separate"},
    "fused_gate_up": {"use_grouped_mm": True, "gate_up_impl": "fused"},
    "loop": {"use_grouped_mm": False},
}


def autoep_grouped_mm(backend: str) -> dict:
    """The `expert_parallel` keys selecting AutoEP's grouped GEMM backend."""
    if backend not in GROUPED_MM_BACKENDS:
        raise ValueError(f"grouped_mm_backend must be one of {sorted(GROUPED_MM_BACKENDS)}, got {backend!r}")
    return dict(GROUPED_MM_BACKENDS[backend])
