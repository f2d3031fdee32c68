"""Collecting a step's groups, with DAPO's dynamic sampling as an option.

With `dynamic=True`, groups whose scored rewards are all equal (they carry no signal: every
advantage is 0) are dropped and more prompts are generated until the step has `need` groups or
`max_rounds` rounds ran; a step that stays short trains on what it has and says so in metrics.
The stages are passed in as functions, so this runs (and is tested) without Ray or a sandbox.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Group:
    prompt: Any  # a cispo.data.Prompt
    samples: list  # G rollout.types.Sample
    scores: list  # G floats, or None for a skipped sample


@dataclass
class Rollout:
    """One step's scored groups, and which weights sampled them. Async checkpoints pickle it
    (`kept.pkl`), so it lives here, in a module that is never `__main__`."""

    groups: list  # Group
    sampling_metrics: dict
    reward_metrics: dict
    seconds: float
    version: int  # the weight sync the engines held while sampling
    data_before: dict  # the prompt stream's position before this rollout drew its prompts
    data_after: dict  # ... and after
    data_metrics: dict  # the stream's metrics for these prompts (epoch, mix shares)


def has_signal(scores: list) -> bool:
    valid = [s for s in scores if s is not None]
    return len(valid) >= 2 and max(valid) != min(valid)


def round_seed(step: int, round_index: int) -> int:
    """Round 0 uses the step itself (as without dynamic sampling); refills get their own seeds."""
    return step if round_index == 0 else (round_index << 32) + step


def collect(need: int, next_prompts: Callable[[int], list], generate: Callable[[list, int], list],
            score: Callable[[list, list], list], group_size: int, dynamic: bool = False,
            max_rounds: int = 1) -> tuple[list[Group], dict[str, float]]:
    """`generate(prompts, round) -> samples` (G per prompt, grouped, `prompt_index` into
    prompts); `score(prompts, samples) -> scores`. Returns up to `need` groups and metrics."""
    kept: list[Group] = []
    generated = dropped = rounds = 0
    while len(kept) < need and rounds < (max_rounds if dynamic else 1):
        prompts = next_prompts(need - len(kept))
        samples = generate(prompts, rounds)
        scores = score(prompts, samples)
        rounds += 1
        for i, q in enumerate(prompts):
            g = Group(q, samples[i * group_size:(i + 1) * group_size],
                      scores[i * group_size:(i + 1) * group_size])
            generated += 1
            if dynamic and not has_signal(g.scores):
                dropped += 1
                continue
            kept.append(g)
    metrics = {"sampling/rounds": float(rounds), "sampling/groups_generated": float(generated)}
    if dynamic:
        metrics["sampling/dropped_group_frac"] = dropped / max(generated, 1)
        metrics["sampling/short_groups"] = float(max(0, need - len(kept)))
    return kept[:need], metrics


def flatten(groups: list[Group]) -> tuple[list, list, list]:
    """(prompts, samples, scores) in group order, samples' prompt_index pointing into prompts."""
    prompts, samples, scores = [], [], []
    for i, g in enumerate(groups):
        prompts.append(g.prompt)
        for s in g.samples:
            s.prompt_index = i
        samples.extend(g.samples)
        scores.extend(g.scores)
    return prompts, samples, scores
