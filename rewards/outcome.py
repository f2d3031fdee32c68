"""What a reward's return value means: a score, extras to log, or a skip.

    0.5                          → score 0.5
    {"score": 1.0, "no_box": 0}  → score 1.0, log reward/<name>/no_box
    None  (or {"score": None})   → skip: the sample takes no part in the advantage
    NaN, inf, a string, ...      → an error (scored by the failure policy and counted)
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any


class BadRewardValue(ValueError):
    pass


def coerce(value: Any) -> tuple[float | None, dict[str, float]]:
    """(score or None for skip, numeric extras). Raises BadRewardValue for anything else."""
    extras: dict[str, float] = {}
    if isinstance(value, dict):
        if "score" not in value:
            raise BadRewardValue(f"a dict result needs a 'score' key; got keys {sorted(value)[:8]}")
        for k, v in value.items():
            if k == "score":
                continue
            # Extras are for the metrics: numbers (bools count as 0/1) are kept, the rest ignored
            # by design (a reward may return text for its own debugging).
            if isinstance(v, Real) and math.isfinite(float(v)):
                extras[str(k)] = float(v)
        value = value["score"]
    if value is None:
        return None, extras
    if not isinstance(value, Real):  # bools are Real: True scores 1.0
        raise BadRewardValue(f"a reward returns a float, a dict with 'score', or None; got "
                             f"{type(value).__name__} {str(value)[:80]!r}")
    score = float(value)
    if not math.isfinite(score):
        raise BadRewardValue(f"reward returned {score}")
    return score, extras
