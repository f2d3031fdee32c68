"""`cispo.learner.collate` (vectorised) against the row-by-row definition of its layout."""

import random

import torch

from cispo.learner import TrainItem, collate


def reference(items, pad_id, old=None):
    width = max(len(it.prompt_ids) + len(it.response_ids) for it in items)
    B = len(items)
    out = {"input_ids": torch.full((B, width), pad_id, dtype=torch.long),
           "attention_mask": torch.zeros((B, width), dtype=torch.long),
           "mask": torch.zeros((B, width - 1)), "rollout_logprobs": torch.zeros((B, width - 1)),
           "old_logprobs": torch.zeros((B, width - 1)), "advantages": torch.zeros(B)}
    for i, it in enumerate(items):
        seq = it.prompt_ids + it.response_ids
        p, r = len(it.prompt_ids), len(it.response_ids)
        out["input_ids"][i, :len(seq)] = torch.tensor(seq)
        out["attention_mask"][i, :len(seq)] = 1
        out["mask"][i, p - 1:p - 1 + r] = 1.0  # logits at t score token t+1
        out["rollout_logprobs"][i, p - 1:p - 1 + r] = torch.tensor(it.rollout_logprobs[:r])
        if old is not None:
            out["old_logprobs"][i, p - 1:p - 1 + r] = torch.tensor(old[i][:r])
        out["advantages"][i] = it.advantage
    return out


def test_collate_matches_the_row_by_row_layout():
    rng = random.Random(0)
    for _ in range(30):
        items, olds = [], []
        for _ in range(rng.randint(1, 30)):
            p, r = rng.randint(1, 9), rng.randint(1, 12)
            # engines may return more log-probs than tokens kept: only the first r count
            items.append(TrainItem([rng.randint(1, 99) for _ in range(p)], [rng.randint(1, 99) for _ in range(r)],
                                   [rng.random() for _ in range(r + rng.randint(0, 2))], rng.random()))
            olds.append([rng.random() for _ in range(r)])
        for old in (None, olds):
            got, want = collate(items, 0, old), reference(items, 0, old)
            assert got.keys() == want.keys()
            for k in want:
                assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k
