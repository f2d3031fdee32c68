"""Score a model's patch the way SWE-bench does, in a hardened container, with no way to win by
editing the tests.

    python -m sandboxes.swe --instances I.jsonl --predictions P.jsonl --report R.json \\
        [--timeout S] [--workers N]

Steps for one instance: copy the repository at its base state into a tmpfs /testbed (from the
instance's `image`, or its `workdir_archive`); vet the model patch (sandboxes.patches: unsafe
paths reject it, test-infrastructure edits are discarded and reported); apply it with fallbacks
(git apply, --3way, --reject, patch --fuzz); reset the test files to base and apply the gold
`test_patch`; run the tests with a wall clock; parse `pytest -rA`. Resolved iff every
FAIL_TO_PASS test PASSED and every PASS_TO_PASS test PASSED (or XFAIL, as before).
A skipped or missing test is a failure; a hang is a timeout, not a crash.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sandboxes import sizes
from sandboxes.hardening import LABEL, OWNER_LABEL, SANDBOX_UID, owner, tmpfs_opts
from sandboxes.image import DEFAULT_IMAGE
from sandboxes.patches import patch_paths, vet_patch
from sandboxes.pytest_log import parse_pytest_ra

DEFAULT_TEST_CMD = "python3 -m pytest -rA -p no:cacheprovider"
# an instance may set `memory_mb` / `repo_mb`: MB, or Docker's size syntax ("4g"; sandboxes.sizes)
MEMORY_MB = 2048  # per evaluation
REPO_MB = 1024  # tmpfs for /testbed
SETUP_TIMEOUT_S = 120  # copying the repository in, applying patches
TEST_OUTPUT_LIMIT = 32 << 20  # bytes of test output kept

# Applies /tmp/model.patch with SWE-bench's fallbacks; the tree is put back to base between
# tries. Paths through symlinks are refused first: a link in the repo may point anywhere.
_APPLY = r"""
cd /testbed
for p in "$@"; do
  d=$p
  while [ -n "$d" ] && [ "$d" != . ]; do
    if [ -L "$d" ]; then echo "RESULT symlink $d"; exit 0; fi
    d=$(dirname -- "$d")
  done
done
clean() { git checkout -q -- . 2>/dev/null; git clean -fdq 2>/dev/null; }
if git apply --verbose /tmp/model.patch; then echo "RESULT applied git-apply"; exit 0; fi
clean
if git apply --verbose --3way /tmp/model.patch; then echo "RESULT applied git-apply-3way"; exit 0; fi
clean
if git apply --verbose --reject /tmp/model.patch; then echo "RESULT applied git-apply-reject"; exit 0; fi
clean
if patch --batch --fuzz=5 -p1 -i /tmp/model.patch; then echo "RESULT applied patch-fuzz"; exit 0; fi
clean
echo "RESULT failed"
"""

# Puts each named path back to its base content (or removes it if it did not exist at base).
_RESET = r"""
cd /testbed
for f in "$@"; do
  if git cat-file -e "HEAD:$f" 2>/dev/null; then git checkout -q HEAD -- "$f"; else rm -rf -- "$f"; fi
done
"""

# A repository without history gets one commit, so "base" can be restored and diffed.
_INIT = r"""
cd /testbed
if [ ! -d .git ]; then
  git init -q && git add -A && git -c user.name=cispo -c user.email=cispo@localhost commit -qm base
fi
git rev-parse --verify -q HEAD >/dev/null || { echo "no commit at HEAD" >&2; exit 3; }
"""

GIT_ENV = {"HOME": "/tmp", "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0",
           "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "safe.directory",
           "GIT_CONFIG_VALUE_0": "/testbed"}


def as_list(v) -> list[str]:
    """SWE-bench ships FAIL_TO_PASS / PASS_TO_PASS as JSON strings; accept lists too."""
    if v is None or v == "":
        return []
    if isinstance(v, str):
        v = json.loads(v)
    return [str(x) for x in v]


def empty_report(instance: dict) -> dict:
    return {"instance_id": instance.get("instance_id"), "resolved": False, "reward": 0.0,
            "patch_applied": False, "apply_method": None,
            "FAIL_TO_PASS": {"success": [], "failure": as_list(instance.get("FAIL_TO_PASS"))},
            "PASS_TO_PASS": {"success": [], "failure": as_list(instance.get("PASS_TO_PASS"))},
            "discarded_paths": [], "error": None, "duration_s": 0.0}


def score(report: dict, outcomes: dict[str, str], f2p: list[str], p2p: list[str]) -> dict:
    """Fill the test sections and the verdict from parsed outcomes (a pure function)."""
    report["FAIL_TO_PASS"] = {"success": [t for t in f2p if outcomes.get(t) == "PASSED"],
                              "failure": [t for t in f2p if outcomes.get(t) != "PASSED"]}
    ok_p2p = ("PASSED", "XFAIL")
    report["PASS_TO_PASS"] = {"success": [t for t in p2p if outcomes.get(t) in ok_p2p],
                              "failure": [t for t in p2p if outcomes.get(t) not in ok_p2p]}
    report["resolved"] = bool(report["patch_applied"] and (f2p or p2p)
                              and not report["FAIL_TO_PASS"]["failure"]
                              and not report["PASS_TO_PASS"]["failure"])
    report["reward"] = 1.0 if report["resolved"] else 0.0
    return report


def _repo_tar(instance: dict, instances_dir: str | None, client) -> tuple[bytes, int]:
    """(tar bytes of the base repository, leading path components to strip)."""
    if instance.get("workdir_archive"):
        path = Path(instance["workdir_archive"])
        if not path.is_absolute():
            path = Path(instances_dir or ".") / path
        if not path.is_file():
            raise FileNotFoundError(f"workdir_archive {str(path)!r} does not exist")
        data = path.read_bytes()
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            names = [m.name for m in tf.getmembers()]
        tops = {n.lstrip("./").split("/")[0] for n in names if n.lstrip("./")}
        dot = any(n.startswith("./") for n in names)
        # One top-level directory (repo-1.0/...): its contents are the repository.
        strip = 1 if len(tops) == 1 and not dot and any("/" in n for n in names) else 0
        return data, strip
    image = instance.get("image")
    if not image:
        raise ValueError("instance has neither `image` nor `workdir_archive`")
    # The image's /testbed, read without running anything from it.
    tmp = client.containers.create(image, command=["true"], network_disabled=True,
                                   labels={LABEL: "swe-copy", OWNER_LABEL: owner()})
    try:
        stream, _ = tmp.get_archive("/testbed")
        return b"".join(stream), 1
    finally:
        tmp.remove(force=True)


def _step(sb, script: str, args: list[str], *, stdin: bytes = b"",
          timeout_s: float = SETUP_TIMEOUT_S, what: str):
    res = sb.exec(["sh", "-c", script, "sh", *args], stdin=stdin, timeout_s=timeout_s,
                  output_limit=1 << 20, workdir="/testbed", env=GIT_ENV)
    if res.timed_out:
        raise TimeoutError(f"{what} took over {timeout_s:.0f} s")
    return res


def evaluate(instance: dict, model_patch: str, *, timeout_s: float = 1800,
             instances_dir: str | None = None) -> dict:
    """The per-instance report; never raises for a bad patch or a failing run (see `error`)."""
    from sandboxes.engine import connect
    from sandboxes.pool import Sandbox

    t0 = time.monotonic()
    report = empty_report(instance)
    f2p, p2p = as_list(instance.get("FAIL_TO_PASS")), as_list(instance.get("PASS_TO_PASS"))
    test_patch = instance.get("test_patch") or ""
    test_files = set(patch_paths(test_patch))
    vet = vet_patch(model_patch or "", test_files)
    report["discarded_paths"] = vet.discarded
    if vet.error:
        report["error"] = vet.error
        return _done(report, t0)
    if not vet.kept.strip():
        report["error"] = ("empty patch" if not (model_patch or "").strip()
                           else "patch only edits test infrastructure (discarded)")
        return _done(report, t0)
    client = connect()
    sb = None
    try:
        data, strip = _repo_tar(instance, instances_dir, client)
        repo_mb = sizes.memory_mb(instance.get("repo_mb", REPO_MB), "repo_mb")
        sb = Sandbox(client, image=instance.get("image") or DEFAULT_IMAGE,
                     memory_mb=instance.get("memory_mb", MEMORY_MB), cpus=1.0,
                     pids_limit=256, work_mb=16, kind="swe",
                     extra_tmpfs={"/testbed": tmpfs_opts(repo_mb, 200_000, uid=SANDBOX_UID,
                                                         mode="0755") + ",exec"})
        z = "z" if data[:2] == b"\x1f\x8b" else ""  # gzip magic
        res = _step(sb, f"tar -x{z}f - "
                        f"--strip-components={strip} -C /testbed --no-same-permissions "
                        "--no-same-owner && " + _INIT, [], stdin=data, what="copying the repo")
        if res.exit_code != 0:
            raise RuntimeError(f"could not unpack the repository: {res.stderr[-500:]!r}")
        _step(sb, "cat > /tmp/model.patch && cat > /dev/null", [],
              stdin=vet.kept.encode(), what="writing the patch")
        res = _step(sb, _APPLY, vet.kept_paths, what="applying the patch")
        verdict = res.stdout.decode(errors="replace").rpartition("RESULT ")[2].split()
        if verdict[:1] == ["symlink"]:
            report["error"] = f"patch rejected: path goes through a symlink: {verdict[1:]}"
            return _done(report, t0)
        if verdict[:1] != ["applied"]:
            report["error"] = "patch did not apply: " + res.stderr.decode(errors="replace")[-500:]
            return _done(report, t0)
        report["patch_applied"], report["apply_method"] = True, verdict[1]
        # Test files back to base (whatever the patch did), then the gold tests on top.
        _step(sb, _RESET, sorted(test_files), what="resetting test files")
        if test_patch.strip():
            _step(sb, "cat > /tmp/test.patch", [], stdin=test_patch.encode(),
                  what="writing the test patch")
            res = _step(sb, "git apply --verbose /tmp/test.patch", [], what="applying test_patch")
            if res.exit_code != 0:
                report["patch_applied"] = False
                report["error"] = ("test_patch did not apply on top of the model patch: "
                                   + res.stderr.decode(errors="replace")[-500:])
                return _done(report, t0)
        cmd = instance.get("test_cmd") or DEFAULT_TEST_CMD
        test_paths = " ".join(_shell_quote(p) for p in sorted(test_files)
                              if p.endswith(".py"))
        run = sb.exec(["sh", "-c", f"{cmd} {test_paths}"], timeout_s=timeout_s,
                      output_limit=TEST_OUTPUT_LIMIT, workdir="/testbed",
                      env={**GIT_ENV, "PYTHONDONTWRITEBYTECODE": "1"})
        log = run.stdout.decode(errors="replace") + "\n" + run.stderr.decode(errors="replace")
        score(report, parse_pytest_ra(log), f2p, p2p)
        if run.timed_out:
            report["error"] = f"timeout: the test run took over {timeout_s:g} s"
        elif run.truncated:
            report["error"] = f"test output over {TEST_OUTPUT_LIMIT} bytes: run stopped"
        report["test_exit_code"] = run.exit_code
        report["test_log_tail"] = log[-2000:]
    except Exception as e:  # infrastructure trouble is reported, never raised mid-batch
        report["error"] = f"{type(e).__name__}: {e}"
    finally:
        if sb is not None:
            sb.destroy()
    return _done(report, t0)


def _shell_quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def _done(report: dict, t0: float) -> dict:
    report["duration_s"] = round(time.monotonic() - t0, 3)
    return report


def _read_jsonl(path: str) -> list[dict]:
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as e:
                    raise ValueError(f"{path}:{n}: not a JSON object: {e}") from e
    return rows


def evaluate_all(instances: list[dict], predictions: dict[str, str], *, timeout_s: float,
                 workers: int, instances_dir: str | None) -> dict[str, dict]:
    """Reports keyed by instance id; an instance without a prediction is reported, not skipped."""
    def one(inst: dict) -> dict:
        iid = inst["instance_id"]
        if iid not in predictions:
            r = empty_report(inst)
            r["error"] = "no prediction for this instance"
            return r
        return evaluate(inst, predictions[iid], timeout_s=timeout_s, instances_dir=instances_dir)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as ex:
        return {r["instance_id"]: r for r in ex.map(one, instances)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sandboxes.swe", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", required=True, help="instances JSONL")
    ap.add_argument("--predictions", required=True, help="JSONL of {instance_id, model_patch}")
    ap.add_argument("--report", required=True, help="where to write the JSON report")
    ap.add_argument("--timeout", type=float, default=1800, help="per test run, seconds")
    ap.add_argument("--workers", type=int, default=1, help="concurrent evaluations")
    args = ap.parse_args(argv)
    try:
        instances = _read_jsonl(args.instances)
        preds = {p["instance_id"]: p.get("model_patch") or "" for p in _read_jsonl(args.predictions)}
    except (OSError, ValueError, KeyError) as e:
        print(f"sandboxes.swe: {e}", file=sys.stderr)
        return 2
    known = {i.get("instance_id") for i in instances}
    unknown = sorted(set(preds) - known)
    if unknown:
        print(f"sandboxes.swe: {len(unknown)} prediction(s) name no instance and are not scored: "
              f"{unknown[:5]}", file=sys.stderr)
    reports = evaluate_all(instances, preds, timeout_s=args.timeout, workers=args.workers,
                           instances_dir=os.path.dirname(os.path.abspath(args.instances)))
    with open(args.report, "w") as f:
        json.dump(reports, f, indent=1)
    resolved = sum(r["resolved"] for r in reports.values())
    errors = sum(r["error"] is not None for r in reports.values())
    print(json.dumps({"instances": len(reports), "resolved": resolved, "errors": errors,
                      "unscored_predictions": len(unknown), "report": args.report}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
