"""Packed softmax attention on GPU: one flash-attention varlen call per layer.

transformers' `sdpa` path handles a packed row ([1, T], sequences back to back, `position_ids`
restarting at 0) by building a dense [T, T] block-diagonal mask, repeating K/V to every query
head (GQA) and running the masked kernel: O(T²) work and memory whatever the sequence lengths,
plus mask-building and copy kernels every forward. `enable_varlen_attention(model)` registers
an attention implementation that instead calls flash attention's variable-length kernel
(`torch.ops.aten._flash_attention_forward`, PyTorch's built-in FA2, GQA native) with the row's
`cu_seq_lens_q` (`cispo.packing.PackedBatch.model_kwargs`): Σ Lᵢ² work, no mask, no copies.
Because the implementation is not a mask-creating one, transformers builds no mask at all.

Rows that are not packed (no `cu_seq_lens_q`, e.g. the learner's right-padded rows) go to
transformers' sdpa with causal masking, which is exact for right padding (a real token never sees
the padding after it). Left-padded rows (generation) need a mask: only the learner turns this on.
"""

from __future__ import annotations

import torch
from torch import nn

NAME = "cispo_varlen"


def _int32(cu: torch.Tensor) -> torch.Tensor:
    """cu_seqlens as int32 (flash attention's type), converted once per tensor."""
    if cu.dtype == torch.int32:
        return cu
    cached = getattr(cu, "_cispo_int32", None)
    if cached is None:
        cached = cu.to(torch.int32)
        cu._cispo_int32 = cached
    return cached


def varlen_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                             value: torch.Tensor, attention_mask: torch.Tensor | None,
                             dropout: float = 0.0, scaling: float | None = None,
                             is_causal: bool | None = None, **kwargs):
    """transformers' attention-function signature: q [B, H, T, D], k/v [B, Hkv, T, D] →
    ([B, T, H, D], None)."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is not None and query.shape[0] == 1 and query.shape[2] > 1:
        if not query.is_cuda or query.dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(f"{NAME}: packed rows need CUDA and bf16/fp16 (got {query.device}, "
                             f"{query.dtype}); use attn_implementation='sdpa' there")
        max_len = kwargs.get("max_length_q")
        cu32 = _int32(cu)
        if max_len is None:
            max_len = int((cu32[1:] - cu32[:-1]).max())
        # [1, H, T, D] → [T, H, D] views; flash attention needs only the last dim contiguous
        q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))
        out = torch.ops.aten._flash_attention_forward(
            q, k, v, cu32, cu32, int(max_len), int(max_len), dropout if module.training else 0.0,
            True, False, scale=scaling)[0]
        return out[None], None
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                  scaling=scaling, is_causal=is_causal, **kwargs)


def enable_varlen_attention(model: nn.Module) -> bool:
    """Route the softmax-attention layers of `model` through `varlen_attention_forward` when it
    can run (CUDA, bf16/fp16 weights); returns whether it did. For the learner's full-sequence
    passes only (see the module docstring)."""
    p = next(model.parameters(), None)
    if p is None or not torch.cuda.is_available() or p.dtype not in (torch.bfloat16, torch.float16):
        return False
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, varlen_attention_forward)
    set_attention(model, NAME)
    return True


def set_attention(model: nn.Module, name: str) -> None:
    """Switch the attention implementation of a loaded model (and its sub-configs)."""
    for module in model.modules():
        cfg = getattr(module, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            cfg._attn_implementation = name
