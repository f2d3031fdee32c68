"""`python -m cispo.report`: PNG curves (several runs overlaid) and the summary table, checked
without looking at a screenshot: the files are PNGs of the expected size whose pixels hold each
run's line colour; the table's windows never overlap."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cispo.report import table, windows

ROOT = Path(__file__).resolve().parent.parent


def write_run(d: Path, rewards: list[float]) -> Path:
    d.mkdir(parents=True)
    with open(d / "metrics.jsonl", "w") as f:
        for s, r in enumerate(rewards):
            f.write(json.dumps({"step": s, "reward/mean": r, "loss/policy": 0.1 - 0.001 * s,
                                "is_weight/clip_frac": 0.0, "time/step_s": 1.0 + (s % 3)}) + "\n")
    return d


def colour_pixels(png: Path, rgb: tuple[float, float, float], tol: float = 0.08) -> int:
    """Pixels within `tol` of `rgb` (a line of that colour was drawn there)."""
    import matplotlib.image as mpimg
    import numpy as np

    img = mpimg.imread(png)[..., :3]
    return int((np.abs(img - np.array(rgb)).max(axis=-1) < tol).sum())


def test_report_writes_png_curves_overlaid_for_several_runs(tmp_path):
    from matplotlib.colors import to_rgb

    a = write_run(tmp_path / "run_a", [0.01 * s for s in range(50)])
    b = write_run(tmp_path / "run_b", [0.02 * s for s in range(30)])
    out = tmp_path / "cmp"
    r = subprocess.run([sys.executable, "-m", "cispo.report", str(a), str(b), "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    names = {p.name for p in out.glob("*.png")}
    assert names == {"curves.png", "reward_mean.png", "loss_policy.png", "is_weight_clip_frac.png",
                     "time_step_s.png"}
    import matplotlib.image as mpimg

    for name in names:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        h, w = mpimg.imread(out / name).shape[:2]
        assert (w, h) == ((1680, 320) if name == "curves.png" else (600, 400))
    for png in (out / "reward_mean.png", out / "curves.png"):  # both runs drawn, in their colours
        assert colour_pixels(png, to_rgb("C0")) > 200 and colour_pixels(png, to_rgb("C1")) > 200
    # the table: each run's last window side by side, and how many steps each had
    assert "run_a" in r.stdout and "run_b" in r.stdout and "50; 20" in r.stdout and "30; 15" in r.stdout
    assert str(out / "curves.png") in r.stdout


def test_one_run_defaults_to_its_report_folder(tmp_path):
    a = write_run(tmp_path / "run", [0.5] * 4)
    r = subprocess.run([sys.executable, "-m", "cispo.report", str(a)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (a / "report" / "curves.png").is_file() and "first 2 steps" in r.stdout


def test_not_a_run_folder_is_one_message(tmp_path):
    r = subprocess.run([sys.executable, "-m", "cispo.report", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no metrics.jsonl" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("n, k", [(1, 0), (2, 1), (3, 1), (10, 5), (39, 19), (40, 20), (500, 20)])
def test_end_windows_never_overlap(n, k):
    assert windows(n) == k and 2 * windows(n) <= n


def test_short_run_table_does_not_compare_a_window_with_itself():
    """Issue 21: a 3-step run printed 'first 3 steps' and 'last 3 steps', the same numbers."""
    rows = [{"step": s, "reward/mean": float(s)} for s in range(3)]
    head, line = table({"r": rows})
    assert "first 1 step" in head and "last 1 step" in head
    assert line.split()[1:] == ["0", "2"]
    head, line = table({"r": rows[:1]})
    assert "all 1 step" in head and line.split()[1:] == ["0"]
