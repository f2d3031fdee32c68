"""A loss in a user's file (`algorithm.modules`) reaches the learner ranks, and the configured
loss and advantage are checked at start-up (issue 14, item 7)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cispo import user_modules

ROOT = Path(__file__).resolve().parent.parent

USER_LOSS = '''
import os
from pathlib import Path

from cispo.loss import cispo_loss, register_loss

MARKS = Path(__file__).with_name("marks")
MARKS.mkdir(exist_ok=True)
(MARKS / f"imported_{os.getpid()}").touch()


@register_loss("user_scaled_cispo")
def scaled(logprobs, old_logprobs, advantages, mask, *, scale=1.0, **kw):
    """CISPO times `scale`; leaves a mark in every process it runs in."""
    (MARKS / f"called_{os.getpid()}").touch()
    loss, metrics = cispo_loss(logprobs, old_logprobs, advantages, mask, **kw)
    return scale * loss, metrics
'''


def train(*overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cispo.train", "+exp=tiny", "logging.progress=false",
                           "logging.wandb_mode=disabled", *overrides], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.docker
def test_a_user_loss_file_reaches_every_learner_rank(tmp_path):
    src = tmp_path / "my_losses.py"
    src.write_text(USER_LOSS)
    p = train("trainer.total_steps=1", "rollout.prompts_per_step=2", "rollout.group_size=2",
              "learner.num_workers=2", f"algorithm.modules=[{src}]", "algorithm.loss=user_scaled_cispo",
              "+algorithm.loss_options={scale: 2.0}", f"run_dir={tmp_path / 'run'}")
    assert p.returncode == 0, p.stderr[-3000:]
    marks = {m.name for m in (tmp_path / "marks").iterdir()}
    imported = {m.split("_", 1)[1] for m in marks if m.startswith("imported_")}
    called = {m.split("_", 1)[1] for m in marks if m.startswith("called_")}
    # the driver and both learner ranks imported it; only the ranks compute the loss
    assert len(imported) == 3 and len(called) == 2 and called < imported


def test_an_unregistered_loss_stops_at_start_up(tmp_path):
    p = train("algorithm.loss=not_a_loss", f"run_dir={tmp_path}", timeout=120)
    assert p.returncode == 1
    assert "config: algorithm.loss='not_a_loss' is not registered" in p.stderr
    assert "algorithm.modules" in p.stderr and "cispo" in p.stderr
    assert not (tmp_path / "base_model").exists()
    p = train(f"algorithm.modules=[{tmp_path / 'missing.py'}]", f"run_dir={tmp_path}", timeout=120)
    assert p.returncode == 1 and "algorithm.modules" in p.stderr and "not found" in p.stderr


def test_user_files_import_once_and_travel_as_text(tmp_path, monkeypatch):
    src = tmp_path / "adv.py"
    src.write_text("from cispo.advantages import register_advantage\n"
                   "@register_advantage('user_adv_once')\n"
                   "def adv(rewards, group_size, valid, **kw):\n"
                   "    return rewards * 0\n")
    (name, text, path), = user_modules.read([str(src)], "cispo_user_test", "algorithm.modules")
    try:
        assert user_modules.load_file(src, "cispo_user_test", "algorithm.modules") == name
        # a second import (the same file listed twice, or loaded again) registers nothing twice
        assert user_modules.load_source(name, text, path) == name
        # a rank on another machine gets the text: the path need not exist there
        monkeypatch.delitem(sys.modules, name)
        from cispo.advantages import ADVANTAGES

        monkeypatch.delitem(ADVANTAGES, "user_adv_once")
        user_modules.load_source(name, text, "/nonexistent/adv.py")
        assert "user_adv_once" in ADVANTAGES
    finally:
        sys.modules.pop(name, None)
        from cispo.advantages import ADVANTAGES

        ADVANTAGES.pop("user_adv_once", None)
    assert os.path.basename(path) == "adv.py"
