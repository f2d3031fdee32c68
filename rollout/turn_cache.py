"""Per-episode caches for multi-turn decoding with a transformers model (`HFEngine.decode_turns`).

Between two turns of an episode the engine keeps the episode's cache (batch row of one: the
lightning layers' KV state, the softmax layers' K/V of every token forwarded so far). The next
turn then forwards only what was appended since (the previous turn's last sampled token and the
environment's observation) instead of the whole conversation, and the episodes of a turn decode
together from their kept caches merged into one left-padded batch.

Left padding is exact here: a lightning layer's state has no length (a row's state is its own),
and a softmax layer's padded key columns are masked out. Caches with layers of another kind
(sliding windows, quantised, offloaded) are not kept: `keepable` says no and the engine
prefills the whole context as before.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch


@dataclass
class Kept:
    tokens: list[int]  # the token ids this cache has seen, in order
    cache: object  # a transformers cache with batch size 1 and exactly len(tokens) positions


def keepable(cache) -> bool:
    """Whether rows of this cache can be cut out and merged again: plain dynamic layers only."""
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None]))


def _shell(cache):
    """A cache of the same class whose tensors can be replaced without touching `cache`'s."""
    new = copy.copy(cache)
    new.layers = [copy.copy(layer) for layer in cache.layers]
    if isinstance(getattr(cache, "linear_cache", None), list):
        new.linear_cache = list(cache.linear_cache)
    return new


def map_cache(cache, kv_fn, state_fn) -> None:
    """Replace, in place, every softmax layer's keys and values x by kv_fn(x) ([B, heads, len, D])
    and every lightning state s by state_fn(s) ([B, H, D, D]); layers holding nothing are left."""
    for layer in cache.layers:
        keys = getattr(layer, "keys", None)
        if isinstance(keys, torch.Tensor) and keys.numel():
            layer.keys, layer.values = kv_fn(layer.keys), kv_fn(layer.values)
    states = getattr(cache, "linear_cache", None) or []
    for i, state in enumerate(states):
        if isinstance(state, torch.Tensor):
            states[i] = state_fn(state)


def take_row(cache, row: int, length: int):
    """Row `row` of a left-padded batch cache as a cache of its own, keeping only its last
    `length` positions (its real tokens; the rest is left padding). Copies: the batch cache's
    tensors are freed when the turn ends."""
    one = _shell(cache)
    map_cache(one, lambda x: x[row:row + 1, :, x.shape[2] - length:].clone(),
              lambda s: s[row:row + 1].clone())
    return one


def merge(caches: list, lengths: list[int]) -> tuple[object, torch.Tensor]:
    """One batch cache from single-row caches of `lengths` positions each, left-padded to the
    longest, and its attention mask [B, longest] (1 on real positions)."""
    width = max(lengths)
    merged = _shell(caches[0])
    for i, layer in enumerate(merged.layers):
        if isinstance(layer.keys, torch.Tensor) and layer.keys.numel():
            layer.keys = torch.cat([_pad_left(c.layers[i].keys, width) for c in caches])
            layer.values = torch.cat([_pad_left(c.layers[i].values, width) for c in caches])
    states = getattr(merged, "linear_cache", None) or []
    for i, state in enumerate(states):
        if isinstance(state, torch.Tensor):
            states[i] = torch.cat([c.linear_cache[i] for c in caches])
    attn = torch.zeros((len(caches), width), dtype=torch.long)
    for r, n in enumerate(lengths):
        attn[r, width - n:] = 1
    return merged, attn


def _pad_left(x: torch.Tensor, width: int) -> torch.Tensor:
    n = x.shape[2]
    if n == width:
        return x
    return torch.cat([x.new_zeros((*x.shape[:2], width - n, *x.shape[3:])), x], dim=2)
