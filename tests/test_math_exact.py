"""The `math` reward decides exact values exactly (issue 14): tiny, huge and near-equal values
whose floats coincide stay apart, on both sandbox backends (the same server file runs in each).

The server's helpers are also checked here directly with sympy (math-verify is in the venv for the
process backend), and the rounding rule for decimal answers with hypothesis.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from math_cases import EXACT
from sandbox_fixtures import docker_ready

from rewards import math_reward as M
from sandboxes.servers.math_verdict_server import exact_equal, rounds_to

PAIRS = [(group, g, a, eq) for group, cases in EXACT.items() for g, a, eq in cases]


@pytest.fixture(scope="module", params=["process", pytest.param("docker", marks=pytest.mark.docker)])
def backend(request):
    if request.param == "docker" and (why := docker_ready()):
        pytest.skip(f"needs Docker and the sandbox image (make image): {why}")
    from sandboxes.scoring import WorkerSpec

    M.configure(WorkerSpec(server=M.SERVER, backend=request.param), 1, 20.0, soft_timeout_s=10)
    yield request.param
    M.shutdown()


def test_exact_values_are_decided_exactly(backend):
    before = dict(M._counts)
    wrong = [(group, g, a, eq) for group, g, a, eq in PAIRS
             if (M.verdict(g, a)["score"] == 1.0) != eq]
    assert not wrong, f"{backend}: {wrong}"
    assert M._counts == before  # every verdict was reached: none timed out or raised
    # both directions: the reference is parsed as strictly as the answer
    assert M.verdict("3^{-2000}", "2^{-2000}")["score"] == 0.0
    assert M.verdict("1.414214", "\\sqrt{2}")["score"] == 1.0


def test_exact_cases_cover_each_class():
    for group, cases in EXACT.items():
        assert sum(not eq for *_, eq in cases) >= 5, group  # adversarial pairs
        assert any(eq for *_, eq in cases), group  # and equal ones the exact path must still see


def _sympy(x: Fraction):
    import sympy

    return sympy.Rational(x.numerator, x.denominator)


def _decimal(x: Fraction, k: int):
    """x rounded half-up at k decimals, as the exact decimal a literal would spell."""
    import sympy

    n = (abs(x) * 10**k + Fraction(1, 2)).__floor__()
    return sympy.Rational(n if x >= 0 else -n, 10**k)


@settings(max_examples=200, deadline=None)
@given(st.fractions(min_value=Fraction(1, 10), max_value=Fraction(10**6)).filter(lambda x: x.denominator > 1),
       st.integers(6, 15))
def test_a_correct_rounding_is_accepted_and_one_unit_off_is_not(x, k):
    dec, exact, unit = _decimal(x, k), _sympy(x), _sympy(Fraction(1, 10**k))

    def shows_k_decimals(d) -> bool:  # a literal's trailing zeros are not kept: 0.500000 is 0.5
        return (d * 10 ** (k - 1)).q != 1

    assume(shows_k_decimals(dec))
    assert rounds_to(dec, exact)
    if 2 * abs(dec - exact) != unit:  # a tie rounds either way
        for wrong in (dec + unit, dec - unit):
            assert not shows_k_decimals(wrong) or not rounds_to(wrong, exact)


def test_rounding_needs_six_decimals_and_six_significant_digits():
    import sympy

    third = sympy.Rational(1, 3)
    assert rounds_to(sympy.Rational("0.333333"), third)
    assert not rounds_to(sympy.Rational("0.33333"), third)  # 5 decimals
    assert rounds_to(sympy.Rational("0.0000001234568"), sympy.Rational(1, 8100000))  # 7 significant
    assert not rounds_to(sympy.Rational("0.000000"), sympy.Integer(2) ** -2000)
    assert not rounds_to(sympy.Rational("0.0000001"), sympy.Integer(2) ** -2000)
    assert rounds_to(sympy.Rational("1.414214"), sympy.sqrt(2))
    assert not rounds_to(sympy.Rational("1.414213"), sympy.sqrt(2))


def test_exact_equal_uses_no_floats():
    import sympy

    two, three = sympy.Integer(2), sympy.Integer(3)
    assert not exact_equal(two ** -2000, three ** -2000)
    assert not exact_equal(1 / sympy.factorial(1000), 1 / sympy.factorial(1001))
    assert not exact_equal(sympy.pi * (1 + sympy.Rational(1, 10**50)), sympy.pi)
    assert not exact_equal(sympy.exp(sympy.pi * sympy.sqrt(163)), sympy.Integer(640320) ** 3 + 744)
    assert exact_equal(sympy.sqrt(3 + 2 * sympy.sqrt(2)), 1 + sympy.sqrt(2))
    assert exact_equal(sympy.factorial(1000) / sympy.factorial(998), sympy.Integer(999000))
