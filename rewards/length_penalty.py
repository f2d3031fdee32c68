"""DAPO's overlong reward shaping, applied after the rewards (a pure function of the length).

    penalty(L) = 0                                  if L <= max_length - cache
               = factor * ((max_length - cache) - L) / cache    if L <= max_length
               = -factor                            otherwise

DAPO (Yu et al., 2025, "Soft Overlong Punishment") adds this to the rule reward so that
truncated and near-truncated responses are discouraged gradually rather than by a cliff.
"""

from __future__ import annotations


def overlong_penalty(length: int, max_length: int, cache: int, factor: float = 1.0) -> float:
    if cache < 0 or max_length <= 0 or cache > max_length:
        raise ValueError(f"length_penalty: need 0 <= cache <= max_length, got cache={cache}, "
                         f"max_length={max_length}")
    soft_start = max_length - cache
    if length <= soft_start:
        return 0.0
    if length <= max_length:
        return factor * (soft_start - length) / cache  # cache > 0 here: length > soft_start
    return -factor


def apply(scores: list[float | None], lengths: list[int], max_length: int, cache: int,
          factor: float = 1.0) -> tuple[list[float | None], list[float]]:
    """Scores with the penalty added (skips stay None), and the penalties themselves."""
    pens = [overlong_penalty(n, max_length, cache, factor) for n in lengths]
    out = [None if s is None else s + p for s, p in zip(scores, pens, strict=True)]
    return out, pens
