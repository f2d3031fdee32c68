"""M1's repetition early stop: end a response once `window` consecutive sampled tokens each had
probability above `threshold` (the report: 3,000 tokens at p > 0.99). A model stuck in a loop
samples its tokens with near certainty; cutting it there saves the rest of an 80K window. The HF engine applies it in
its decode loop; this helper counts the run in a finished sample."""

from __future__ import annotations

import math


def trailing_confident_run(logprobs: list[float], threshold: float) -> int:
    """How many of the last tokens in a row had p > threshold."""
    log_t, n = math.log(threshold), 0
    for lp in reversed(logprobs):
        if lp <= log_t:
            break
        n += 1
    return n
