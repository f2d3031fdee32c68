"""`patch_model(model, group)`: route a MiniMax model's attention layers through the
sequence-parallel forwards of `cispo.seqpar.layers`.

Call it before `deepspeed.initialize` (ZeRO-3 and AutoEP wrap the same modules; the parameters
are untouched). The returned `SeqPar` holds the group; `sp.group = None` runs the same layers at
size 1 (packed rows, no collectives), which is how tests compare the two on one model.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from cispo.seqpar.comm import group_rank, group_size
from cispo.seqpar.layers import sp_lightning_forward, sp_softmax_forward


@dataclass
class SeqPar:
    group: Any = None  # torch.distributed ProcessGroup of the ranks sharing one row; None = size 1
    cached_key: Any = field(default=None, repr=False)
    cached: Any = field(default=None, repr=False)

    @property
    def size(self) -> int:
        return group_size(self.group)

    @property
    def rank(self) -> int:
        return group_rank(self.group)


def patch_model(model: nn.Module, group=None) -> SeqPar:
    """Bind the sequence-parallel forwards to every MiniMax attention layer; returns the handle.

    Idempotent (a second call rebinds to the new handle). Raises if the model has no MiniMax
    attention layers: sequence parallelism is written for this architecture."""
    from transformers.models.minimax.modeling_minimax import (
        MiniMaxAttention,
        MiniMaxLightningAttention,
    )

    sp = SeqPar(group)
    n = 0
    for module in model.modules():
        if isinstance(module, MiniMaxLightningAttention):
            fwd = sp_lightning_forward
        elif isinstance(module, MiniMaxAttention):
            fwd = sp_softmax_forward
        else:
            continue
        if not hasattr(module, "_seqpar_original"):
            module._seqpar_original = module.forward  # for cached generation
        module._seqpar = sp
        module.forward = types.MethodType(fwd, module)
        n += 1
    if n == 0:
        raise ValueError("patch_model found no MiniMax attention layers (sequence parallelism is "
                         "implemented for transformers' MiniMaxForCausalLM)")
    return sp
