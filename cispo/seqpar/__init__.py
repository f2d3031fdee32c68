"""Sequence parallelism for the hybrid MiniMax model (docs/seqpar.md).

    sp = seqpar.patch_model(model, group)           # before deepspeed.initialize
    local = seqpar.split_packed(batch, sp.rank, sp.size, pad_id)
    logits = model(**seqpar.model_inputs(local)).logits   # this rank's chunk only

Lightning layers combine the ranks' KV states (LASP+), softmax layers all-gather K/V; both are
exact in forward and backward. `new_groups` builds the groups from the world.
"""

from cispo.seqpar.comm import gather_seq, gather_seq_nograd, group_sum
from cispo.seqpar.groups import new_groups
from cispo.seqpar.patch import SeqPar, patch_model
from cispo.seqpar.split import check_packed, model_inputs, split_packed

__all__ = ["SeqPar", "check_packed", "gather_seq", "gather_seq_nograd", "group_sum", "model_inputs",
           "new_groups", "patch_model", "split_packed"]
