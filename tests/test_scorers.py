"""Scorer actors (rewards.scorers) on the session's local Ray, whose one node advertises 4
`sandbox_test` slots (conftest): least-loaded spreading with back-pressure, a scorer killed
mid-batch (its calls retried on another, none lost), calls scored as errors when the retry dies
too, and the messages when no scorer can start. The rewards here are plain Python marked
`sandbox=True`, so these tests need no Docker; tests/test_scorers_cluster.py runs the real thing
(two Ray nodes, Docker on one) through `python -m cispo.train`."""

from __future__ import annotations

import textwrap
import time

import pytest
from omegaconf import OmegaConf

from cispo.config import RewardConfig, SandboxConfig
from rewards.manager import RewardManager
from rewards.scorers import ScorerUnavailable

REWARDS = '''
import os, threading, time
from rewards import reward

_inflight = [0, 0]  # now, most at once (this scorer process)
_lock = threading.Lock()


@reward("slow_probe", isolation="thread", sandbox=True)
def slow_probe(completion, reference=None):
    with _lock:
        _inflight[0] += 1
        _inflight[1] = max(_inflight)
    time.sleep(0.3)
    with _lock:
        _inflight[0] -= 1
    return {"score": 1.0, "pid": float(os.getpid()), "most_at_once": float(_inflight[1])}


@reward("dies_once", isolation="thread", sandbox=True)
def dies_once(completion, reference=None, marker=""):
    try:  # the first call anywhere creates the marker and takes its scorer down with it
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        time.sleep(0.05)
        return {"score": 1.0, "pid": float(os.getpid())}
    time.sleep(0.2)  # let the other calls of the batch reach this scorer too
    os.kill(os.getpid(), 9)


@reward("always_dies", isolation="thread", sandbox=True)
def always_dies(completion):
    os.kill(os.getpid(), 9)


def _no_engine(options, sandbox_cfg):
    raise RuntimeError("no Docker engine on this node (a test's setup hook)")


@reward("setup_fails", isolation="thread", sandbox=True, setup=_no_engine)
def setup_fails(completion):
    return 1.0
'''


@pytest.fixture(scope="module")
def module_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("scorer_rewards") / "scorer_rewards.py"
    path.write_text(textwrap.dedent(REWARDS))
    return str(path)


def configs(module_file: str, name: str, options: dict | None = None, **sandbox):
    reward = OmegaConf.structured(RewardConfig(
        sources={}, default=name, modules=[module_file], options={name: options or {}},
        timeout_s=30.0, max_concurrency=2))
    sb = OmegaConf.structured(SandboxConfig(placement="actors", resource="sandbox_test",
                                            scorers_per_node=2, nodes_wait_s=0.0,
                                            start_timeout_s=30.0, **sandbox))
    return reward, sb


def items(n: int) -> list[dict]:
    return [{"completion": f"c{i}", "reference": None, "prompt": "", "data_source": "x",
             "metadata": {}} for i in range(n)]


def test_calls_spread_over_the_scorers_and_never_exceed_their_slots(ray_local, module_file):
    with RewardManager(*configs(module_file, "slow_probe")) as mgr:
        per = mgr.score_detailed(items(16), [[("slow_probe", 1.0)]] * 16)["slow_probe"]
        m = mgr.score(items(4))[1]
    assert len(per) == 16 and all(r.status == "ok" for r in per.values())
    pids = [r.extras["pid"] for r in per.values()]
    # 2 scorers x 2 slots; the manager has threads for all 4 slots although max_concurrency=2
    assert len(set(pids)) == 2 and min(pids.count(p) for p in set(pids)) >= 4, pids
    assert max(r.extras["most_at_once"] for r in per.values()) == 2.0  # back-pressure: <= slots
    assert m["sandbox/scorers_up"] == 2.0 and m["sandbox/scorer_slots"] == 4.0
    assert m["sandbox/scorer_calls_total"] == 20.0 and m["sandbox/scorer_lost_total"] == 0.0


def test_a_scorer_killed_mid_batch_loses_no_sample(ray_local, module_file, tmp_path):
    marker = str(tmp_path / "killed")
    with RewardManager(*configs(module_file, "dies_once", {"marker": marker})) as mgr:
        scores, m = mgr.score(items(12))
        assert scores == [1.0] * 12, scores  # the calls on the killed scorer went to the other
        assert m["reward/errors"] == 0.0 and m["sandbox/scorer_lost_total"] == 0.0
        assert m["sandbox/scorer_deaths_total"] == 1.0 and m["sandbox/scorer_retries_total"] >= 1.0
        deadline = time.monotonic() + 60  # Ray restarts it (sandbox.max_restarts) and it rejoins
        while (m := mgr.score(items(4))[1])["sandbox/scorers_up"] < 2 and time.monotonic() < deadline:
            time.sleep(1)
        assert m["sandbox/scorers_up"] == 2.0


def test_calls_whose_retry_dies_too_are_scored_as_errors(ray_local, module_file):
    reward, sb = configs(module_file, "always_dies", max_restarts=0)
    with RewardManager(reward, sb) as mgr:
        scores, m = mgr.score(items(6))
        assert scores == [0.0] * 6  # error_score, every one: counted, none dropped
        assert m["reward/errors"] == 6.0 and m["sandbox/scorer_lost_total"] == 6.0
        assert m["sandbox/scorers_up"] == 0.0
        scores, m = mgr.score(items(2))  # no scorer left: still an answer for each
        assert scores == [0.0, 0.0] and m["reward/errors"] == 2.0


def test_no_sandbox_node_says_how_to_start_one(ray_local, module_file):
    reward, sb = configs(module_file, "slow_probe")
    sb.resource = "no_such_resource"
    with pytest.raises(ScorerUnavailable, match=r"no Ray node advertises the 'no_such_resource'.*"
                                                r"ray start --address=HEAD:PORT --resources"):
        RewardManager(reward, sb)


def test_a_scorer_that_cannot_start_names_its_node_and_why(ray_local, module_file):
    with pytest.raises(ScorerUnavailable, match="no Docker engine on this node"):
        RewardManager(*configs(module_file, "setup_fails"))
