"""Pure parts of the sandboxes, no engine needed: the container flags, patch vetting, pytest log
parsing, test-case checkers, and the `process` backend (a real local subprocess)."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandboxes.hardening import container_kwargs, tmpfs_opts
from sandboxes.patches import is_test_infra, split_patch, unsafe_path, vet_patch
from sandboxes.pytest_log import parse_pytest_ra
from sandboxes.swe import empty_report, score
from sandboxes.testcases import exact_match, float_match


def test_every_container_gets_every_flag():
    kw = container_kwargs(kind="run", memory_mb=256, cpus=0.5, pids_limit=64,
                          tmpfs={"/work": tmpfs_opts(64, 8192, uid=10001, mode="0700")},
                          user="65534:65534", init=True)
    assert kw["network_mode"] == "none" and kw["dns"] == ["127.0.0.1"]
    assert kw["mem_limit"] == kw["memswap_limit"] == "256m"
    assert kw["pids_limit"] == 64 and kw["nano_cpus"] == 500_000_000
    assert kw["cap_drop"] == ["ALL"] and kw["security_opt"] == ["no-new-privileges"]
    assert kw["read_only"] and kw["user"] == "65534:65534"
    assert kw["tmpfs"]["/work"] == "size=64m,nr_inodes=8192,mode=0700,uid=10001,gid=10001"
    assert {u["Name"] for u in kw["ulimits"]} == {"nofile", "fsize", "core"}
    assert kw["labels"]["cispo.sandbox"] == "run" and ":" in kw["labels"]["cispo.owner"]
    with pytest.raises(ValueError, match="at least 16 MB"):
        container_kwargs(kind="run", memory_mb=8, cpus=1, pids_limit=1, tmpfs={}, user="1")


GIT_PATCH = """diff --git a/src/a.py b/src/a.py
--- a/src/a.py
+++ b/src/a.py
@@ -1 +1 @@
-x = 1
+x = 2
diff --git a/tests/test_a.py b/tests/test_a.py
--- a/tests/test_a.py
+++ b/tests/test_a.py
@@ -1 +1 @@
-assert x == 2
+assert True
diff --git a/conftest.py b/conftest.py
new file mode 100644
--- /dev/null
+++ b/conftest.py
@@ -0,0 +1 @@
+pass
"""


def test_vet_keeps_source_and_discards_test_infrastructure():
    v = vet_patch(GIT_PATCH, test_files=set())
    assert v.error is None and v.kept_paths == ["src/a.py"]
    assert v.discarded == ["tests/test_a.py", "conftest.py"]
    assert "+x = 2" in v.kept and "conftest" not in v.kept


def test_plain_unified_diff_without_git_headers():
    p = "--- a/pkg/m.py\n+++ b/pkg/m.py\n@@ -1 +1 @@\n-a\n+b\n--- a/pytest.ini\n+++ b/pytest.ini\n@@ -1 +1 @@\n-a\n+b\n"
    assert [fd.paths for fd in split_patch(p)] == [["pkg/m.py"], ["pytest.ini"]]
    assert vet_patch(p, set()).discarded == ["pytest.ini"]


@pytest.mark.parametrize("path,why", [("../x", "leaves"), ("/abs", "absolute"),
                                      ("a/../../b", "leaves"), (".git/config", ".git"),
                                      ("sub/.git/hooks/x", ".git"), ("ok/file.py", None)])
def test_unsafe_paths(path, why):
    got = unsafe_path(path)
    assert (got is None) if why is None else (why in got)


def test_rename_into_the_repo_from_outside_is_rejected():
    p = "diff --git a/x b/y\nsimilarity index 100%\nrename from ../../etc/passwd\nrename to y\n"
    assert "leaves" in vet_patch(p, set()).error


def test_symlink_creation_is_rejected():
    p = "diff --git a/l b/l\nnew file mode 120000\n--- /dev/null\n+++ b/l\n@@ -0,0 +1 @@\n+/etc\n"
    assert "symlink" in vet_patch(p, set()).error


@pytest.mark.parametrize("path", ["tests/x.py", "pkg/test_x.py", "pkg/x_test.py", "conftest.py",
                                  "a/conftest.py", "tox.ini", "setup.cfg", "pyproject.toml",
                                  "sitecustomize.py", "lib/evil.pth", "testing/util.py"])
def test_test_infrastructure(path):
    assert is_test_infra(path, set())


def test_instance_test_files_count_as_tests():
    assert is_test_infra("pkg/checks.py", {"pkg/checks.py"})
    assert not is_test_infra("pkg/core.py", {"pkg/checks.py"})


RA_LOG = """
tests/test_a.py::test_x PASSED
=========================== short test summary info ============================
PASSED tests/test_a.py::test_ok
PASSED tests/test_a.py::test_p[a - b]
FAILED tests/test_a.py::test_bad - assert 1 == 2
FAILED tests/test_a.py::test_q[x - y] - ValueError: a - b
ERROR tests/test_a.py::test_ok - teardown boom
XFAIL tests/test_a.py::test_xf - known
SKIPPED [1] tests/test_a.py:9: unconditional skip
==================== 2 passed, 2 failed, 1 error in 0.12s =====================
PASSED tests/test_a.py::test_after_the_end
"""


def test_parse_pytest_ra():
    got = parse_pytest_ra(RA_LOG)
    assert got == {"tests/test_a.py::test_ok": "ERROR",  # worst outcome stands
                   "tests/test_a.py::test_p[a - b]": "PASSED",
                   "tests/test_a.py::test_bad": "FAILED",
                   "tests/test_a.py::test_q[x - y]": "FAILED",
                   "tests/test_a.py::test_xf": "XFAIL"}
    assert parse_pytest_ra("no summary at all\nPASSED t.py::x\n") == {}


def test_forged_summary_cannot_turn_a_failure_into_a_pass():
    forged = RA_LOG + "=== short test summary info ===\nPASSED tests/test_a.py::test_bad\n=== 1 passed in 0.0s ===\n"
    assert parse_pytest_ra(forged)["tests/test_a.py::test_bad"] == "FAILED"


def test_score_rules():
    inst = {"FAIL_TO_PASS": '["f"]', "PASS_TO_PASS": ["p", "x"]}
    r = empty_report(inst)
    r["patch_applied"] = True
    assert score(r, {"f": "PASSED", "p": "PASSED", "x": "XFAIL"}, ["f"], ["p", "x"])["resolved"]
    for bad in ({"f": "SKIPPED", "p": "PASSED", "x": "PASSED"},  # skipped F2P is a failure
                {"f": "XFAIL", "p": "PASSED", "x": "PASSED"},
                {"p": "PASSED", "x": "PASSED"},  # missing is a failure
                {"f": "PASSED", "p": "FAILED", "x": "PASSED"}):  # regression
        r = empty_report(inst)
        r["patch_applied"] = True
        assert not score(r, bad, ["f"], ["p", "x"])["resolved"], bad


def test_checkers():
    assert exact_match("1 2\n3  \n\n", "1 2\n3")
    assert not exact_match("1 2", "1  2")
    assert float_match("0.3333333 2", "0.33333333 2.0") and not float_match("0.34", "0.33")
    assert not float_match("nan", "1") and float_match("nan", "nan")
    assert not float_match("1 2", "1")


@given(st.text())
def test_exact_match_is_reflexive(s):
    assert exact_match(s, s) and float_match(s, s)


@given(st.text(alphabet="-+./:_ abcxyz019[]\n@\\\"", max_size=200))
def test_patch_parsing_never_crashes(s):
    v = vet_patch(s, set())
    assert v.error is None or v.error.startswith("patch rejected")


def test_process_backend_is_marked_not_isolated_and_limited(caplog):
    from sandboxes.run import run_code

    r = run_code("import sys\nprint(sys.stdin.read()[::-1])", stdin="abc", backend="process")
    assert r.returncode == 0 and r.stdout == "cba\n" and r.isolated is False
    r = run_code("import time\ntime.sleep(30)", backend="process", timeout_s=0.5)
    assert r.timed_out and r.returncode is None and r.duration_s < 5
    r = run_code("x = b'x' * (1 << 31)", backend="process", memory_mb=256)
    assert r.oom_killed and r.returncode != 0


def test_unknown_backend_and_language_fail_clearly():
    from sandboxes.run import run_code

    with pytest.raises(ValueError, match="'docker' or 'process'"):
        run_code("pass", backend="podman")
    with pytest.raises(ValueError, match="choose one of"):
        run_code("pass", language="cobol")


def test_testcases_on_the_process_backend():
    from sandboxes.testcases import run_testcases

    prog = "a, b = map(int, input().split())\nprint(a + b)\n"
    v = run_testcases(prog, [("1 2\n", "3\n"), ("2 2\n", "5\n"), ("x\n", "1\n")],
                      backend="process")
    assert [c.status for c in v] == ["ok", "wrong_answer", "runtime_error"]
    assert [c.passed for c in v] == [True, False, False]


def test_cli_process_backend(tmp_path):
    import json
    import subprocess

    prog = tmp_path / "p.py"
    prog.write_text("print(input())")
    inp = tmp_path / "in.txt"
    inp.write_text("hello\n")
    out = subprocess.run([sys.executable, "-m", "sandboxes.run", "--backend", "process",
                          "--stdin", str(inp), str(prog)], capture_output=True, text=True)
    res = json.loads(out.stdout)
    assert res["stdout"] == "hello\n" and res["isolated"] is False
    assert set(res) >= {"returncode", "stdout", "stderr", "timed_out", "oom_killed", "duration_s"}
