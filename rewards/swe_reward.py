"""The `swe` reward: the completion's unified diff, scored by the sandboxes SWE harness.

    resolved            → resolved_score (1.0)
    applied, unresolved → fail_score (0.0)
    did not apply / no diff in the completion → unapplied_score (0.0; set e.g. -1 to penalise)

The instance is the `instance` column, else the reference (a dict), else the row itself (a
SWE-bench row has `instance_id`, `repo`, `FAIL_TO_PASS`... as columns). A patch that hangs the
tests or floods their output is unresolved (fail_score); a harness error that is not the
model's doing (no Docker, a missing repo archive) raises, so the manager counts it as an error. An
evaluation takes minutes: set `reward.options.swe.timeout_s` above `harness_timeout_s`.
"""

from __future__ import annotations

from typing import Any

from rewards.extract import unified_diff
from rewards.registry import reward

# Harness errors that the model's patch caused (scored by policy); any other error is the
# harness's own trouble and raises. Prefixes of the messages sandboxes.swe.evaluate writes.
MODEL_CAUSED = ("patch did not apply", "patch rejected", "empty patch",
                "patch only edits test infrastructure", "test_patch did not apply",
                "timeout: the test run", "test output over")


def find_instance(instance: Any, reference: Any, metadata: dict | None) -> dict | None:
    for cand in (instance, reference, metadata):
        if isinstance(cand, dict) and "instance_id" in cand:
            return cand
    return None


@reward("swe", isolation="thread", sandbox=True)
def swe_reward(completion: str, reference: Any = None, metadata: dict | None = None,
               instance: Any = None, resolved_score: float = 1.0, fail_score: float = 0.0,
               unapplied_score: float = 0.0, harness_timeout_s: float = 1800.0,
               instances_dir: str | None = None) -> dict[str, float] | None:
    inst = find_instance(instance, reference, metadata)
    if inst is None:
        raise ValueError("swe reward: no SWE instance (a dict with 'instance_id') in the "
                         "'instance' column, the reference, or the row")
    patch = unified_diff(completion)
    if patch is None:
        return {"score": unapplied_score, "resolved": 0.0, "applied": 0.0, "no_patch": 1.0}
    from sandboxes.swe import evaluate  # the sandboxes package's harness

    res = evaluate(inst, patch, timeout_s=harness_timeout_s, instances_dir=instances_dir)
    err = res.get("error") or ""
    if err and not err.startswith(MODEL_CAUSED):  # e.g. no Docker, a missing repo archive
        raise RuntimeError(f"SWE harness: {err}")
    if not res.get("patch_applied"):
        score = unapplied_score
    elif res.get("resolved"):
        score = resolved_score
    else:
        score = fail_score
    return {"score": score, "resolved": float(bool(res.get("resolved"))),
            "applied": float(bool(res.get("patch_applied"))), "no_patch": 0.0}
