"""Rewards: `@reward("name")` functions on plain Python values, scored by the RewardManager.

    from rewards import reward

    @reward("exact")
    def exact(completion: str, reference, **_) -> float:
        return float(completion.strip() == str(reference))
"""

from rewards.registry import REWARDS, get_reward, reward

__all__ = ["REWARDS", "get_reward", "reward"]
