"""Every example in docs/rewards.md runs: files are written, CLI commands run and their output
compared, and the training command's overrides are composed by Hydra into the real config and
scored with the manager it builds (a full training run is tests/ of the training loop)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "rewards.md"
BLOCK = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def blocks() -> list[tuple[str, str, str]]:
    return [(m.group(1), m.group(2).strip(), m.group(3)) for m in BLOCK.finditer(DOC.read_text())]


def commands() -> list[tuple[str, list[str]]]:
    """(command, expected output lines) from the console blocks."""
    out: list[tuple[str, list[str]]] = []
    for lang, _, body in blocks():
        if lang != "console":
            continue
        for line in body.splitlines():
            if line.startswith("$ "):
                out.append((line[2:], []))
            elif line.strip():
                out[-1][1].append(line)
    return out


@pytest.fixture(scope="module")
def doc_dir(tmp_path_factory):
    # one directory for the module: the same file path registers the same reward once
    tmp_path = tmp_path_factory.mktemp("doc")
    for _lang, info, body in blocks():
        if info.startswith("file="):
            (tmp_path / info.removeprefix("file=")).write_text(body)
    return tmp_path


def run(cmd: str, cwd: Path) -> subprocess.CompletedProcess:
    argv = shlex.split(cmd)
    assert argv[0] == "python"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, *argv[1:]], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_the_reward_in_ten_lines_is_a_plain_function(doc_dir):
    src = (doc_dir / "my_rewards.py").read_text()
    assert len([ln for ln in src.splitlines() if ln.strip()]) <= 10
    from rewards.registry import load_module

    mod = sys.modules[load_module(doc_dir / "my_rewards.py")]
    assert mod.final_number("so 7", 7) == {"score": 1.0, "answered": 1}
    assert mod.final_number("so 7", None) is None


def test_cli_examples_print_what_the_doc_says(doc_dir):
    cli = [(c, want) for c, want in commands() if "rewards.score" in c]
    assert len(cli) >= 3
    for cmd, want in cli:
        res = run(cmd, doc_dir)
        assert res.returncode == 0, (cmd, res.stderr)
        got = [json.loads(line) for line in res.stdout.splitlines()]
        assert got == [json.loads(line) for line in want], cmd


@pytest.mark.docker
def test_experiment_example_composes_and_scores(doc_dir, monkeypatch):
    from hydra import compose, initialize_config_dir

    import cispo.config  # noqa: F401  (registers the schema, as cispo.train does)
    from rewards.manager import RewardManager

    train = [c for c, _ in commands() if "cispo.train" in c]
    assert len(train) == 1
    from cispo.config_check import check_or_exit

    # after `python -m cispo.train`, checked and completed as cispo.train does (`reward.options.
    # <name>.<key>=v` needs no `+`)
    overrides = check_or_exit(ROOT / "conf", "config", shlex.split(train[0])[3:])
    monkeypatch.chdir(doc_dir)  # reward.modules paths are relative to where you run
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose(config_name="config", overrides=overrides)
    assert cfg.reward.modules == ["my_rewards.py"] and cfg.reward.options.final_number.timeout_s == 5
    cfg.sandbox.num_workers = 1
    item = {"completion": "3}", "reference": "3", "prompt": "1+2=\\boxed{",
            "data_source": "arithmetic", "metadata": {}}
    with RewardManager(cfg.reward, cfg.sandbox) as mgr:
        scores, m = mgr.score([item, dict(item, completion="4} no wait, it is 3")])
    # math closes the prompt's open box ("3" right, "4" wrong); final_number reads the last
    # bare number ("3}" has none: 0; "... it is 3": right, weight 0.5)
    assert scores == [1.0, 0.5]
    assert m["reward/final_number/answered"] == 0.5 and m["reward/errors"] == 0.0
