"""Collectives of the sequence-parallel group that autograd can differentiate.

`gather_seq(x, group)` concatenates every rank's equal-length chunk along dim 0; its backward is
the matching reduce-scatter: each rank's chunk gets the sum, over ranks, of the gradient that
rank's computation sent to it. NCCL has `reduce_scatter_tensor`; gloo has no reduce-scatter, so
there the gradient is all-reduced whole and each rank keeps its slice (more traffic, same sum).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.profiler import record_function

# Profiler label of every sequence-parallel collective (bench/seqpar.py sums their GPU time).
COMM_LABEL = "seqpar::comm"


def group_size(group) -> int:
    return dist.get_world_size(group) if group is not None and dist.is_initialized() else 1


def group_rank(group) -> int:
    return dist.get_rank(group) if group is not None and dist.is_initialized() else 0


def _has_reduce_scatter(group) -> bool:
    return dist.get_backend(group) == "nccl"


class _GatherSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        with record_function(COMM_LABEL):
            return _all_gather_cat(x.contiguous(), group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        with record_function(COMM_LABEL):
            return _reduce_scatter(grad.contiguous(), ctx.group), None


def _all_gather_cat(x: torch.Tensor, group) -> torch.Tensor:
    if _has_reduce_scatter(group):  # NCCL: one flat buffer
        out = x.new_empty((group_size(group) * x.shape[0], *x.shape[1:]))
        dist.all_gather_into_tensor(out, x, group=group)
        return out
    parts = [torch.empty_like(x) for _ in range(group_size(group))]
    dist.all_gather(parts, x, group=group)
    return torch.cat(parts)


def _reduce_scatter(grad: torch.Tensor, group) -> torch.Tensor:
    n = group_size(group)
    if _has_reduce_scatter(group):
        out = grad.new_empty((grad.shape[0] // n, *grad.shape[1:]))
        dist.reduce_scatter_tensor(out, grad, group=group)
        return out
    grad = grad.clone()
    dist.all_reduce(grad, group=group)
    return grad.chunk(n)[group_rank(group)].contiguous()


def gather_seq(x: torch.Tensor, group) -> torch.Tensor:
    """All ranks' chunks of `x` concatenated along dim 0 (differentiable); x itself at size 1."""
    if group_size(group) == 1:
        return x
    return _GatherSeq.apply(x, group)


@torch.no_grad()
def gather_seq_nograd(x: torch.Tensor, group) -> torch.Tensor:
    """`gather_seq` without a graph, for results such as per-token log-probs along dim 1 of [1, L]."""
    if group_size(group) == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(group_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=1)


def group_sum(value: float | torch.Tensor, group) -> float:
    """A number summed over the group (e.g. the scored tokens of one sequence split across it)."""
    t = torch.as_tensor(value, dtype=torch.float64).reshape(1).clone()
    if group_size(group) > 1:
        dist.all_reduce(t, group=group)
    return float(t)
