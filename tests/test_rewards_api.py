"""Pure pieces of the rewards package: registry, return values, parsing helpers, built-in logic."""

from __future__ import annotations

import json
import math
import time
from fractions import Fraction

import pytest
from math_cases import CASES

from rewards import get_reward, get_spec, reward
from rewards.boxed import last_boxed
from rewards.code_reward import parse_test_cases as parse_cases
from rewards.extract import last_code_block, unified_diff
from rewards.format_reward import format_reward
from rewards.genrm import judge_prompt, parse_grade, parse_pairwise, verdict_score
from rewards.length_penalty import overlong_penalty
from rewards.math_normalize import as_rational, choice_letter, normalize, quick_verdict
from rewards.outcome import BadRewardValue, coerce
from rewards.swe_reward import find_instance


def test_decorator_registers_and_returns_the_function():
    @reward("t_api_plain")
    def plain(completion, reference):
        return float(completion == reference)

    assert plain("a", "a") == 1.0  # still a plain function: unit-test it by calling it
    assert get_reward("t_api_plain") is plain
    spec = get_spec("t_api_plain")
    assert spec.isolation == "process" and not spec.batched and not spec.is_async
    assert spec.accepted() == ({"completion", "reference"}, {"completion", "reference"})
    with pytest.raises(ValueError, match="already registered"):
        reward("t_api_plain")(lambda completion: 0.0)
    with pytest.raises(ValueError, match="isolation"):
        reward("t_api_bad", isolation="fiber")


def test_builtins_are_registered():
    for name in ("math", "format", "code", "swe", "genrm"):
        assert get_spec(name).fn is get_reward(name)
    assert get_spec("genrm").batched


@pytest.mark.parametrize("value,expected", [
    (0.5, (0.5, {})), (1, (1.0, {})), (True, (1.0, {})), (None, (None, {})),
    ({"score": 1.0, "len": 3, "note": "text is not logged"}, (1.0, {"len": 3.0})),
    ({"score": None, "why": 1}, (None, {"why": 1.0})),
])
def test_coerce_accepts_the_documented_forms(value, expected):
    assert coerce(value) == expected


@pytest.mark.parametrize("value", [math.nan, math.inf, "1.0", [1.0], {"value": 1.0}])
def test_coerce_rejects_everything_else(value):
    with pytest.raises(BadRewardValue):
        coerce(value)


class _MeteredText(str):
    """A text that counts the characters read from it, by indexing or by an `rfind` scan, and
    fails as soon as they exceed `budget`: the work itself, not the wall time of a shared CI
    machine (a quadratic scan also fails at once instead of running for minutes)."""

    def __new__(cls, text: str, budget: int):
        obj = super().__new__(cls, text)
        obj.left = budget
        return obj

    def _read(self, n: int) -> None:
        self.left -= n
        assert self.left >= 0, "last_boxed read more characters than a linear scan does"

    def __getitem__(self, key):
        if isinstance(key, int):
            self._read(1)
        return str.__getitem__(self, key)

    def rfind(self, sub, start=None, end=None):
        lo, hi = start or 0, len(self) if end is None else end
        found = str.rfind(self, sub, lo, hi)
        self._read(hi - max(found, lo))  # a backward scan from hi to what it found (or to lo)
        return found


def test_last_boxed():
    assert last_boxed("a \\boxed{1} b \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{a} then \\boxed{b") == "a"  # unclosed last one: the earlier
    assert last_boxed("\\fbox{x}") == "x" and last_boxed("none") is None
    # unclosed openers all the way: linear means each character is visited once by the brace
    # scan and once by each opener's backward search (rewards/boxed.py), so (1 + 2) x len reads
    # at most; the quadratic scan the module avoids reads ~len^2 / 16 (here ~10^9)
    text = "\\boxed{1" * 20_000 + "\\fbox{2" * 1000
    metered = _MeteredText(text, budget=3 * len(text))
    assert last_boxed(metered) is None
    assert metered.left < 2 * len(text)  # the scan did read the text (the meter is in the path)


def test_policy_decisions_without_a_sandbox():
    assert normalize("1{,}234{,}567") == "1234567" and normalize("50\\%") == "50"
    assert normalize("(1,2)") == "(1,2)"  # a pair is not a thousands number
    assert choice_letter("\\textbf{(C)} 12") == "C" and choice_letter("12") is None
    assert quick_verdict("1,000", "1000") is True
    assert quick_verdict("B", "\\text{(B)}") is True and quick_verdict("B", "C") is False
    assert quick_verdict("\\{1,2\\}", "(1,2)") is False
    assert quick_verdict("1", "1" * 2000) is False  # over-long answers score 0 unparsed
    assert quick_verdict("\\frac12", "0.5") is True  # plain numbers: exact, on the host
    assert quick_verdict("\\frac13", "0.33") is False
    assert quick_verdict("\\frac13", "0.333333") is None  # within 1e-5: math-verify decides
    assert quick_verdict("50000", "50001") is False  # integers: exact
    assert quick_verdict("\\sqrt{2}", "2^{1/2}") is None  # symbolic: math-verify decides
    assert as_rational("-\\dfrac{3}{4}") == Fraction(-3, 4) and as_rational("1/0") is None
    groups = {g for g in CASES}
    assert {"percent", "units", "thousands", "equation", "intervals", "sets_tuples",
            "choices"} <= groups


def test_code_and_diff_extraction():
    text = "try:\n```python\nprint(1)\n```\nbetter:\n```py\nprint(2)\n```\n```text\nout\n```\n"
    assert last_code_block(text) == "print(2)\n"
    assert last_code_block("no code") is None
    t0 = time.monotonic()
    assert last_code_block("```python\nx\n" * 100_000) is None  # unclosed fences: linear
    assert time.monotonic() - t0 < 2.0
    diff = "--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-a\n+b"
    assert unified_diff(f"fix:\n```diff\n{diff}\n```\ndone") == diff + "\n"
    assert unified_diff(f"bare patch:\n{diff}") == diff + "\n"
    assert unified_diff("no patch here") is None


def test_code_test_case_forms():
    want = [("1 2\n", "3\n"), ("2 2\n", "4\n")]
    assert parse_cases([["1 2\n", "3\n"], ["2 2\n", "4\n"]]) == want
    assert parse_cases([{"input": "1 2\n", "output": "3\n"}, {"input": "2 2\n", "output": "4\n"}]) == want
    assert parse_cases(json.dumps({"inputs": ["1 2\n", "2 2\n"], "outputs": ["3\n", "4\n"]})) == want
    with pytest.raises(ValueError, match="test case"):
        parse_cases([["only input"]])


def test_swe_instance_lookup():
    inst = {"instance_id": "x-1", "repo": "r"}
    assert find_instance(inst, None, {}) is inst
    assert find_instance(None, inst, {}) is inst
    assert find_instance(None, "text", inst) is inst
    assert find_instance(None, None, {"other": 1}) is None


def test_format_reward():
    good = "<think>add them</think> so \\boxed{3}"
    assert format_reward(good) == 1.0
    assert format_reward("add them</think> so \\boxed{3}", prompt="Q: 1+2? <think>") == 1.0
    for bad in ("so \\boxed{3}", "<think></think> \\boxed{3}", "<think>a</think>",
                "<think>a</think> 3", "<think>a</think><think>b</think> \\boxed{3}"):
        assert format_reward(bad) == 0.0, bad
    assert format_reward("<think>a</think> 3", require_boxed=False, bonus=0.1) == 0.1
    two = "<plan>p</plan><think>t</think> \\boxed{1}"
    assert format_reward(two, tags=["plan", "think"]) == 1.0


@pytest.mark.parametrize("text,grade", [
    ("Grade: 4", 4), ("blah\n**Grade:** 5", 5), ("score = 3/5", 3), ("Rating: [[2]]", 2),
    ("[[1]]", 1), ("Grade: four", 4), ("Grade: 2 ... on reflection Grade: 5", 5), (" 3 ", 3),
    ("grade 4 out of 5", 4), ("Grade: 7", None), ("Grade: 4.5", None), ("12+3", None), ("", None),
])
def test_parse_grade(text, grade):
    assert parse_grade(text) == grade


@pytest.mark.parametrize("text,verdict", [
    ("Verdict: 1", 1), ("Verdict: -1", -1), ("**Verdict**: 0", 0), ("verdict = +1", 1),
    ("Verdict: worse", -1), ("Verdict: better", 1), ("Verdict: tie", 0), ("-1", -1),
    ("Verdict: 1\nActually, Verdict: -1", -1), ("Verdict: 2", None), ("1+1", None), ("", None),
])
def test_parse_pairwise(text, verdict):
    assert parse_pairwise(text) == verdict


def test_genrm_prompts_and_scores():
    p = judge_prompt("consistency", "1+1?", "it is 2", "2")
    assert "[Reference answer]\n2" in p and p.rstrip().endswith("or 5.")
    assert "Verdict: -1" in judge_prompt("pairwise", "q", "a", "b")
    with pytest.raises(ValueError, match="mode"):
        judge_prompt("pointwise", "q", "a", "b")
    assert verdict_score("consistency", "Grade: 5") == 1.0
    assert verdict_score("consistency", "Grade: 1") == 0.0
    assert verdict_score("pairwise", "Verdict: -1") == -1.0
    assert verdict_score("pairwise", "no idea") is None


@pytest.mark.parametrize("length,expected", [(0, 0.0), (6, 0.0), (7, -0.25), (10, -1.0), (99, -1.0)])
def test_overlong_penalty(length, expected):
    assert overlong_penalty(length, max_length=10, cache=4) == expected


def test_overlong_penalty_bad_settings():
    with pytest.raises(ValueError, match="cache"):
        overlong_penalty(1, max_length=10, cache=20)
