"""Multi-turn environments: the policy acts (calls tools), the environment answers.

An environment is a class registered with `@environment("name")` (environments.registry) whose
instances implement `reset(task) -> observation` and `step(action_text) -> (observation, done,
info)` on plain Python values, so it is tested without Ray, a GPU or a model. The rollout
(rollout.episodes) decodes a turn, hands its text to `step`, appends the observation's tokens as
context and decodes the next turn; the finished episode is scored by the reward registry
(`reward.sources`, by the row's data_source). docs/environments.md has the whole contract.
"""
