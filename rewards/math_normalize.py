"""The math reward's normalisation policy: what counts as the same answer, before math-verify.

Pure string functions on the host (bounded: answers are capped in length first). math-verify
then decides symbolic equivalence in the sandbox. The policy, each point tested in
tests/test_rewards_math.py:

- **percent**: a trailing `\\%` / `%` is dropped on both sides: `50\\%` = `50`. A percentage is
  not converted to a fraction (`50\\%` ≠ `0.5`): the reference's form decides the scale.
- **thousands separators**: `1,000`, `1{,}000`, `1\\,000` = `1000` (only groups of exactly three
  digits, so the pair `1,2` stays a pair).
- **units and currency**: `5\\text{ cm}`, `5 \\mathrm{cm}`, `\\$5`, `5^\\circ` = `5` (math-verify
  drops text units); a unit never makes a wrong number right.
- **`x=3` vs `3`**: equal (a single-variable equation is compared by its right side).
- **intervals**: endpoints and open/closed ends must match: `(1,2]` ≠ `[1,2]`.
- **sets vs tuples**: sets are unordered (`\\{1,2\\}` = `\\{2,1\\}`), tuples ordered
  (`(1,2)` ≠ `(2,1)`), and a set never equals a tuple or interval (`\\{1,2\\}` ≠ `(1,2)`).
- **text choices**: when the reference is a choice letter A–E (`B`, `(B)`, `\\text{(B)}`), the
  answer must name the same letter in any of those forms (`\\textbf{B}`, `(B) 12`); the option's
  content alone is not accepted.
- **plain numbers** (integers, decimals, fractions of integers) compare exactly on the host:
  `\\frac{3}{4}` = `0.75` = `3/4`; a non-integer within 1e-5 (relative) of the reference but
  not equal goes to the sandbox, where a bare decimal may be the other value rounded.
- **exact values** are decided exactly in the sandbox too (sandboxes/servers/
  math_verdict_server.py patches math-verify's float comparisons): `2^{-2000}` ≠ `3^{-2000}`,
  `\\frac{1}{1000!}` ≠ `\\frac{1}{1001!}`, `\\pi + 10^{-30}` ≠ `\\pi`.
- **decimal approximations**: a bare decimal equals a value it correctly rounds at its last
  digit when it shows at least 6 decimals and 6 significant digits: `0.333333` = `\\frac13`,
  `1.414214` = `\\sqrt2`; `0.5000001` ≠ `\\frac12`, `0.000000` ≠ `e^{-1000}`. A decimal inside
  a larger expression is the exact fraction it spells (`1.5\\sqrt2` = `\\frac{3\\sqrt2}{2}`).
- **length**: an answer longer than `MAX_ANSWER_CHARS` scores 0 without parsing.
"""

from __future__ import annotations

import re
from fractions import Fraction

MAX_ANSWER_CHARS = 1000  # a boxed answer longer than this is not an answer (megabyte outputs)

_TEXT_WRAP = re.compile(r"\\(?:text|textbf|mathrm|mathbf|textrm|mbox)\{([^{}]*)\}")
_PERCENT = re.compile(r"(?:\\%|%|\\text\{\s*\\?%\s*\})\s*$")
_THOUSANDS = re.compile(r"(?<![\d.])(\d{1,3}(?:(?:,|\{,\}|\\,)\d{3})+)(?![\d,])")
_SEPARATOR = re.compile(r",|\{,\}|\\,")
_CHOICE = re.compile(r"^\(?([A-E])\)?(?=$|[\s.:)])")
_RATIONAL = re.compile(  # 12, -3.75, 3/4, \frac{3}{4}, -\dfrac{-3}{4}: at most 30 digits a part
    r"^(-?)(?:(\d{1,30}(?:\.\d{1,30})?)|(\d{1,30})/(\d{1,30})|"
    r"\\[dt]?frac\{(-?\d{1,30})\}\{(-?\d{1,30})\}|\\[dt]?frac(\d)(\d))$")
# relative gap under which a decimal may be the other number rounded (the sandbox's rule, at
# least 6 decimals: a gap of at most 5e-7) — wider ones are decided here
CLOSE = Fraction(1, 100_000)


def _strip_wrappers(s: str) -> str:
    prev = None
    while prev != s:  # \textbf{\text{B}}: bounded by the length cap
        prev, s = s, _TEXT_WRAP.sub(r"\1", s)
    return s


def normalize(ans: str) -> str:
    """The answer as math-verify should see it (percent and thousands separators removed)."""
    s = ans.strip().strip("$").strip()
    s = s.rstrip(".").strip()
    s = _PERCENT.sub("", s).strip()
    s = _THOUSANDS.sub(lambda m: _SEPARATOR.sub("", m.group(1)), s)
    return s


def choice_letter(ans: str) -> str | None:
    """`B`, `(B)`, `\\text{(B)}`, `\\textbf{B}`, `(B) 12` → "B"; anything else → None."""
    s = _strip_wrappers(ans).strip().strip("$").strip()
    m = _CHOICE.match(s)
    return m.group(1) if m else None


def is_choice_reference(ref: str) -> bool:
    s = _strip_wrappers(ref).strip().strip("$").strip()
    return re.fullmatch(r"\(?[A-E]\)?", s) is not None


def bracket_kind(s: str) -> str | None:
    """"set" for `\\{...\\}`, "ordered" for a top-level comma inside ( ) or [ ], else None."""
    s = s.strip()
    if s.startswith("\\{") and s.endswith("\\}"):
        return "set"
    if s[:1] in "([" and s[-1:] in ")]":
        depth = 0
        for ch in s[1:-1]:
            if ch in "([{":
                depth += 1
            elif ch in ")]}":
                depth -= 1
            elif ch == "," and depth == 0:
                return "ordered"
    return None


def as_rational(s: str) -> Fraction | None:
    """The exact value of a plain number (integer, decimal, fraction of integers), else None."""
    m = _RATIONAL.match(s.replace(" ", ""))
    if not m:
        return None
    sign, dec, p, q, fp, fq, sp, sq = m.groups()
    if dec is not None:
        v = Fraction(dec)
    else:
        num, den = (p, q) if p is not None else (fp, fq) if fp is not None else (sp, sq)
        if int(den) == 0:
            return None
        v = Fraction(int(num), int(den))
    return -v if sign else v


def quick_verdict(gold: str, answer: str) -> bool | None:
    """A verdict decided by the policy alone (no sympy), or None to ask math-verify."""
    if len(answer) > MAX_ANSWER_CHARS:
        return False
    if is_choice_reference(gold):
        return choice_letter(answer) == choice_letter(gold)
    g, a = normalize(gold), normalize(answer)
    # Plain numbers, the bulk of math RL answers, compare exactly here; only non-integers
    # within 1e-5 of the reference (where one may be the other rounded) go on.
    x, y = as_rational(g), as_rational(a)
    if x is not None and y is not None:
        if x == y:
            return True
        if (x.denominator == 1 and y.denominator == 1) or abs(x - y) > CLOSE * max(1, abs(x)):
            return False
        return None
    kinds = {bracket_kind(g), bracket_kind(a)}
    if kinds == {"set", "ordered"}:
        return False
    return None
