"""`python -m rewards.score`: one JSON object per completion, one line per input line, in order;
non-zero exit only for usage errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULE = textwrap.dedent('''
    from rewards import reward

    @reward("cli_len")
    def cli_len(completion, reference=None, scale=1.0):
        if completion == "skip":
            return None
        if completion == "raise":
            raise ValueError("asked to")
        if completion == "hang":
            while True:
                pass
        return {"score": scale * len(completion), "ref_is_list": isinstance(reference, list)}

    def plain_upper(completion):  # no decorator: the CLI can still try it
        return float(completion.isupper())
''')


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    (d / "cli_rewards.py").write_text(MODULE)
    return d


def cli(work: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "rewards.score", *args], cwd=work, env=env,
                          capture_output=True, text=True, timeout=120)


def test_single_completion(work):
    r = cli(work, "--module", "cli_rewards.py", "--reward", "cli_len", "--completion", "abc",
            "--reference-json", "[1, 2]", "--option", "cli_len.scale=2")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"score": 6.0, "ref_is_list": 1.0}


def test_a_plain_function_in_the_module_can_be_named(work):
    r = cli(work, "--module", "cli_rewards.py", "--reward", "plain_upper", "--completion", "ABC")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"score": 1.0}
    (work / "plain.jsonl").write_text(json.dumps({"reward": "plain_upper", "completion": "ab"}))
    r = cli(work, "--module", "cli_rewards.py", "--jsonl", "plain.jsonl")
    assert [json.loads(x) for x in r.stdout.splitlines()] == [{"score": 0.0}]


def test_jsonl_in_order_with_skips_errors_and_timeouts(work):
    lines = [{"reward": "cli_len", "completion": "ab"},
             {"reward": "cli_len", "completion": "skip"},
             {"reward": "cli_len", "completion": "raise"},
             "not json",
             {"reward": "cli_len", "completion": "hang"},
             {"reward": "nope", "completion": "x"},
             {"completion": "no reward named"},
             {"reward": "format", "completion": "<think>t</think> \\boxed{1}", "tags": ["think"]}]
    (work / "in.jsonl").write_text("\n".join(x if isinstance(x, str) else json.dumps(x)
                                             for x in lines) + "\n")
    r = cli(work, "--module", "cli_rewards.py", "--jsonl", "in.jsonl", "--out", "out.jsonl",
            "--timeout-s", "1")
    assert r.returncode == 0, r.stderr
    out = [json.loads(x) for x in (work / "out.jsonl").read_text().splitlines()]
    assert len(out) == len(lines)
    assert out[0] == {"score": 2.0, "ref_is_list": 0.0}
    assert out[1] == {"score": None}
    # the reward's own file and line (the `raise` in MODULE)
    line = MODULE.splitlines().index('        raise ValueError("asked to")') + 1
    assert out[2] == {"score": 0.0, "error": f"error: ValueError: asked to (cli_rewards.py:{line} in cli_len)"}
    assert out[3]["score"] is None and "line 4: not JSON" in out[3]["error"]
    assert out[4]["score"] == 0.0 and out[4]["error"].startswith("timeout:")
    assert "unknown reward 'nope'" in out[5]["error"]
    assert "needs \"reward\"" in out[6]["error"]
    assert out[7] == {"score": 1.0}


@pytest.mark.parametrize("args,message", [
    ([], "give --reward NAME"),
    (["--reward", "nope", "--completion", "x"], "unknown reward 'nope'"),
    (["--jsonl", "missing.jsonl"], "no such file"),
    (["--module", "missing.py", "--reward", "math", "--completion", "x"], "not found"),
    (["--jsonl", "in.jsonl", "--reward", "math"], "drop --reward"),
    (["--reward", "math", "--completion", "x", "--option", "bad"], "NAME.KEY=VALUE"),
    (["--reward", "math", "--completion", "so \\boxed{4}"], "--reward math compares the completion with a reference"),
    (["--jsonl", "in.jsonl", "--out", "/proc/no/such/out.jsonl"], "--out /proc/no/such/out.jsonl"),
])
def test_usage_errors_exit_non_zero_with_one_message(work, args, message):
    r = cli(work, *args)
    assert r.returncode == 2
    assert message in r.stderr


def _write(path: Path, lines: list) -> None:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")


def test_output_line_n_answers_input_line_n_blank_lines_too_and_out_folders_are_made(work):
    _write(work / "gaps.jsonl", [{"reward": "cli_len", "completion": "a"}, "",
                                 {"reward": "cli_len", "completion": "abc"}, "   ",
                                 {"reward": "math", "completion": "\\boxed{1}"}])
    r = cli(work, "--module", "cli_rewards.py", "--jsonl", "gaps.jsonl", "--out", "new/dir/out.jsonl",
            "--sandbox-backend", "process")
    assert r.returncode == 0, r.stderr
    out = [json.loads(x) for x in (work / "new/dir/out.jsonl").read_text().splitlines()]
    assert [o["score"] for o in out] == [1.0, None, 3.0, None, None]
    assert out[1]["error"] == "line 2: blank" and out[3]["error"] == "line 4: blank"
    assert "no \"reference\": math compares with one" in out[4]["error"]


def test_results_stream_as_they_finish_and_ctrl_c_keeps_them(work):
    """The first lines are in --out while a later line still runs; Ctrl-C ends with them kept."""
    import signal
    import time

    _write(work / "long.jsonl", [{"reward": "cli_len", "completion": "ab"},
                                 {"reward": "cli_len", "completion": "abcd"},
                                 {"reward": "cli_len", "completion": "hang"},
                                 {"reward": "cli_len", "completion": "x"}])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = work / "long_out.jsonl"
    p = subprocess.Popen([sys.executable, "-m", "rewards.score", "--module", "cli_rewards.py", "--jsonl",
                          "long.jsonl", "--out", str(out), "--timeout-s", "300", "--max-concurrency", "1"],
                         cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         # a user's terminal delivers Ctrl-C; a test run started in the background
                         # (nohup, `&`) passes SIGINT down as ignored, so the child would never see it
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 2):
        time.sleep(0.2)
    assert p.poll() is None, p.communicate()  # still scoring the hanging line
    assert [json.loads(x)["score"] for x in out.read_text().splitlines()] == [2.0, 4.0]
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "the first 2 of 4 lines" in err and "Traceback" not in err
    assert len(out.read_text().splitlines()) == 2


def test_a_module_imports_its_neighbours_and_a_failed_import_names_the_file(work):
    sub = work / "pkg_dir"
    sub.mkdir(exist_ok=True)
    (sub / "helper_mod_i21.py").write_text("BONUS = 10.0\n")
    (sub / "uses_helper.py").write_text("from helper_mod_i21 import BONUS\n\n"
                                        "def plus_bonus(completion):\n    return BONUS + len(completion)\n")
    r = cli(work, "--module", "pkg_dir/uses_helper.py", "--reward", "plus_bonus", "--completion", "ab")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"score": 12.0}
    (sub / "broken_i21.py").write_text("import os\n\nimport no_such_module_i21\n")
    r = cli(work, "--module", "pkg_dir/broken_i21.py", "--reward", "x", "--completion", "ab")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"importing {sub / 'broken_i21.py'} failed at line 3: ModuleNotFoundError" in r.stderr


def test_a_reward_that_keeps_timing_out_is_stopped_with_one_error(work):
    _write(work / "hangs.jsonl", [{"reward": "cli_len", "completion": "hang"}] * 8)
    r = cli(work, "--module", "cli_rewards.py", "--jsonl", "hangs.jsonl", "--out", "hangs_out.jsonl",
            "--timeout-s", "0.5", "--max-concurrency", "1")
    assert r.returncode == 1
    assert r.stderr.count("timed out 3 times in a row") == 1, r.stderr
    out = [json.loads(x) for x in (work / "hangs_out.jsonl").read_text().splitlines()]
    assert [o["error"].split(":")[0] for o in out] == ["timeout"] * 3 + ["error"] * 5
    assert all("not scored: reward 'cli_len' timed out 3 times" in o["error"] for o in out[3:])
