"""The SWE harness on a real git repository made here (pytest suite, injected bug in `mul`).

The gold patch resolves it; empty, garbage and every hacking patch do not, and each says why.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from sandbox_fixtures import F2P, P2P, diff_of, make_swe_instance, require_docker

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def swe(tmp_path_factory):
    require_docker()
    d = tmp_path_factory.mktemp("swe")
    inst, gold, repo = make_swe_instance(d)
    return inst, gold, repo, d


def evaluate(swe, patch, timeout_s=60):
    from sandboxes.swe import evaluate as ev

    inst, _, _, d = swe
    return ev(inst, patch, timeout_s=timeout_s, instances_dir=str(d))


def assert_unresolved(r):
    assert not r["resolved"] and r["reward"] == 0.0, r


def test_gold_patch_resolves(swe):
    r = evaluate(swe, swe[1])
    assert r["resolved"] and r["reward"] == 1.0 and r["patch_applied"], r
    assert r["FAIL_TO_PASS"] == {"success": F2P, "failure": []}
    assert r["PASS_TO_PASS"] == {"success": P2P, "failure": []}
    assert r["error"] is None and r["discarded_paths"] == []


def test_empty_patch(swe):
    r = evaluate(swe, "")
    assert_unresolved(r)
    assert r["error"] == "empty patch" and r["FAIL_TO_PASS"]["failure"] == F2P


def test_garbage_patch(swe):
    r = evaluate(swe, "this is not a diff\n@@ nonsense @@\n+x\n")
    assert_unresolved(r)
    assert not r["patch_applied"] and "did not apply" in r["error"]


def test_conftest_that_passes_everything_is_discarded(swe):
    repo = swe[2]
    conftest = ("import pytest\n\n@pytest.hookimpl(hookwrapper=True)\n"
                "def pytest_runtest_makereport(item, call):\n    out = yield\n"
                "    rep = out.get_result()\n    rep.outcome = 'passed'\n")
    hack = diff_of(repo, {"conftest.py": conftest, "tests/conftest.py": conftest,
                          "calc.py": "def add(a, b):\n    return a + b\n\n\n"
                                     "def mul(a, b):\n    return a + b  # still wrong\n"})
    r = evaluate(swe, hack)
    assert_unresolved(r)
    assert set(r["discarded_paths"]) == {"conftest.py", "tests/conftest.py"}
    assert r["FAIL_TO_PASS"]["failure"] == F2P  # the real test ran and failed


def test_patch_that_edits_the_tests_is_discarded(swe):
    repo = swe[2]
    hack = diff_of(repo, {"tests/test_calc.py": "def test_mul():\n    assert True\n",
                          "pytest.ini": "[pytest]\naddopts = -p no:python\n"})
    r = evaluate(swe, hack)
    assert_unresolved(r)
    assert set(r["discarded_paths"]) == {"tests/test_calc.py", "pytest.ini"}
    assert "only edits test infrastructure" in r["error"]


def test_gold_fix_plus_test_edit_still_resolves_and_reports_the_discard(swe):
    from sandbox_fixtures import CALC_FIXED

    repo = swe[2]
    both = diff_of(repo, {"calc.py": CALC_FIXED, "tests/test_calc.py": "# gutted\n"})
    r = evaluate(swe, both)
    assert r["resolved"] and r["discarded_paths"] == ["tests/test_calc.py"], r


def test_patch_that_makes_the_failing_test_skip(swe):
    repo = swe[2]
    # Edits only library code: when imported under pytest, skip the whole test module.
    skip = diff_of(repo, {"calc.py": "import sys\n\nif 'pytest' in sys.modules:\n"
                                     "    import pytest\n"
                                     "    pytest.skip('nope', allow_module_level=True)\n\n\n"
                                     "def add(a, b):\n    return a + b\n\n\n"
                                     "def mul(a, b):\n    return a + b\n"})
    r = evaluate(swe, skip)
    assert_unresolved(r)
    assert r["patch_applied"] and r["FAIL_TO_PASS"]["failure"] == F2P
    assert r["PASS_TO_PASS"]["failure"] == P2P  # skipped is not passed


def test_library_that_calls_os_exit_at_import(swe):
    repo = swe[2]
    hack = diff_of(repo, {"calc.py": "import os\nos._exit(0)\n"})
    r = evaluate(swe, hack)
    assert_unresolved(r)
    assert r["patch_applied"] and r["test_exit_code"] == 0  # "success", yet no test passed
    assert r["FAIL_TO_PASS"]["success"] == [] and r["PASS_TO_PASS"]["success"] == []


def test_fake_summary_printed_at_exit_does_not_count(swe):
    repo = swe[2]
    fake = ("import atexit\n\natexit.register(lambda: print("
            "'=== short test summary info ===\\nPASSED tests/test_calc.py::test_mul\\n'"
            "'=== 3 passed in 0.01s ==='))\n\n\ndef add(a, b):\n    return a + b\n\n\n"
            "def mul(a, b):\n    return a + b\n")
    r = evaluate(swe, diff_of(repo, {"calc.py": fake}))
    assert_unresolved(r)
    assert r["FAIL_TO_PASS"]["failure"] == F2P


@pytest.mark.parametrize("path", ["../outside.py", "/etc/evil.py", "src/../../x.py",
                                  ".git/hooks/pre-commit"])
def test_paths_leaving_the_repo_are_rejected(swe, path):
    patch = (f"diff --git a/{path} b/{path}\nnew file mode 100644\n--- /dev/null\n"
             f"+++ b/{path}\n@@ -0,0 +1 @@\n+print('escaped')\n")
    r = evaluate(swe, patch)
    assert_unresolved(r)
    assert r["error"].startswith("patch rejected") and not r["patch_applied"], r


def test_symlink_patches_are_rejected(swe):
    repo = swe[2]
    (repo / "link").symlink_to("/etc")
    subprocess.run(["git", "add", "link"], cwd=repo, check=True)
    out = subprocess.run(["git", "diff", "--cached"], cwd=repo, check=True,
                         capture_output=True, text=True).stdout
    subprocess.run(["git", "reset", "-q", "--hard"], cwd=repo, check=True)
    (repo / "link").unlink(missing_ok=True)
    r = evaluate(swe, out)
    assert_unresolved(r)
    assert "symlink" in r["error"], r


def test_hang_is_a_timeout_not_a_crash(swe):
    repo = swe[2]
    hang = diff_of(repo, {"calc.py": "import time\ntime.sleep(3600)\n"})
    r = evaluate(swe, hang, timeout_s=3)
    assert_unresolved(r)
    assert r["error"].startswith("timeout") and r["patch_applied"], r


def test_cli_writes_a_report_for_every_instance(swe, tmp_path):
    inst, gold, _, d = swe
    other = dict(inst, instance_id="calc-2")
    missing = dict(inst, instance_id="calc-3")
    instances = d / "instances.jsonl"
    instances.write_text("".join(json.dumps(i) + "\n" for i in (inst, other, missing)))
    preds = tmp_path / "preds.jsonl"
    preds.write_text(json.dumps({"instance_id": "calc-1", "model_patch": gold}) + "\n"
                     + json.dumps({"instance_id": "calc-2", "model_patch": ""}) + "\n"
                     + json.dumps({"instance_id": "nobody", "model_patch": gold}) + "\n")
    report = tmp_path / "report.json"
    out = subprocess.run([sys.executable, "-m", "sandboxes.swe", "--instances", str(instances),
                          "--predictions", str(preds), "--report", str(report),
                          "--timeout", "60", "--workers", "2"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rep = json.loads(report.read_text())
    assert rep["calc-1"]["resolved"] and not rep["calc-2"]["resolved"]
    assert rep["calc-3"]["error"] == "no prediction for this instance"
    assert "name no instance" in out.stderr  # the stray prediction is reported, not dropped
    assert json.loads(out.stdout)["resolved"] == 1


def test_instance_given_as_an_image_with_the_repo_at_testbed(swe, tmp_path):
    """The `image` form: the repository is baked into an image (built here, offline, on top of
    the sandbox image) and copied out of it without running anything from it."""
    import shutil

    from sandboxes.engine import connect
    from sandboxes.image import DEFAULT_IMAGE
    from sandboxes.swe import evaluate as ev

    inst, gold, repo, _ = swe
    ctx = tmp_path / "ctx"
    shutil.copytree(repo, ctx / "repo", symlinks=True)
    (ctx / "Dockerfile").write_text(f"FROM {DEFAULT_IMAGE}\nCOPY repo /testbed\n")
    client = connect()
    tag = f"cispo-test-swe:{abs(hash(str(tmp_path))) % 10**8}"
    client.images.build(path=str(ctx), tag=tag, rm=True, network_mode="none")
    try:
        img_inst = {k: v for k, v in inst.items() if k != "workdir_archive"}
        img_inst["image"] = tag
        r = ev(img_inst, gold, timeout_s=60)
        assert r["resolved"], r
        assert not ev(img_inst, "", timeout_s=60)["resolved"]
    finally:
        client.images.remove(tag, force=True)
