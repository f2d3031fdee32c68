"""What generation returns: plain data, cheap to send between Ray processes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SamplingParams:
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int = 0
    repetition_window: int = 0  # 0 = off; M1: 3000
    repetition_threshold: float = 0.99  # M1


@dataclass
class Sample:
    """One response. `logprobs[t]` is log p(response_ids[t]) under the distribution the engine
    sampled from (after temperature and top-k/top-p), so the learner compares like with like."""

    prompt_index: int  # index of the prompt in the step's batch
    prompt_ids: list[int]
    response_ids: list[int]  # includes the EOS token when finish_reason == "stop"
    logprobs: list[float]
    # "stop" (EOS; an episode: the environment said done) | "length" (max_new_tokens; an
    # episode: env.max_total_tokens) | "repetition" | episodes only: "turns" (env.max_turns),
    # "timeout" (env.episode_timeout_s), "env_error" (the environment failed)
    finish_reason: str
    # routing replay: routing[t][layer] = the experts token t of the response went to (HF engine)
    routing: list | None = None
    # multi-turn episodes (rollout.episodes): 1 where response_ids[t] is the model's own token,
    # 0 where an environment wrote it (context, not trained; its logprobs entry is 0.0)
    response_mask: list[int] | None = None
    # the episode's turns, tool_calls, errors, seconds, error (str or None), last_text and
    # reward_inputs (keys the environment adds to the reward call); None for single-turn samples
    env: dict | None = None
