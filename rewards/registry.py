"""The reward registry. A reward is a function called with keyword arguments
`completion: str, reference, prompt: str, metadata: dict` (accept **kwargs for the rest) that
returns a float score. It sees no Ray and no tensors, so it can be tested on its own."""

from __future__ import annotations

from collections.abc import Callable

RewardFn = Callable[..., float]
REWARDS: dict[str, RewardFn] = {}
_BUILTINS_LOADED = False


def reward(name: str) -> Callable[[RewardFn], RewardFn]:
    def deco(fn: RewardFn) -> RewardFn:
        if name in REWARDS and REWARDS[name] is not fn:
            raise ValueError(f"reward {name!r} is already registered (by {REWARDS[name].__module__})")
        REWARDS[name] = fn
        return fn

    return deco


def get_reward(name: str) -> RewardFn:
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        from rewards import math_reward  # noqa: F401  (registers "math")

        _BUILTINS_LOADED = True
    if name not in REWARDS:
        raise KeyError(f"unknown reward {name!r}; registered: {sorted(REWARDS)}")
    return REWARDS[name]
