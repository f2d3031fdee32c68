"""Packed rows through transformers' lightning loop (CPU): one KV state per sequence.

transformers' `MiniMaxLightningAttention` carries a single KV state along the whole row, so on a
packed row ([1, T], several sequences back to back) sequence k+1 would attend to sequence k.
On GPU the fla kernel restarts its state at `cu_seqlens` (`cispo.models.lightning`); where that
kernel does not run (CPU), `patch_segmented_lightning(model)` makes each lightning layer run
transformers' own loop once per segment and concatenate: the same function as one call per
sequence, which is what makes packed log-probs equal the unpacked ones on CPU.
"""

from __future__ import annotations

import types

import torch
from torch import nn


def segmented_lightning_forward(self, hidden_states, position_embeddings=None, attention_mask=None,
                                past_key_values=None, **kwargs):
    from cispo.models.lightning import _cu_seqlens

    base = type(self).forward
    batch, seq_len, _ = hidden_states.shape
    if past_key_values is not None or hidden_states.is_cuda or batch != 1:
        return base(self, hidden_states, position_embeddings, attention_mask, past_key_values, **kwargs)
    cu = _cu_seqlens(kwargs.get("position_ids"), batch, seq_len, kwargs)
    if cu is None:
        return base(self, hidden_states, position_embeddings, attention_mask, past_key_values, **kwargs)
    bounds = cu.tolist()
    if bounds[0] != 0 or bounds[-1] != seq_len:
        raise ValueError(f"cu_seqlens {bounds} must run from 0 to the row length {seq_len}")
    outs = [base(self, hidden_states[:, a:b], position_embeddings, None, None)[0]
            for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
    return torch.cat(outs, dim=1), None


def patch_segmented_lightning(model: nn.Module) -> int:
    """Route every MiniMax lightning layer through `segmented_lightning_forward`; returns how many.
    For CPU processes (on CUDA, `patch_lightning_attention` is the one to use)."""
    from transformers.models.minimax.modeling_minimax import MiniMaxLightningAttention

    n = 0
    for module in model.modules():
        if isinstance(module, MiniMaxLightningAttention):
            module.forward = types.MethodType(segmented_lightning_forward, module)
            n += 1
    return n
