"""Run monitoring: W&B (offline without an API key) plus `run_dir/metrics.jsonl`, and a progress bar."""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def wandb_mode(setting: str) -> str:
    if setting != "auto":
        return setting
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


class RunLogger:
    """`log(step, metrics)` appends one JSON line and sends the same dict to W&B."""

    def __init__(self, run_dir: str | Path, cfg: Any, config_dict: dict, start_step: int = 0):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if start_step > 0 and self.path.exists():
            # resuming: keep the steps before the checkpoint; later ones are about to be redone
            kept = [ln for ln in self.path.read_text().splitlines()
                    if ln.strip() and json.loads(ln)["step"] < start_step]
        self._f = open(self.path, "w")
        self._f.writelines(ln + "\n" for ln in kept)
        self.run = None
        mode = wandb_mode(cfg.wandb_mode)
        if mode != "disabled":
            import wandb

            id_file = Path(run_dir) / "wandb_run_id"  # one W&B run across resumes
            run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
            id_file.write_text(run_id)
            self.run = wandb.init(project=cfg.wandb_project, entity=cfg.wandb_entity, mode=mode,
                                  dir=str(run_dir), config=config_dict, id=run_id,
                                  name=Path(run_dir).name, resume="allow",
                                  settings=wandb.Settings(silent=True, console="off"))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **metrics}
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        if self.run is not None:
            self.run.log(metrics, step=step)

    def close(self) -> None:
        self._f.close()
        if self.run is not None:
            self.run.finish()


class Progress:
    """A rich progress bar showing the newest reward and loss (off with logging.progress=false)."""

    def __init__(self, total: int, start: int, enabled: bool = True):
        self.bar = None
        if enabled:
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
        if self.bar:
            self.bar.update(self.task, advance=1, description=(
                f"reward {m['reward/mean']:.3f}  loss {m['loss/policy']:+.4f}  "
                f"clip {m['is_weight/clip_frac']:.3f}  {m['time/step_s']:.1f}s/step"))
        else:
            log.info("step %d reward %.3f loss %+.4f %.1fs", step, m["reward/mean"], m["loss/policy"],
                     m["time/step_s"])

    def __exit__(self, *exc):
        if self.bar:
            self.bar.__exit__(*exc)
