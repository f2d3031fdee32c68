"""bench/ablation.py's bookkeeping: the threshold rule, the censored median and the summary."""

import importlib.util
import math
from pathlib import Path

spec = importlib.util.spec_from_file_location("ablation", Path(__file__).parent.parent / "bench/ablation.py")
ablation = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ablation)


def test_moving_mean_is_trailing_and_skips_nan():
    assert ablation.moving_mean([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert ablation.moving_mean([1.0, math.nan, 3.0], 3) == [1.0, 1.0, 2.0]


def test_steps_to_threshold_waits_for_a_full_window():
    rewards = [0.9] + [0.0] * 5 + [1.0] * 10
    # step 0 alone is above 0.5 but its window is not full; steps 6.. fill with 1.0
    assert ablation.steps_to_threshold(rewards, 0.5, 4) == 7  # window 6..7 has mean 0.5
    assert ablation.steps_to_threshold(rewards, 0.5, 4) == 7
    assert ablation.steps_to_threshold([0.2] * 30, 0.5, 10) is None


def test_censored_median_counts_unreached_runs_as_beyond_budget():
    assert ablation.censored_median([10, 20, None], 100) == 20
    assert ablation.censored_median([10, None, None], 100) is None  # most never reached
    assert ablation.censored_median([], 100) is None


def test_summary_groups_runs_by_algorithm():
    runs = {"cispo/seed0": {"steps_to_threshold": 30, "final_reward": 0.8},
            "cispo/seed1": {"steps_to_threshold": None, "final_reward": 0.3},
            "cispo/seed2": {"steps_to_threshold": 50, "final_reward": 0.7},
            "dapo/seed0": {"steps_to_threshold": 70, "final_reward": 0.6}}
    s = ablation.summarise(runs, ["cispo", "dapo"], 100)
    assert s["cispo"]["seeds"] == 3 and s["cispo"]["reached"] == 2
    assert s["cispo"]["median_steps"] == 50 and s["cispo"]["steps_reached"] == [30, 50]
    assert s["cispo"]["final_reward_median"] == 0.7
    assert s["dapo"]["median_steps"] == 70
    assert "> 100" not in ablation.table(s, 100) and "cispo | 3 | 2/3 | 50" in ablation.table(s, 100)


def test_every_algorithm_sets_its_own_clip_range_and_normalisation():
    for name, overrides in ablation.ALGOS.items():
        keys = {o.split("=")[0] for o in overrides}
        assert keys == {"algorithm.loss", "algorithm.eps_low", "algorithm.eps_high",
                        "algorithm.normalization"}, name
        assert f"algorithm.loss={name}" in overrides


def test_run_record_averages_each_off_policy_round():
    rows = [{"reward/mean": 0.1 * i, "time/step_s": 1.0, "is_weight/clip_frac": 0.0,
             "is/round_0/clip_frac": 0.0, "is/round_0/max": 1.0,
             "is/round_1/clip_frac": 0.1 * i, "is/round_1/max": 1.0 + i} for i in range(4)]
    rows[3]["is/round_1/max"] = math.nan  # a step without tokens is left out
    rec = ablation.run_record(rows, 0.15, 2, None)
    assert rec["steps_to_threshold"] == 2 and rec["final_reward"] == 0.25
    assert rec["per_round"]["round_1"] == {"clip_frac": 0.15000000000000002, "max": 2.0}
    assert rec["per_round"]["round_0"]["clip_frac"] == 0.0


def test_sign_test_is_the_exact_binomial_and_pairs_by_seed():
    # 9 of 10 paired seeds faster, one slower: p = 2 * (C(10,0) + C(10,1)) / 2^10 = 22/1024
    t = ablation.sign_test([1] * 9 + [9], [2] * 9 + [3], 30)
    assert (t["a_faster"], t["b_faster"], t["ties"]) == (9, 1, 0)
    assert math.isclose(t["p_two_sided"], 22 / 1024)
    # a run that never reached the threshold is slower than any that did; two such runs tie
    t = ablation.sign_test([None, None, 5], [7, None, 6], 30)
    assert (t["a_faster"], t["b_faster"], t["ties"]) == (1, 1, 1) and t["p_two_sided"] == 1.0
    assert t["diffs"] == [31 - 7, 0, -1]


def test_fork_arms_cover_the_issue_grid():
    arms = ablation.FORK_ARMS
    assert {a["eps_high"] for a in arms.values() if a["loss"] == "cispo"} >= {0.28, 1.0, 4.0}
    assert (arms["dapo"]["eps_low"], arms["dapo"]["eps_high"]) == (0.2, 0.28)
    assert (arms["grpo"]["eps_low"], arms["grpo"]["eps_high"], arms["grpo"]["normalization"]) == (0.2, 0.2, "sample")
    assert all(a["eps_low"] == 1.0 for a in arms.values() if a["loss"] == "cispo")
