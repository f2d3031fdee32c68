"""Decayed linear attention over packed sequences in torch (CPU), with each sequence's final state.

    o_t = Σ_{s≤t, same sequence} exp(−λ_h (t−s)) (q_t·k_s) v_s

computed in blocks the way transformers' MiniMax loop does (masked product inside a block, a KV
state between blocks), but restarting at every sequence boundary of `cu_seqlens` and returning
the final state of every sequence (what the sequence-parallel combine needs). Plain torch ops,
so autograd gives the exact backward; on GPU fla's `chunk_simple_gla` does the same job.
"""

from __future__ import annotations

import torch


def chunk_lightning_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slopes: torch.Tensor,
                          cu_seqlens: torch.Tensor, block: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k, v [T, H, d]; slopes λ [H]; cu_seqlens [N+1] -> (o [T, H, d], final states [N, H, d, d]).

    The state is S = Σ_s exp(−λ (last − s)) k_s v_sᵀ (k-dim first), fla's layout."""
    if block <= 0:
        raise ValueError(f"block must be positive, got {block}")
    lam = slopes.to(q.dtype)
    outs, finals = [], []
    bounds = [int(b) for b in cu_seqlens]
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        state = q.new_zeros(q.shape[1], q.shape[2], v.shape[2])
        for b0 in range(start, end, block):
            b1 = min(b0 + block, end)
            qb, kb, vb = q[b0:b1], k[b0:b1], v[b0:b1]
            n = b1 - b0
            pos = torch.arange(n, dtype=q.dtype, device=q.device)
            dist = pos[:, None] - pos[None, :]
            # [H, n, n]: exp(−λ (i−j)) for j ≤ i, else 0
            decay = torch.exp(-lam[:, None, None] * dist.clamp(min=0)) * (dist >= 0)
            scores = torch.einsum("ihd,jhd->hij", qb, kb) * decay
            intra = torch.einsum("hij,jhe->ihe", scores, vb)
            q_decay = torch.exp(-lam[None, :] * (pos[:, None] + 1))  # [n, H]
            inter = torch.einsum("ihd,hde->ihe", qb * q_decay[..., None], state)
            outs.append(intra + inter)
            k_decay = torch.exp(-lam[None, :] * (n - 1 - pos[:, None]))  # [n, H]
            state = (torch.exp(-lam * n)[:, None, None] * state
                     + torch.einsum("jhd,jhe->hde", kb * k_decay[..., None], vb))
        finals.append(state)
    return torch.cat(outs), torch.stack(finals)
