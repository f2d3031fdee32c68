"""Test outcomes from `pytest -rA` output (a pure function; SWE-bench's log parsing, stricter).

Only the last "short test summary info" section counts, and only up to pytest's final
"== N passed ... in X s ==" line: test output printed earlier, or by an `atexit` hook after
pytest finished, cannot add PASSED lines. A test that is absent (never ran, crashed the run,
skipped — `-rA` prints skips without node ids) has no outcome, and callers count it as failed.
"""

from __future__ import annotations

import re

STATUSES = ("PASSED", "FAILED", "ERROR", "XFAIL", "XPASS", "SKIPPED")
_HEADER = re.compile(r"^=+ short test summary info =+\s*$")
_FINAL = re.compile(r"^=+ .*\bin [\d.]+s\b.*=+\s*$")
# When a test has several outcomes (passed, then errored in teardown) the worst one stands.
_RANK = {"ERROR": 5, "FAILED": 4, "XPASS": 3, "SKIPPED": 2, "XFAIL": 1, "PASSED": 0}


def _node_id(rest: str) -> str:
    """`nodeid - message` → nodeid, where a parametrize id may itself contain " - "."""
    start = 0
    while (i := rest.find(" - ", start)) != -1:
        head = rest[:i]
        if head.count("[") == head.count("]"):
            return head
        start = i + 3
    return rest.strip()


def parse_pytest_ra(output: str) -> dict[str, str]:
    lines = output.splitlines()
    starts = [i for i, line in enumerate(lines) if _HEADER.match(line)]
    if not starts:
        return {}
    results: dict[str, str] = {}
    for line in lines[starts[-1] + 1:]:
        if _FINAL.match(line):
            break
        status, _, rest = line.partition(" ")
        if status not in STATUSES or not rest or rest.startswith("["):
            continue  # "SKIPPED [1] file:line: reason" names no test
        node = _node_id(rest)
        if _RANK[status] >= _RANK.get(results.get(node, "PASSED"), 0) or node not in results:
            results[node] = status
    return results
