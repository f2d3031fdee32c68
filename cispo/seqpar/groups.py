"""Sequence-parallel groups: consecutive ranks share one packed row.

With world W and size S, ranks [0, S), [S, 2S), ... form the groups (consecutive ranks sit on
one node, where the K/V all-gather and state all-gather are cheapest); W / S data-parallel
replicas each take different rows.
"""

from __future__ import annotations

import torch.distributed as dist


def new_groups(size: int):
    """This rank's sequence-parallel group (None at size 1). Every rank must call it (new_group
    is collective)."""
    world = dist.get_world_size()
    if size < 1 or world % size:
        raise ValueError(f"parallel.sequence_parallel={size} must divide the {world} learner ranks")
    if size == 1:
        return None
    mine = None
    for start in range(0, world, size):
        g = dist.new_group(list(range(start, start + size)))
        if start <= dist.get_rank() < start + size:
            mine = g
    return mine
