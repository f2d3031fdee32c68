"""Test outcomes from `pytest -rA` output (a pure function; SWE-bench's log parsing, stricter).

Only lines inside a "short test summary info" section (up to pytest's final "== N passed ...
in X s ==" line) count, and when a test appears in several such sections (code under test can
print a fake one, e.g. from an `atexit` hook) its WORST outcome stands, so a forged section can
only lose tests, never win them. Code that rewrites pytest in-process can still lie; see
docs/sandboxes.md. A test that is absent (never ran, crashed the run,
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
    results: dict[str, str] = {}
    inside = False
    for line in output.splitlines():
        if _HEADER.match(line):
            inside = True
            continue
        if not inside:
            continue
        if _FINAL.match(line):
            inside = False
            continue
        status, _, rest = line.partition(" ")
        if status not in STATUSES or not rest or rest.startswith("["):
            continue  # "SKIPPED [1] file:line: reason" names no test
        node = _node_id(rest)
        if node not in results or _RANK[status] > _RANK[results[node]]:
            results[node] = status
    return results
