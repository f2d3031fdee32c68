"""The ablation's fork-token task (bench/fork_task.py, bench/fork_reward.py): what counts as right,
the warm start's calibration, and that a run is deterministic and measures what it says."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _bench_module(name: str):
    """bench/<name>.py by its path: bench/ on sys.path would shadow the `rollout` package with
    bench/rollout.py for every test after this one (unpickling a checkpoint's rollouts failed)."""
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


fork_task, fork_reward = _bench_module("fork_task"), _bench_module("fork_reward")


@pytest.mark.parametrize("completion,right", [
    ("<wait>3}", True), ("<wait>3}}+", True), ("3}", False), ("<wait>4}", False),
    ("<wait>3", False), ("<wait><wait>3}", False), ("", False), ("<wait>13}", False)])
def test_only_the_marker_then_the_sum_is_right(completion, right):
    assert fork_task.is_correct(completion, "3") is right
    out = fork_reward.fork(completion, "3")
    assert out == {"score": float(right), "fork": float(completion.startswith("<wait>"))}


def test_marker_is_one_token_and_the_prompts_cover_the_operands():
    tok = fork_task.tokenizer()
    assert len(tok("<wait>3}", add_special_tokens=False).input_ids) == 3
    assert tok.decode(tok("<wait>3}", add_special_tokens=False).input_ids) == "<wait>3}"
    assert len(fork_task.prompts()) == 25 and {s for _, s in fork_task.prompts()} == set(range(9))
    assert {r["data_source"] for r in fork_task.rows(20)} == {"fork"}


def test_a_short_run_is_deterministic_and_cispo_keeps_every_fork_gradient(tmp_path):
    base = tmp_path / "base"
    stats = fork_task.build_base(base, seed=0, steps=5, batch=8)
    assert 0 < stats["p_marker"] < 1 and (base / "config.json").exists()
    assert fork_task.build_base(base, seed=0) == stats  # reused, not rebuilt
    rc = dict(steps=2, prompts_per_step=2, group_size=8, minibatches=2, lr=3e-3, seed=1)
    a = fork_task.train(base, fork_task.RunConfig(loss="cispo", **rc))
    b = fork_task.train(base, fork_task.RunConfig(loss="cispo", **rc))
    assert a == b  # same prompts, same draws, same updates
    for row in a:
        assert 0 <= row["reward"] <= 1 and 0 < row["p_fork"] < 1 and len(row["round_clip_frac"]) == 2
        # CISPO clips the weight, never the gradient: no fork token with a signal loses it
        assert math.isnan(row["fork_dropped_frac"]) or row["fork_dropped_frac"] == 0.0
    # the same draws with DAPO: the prompts and the first step's samples are the same
    d = fork_task.train(base, fork_task.RunConfig(loss="dapo", eps_low=0.2, **rc))
    assert d[0]["reward"] == a[0]["reward"] and d[0]["p_fork"] == a[0]["p_fork"]
