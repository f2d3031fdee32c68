"""The LASP+ state combine: each rank's incoming lightning KV state from all ranks' chunk states.

Rank r of a sequence-parallel group runs its chunk of L_r tokens from a zero state and ends with
S_r (per head, d x d). Its chunk multiplies a state that enters it by a_r = exp(-λ_h L_r), or by
0 when a packed sequence starts inside the chunk (a boundary resets the state). The state that
enters rank r is then the decayed prefix sum

    I_0 = 0,   I_{r+1} = a_r I_r + S_r,   i.e.   I_r = Σ_{j<r} (Π_{j<m<r} a_m) S_j,

and its gradient flows back to every earlier rank:

    dS_j = Σ_{r>j} (Π_{j<m<r} a_m) dI_r,   i.e.   G_{W-1} = 0,  G_j = dI_{j+1} + a_{j+1} G_{j+1}.

`incoming_states` / `state_grads` are those two scans on stacked tensors (pure, tested against
the double sum in float64); `IncomingState` wraps them in an autograd Function whose forward
all-gathers the states and whose backward all-gathers the incoming-state gradients, so the
backward is as exact as the forward.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.profiler import record_function

from cispo.seqpar.comm import COMM_LABEL


def incoming_states(states: torch.Tensor, decays: torch.Tensor) -> torch.Tensor:
    """states [W, H, d, d], decays [W, H] -> the state entering each rank [W, H, d, d]."""
    out = torch.zeros_like(states)
    for r in range(1, states.shape[0]):
        out[r] = decays[r - 1, :, None, None] * out[r - 1] + states[r - 1]
    return out


def state_grads(incoming_grads: torch.Tensor, decays: torch.Tensor) -> torch.Tensor:
    """The adjoint of `incoming_states`: dI [W, H, d, d], decays [W, H] -> dS [W, H, d, d]."""
    out = torch.zeros_like(incoming_grads)
    for j in range(incoming_grads.shape[0] - 2, -1, -1):
        out[j] = incoming_grads[j + 1] + decays[j + 1, :, None, None] * out[j + 1]
    return out


def chunk_decay(slopes: torch.Tensor, length: int, resets: bool) -> torch.Tensor:
    """a_r [H]: what the chunk does to a state entering it (0 when a sequence starts inside)."""
    return torch.zeros_like(slopes) if resets else torch.exp(-slopes * length)


def add_incoming(o: torch.Tensor, q: torch.Tensor, slopes: torch.Tensor, incoming: torch.Tensor,
                 first_len: int) -> torch.Tensor:
    """o [T, H, d] plus the incoming state's part for the first `first_len` tokens (those before
    the chunk's first sequence start): o_t += exp(−λ (t+1)) q_t · I. Computed in I's dtype."""
    t = torch.arange(1, first_len + 1, device=q.device, dtype=incoming.dtype)
    qd = q[:first_len].to(incoming.dtype) * torch.exp(-slopes.to(incoming.dtype)[None, :] * t[:, None])[..., None]
    # first_len = 0 still puts `incoming` in the graph, so its backward collective runs on every rank
    return torch.cat([o[:first_len] + torch.einsum("thd,hde->the", qd, incoming).to(o.dtype),
                      o[first_len:]])


def _all_gather_stack(x: torch.Tensor, group) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    with record_function(COMM_LABEL):
        dist.all_gather(parts, x.contiguous(), group=group)
    return torch.stack(parts)


class IncomingState(torch.autograd.Function):
    """This rank's incoming state from its own final state S [H, d, d] and decay a [H]."""

    @staticmethod
    def forward(ctx, state: torch.Tensor, decay: torch.Tensor, group) -> torch.Tensor:
        rank = dist.get_rank(group)
        decays = _all_gather_stack(decay.to(state.dtype), group)
        incoming = incoming_states(_all_gather_stack(state, group), decays)[rank]
        ctx.save_for_backward(decays)
        ctx.group, ctx.rank = group, rank
        return incoming

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (decays,) = ctx.saved_tensors
        grads = _all_gather_stack(grad, ctx.group)
        return state_grads(grads, decays)[ctx.rank], None, None
