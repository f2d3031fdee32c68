"""The `swe` environment on the real Docker engine and the test-repo instance (tests/
sandbox_fixtures.py): scripted actions get the harness's verdicts, hostile commands end at their
limits, every episode's container is gone after it, and one episode of the tiny model runs the
whole path (rollout → tools → submit → swe reward)."""

from __future__ import annotations

import json
from functools import partial

import pytest
from sandbox_fixtures import diff_of, make_swe_instance, require_docker

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def swe(tmp_path_factory):
    require_docker()
    d = tmp_path_factory.mktemp("swe_env")
    inst, gold, repo = make_swe_instance(d)
    return inst, gold, repo, d


def call(name: str, **arguments) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


def episode_containers() -> list:
    from sandboxes.engine import connect
    from sandboxes.hardening import LABEL, OWNER_LABEL, owner

    return connect().containers.list(all=True, filters={"label": [f"{LABEL}=swe-env",
                                                                  f"{OWNER_LABEL}={owner()}"]})


def play(swe, actions: list[str], **options) -> tuple[list[tuple], float]:
    """Run scripted turns in a fresh environment, close it, score the submission."""
    from environments.swe import SWEEnvironment
    from rewards.swe_reward import swe_reward

    inst, _, _, d = swe
    env = SWEEnvironment(instances_dir=str(d), **options)
    try:
        env.reset(dict(inst))
        steps = [env.step(a) for a in actions]
        submission = env.reward_inputs()["completion"]
    finally:
        env.close()
    res = swe_reward(submission, metadata=inst, instances_dir=str(d), harness_timeout_s=60)
    return steps, res


def test_gold_patch_resolves_and_the_container_goes(swe):
    steps, res = play(swe, [call("run", command="python3 -m pytest -q tests 2>&1 | tail -1"),
                            call("apply_patch", patch=swe[1]), call("submit")])
    assert "passed" in steps[0][0] and not steps[0][1]
    assert steps[1][2] == {"tool_calls": 1, "errors": 0}
    assert steps[2][1] is True  # submit ends the episode
    assert res["score"] == 1.0 and res["resolved"] == 1.0, res
    assert episode_containers() == []


def test_read_write_and_a_test_file_edit_is_discarded(swe):
    _, _, repo, _ = swe
    read = call("read_file", path="calc.py")
    hack = call("write_file", path="tests/test_calc.py", content="def test_mul():\n    assert True\n")
    steps, res = play(swe, [read, hack, call("read_file", path="nope.py"), call("submit")])
    assert "def mul(a, b):" in steps[0][0]
    assert steps[2][2]["errors"] == 1 and "No such file" in steps[2][0]
    # the harness discards test edits: nothing is left to apply, nothing is resolved
    assert res["score"] == 0.0 and res["resolved"] == 0.0, res
    assert diff_of(repo, {}) == ""  # the host's repository is untouched
    assert episode_containers() == []


def test_rm_rf_and_fork_bomb_end_at_their_limits(swe):
    """The pids limit stops the bomb, and whatever it left is killed when `run` returns."""
    bomb = call("run", command="b() { b | b & }; b")
    # GNU rm refuses a bare `rm -rf /`; the model may know the flag
    wipe = call("run", command="rm -rf --no-preserve-root / 2>/dev/null; ls -A /testbed | wc -l; ls /usr/bin | wc -l")
    steps, res = play(swe, [bomb, call("run", command="echo alive"), wipe, call("submit")],
                      run_timeout_s=3, pids_limit=64)
    assert not steps[0][1] and len(steps[0][0]) < 4100  # the bomb's output was cut at its limit
    assert "[exit 0]\nalive" in steps[1][0]  # its processes are gone: the episode goes on
    left_in_repo, left_in_usr_bin = steps[2][0].split("\n")[1:3]
    assert left_in_repo == "0" and int(left_in_usr_bin) > 50  # it wiped its own repo, nothing else
    # nothing to diff against any more (.git went too): no patch, the harness's unapplied score
    assert res["score"] == 0.0 and res["no_patch"] == 1.0, res
    assert episode_containers() == []


def test_swe_episode_of_the_tiny_model_end_to_end(swe, tmp_path):
    """The whole path with the tiny random model: it writes garbage commands (it fails, as it
    must); the point is that rollout, container, tools, submission and reward connect."""
    from omegaconf import OmegaConf

    from cispo.config import ModelConfig
    from cispo.models.build import prepare
    from environments.swe import SWEEnvironment
    from rewards.swe_reward import swe_reward
    from rollout.engines.hf import HFEngine
    from rollout.episodes import EpisodeLimits, episode_metrics, reward_item, run_episodes
    from rollout.types import SamplingParams

    inst, _, _, d = swe
    cfg = OmegaConf.structured(ModelConfig)
    cfg.tiny.tool_tokens = True
    engine = HFEngine(prepare(cfg, tmp_path / "model"))
    tok = engine.tokenizer
    prompt = tok.encode("<tool_call>", add_special_tokens=False)  # a nudge to call a tool
    samples = run_episodes([prompt], [dict(inst)], 2, 0,
                           partial(SWEEnvironment, instances_dir=str(d), run_timeout_s=5), tok,
                           partial(engine.decode_turns, params=SamplingParams(max_new_tokens=6, seed=1)),
                           EpisodeLimits(max_turns=3, max_total_tokens=2000, step_timeout_s=60,
                                         max_observation_tokens=1500), 6)
    assert len(samples) == 2 and episode_containers() == []
    for s in samples:
        assert s.env["error"] is None, s.env["error"]
        assert s.finish_reason in ("stop", "turns", "length") and 1 <= s.env["turns"] <= 3
        assert 0 in s.response_mask or s.env["turns"] == 1  # the repo listing / tool output
        item = reward_item(s, {"completion": "", "metadata": inst})
        res = swe_reward(item["completion"], metadata=inst, instances_dir=str(d), harness_timeout_s=60)
        assert res["resolved"] == 0.0
    assert episode_metrics(samples)["env/turns_mean"] >= 1
