"""Progress without a terminal, step lines in the log file, samples to look at (issue 21)."""

from __future__ import annotations

import io
import json
import logging
from types import SimpleNamespace as NS

from cispo.monitor import Progress, RunLogger, sample_rows

HYDRA_FORMAT = logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")  # train.log's
M = {"reward/mean": 0.5, "loss/policy": -0.01, "is_weight/clip_frac": 0.0, "time/step_s": 1.5}


def test_without_a_terminal_plain_lines_every_n_seconds_and_every_step_in_the_log_file(tmp_path):
    log_file = tmp_path / "train.log"
    handler = logging.FileHandler(log_file)
    handler.setFormatter(HYDRA_FORMAT)
    root = logging.getLogger()
    root.addHandler(handler)
    old_level, root.level = root.level, logging.INFO
    try:
        out = io.StringIO()  # not a terminal: no bar
        with Progress(5, 0, enabled=True, every_s=3600, stream=out) as bar:
            assert bar.bar is None
            for step in range(5):
                bar.update(step, M)
        out_all = io.StringIO()
        with Progress(3, 1, enabled=True, every_s=0, stream=out_all) as bar:
            for step in (1, 2):
                bar.update(step, M)
    finally:
        root.removeHandler(handler)
        handler.close()
        root.level = old_level
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # the first step, then none for an hour, and the last
    assert lines[0].startswith("step 1/5  reward 0.500  loss -0.0100  clip 0.000  1.5s/step")
    assert lines[1].startswith("step 5/5") and "left 0:00:00" in lines[1]
    assert [ln.split()[0:2] for ln in out_all.getvalue().splitlines()] == [["step", "2/3"], ["step", "3/3"]]
    steps = [ln for ln in log_file.read_text().splitlines() if "] - step " in ln]
    assert len(steps) == 7  # every step of both, though the console showed fewer


def test_a_terminal_gets_the_bar_and_the_log_file_still_gets_every_step(tmp_path):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    log_file = tmp_path / "train.log"
    handler = logging.FileHandler(log_file)
    handler.setFormatter(HYDRA_FORMAT)
    root = logging.getLogger()
    root.addHandler(handler)
    old_level, root.level = root.level, logging.INFO
    try:
        with Progress(2, 0, enabled=True, stream=Tty()) as bar:
            assert bar.bar is not None
            bar.update(0, M)
            bar.update(1, M)
    finally:
        root.removeHandler(handler)
        handler.close()
        root.level = old_level
    assert len([ln for ln in log_file.read_text().splitlines() if "] - step " in ln]) == 2


class CharTok:
    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(ord("a") + i) for i in ids)


def test_sample_rows_spread_over_the_step_and_carry_what_the_reward_saw():
    samples = [NS(prompt_ids=[0, 1], response_ids=[i % 26], finish_reason="stop") for i in range(16)]
    scores = [float(i) if i % 5 else None for i in range(16)]
    rows = sample_rows(samples, scores, CharTok(), 4)
    assert [r["reward"] for r in rows] == [None, 4.0, 8.0, 12.0]  # samples 0, 4, 8, 12
    assert rows[1] == {"prompt": "ab", "completion": "e", "reward": 4.0, "finish_reason": "stop",
                       "response_tokens": 1}
    assert sample_rows(samples, scores, CharTok(), 0) == [] and len(sample_rows(samples[:2], scores, CharTok(), 4)) == 2


def test_samples_jsonl_per_step_and_resume_keeps_the_steps_before_the_checkpoint(tmp_path):
    cfg = NS(wandb_mode="disabled", wandb_project="p", wandb_entity=None)
    lg = RunLogger(tmp_path, cfg, {})
    for step in range(3):
        lg.log(step, {"reward/mean": 0.1})
        lg.log_samples(step, [{"prompt": "p", "completion": f"c{step}", "reward": 1.0, "finish_reason": "stop",
                               "response_tokens": 2}])
    assert lg.where() == ["W&B: off (logging.wandb_mode=disabled)"]
    lg.close()
    lg = RunLogger(tmp_path, cfg, {}, start_step=2)  # resumed from the step-2 checkpoint
    lg.log_samples(2, [{"prompt": "p", "completion": "again", "reward": 0.0, "finish_reason": "length",
                        "response_tokens": 4}])
    lg.close()
    rows = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [(r["step"], r["completion"]) for r in rows] == [(0, "c0"), (1, "c1"), (2, "again")]
