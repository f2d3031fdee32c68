"""The RewardManager: wall clocks enforced by killing workers, failure policy, metrics, routing.

User rewards are written to a file and loaded by path, as `reward.modules` does in a run.
"""

from __future__ import annotations

import textwrap
import time
from types import SimpleNamespace as NS

import pytest

from rewards.manager import RewardManager, parse_route

USER_REWARDS = textwrap.dedent('''
    import hashlib, math
    from rewards import reward

    @reward("t_exact")
    def exact(completion, reference):
        return completion.strip() == str(reference)

    @reward("t_raises")
    def raises(completion):
        raise RuntimeError("boom")

    @reward("t_hang_python")
    def hang_python(completion):
        while True:
            pass

    @reward("t_hang_sympy")
    def hang_sympy(completion):
        # a huge symbolic simplification: minutes of sympy work
        import sympy
        x = sympy.Symbol("x")
        return float(sympy.simplify(sympy.expand((x + 1) ** 3000 * (x - 1) ** 3000)) == 0)

    @reward("t_hang_c")
    def hang_c(completion):
        # one C call that never returns to the interpreter: signals cannot stop it
        hashlib.pbkdf2_hmac("sha256", b"x", b"salt", 2 ** 31 - 1)
        return 1.0

    @reward("t_nan")
    def nan(completion):
        return math.nan

    @reward("t_text")
    def text(completion):
        return "yes"

    @reward("t_skip_empty")
    def skip_empty(completion):
        return None if not completion else {"score": 1.0, "length": len(completion)}

    @reward("t_async")
    async def async_len(completion):
        import asyncio
        await asyncio.sleep(0.01)
        return {"score": 0.5, "chars": len(completion)}

    @reward("t_batched", batched=True)
    def batched(completion, reference):
        return [float(c == r) for c, r in zip(completion, reference)]

    @reward("t_batched_bad", batched=True)
    def batched_bad(completion):
        return [1.0]

    @reward("t_column")
    def column(completion, difficulty, scale=1.0):
        return scale * difficulty

    @reward("t_thread_sleep", isolation="thread")
    def thread_sleep(completion):
        import time
        time.sleep(30)
        return 1.0
''')


def make_cfg(module: str, sources: dict, **kw) -> NS:
    base = dict(sources=sources, default="t_exact", modules=[module], options={}, timeout_s=2.0,
                error_score=0.0, max_concurrency=8, num_workers=2, worker_memory_mb=4096,
                length_penalty=NS(enabled=False, max_length=10, cache=4, factor=1.0))
    base.update(kw)
    return NS(**base)


@pytest.fixture(scope="module")
def module_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("user") / "my_rewards.py"
    p.write_text(USER_REWARDS)
    return str(p)


def item(completion="x", source="exact", reference="x", **md):
    return {"completion": completion, "reference": reference, "prompt": "p", "data_source": source,
            "metadata": md}


FAILURES = ["t_raises", "t_hang_python", "t_hang_sympy", "t_hang_c", "t_nan", "t_text"]


def test_failures_end_within_the_limit_and_the_rest_of_the_batch_scores(module_path):
    sources = {n: n for n in FAILURES} | {"exact": "t_exact"}
    cfg = make_cfg(module_path, sources, timeout_s=1.5)
    items = [item("x"), item("y")] + [item(source=n) for n in FAILURES] + [item("x")]
    with RewardManager(cfg) as mgr:
        t0 = time.monotonic()
        scores, m = mgr.score(items)
        took = time.monotonic() - t0
        # the killed workers were replaced: the next batch scores normally
        again, _ = mgr.score([item("x"), item("y")])
    assert scores == [1.0, 0.0] + [0.0] * len(FAILURES) + [1.0]
    assert again == [1.0, 0.0]
    # three hangs on two workers: at most two rounds of the 1.5 s limit, plus restarts
    assert took < 3 * 1.5 + 5, took
    for n in ("t_hang_python", "t_hang_sympy", "t_hang_c"):
        assert m[f"reward/{n}/timeouts"] == 1.0 and m[f"reward/{n}/errors"] == 0.0
    for n in ("t_raises", "t_nan", "t_text"):
        assert m[f"reward/{n}/errors"] == 1.0 and m[f"reward/{n}/timeouts"] == 0.0
    assert m["reward/errors"] == 3.0 and m["reward/timeouts"] == 3.0
    assert m["reward/t_exact/mean"] == pytest.approx(2 / 3)
    assert m["reward/t_exact/latency_p99_s"] >= m["reward/t_exact/latency_p50_s"] > 0


def test_error_score_is_the_failure_policy_per_reward(module_path):
    cfg = make_cfg(module_path, {"r": "t_raises", "n": "t_nan"}, error_score=-1.0,
                   options={"t_nan": {"error_score": -0.5}})
    with RewardManager(cfg) as mgr:
        scores, _ = mgr.score([item(source="r"), item(source="n")])
    assert scores == [-1.0, -0.5]


def test_skip_dict_extras_async_and_batched(module_path):
    cfg = make_cfg(module_path, {"s": "t_skip_empty", "a": "t_async", "b": "t_batched",
                                 "bb": "t_batched_bad"}, options={"t_batched": {"batch_size": 2}})
    items = [item("", "s"), item("abc", "s"), item("abcd", "a"),
             item("x", "b"), item("y", "b"), item("x", "b"), item("x", "bb"), item("x", "bb")]
    with RewardManager(cfg) as mgr:
        scores, m = mgr.score(items)
    assert scores == [None, 1.0, 0.5, 1.0, 0.0, 1.0, 0.0, 0.0]
    assert m["reward/t_skip_empty/skips"] == 1.0 and m["reward/skips"] == 1.0
    assert m["reward/t_skip_empty/length"] == 3.0  # extras: mean over samples reporting it
    assert m["reward/t_async/chars"] == 4.0
    assert m["reward/t_batched/mean"] == pytest.approx(2 / 3)
    assert m["reward/t_batched_bad/errors"] == 2.0  # 1 result for 2 samples: both counted


def test_weighted_routes_and_skips_propagate(module_path):
    cfg = make_cfg(module_path, {"mix": {"t_exact": 1.0, "t_async": 0.2},
                                 "both": ["t_exact", "t_skip_empty"]})
    with RewardManager(cfg) as mgr:
        scores, _ = mgr.score([item("x", "mix"), item("y", "mix"), item("", "both", reference=""),
                               item("x", "both"), item("z", "unrouted", reference="z")])
    assert scores == [pytest.approx(1.1), pytest.approx(0.1), None, 2.0, 1.0]


def test_columns_and_options_become_keyword_arguments(module_path):
    cfg = make_cfg(module_path, {"c": "t_column"}, options={"t_column": {"scale": 2.0}})
    with RewardManager(cfg) as mgr:
        scores, m = mgr.score([item(source="c", difficulty=3), item(source="c")])
    assert scores == [6.0, 0.0]  # the second row has no `difficulty` column: a counted error
    assert m["reward/t_column/errors"] == 1.0


def test_thread_isolated_reward_is_abandoned_at_the_limit(module_path):
    cfg = make_cfg(module_path, {"t": "t_thread_sleep"}, timeout_s=0.5)
    with RewardManager(cfg) as mgr:
        t0 = time.monotonic()
        scores, m = mgr.score([item(source="t")])
    assert time.monotonic() - t0 < 2.0
    assert scores == [0.0] and m["reward/t_thread_sleep/timeouts"] == 1.0
    assert m["reward/abandoned_threads"] == 1.0


def test_length_penalty_is_applied_after_scoring(module_path):
    lp = NS(enabled=True, max_length=10, cache=4, factor=1.0)
    cfg = make_cfg(module_path, {"s": "t_skip_empty"}, length_penalty=lp)
    items = [dict(item("abc", "s"), response_length=n) for n in (5, 6, 8, 10, 11)]
    items.append(dict(item("", "s"), response_length=20))
    with RewardManager(cfg) as mgr:
        scores, m = mgr.score(items)
        with pytest.raises(KeyError, match="response_length"):
            mgr.score([item("abc", "s")])
    assert scores == [1.0, 1.0, 0.5, 0.0, 0.0, None]
    assert m["reward/length_penalty_frac"] == pytest.approx(4 / 6)


def test_config_errors_are_one_clear_message(module_path, tmp_path):
    with pytest.raises(KeyError, match="unknown reward 'nope'.*reward.modules"):
        RewardManager(make_cfg(module_path, {"a": "nope"}))
    with pytest.raises(FileNotFoundError, match="reward module"):
        RewardManager(make_cfg(str(tmp_path / "missing.py"), {}))
    with pytest.raises(ValueError, match="reward.options names rewards"):
        RewardManager(make_cfg(module_path, {}, options={"typo": {}}))
    with pytest.raises(ValueError, match="reward.sources.a"):
        parse_route({"math": "heavy"}, "reward.sources.a")


def test_the_training_config_drives_the_manager(module_path):
    from omegaconf import OmegaConf

    from cispo.config import RewardConfig

    cfg = OmegaConf.structured(RewardConfig(sources={"m": {"t_exact": 1.0, "t_async": 1.0}},
                                            default="t_exact", modules=[module_path]))
    with RewardManager(cfg, None) as mgr:
        scores, m = mgr.score([item("x", "m"), item("x", "other")])
    assert scores == [1.5, 1.0] and m["reward/errors"] == 0.0


# --- issue 21: async rewards at max_concurrency, rewards that keep timing out, where a reward raised

MORE_REWARDS = textwrap.dedent('''
    import asyncio, time
    from rewards import reward

    IN_FLIGHT, PEAK = [0], [0]

    @reward("t21_async_slow")
    async def slow(completion):
        IN_FLIGHT[0] += 1
        PEAK[0] = max(PEAK[0], IN_FLIGHT[0])
        await asyncio.sleep(0.05)
        IN_FLIGHT[0] -= 1
        return 1.0

    @reward("t21_async_raises")
    async def araises(completion):
        await asyncio.sleep(0)
        raise KeyError("no such key")

    @reward("t21_async_hang")
    async def ahang(completion):
        await asyncio.sleep(3600)

    @reward("t21_always_hang")
    def always(completion):
        while True:
            pass

    @reward("t21_sometimes_hang")
    def sometimes(completion):
        if completion == "hang":
            while True:
                pass
        return 1.0
''')


@pytest.fixture(scope="module")
def more_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("user21") / "more_rewards.py"
    p.write_text(MORE_REWARDS)
    return str(p)


def test_async_rewards_run_max_concurrency_at_once(more_path):
    """Issue 21: 40 calls of 50 ms ran one at a time (2.4 s); now 8 are in flight together."""
    import sys

    from rewards.registry import load_module

    cfg = make_cfg(more_path, {"a": "t21_async_slow"}, max_concurrency=8)
    with RewardManager(cfg) as mgr:
        scores, m = mgr.score([item(source="a") for _ in range(40)])
    assert scores == [1.0] * 40 and m["reward/errors"] == 0
    assert sys.modules[load_module(more_path)].PEAK[0] == 8


def test_async_failures_and_timeouts_are_answers(more_path):
    cfg = make_cfg(more_path, {"r": "t21_async_raises", "h": "t21_async_hang"}, timeout_s=0.3)
    with RewardManager(cfg) as mgr:
        detailed = mgr.score_detailed([item(source="r"), item(source="h")],
                                      [[("t21_async_raises", 1.0)], [("t21_async_hang", 1.0)]])
    err = detailed["t21_async_raises"][0]
    assert err.status == "error" and err.error.startswith("KeyError: 'no such key' (")
    assert "more_rewards.py:" in err.error and "in araises" in err.error
    assert detailed["t21_async_hang"][1].status == "timeout"


def test_a_raising_reward_is_named_by_file_and_line(module_path):
    with RewardManager(make_cfg(module_path, {"r": "t_raises"})) as mgr:
        res = mgr.score_detailed([item(source="r")], [[("t_raises", 1.0)]])["t_raises"][0]
    line = USER_REWARDS.splitlines().index('    raise RuntimeError("boom")') + 1
    assert res.error.startswith("RuntimeError: boom (") and res.error.endswith(f"my_rewards.py:{line} in raises)")


def test_a_reward_that_keeps_timing_out_is_stopped(more_path):
    from rewards.manager import RewardStopped

    cfg = make_cfg(more_path, {"s": "t21_sometimes_hang"}, timeout_s=0.3, max_concurrency=1,
                   max_consecutive_timeouts=3)
    with RewardManager(cfg) as mgr:
        # a success between timeouts starts the count again
        scores, m = mgr.score([item("hang", "s"), item("hang", "s"), item("ok", "s"), item("hang", "s")])
        assert scores == [0.0, 0.0, 1.0, 0.0] and m["reward/timeouts"] == 3 and not mgr.stopped
        t0 = time.monotonic()
        with pytest.raises(RewardStopped, match="'t21_sometimes_hang' timed out 3 times in a row "
                                                r"\(limit 0.3 s each\) and was stopped"):
            mgr.score([item("hang", "s") for _ in range(20)])
        # 3 timeouts (and their worker restarts), not 20: the rest return at once
        detailed = mgr.score_detailed([item("ok", "s")], [[("t21_sometimes_hang", 1.0)]])
        assert detailed["t21_sometimes_hang"][0].error.startswith("not scored: reward 't21_sometimes_hang'")
    assert time.monotonic() - t0 < 20 * 0.3


def test_training_ends_with_the_stopped_rewards_message(more_path):
    """train.score turns RewardStopped into one message and exit status 1, not a traceback."""
    from cispo import train
    from cispo.models.tokenizer import build_char_tokenizer
    from rollout.types import Sample

    cfg = make_cfg(more_path, {"s": "t21_always_hang"}, timeout_s=0.3, max_concurrency=1)
    batch = [NS(reference="1", text="1+0=", data_source="s", row={})]
    samples = [Sample(0, [1], [2], [0.0], "stop") for _ in range(5)]
    with RewardManager(cfg) as mgr:
        with pytest.raises(SystemExit) as e:
            train.score(NS(rewarder=mgr, tokenizer=build_char_tokenizer()),
                        NS(rollout=NS(repetition_reward=None)), [], batch, samples)
    assert str(e.value.code).startswith("reward: reward 't21_always_hang' timed out 3 times in a row")
