"""The `code` and `swe` rewards against the sandboxes package's runners (real Docker).

They skip where `sandboxes.testcases` / `sandboxes.swe` (the sandboxes issue) are not present.
"""

from __future__ import annotations

import importlib.util
import time

import pytest

from rewards.code_reward import code_reward
from rewards.swe_reward import swe_reward

pytestmark = pytest.mark.docker


def _need(module: str):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"needs {module} (the sandboxes issue's runner)")
    from sandboxes.engine import connect
    from sandboxes.image import DEFAULT_IMAGE

    try:
        connect(timeout_s=5).images.get(DEFAULT_IMAGE)
    except Exception as e:
        pytest.skip(f"needs Docker and the sandbox image: {type(e).__name__}: {e}")


ADD = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
CASES = [["1 2\n", "3\n"], ["2 2\n", "4\n"], ["5 -5\n", "0\n"], ["7 1\n", "9\n"]]  # last is wrong


def test_code_fraction_all_and_no_code():
    _need("sandboxes.testcases")
    r = code_reward(completion=f"Here you go:\n{ADD}\n", reference=CASES)
    assert r["score"] == 0.75 and r["pass_rate"] == 0.75 and r["status_wrong_answer"] == 1.0
    assert code_reward(completion=ADD, tests=CASES[:3], mode="all")["score"] == 1.0
    assert code_reward(completion=ADD, tests=CASES, mode="all")["score"] == 0.0
    assert code_reward(completion="no code", reference=CASES)["no_code"] == 1.0
    assert code_reward(completion=ADD, reference=None) is None  # no tests: skip


def test_code_that_hangs_is_stopped_by_the_case_limit():
    _need("sandboxes.testcases")
    t0 = time.monotonic()
    r = code_reward(completion="```python\nwhile True:\n    pass\n```", reference=CASES[:2],
                    case_timeout_s=1.0)
    assert r["score"] == 0.0 and r["status_timeout"] == 2.0
    assert time.monotonic() - t0 < 20


@pytest.fixture(scope="module")
def swe_instance(tmp_path_factory):
    _need("sandboxes.swe")
    fixtures = pytest.importorskip("sandbox_fixtures")  # the sandboxes tests' fixture repo
    d = tmp_path_factory.mktemp("swe")
    inst, gold, _ = fixtures.make_swe_instance(d)
    return inst, gold, str(d)


def test_swe_resolved_unresolved_and_unapplied(swe_instance):
    inst, gold, d = swe_instance
    kw = {"reference": inst, "instances_dir": d, "harness_timeout_s": 120}
    r = swe_reward(completion=f"The fix:\n```diff\n{gold}```\n", **kw)
    assert r == {"score": 1.0, "resolved": 1.0, "applied": 1.0, "no_patch": 0.0}
    garbage = "--- a/calc.py\n+++ b/calc.py\n@@ -40,1 +40,1 @@\n-nothing here\n+x\n"
    r = swe_reward(completion=garbage, unapplied_score=-1.0, **kw)
    assert r["score"] == -1.0 and r["applied"] == 0.0
    r = swe_reward(completion="I could not find the bug.", unapplied_score=-0.5, **kw)
    assert r == {"score": -0.5, "resolved": 0.0, "applied": 0.0, "no_patch": 1.0}
    noop = gold.replace("return a * b", "return a + b + 0")
    r = swe_reward(completion=f"```diff\n{noop}```", **kw)
    assert r["applied"] == 1.0 and r["resolved"] == 0.0 and r["score"] == 0.0
