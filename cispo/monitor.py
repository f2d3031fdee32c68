"""Run monitoring: W&B (offline without an API key) plus `run_dir/metrics.jsonl` and
`run_dir/samples.jsonl`, and progress that shows wherever the run's output goes.

Progress: a rich bar on a terminal; without one (SLURM, nohup, a pipe to `tee`) a plain line
every `logging.progress_every_s` seconds; and every step's line in `run_dir/train.log` either way.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def wandb_mode(setting: str) -> str:
    if setting != "auto":
        return setting
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


class RunLogger:
    """`log(step, metrics)` appends one JSON line and sends the same dict to W&B;
    `log_samples(step, rows)` appends a few completions to samples.jsonl and a W&B table."""

    def __init__(self, run_dir: str | Path, cfg: Any, config_dict: dict, start_step: int = 0):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = _reopen(self.path, start_step)
        self._samples = _reopen(Path(run_dir) / "samples.jsonl", start_step)
        self.run = None
        self.mode = wandb_mode(cfg.wandb_mode)
        self.wandb_dir: Path | None = None  # the run's own folder under run_dir/wandb
        self.wandb_url: str | None = None
        if self.mode != "disabled":
            import wandb

            id_file = Path(run_dir) / "wandb_run_id"  # one W&B run across resumes
            run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
            id_file.write_text(run_id)
            self.run = wandb.init(project=cfg.wandb_project, entity=cfg.wandb_entity, mode=self.mode,
                                  dir=str(run_dir), config=config_dict, id=run_id,
                                  name=Path(run_dir).name, resume="allow",
                                  settings=wandb.Settings(silent=True, console="off"))
            self.wandb_dir = Path(self.run.dir).parent  # .../wandb/offline-run-<date>-<id>
            self.wandb_url = getattr(self.run, "url", None) if self.mode == "online" else None

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **metrics}
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        if self.run is not None:
            self.run.log(metrics, step=step)

    def log_samples(self, step: int, rows: list[dict]) -> None:
        """A few of the step's completions (prompt, completion, reward, finish reason)."""
        if not rows:
            return
        for r in rows:
            self._samples.write(json.dumps({"step": step, **r}) + "\n")
        self._samples.flush()
        if self.run is not None:
            import wandb

            cols = list(rows[0])
            self.run.log({"samples": wandb.Table(columns=["step", *cols],
                                                 data=[[step, *(r[c] for c in cols)] for r in rows])},
                         step=step)

    def where(self) -> list[str]:
        """Where the W&B run is, and how to upload an offline one."""
        if self.run is None:
            return ["W&B: off (logging.wandb_mode=disabled)"]
        if self.mode == "online":
            return [f"W&B: {self.wandb_url or self.wandb_dir}"]
        # a resumed run adds a folder per start, all with the run's id: upload them together
        parts = sorted(self.wandb_dir.parent.glob(f"offline-run-*-{self.run.id}"))
        target = self.wandb_dir.parent / f"offline-run-*-{self.run.id}" if len(parts) > 1 else self.wandb_dir
        return [f"W&B (offline): {target}" + (f" ({len(parts)} folders: one per start)" if len(parts) > 1 else ""),
                f"  upload it: wandb sync {target}"]

    def close(self) -> None:
        self._f.close()
        self._samples.close()
        if self.run is not None:
            self.run.finish()
            self.run = None


def _reopen(path: Path, start_step: int):
    """Open a per-step JSON Lines file for appending rows from `start_step` on: a resumed run
    keeps the rows of the steps before its checkpoint (later ones are about to be redone)."""
    kept = []
    if start_step > 0 and path.exists():
        kept = [ln for ln in path.read_text().splitlines()
                if ln.strip() and json.loads(ln)["step"] < start_step]
    f = open(path, "w")
    f.writelines(ln + "\n" for ln in kept)
    return f


def sample_rows(samples: list, scores: list, tokenizer, n: int) -> list[dict]:
    """`n` of the step's samples, spread over its groups: prompt, completion, reward (None:
    skipped), finish reason and length, decoded as the reward saw them."""
    if n <= 0 or not samples:
        return []
    picks = sorted({round(i * len(samples) / n) for i in range(n)} & set(range(len(samples))))
    return [{"prompt": tokenizer.decode(samples[i].prompt_ids, skip_special_tokens=True),
             "completion": tokenizer.decode(samples[i].response_ids, skip_special_tokens=True),
             "reward": scores[i], "finish_reason": samples[i].finish_reason,
             "response_tokens": len(samples[i].response_ids)} for i in picks]


def step_line(step: int, total: int, m: dict[str, float], elapsed_s: float, done: int) -> str:
    """One plain progress line: where the run is, the newest numbers, the time left."""
    left = elapsed_s / done * (total - step - 1) if done else float("nan")
    return (f"step {step + 1}/{total}  reward {m['reward/mean']:.3f}  loss {m['loss/policy']:+.4f}  "
            f"clip {m['is_weight/clip_frac']:.3f}  {m['time/step_s']:.1f}s/step  "
            f"elapsed {_hms(elapsed_s)}  left {_hms(left)}")


def _hms(seconds: float) -> str:
    if seconds != seconds:  # NaN: not known yet
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _to_file_handlers(msg: str) -> None:
    """Log `msg` to the root logger's file handlers only (train.log under Hydra), not the
    console, where the bar or the plain lines already show progress."""
    record = log.makeRecord(log.name, logging.INFO, __file__, 0, msg, None, None)
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.FileHandler) and record.levelno >= h.level:
            h.handle(record)


class Progress:
    """Progress wherever the output goes: a rich bar on a terminal (logging.progress), a plain
    line every `every_s` seconds when stdout is not a terminal, and every step's line in the
    log file (train.log)."""

    def __init__(self, total: int, start: int, enabled: bool = True, every_s: float = 30.0,
                 stream=None):
        self.bar = None
        self.total, self.start, self.every_s = total, start, every_s
        self.stream = stream or sys.stdout
        self.enabled = enabled
        self.t0 = time.monotonic()
        self.last_line = float("-inf")
        if enabled and _isatty(self.stream):
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                    TimeElapsedColumn(), TimeRemainingColumn(),
                                    TextColumn("{task.description}"))
            self.task = self.bar.add_task("", total=total, completed=start)

    def __enter__(self):
        if self.bar:
            self.bar.__enter__()
        return self

    def update(self, step: int, m: dict[str, float]) -> None:
        now = time.monotonic()
        line = step_line(step, self.total, m, now - self.t0, step + 1 - self.start)
        if self.bar:
            self.bar.update(self.task, advance=1, description=(
                f"reward {m['reward/mean']:.3f}  loss {m['loss/policy']:+.4f}  "
                f"clip {m['is_weight/clip_frac']:.3f}  {m['time/step_s']:.1f}s/step"))
            _to_file_handlers(line)
        elif not self.enabled:
            log.info("%s", line)  # console and train.log, every step (as before the bar existed)
        else:
            _to_file_handlers(line)
            if now - self.last_line >= self.every_s or step + 1 == self.total:
                self.last_line = now
                print(line, file=self.stream, flush=True)

    def __exit__(self, *exc):
        if self.bar:
            self.bar.__exit__(*exc)


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
