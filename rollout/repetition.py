"""M1's repetition early stop: end a response once `window` consecutive sampled tokens each had
probability above `threshold` (the report: 3,000 tokens at p > 0.99). A model stuck in a loop
samples its tokens with near certainty; cutting it there saves the rest of an 80K window."""

from __future__ import annotations

import math

import torch
from transformers import StoppingCriteria


def trailing_confident_run(logprobs: list[float], threshold: float) -> int:
    """How many of the last tokens in a row had p > threshold."""
    log_t, n = math.log(threshold), 0
    for lp in reversed(logprobs):
        if lp <= log_t:
            break
        n += 1
    return n


class RepetitionStop(StoppingCriteria):
    """A transformers stopping criterion; `stopped_at[row]` is the sequence length at the stop."""

    def __init__(self, window: int, threshold: float):
        self.window, self.log_t = window, math.log(threshold)
        self.run: torch.Tensor | None = None
        self.stopped_at: dict[int, int] = {}

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        # scores[-1]: the processed logits the newest token was sampled from
        lp = torch.log_softmax(scores[-1].float(), -1).gather(-1, input_ids[:, -1:]).squeeze(-1)
        if self.run is None:
            self.run = torch.zeros_like(input_ids[:, -1])
        self.run = torch.where(lp > self.log_t, self.run + 1, torch.zeros_like(self.run))
        done = self.run >= self.window
        for i in done.nonzero().flatten().tolist():
            self.stopped_at.setdefault(i, input_ids.shape[1])
        return done
