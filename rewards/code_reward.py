"""The `code` reward: run the completion's program on the test cases in a sandbox.

    {"score": ..., "pass_rate": ..., "cases": n, "no_code": 0|1}

The program is the last fenced ```python (or untagged) block. Test cases come from a `tests`
column, else the reference, in any of these forms (or a JSON string of one):
`[["stdin", "expected stdout"], ...]`, `[{"input": ..., "output": ...}, ...]`,
`{"inputs": [...], "outputs": [...]}`. `mode="fraction"` (default) scores the fraction of cases
passed, `mode="all"` scores 1 only when every case passes. No code block → 0; no test cases →
skip (a data problem, counted). Cases run through `sandboxes.testcases.run_testcases` (a fresh
hardened container per run, killed at `case_timeout_s`), so the manager runs this reward in a
thread: set `reward.options.code.timeout_s` above cases × case_timeout_s.
"""

from __future__ import annotations

import json
from typing import Any

from rewards.extract import last_code_block
from rewards.registry import reward

MODES = ("fraction", "all")


def parse_test_cases(tests: Any) -> list[tuple[str, str]]:
    """Normalise the accepted test-case forms to [(stdin, expected stdout), ...]."""
    if isinstance(tests, str):
        tests = json.loads(tests)
    if isinstance(tests, dict) and "inputs" in tests and "outputs" in tests:
        if len(tests["inputs"]) != len(tests["outputs"]):
            raise ValueError(f"test cases: {len(tests['inputs'])} inputs but "
                             f"{len(tests['outputs'])} outputs")
        return [(str(i), str(o)) for i, o in zip(tests["inputs"], tests["outputs"], strict=True)]
    if isinstance(tests, list):
        out = []
        for case in tests:
            if isinstance(case, dict) and "input" in case and "output" in case:
                out.append((str(case["input"]), str(case["output"])))
            elif isinstance(case, list | tuple) and len(case) == 2:
                out.append((str(case[0]), str(case[1])))
            else:
                raise ValueError(f"test case {str(case)[:80]!r}: use [stdin, stdout] or "
                                 "{'input': ..., 'output': ...}")
        return out
    raise ValueError(f"test cases of type {type(tests).__name__}: use a list of [stdin, stdout] "
                     "pairs, a list of {input, output}, or {inputs: [...], outputs: [...]}")


@reward("code", isolation="thread")
def code_reward(completion: str, reference: Any = None, tests: Any = None, mode: str = "fraction",
                checker: str = "exact", case_timeout_s: float = 5.0, memory_mb: int | str = 512,
                backend: str = "docker", image: str | None = None) -> dict[str, float] | None:
    if mode not in MODES:
        raise ValueError(f"reward.options.code.mode={mode!r}: use one of {MODES}")
    cases = parse_test_cases(tests if tests is not None else reference) if (
        tests is not None or reference is not None) else []
    if not cases:
        return None
    program = last_code_block(completion)
    if program is None:
        return {"score": 0.0, "pass_rate": 0.0, "cases": float(len(cases)), "no_code": 1.0}
    from sandboxes.testcases import run_testcases  # the sandboxes package's runner

    verdicts = run_testcases(program, cases, checker=checker, timeout_s=case_timeout_s,
                             memory_mb=memory_mb, backend=backend, image=image)
    passed = sum(bool(v.passed) for v in verdicts)
    rate = passed / len(cases)
    score = rate if mode == "fraction" else float(passed == len(cases))
    out = {"score": score, "pass_rate": rate, "cases": float(len(cases)), "no_code": 0.0}
    for v in verdicts:  # e.g. timeout / runtime_error / wrong_answer counts, for the dashboards
        if not v.passed:
            key = f"status_{v.status}"
            out[key] = out.get(key, 0.0) + 1.0
    return out
