"""The `math` reward in the real Docker sandbox: labelled cases, adversarial inputs, hard kills."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from math_cases import ADVERSARIAL, CASES

from rewards import math_reward as M

pytestmark = pytest.mark.docker
VERDICT_TIMEOUT_S = 4.0  # the hard limit per verdict in these tests (container killed past it)


def docker_ready() -> str | None:
    try:
        from sandboxes.engine import connect
        from sandboxes.image import DEFAULT_IMAGE

        connect(timeout_s=5).images.get(DEFAULT_IMAGE)
    except Exception as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0]}"
    return None


@pytest.fixture(scope="module")
def sandbox():
    why = docker_ready()
    if why:
        pytest.skip(f"needs Docker and the sandbox image (make image): {why}")
    from sandboxes.scoring import WorkerSpec

    pool = M.configure(WorkerSpec(server=M.SERVER), 2, VERDICT_TIMEOUT_S, soft_timeout_s=2)
    yield pool
    M.shutdown()


def score(completion: str, reference: str) -> float | None:
    return M.math_reward(completion=completion, reference=reference)


LABELLED = [(group, g, a, eq) for group, cases in CASES.items() for g, a, eq in cases]


def test_labelled_cases_accuracy(sandbox):
    assert len(LABELLED) >= 60
    before = dict(M._counts)
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda c: score(f"so the answer is \\boxed{{{c[2]}}}.", c[1]), LABELLED))
    wrong = [(c, r) for c, r in zip(LABELLED, got, strict=True) if (r == 1.0) != c[3]]
    accuracy = 1 - len(wrong) / len(LABELLED)
    print(f"math reward: {len(LABELLED) - len(wrong)}/{len(LABELLED)} labelled cases right")
    for c, r in wrong:
        print("  wrong:", c, r)
    assert accuracy >= 0.95, wrong
    assert M._counts == before  # no box missing, no verdict timed out or raised


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_adversarial_inputs_score_zero_within_the_limit(sandbox, name):
    reference, completion = ADVERSARIAL[name]
    t0 = time.monotonic()
    r = score(completion, reference)
    took = time.monotonic() - t0
    assert r == 0.0
    # worst case: the hard limit, then a replacement container starts (a few seconds)
    assert took < VERDICT_TIMEOUT_S + 15, took


def test_hang_past_the_soft_limit_kills_and_replaces_the_container(sandbox):
    """With math-verify's own timeout off, only the container kill can end a power tower."""
    restarts, timeouts = sandbox.stats["restarts"], M._counts["verdict_timeouts"]
    M._settings["soft_timeout_s"] = 0
    try:
        t0 = time.monotonic()
        r = score(ADVERSARIAL["power_tower"][1], "4")
        took = time.monotonic() - t0
    finally:
        M._settings["soft_timeout_s"] = 2
    assert r == 0.0 and M._counts["verdict_timeouts"] == timeouts + 1
    assert took < VERDICT_TIMEOUT_S + 15, took
    assert sandbox.stats["restarts"] == restarts + 1
    assert score("\\boxed{4}", "2+2") == 1.0  # the replacement answers


def test_no_box_and_no_reference():
    no_box = M._counts["no_box"]
    assert score("the answer is 4", "4") == 0.0 and M._counts["no_box"] == no_box + 1
    assert M.math_reward(completion="\\boxed{4}", reference=None) is None


def test_prompt_that_opens_the_box(sandbox):
    assert M.math_reward(completion="3}", reference="3", prompt="1+2=\\boxed{") == 1.0


def test_manager_starts_the_pool_from_the_sandbox_config(sandbox):
    from omegaconf import OmegaConf

    from cispo.config import RewardConfig, SandboxConfig
    from rewards.manager import RewardManager

    cfg = OmegaConf.structured(RewardConfig(sources={"math": {"math": 1.0, "format": 0.5}}))
    sb = OmegaConf.structured(SandboxConfig(num_workers=1, verdict_timeout_s=VERDICT_TIMEOUT_S))
    items = [{"completion": c, "reference": "6", "prompt": "", "data_source": "math",
              "metadata": {}} for c in ("<think>2*3</think> \\boxed{6}", "\\boxed{6}", "\\boxed{7}",
                                        "no answer")]
    items.append({"completion": "\\boxed{6}", "reference": "6", "prompt": "",
                  "data_source": "arithmetic", "metadata": {}})
    with RewardManager(cfg, sb) as mgr:
        scores, m = mgr.score(items)
    assert scores == [1.5, 1.0, 0.0, 0.0, 1.0]
    assert m["reward/math/no_box_total"] >= 1
    assert m["reward/format/mean"] == pytest.approx(1 / 4)
    assert m["sandbox/restarts"] == 0.0 and m["reward/errors"] == 0.0
