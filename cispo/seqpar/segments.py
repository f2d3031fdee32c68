"""Where the packed sequences lie inside one rank's chunk, read from its position_ids.

A 0 in position_ids starts a sequence. The chunk's first tokens continue the previous rank's
last sequence unless the chunk starts with a 0. Global index − position = where a sequence
starts in the whole row, which is how the softmax layers find their keys on earlier ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Segments:
    starts: tuple[int, ...]  # local start of every segment (the first is 0)
    length: int  # tokens in the chunk
    first_positions: tuple[int, ...]  # position_ids at each segment start
    offset: int  # global index of the chunk's first token

    @property
    def cu_seqlens(self) -> list[int]:
        return [*self.starts, self.length]

    @property
    def continues(self) -> bool:
        """The chunk starts inside a sequence begun on an earlier rank."""
        return self.first_positions[0] != 0

    @property
    def first_len(self) -> int:
        """Tokens that see the incoming lightning state: up to the first sequence start."""
        return (self.starts[1] if len(self.starts) > 1 else self.length) if self.continues else 0

    @property
    def resets(self) -> bool:
        """A sequence starts inside the chunk: no state passes through it."""
        return not self.continues or len(self.starts) > 1

    def key_ranges(self) -> list[tuple[int, int, int, int]]:
        """(local q start, local q end, global key start, global key end) for every segment."""
        out = []
        for i, a in enumerate(self.starts):
            b = self.cu_seqlens[i + 1]
            g0 = self.offset + a - self.first_positions[i]
            out.append((a, b, g0, self.offset + b))
        return out


def segments_of(position_ids: torch.Tensor, rank: int) -> Segments:
    """Segments of a [1, L] chunk held by `rank` (chunks are of equal length L)."""
    pos = position_ids.reshape(-1)
    length = pos.numel()
    zeros = (pos == 0).nonzero().reshape(-1)
    starts = torch.cat([zeros.new_zeros(1), zeros[zeros > 0]])
    firsts = pos[starts]
    both = torch.stack([starts, firsts.to(starts.dtype)]).tolist()  # one device sync
    return Segments(starts=tuple(both[0]), length=length, first_positions=tuple(both[1]),
                    offset=rank * length)
