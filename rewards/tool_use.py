"""The `tool_use` reward: 1 for an episode that called a tool without an error, else 0.

A shaping term for multi-turn runs (docs/environments.md), weighted beside the task's reward,
e.g. `reward.sources.calc: {math: 1.0, tool_use: 0.2}`. It reads the episode's counts, which
the trainer adds to every episode's reward call as the columns `env_turns`, `env_tool_calls`
and `env_errors` (rollout.episodes.reward_item); a single-turn sample has none and scores 0.
"""

from __future__ import annotations

from rewards.registry import reward


@reward("tool_use", isolation="thread")  # arithmetic on two ints: nothing to isolate
def tool_use_reward(env_tool_calls: int = 0, env_errors: int = 0, min_calls: int = 1) -> float:
    return 1.0 if (env_tool_calls or 0) >= min_calls and not env_errors else 0.0
