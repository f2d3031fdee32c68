"""Split one packed training row across a sequence-parallel group.

A packed row is B = 1 with several sequences back to back; `position_ids` restart at 0 at every
sequence start (the same convention the lightning kernel and the softmax layers read). The row is
padded at the end to a multiple of the group size with a separate pad "sequence" (positions
0, 1, ...; every per-token value 0, so nothing scores it), then rank r keeps tokens
[r L, (r+1) L). Every layer then finds what it needs from the local `position_ids` alone: a 0
marks a sequence start inside the chunk, and global index − position = where that sequence starts.

Per-token tensors are [1, T] aligned with the input tokens: the value at t belongs to the logit
at t, which predicts token t+1. `target_ids` (added here) is that next token for every position,
taken before the split, so the last token of a chunk is scored against the first of the next.
"""

from __future__ import annotations

import torch


def check_packed(position_ids: torch.Tensor) -> None:
    """Raise unless position_ids is [1, T] and restarts at 0, counting up by one otherwise."""
    if position_ids.dim() != 2 or position_ids.shape[0] != 1:
        raise ValueError(f"a packed row is [1, T]; got position_ids of shape {tuple(position_ids.shape)}")
    p = position_ids[0]
    if p.numel() == 0 or int(p[0]) != 0:
        raise ValueError("position_ids of a packed row must start at 0")
    step = p[1:] - p[:-1]
    if not bool(((step == 1) | (p[1:] == 0)).all()):
        raise ValueError("position_ids must count up by 1 within a sequence and restart at 0")


def padded_length(length: int, size: int) -> int:
    return -(-length // size) * size


def split_packed(batch: dict[str, torch.Tensor], rank: int, size: int, pad_id: int = 0) -> dict:
    """Rank `rank`'s chunk of a packed batch: every [1, T] tensor sliced, `target_ids` added.

    `batch` needs `input_ids` and `position_ids` ([1, T]); other [1, T] tensors (response mask,
    old log-probs, per-token advantages, ...) are split the same way; anything else (per-sequence
    values) is passed through whole. Size 1 returns the row with `target_ids` and no padding.
    """
    if not 0 <= rank < size:
        raise ValueError(f"rank {rank} is not in a group of size {size}")
    ids, pos = batch["input_ids"], batch["position_ids"]
    if ids.shape != pos.shape:
        raise ValueError(f"input_ids {tuple(ids.shape)} and position_ids {tuple(pos.shape)} differ")
    check_packed(pos)
    T = ids.shape[1]
    full = padded_length(T, size)
    pad = full - T
    per_token = {k: v for k, v in batch.items() if torch.is_tensor(v) and v.dim() == 2
                 and tuple(v.shape) == (1, T)}
    per_token["target_ids"] = torch.cat([ids[:, 1:], ids.new_full((1, 1), pad_id)], dim=1)
    out = {k: v for k, v in batch.items() if k not in per_token}
    L = full // size
    for k, v in per_token.items():
        if pad:
            if k == "position_ids":
                tail = torch.arange(pad, dtype=v.dtype, device=v.device)[None]
            elif k in ("input_ids", "target_ids"):
                tail = v.new_full((1, pad), pad_id)
            else:
                tail = v.new_zeros((1, pad))
            v = torch.cat([v, tail], dim=1)
        out[k] = v[:, rank * L:(rank + 1) * L]
    out["sp_rank"], out["sp_size"], out["sp_tokens"] = rank, size, T
    return out


def model_inputs(local: dict) -> dict:
    """The keyword arguments for the patched model's forward on a local chunk.

    The attention mask is passed as the per-layer-type dict transformers' MiniMax accepts, with
    no mask: the patched layers take sequence boundaries from position_ids, and no [T, T] mask is
    ever built; no KV cache (a cache sends the layers back to transformers' generation path)."""
    return {"input_ids": local["input_ids"], "position_ids": local["position_ids"],
            "attention_mask": {"full_attention": None, "linear_attention": None},
            "use_cache": False}
