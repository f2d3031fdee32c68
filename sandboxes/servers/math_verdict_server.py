"""Runs INSIDE the sandbox for the `math` reward: JSON-lines math-verify verdicts over stdin/stdout.

Request  {"id": 1, "gold": "\\boxed{3}", "answer": "\\boxed{3}", "soft_timeout_s": 2}
      →  {"id": 1, "verdict": true}   (a soft timeout inside math-verify reads as false)
Request  {"id": 0, "ping": true}  →  {"id": 0, "pong": true}

Exact values are decided exactly: math-verify compares numbers through floats (rounding to 6
decimals, `evalf(chop=True)`), so 2^{-2000} = 3^{-2000}, 1/1000! = 1/1001!, or π + 10^{-30} = π
would pass. `exact_comparisons` replaces its two comparison helpers: decimal literals become the
exact fractions they spell, differences of exact values are decided by sympy's exact arithmetic
(rationals, then its sign analysis, then its error-bounded evalf), and only a bare decimal may
stand for a rounding of the other side (see `rounds_to`). Both backends (container, local
process) run this same file.

Two limits: math-verify's own signal-based timeout (`soft_timeout_s`) ends a slow verdict that
is busy in Python, cheaply, without losing this warm process; the host's wall clock kills the
whole container for what that cannot stop (C code such as a huge integer power, memory blow-ups).
Standard library + math-verify (and its sympy) only (it is run with `python3 -c`).
"""
import json
import sys

# A bare decimal counts as the other side's value rounded only if it shows at least this many
# decimal places (math-verify's own `float_rounding`) and significant digits (so that 0.000000
# is no rounding of 2^{-2000}), and it is that value correctly rounded at its last digit.
ROUND_DECIMALS = 6
ROUND_SIGNIFICANT = 6
# A difference of constants that sympy can neither reduce to a rational nor sign (equal nested
# radicals, say) is evaluated by sympy's error-bounded evalf: a value returned at full precision
# is not 0; when even MAX_DIGITS of working precision cannot separate the two, they count as
# equal (no floats: mpmath's exponents are unbounded, so nothing underflows).
EVAL_DIGITS = 30
MAX_DIGITS = 2000


def exact_decimal(f):
    """The exact fraction a decimal literal spells (sympy keeps a literal's digits: str gives
    them back, e.g. 0.333333 → 333333/10^6, 1.0e-7 → 1/10^7)."""
    import sympy

    return sympy.Rational(str(f))


def exactify(expr):
    """`expr` with every decimal literal replaced by its exact fraction."""
    import sympy

    atoms = getattr(expr, "atoms", None)
    if atoms is None:
        return expr
    floats = atoms(sympy.Float)
    return expr.xreplace({f: exact_decimal(f) for f in floats}) if floats else expr


def rounds_to(dec, value) -> bool:
    """Is the decimal `dec` (a Rational) `value` (exact, a number) correctly rounded at dec's last
    digit, with at least ROUND_DECIMALS decimals and ROUND_SIGNIFICANT significant digits?
    0.333333 for 1/3 and 1.414214 for √2 are; 0.5000001 for 1/2, 0.3333334 for 1/3 and
    0.000000 or 0.0000001 for 2^{-2000} are not. (A literal's trailing zeros are not kept.)"""
    import sympy

    k = 0
    while (dec * 10**k).q != 1:  # a decimal's denominator divides 10^k: k <= its digit count
        k += 1
    significant = len(str(abs((dec * 10**k).p))) if dec else 0
    if k < ROUND_DECIMALS or significant < ROUND_SIGNIFICANT:
        return False
    gap = (dec - value).doit()
    if not gap.is_Rational:
        gap = gap.evalf(EVAL_DIGITS, maxn=MAX_DIGITS)
        if not gap.is_Number:  # complex or not evaluable: no decimal rounds to it
            return False
    return bool(abs(gap) <= sympy.Rational(1, 2 * 10**k))


def exact_equal(a, b) -> bool:
    """a = b for decimal-free sympy values, decided exactly where sympy can (no float rounding)."""
    from sympy.core.evalf import PrecisionExhausted

    d = a - b
    if d.free_symbols:  # symbolic: math-verify's simplify step decides
        return d == 0
    d = d.doit()  # the parser leaves powers and factorials unevaluated: exact numbers now
    if d.is_Rational:
        return d == 0
    zero = d.is_zero  # sympy's sign analysis: exact, or None when it cannot tell
    if zero is not None:
        return bool(zero)
    try:
        return d.evalf(EVAL_DIGITS, strict=True, maxn=MAX_DIGITS) == 0
    except PrecisionExhausted:
        return True


def exact_comparisons(grader) -> None:
    """Make math-verify's `sympy_numeric_eq` and `sympy_symbolic_eq` exact (module globals: its
    set, tuple, interval, matrix and equation comparisons reach them too)."""
    import sympy

    numeric_eq, symbolic_eq = grader.sympy_numeric_eq, grader.sympy_symbolic_eq

    def exact_numeric_eq(a, b, float_rounding, numeric_precision):
        if not (isinstance(a, sympy.Expr) and isinstance(b, sympy.Expr)):
            return numeric_eq(a, b, float_rounding, numeric_precision)  # matrices: per element
        x, y = exactify(a), exactify(b)
        try:
            if isinstance(a, sympy.Float) and y.is_number and rounds_to(x, y):
                return True
            if isinstance(b, sympy.Float) and x.is_number and rounds_to(y, x):
                return True
            return exact_equal(x, y)
        except (TypeError, ValueError, ArithmeticError):
            return False  # not comparable as numbers; math-verify's symbolic step comes next

    def exact_symbolic_eq(a, b):  # simplify(a - b) == 0, without 15-digit decimal arithmetic
        return symbolic_eq(exactify(a), exactify(b))

    grader.sympy_numeric_eq = exact_numeric_eq
    grader.sympy_symbolic_eq = exact_symbolic_eq


def main():
    import functools
    import logging

    from math_verify import grader, parse, verify  # imported once: what makes a worker "warm"

    exact_comparisons(grader)  # before any verdict: exact values never compared as floats

    # the G samples of a group share one reference: parse it once (parsed values are not
    # mutated by verify)
    parse_gold = functools.lru_cache(maxsize=4096)(
        lambda text, t: parse(text, parsing_timeout=t))
    logging.disable(logging.CRITICAL)  # math-verify logs each timeout; the verdict says it
    out = sys.stdout
    for line in sys.stdin:
        try:
            req = json.loads(line)
        except ValueError as e:
            out.write(json.dumps({"id": None, "error": f"bad request: {e}"}) + "\n")
            out.flush()
            continue
        rid = req.get("id")
        try:
            if req.get("ping"):
                resp = {"id": rid, "pong": True}
            else:
                t = int(req.get("soft_timeout_s") or 0) or None  # whole seconds (signal.alarm)
                gold = parse_gold(str(req["gold"]), t)
                pred = parse(str(req["answer"]), parsing_timeout=t)
                # gold first: math-verify's comparison is not symmetric
                ok = bool(gold and pred and verify(gold, pred, timeout_seconds=t))
                resp = {"id": rid, "verdict": ok}
        except Exception as e:  # a verdict error is an answer, not a crash
            resp = {"id": rid, "error": f"{type(e).__name__}: {e}"[:500]}
        out.write(json.dumps(resp) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
