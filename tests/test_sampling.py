"""Dynamic sampling without Ray: fake-free, the real collect() over plain functions."""

from cispo.sampling import collect, flatten, has_signal, round_seed
from rollout.types import Sample


def make(prompt_scores: dict[str, list]):
    """A prompt source whose n-th prompt is the n-th key, and a scorer that returns its scores."""
    order = list(prompt_scores)
    pos = {"i": 0}

    def next_prompts(n):
        out = order[pos["i"]:pos["i"] + n]
        pos["i"] += n
        return out

    def generate(prompts, r):
        return [Sample(i, [1], [r], [0.0], "stop") for i, _ in enumerate(prompts) for _ in range(2)]

    def score(prompts, samples):
        return [x for q in prompts for x in prompt_scores[q]]

    return next_prompts, generate, score


def test_dynamic_sampling_drops_flat_groups_and_refills():
    src = {"a": [1, 1], "b": [1, 0], "c": [0, 0], "d": [0, 1], "e": [None, 1], "f": [1, 0]}
    groups, m = collect(2, *make(src), group_size=2, dynamic=True, max_rounds=5)
    assert [g.prompt for g in groups] == ["b", "d"]
    # rounds: [a, b] keeps b; [c] drops it; [d] keeps d
    assert m["sampling/rounds"] == 3 and m["sampling/dropped_group_frac"] == 0.5
    prompts, samples, scores = flatten(groups)
    assert prompts == ["b", "d"] and [s.prompt_index for s in samples] == [0, 0, 1, 1]
    assert scores == [1, 0, 0, 1]


def test_short_after_max_rounds_and_off_by_default():
    src = {"a": [1, 1], "b": [0, 0], "c": [1, 0], "d": [1, 1]}
    groups, m = collect(2, *make(src), group_size=2, dynamic=True, max_rounds=2)
    assert [g.prompt for g in groups] == ["c"] and m["sampling/short_groups"] == 1
    groups, m = collect(2, *make(src), group_size=2)
    assert [g.prompt for g in groups] == ["a", "b"] and "sampling/dropped_group_frac" not in m


def test_has_signal_and_seeds():
    assert not has_signal([1, 1]) and not has_signal([None, 0]) and has_signal([None, 0, 1])
    assert round_seed(7, 0) == 7 and len({round_seed(7, r) for r in range(4)}) == 4


def test_reward_metrics_merge_over_rounds():
    from cispo.train import merge_rounds

    rounds = [{"reward/errors": 1.0, "reward/math/mean": 0.5, "reward/latency_p99_s": 0.2,
               "reward/math/no_box_total": 3.0, "time/reward_s": 1.0},
              {"reward/errors": 2.0, "reward/math/mean": 1.0, "reward/latency_p99_s": 0.1,
               "reward/math/no_box_total": 5.0, "time/reward_s": 0.5}]
    m = merge_rounds(rounds)
    assert m == {"reward/errors": 3.0, "reward/math/mean": 0.75, "reward/latency_p99_s": 0.2,
                 "reward/math/no_box_total": 5.0, "time/reward_s": 1.5}
    assert rounds == []
