"""Competitive-programming verdicts: one program, many (stdin, expected stdout) cases.

Every case is a separate sandboxed run (no state carried between cases); the cases of one call
run concurrently up to the pool's size. Checkers:
- `exact`: equal after dropping trailing whitespace on each line and trailing blank lines (the
  usual judge convention; "1 \\n" and "1" are the same answer).
- `float`: the same tokens, where two numeric tokens match within 1e-6 absolute or relative.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sandboxes.run import POOL_SIZE, RunResult, run_code

FLOAT_TOL = 1e-6  # absolute or relative, the common judge tolerance


@dataclass
class CaseVerdict:
    passed: bool
    status: str  # ok | wrong_answer | timeout | runtime_error | oom | output_limit
    stdout: str
    stderr: str
    duration_s: float


def _lines(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def exact_match(got: str, want: str) -> bool:
    return _lines(got) == _lines(want)


def float_match(got: str, want: str, tol: float = FLOAT_TOL) -> bool:
    a, b = got.split(), want.split()
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x == y:
            continue
        try:
            fx, fy = float(x), float(y)
        except ValueError:
            return False
        if not (math.isfinite(fx) and math.isfinite(fy)):
            return False  # nan/inf only match when spelled the same (handled above)
        if not math.isclose(fx, fy, rel_tol=tol, abs_tol=tol):
            return False
    return True


CHECKERS = {"exact": exact_match, "float": float_match}


def verdict(res: RunResult, expected: str, checker: str) -> CaseVerdict:
    """A pure function from one run's outcome to its verdict."""
    if res.timed_out:
        status = "timeout"
    elif res.oom_killed:
        status = "oom"
    elif res.output_truncated:
        status = "output_limit"
    elif res.returncode != 0:
        status = "runtime_error"
    elif CHECKERS[checker](res.stdout, expected):
        status = "ok"
    else:
        status = "wrong_answer"
    return CaseVerdict(status == "ok", status, res.stdout, res.stderr, res.duration_s)


def run_testcases(program: str, cases: list[tuple[str, str]], *, checker: str = "exact",
                  timeout_s: float = 5, memory_mb: int | str = 512, backend: str = "docker",
                  image: str | None = None, language: str = "python") -> list[CaseVerdict]:
    """Per-case verdicts, in the order of `cases`."""
    if checker not in CHECKERS:
        raise ValueError(f"checker={checker!r}: choose one of {sorted(CHECKERS)}")

    def one(case: tuple[str, str]) -> CaseVerdict:
        stdin, expected = case
        res = run_code(program, language=language, stdin=stdin, timeout_s=timeout_s,
                       memory_mb=memory_mb, image=image, backend=backend)
        return verdict(res, expected, checker)

    if len(cases) <= 1:
        return [one(c) for c in cases]
    with ThreadPoolExecutor(max_workers=min(POOL_SIZE, len(cases))) as ex:
        return list(ex.map(one, cases))
