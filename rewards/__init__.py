"""Rewards: `@reward("name")` functions on plain Python values, scored by the RewardManager.

    from rewards import reward

    @reward("exact")
    def exact(completion: str, reference) -> float:
        return float(completion.strip() == str(reference))

See docs/rewards.md: the calling convention and return values (rewards.registry), the manager's
limits and failure policy (rewards.manager), the built-ins (math, format, code, swe, genrm) and
the `python -m rewards.score` CLI.
"""

from rewards.registry import REWARDS, get_reward, get_spec, load_module, reward

__all__ = ["REWARDS", "get_reward", "get_spec", "load_module", "reward"]
