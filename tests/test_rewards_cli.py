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
    assert out[2] == {"score": 0.0, "error": "error: ValueError: asked to"}
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
])
def test_usage_errors_exit_non_zero_with_one_message(work, args, message):
    r = cli(work, *args)
    assert r.returncode == 2
    assert message in r.stderr
