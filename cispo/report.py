"""`python -m cispo.report RUN_DIR [RUN_DIR ...]`: curves and a summary table of finished (or
running) runs, from their `metrics.jsonl`.

Writes one PNG per main metric (`reward_mean.png`, `loss_policy.png`, ...) and `curves.png`
with all of them, each run a line (several runs overlaid, the same colour for a run in every
panel), into `--out` (default: `RUN_DIR/report/` for one run, `compare-<names>/` beside the
first run for several), and prints the summary table: per metric, the mean over the first and
the last steps of a run (windows of up to 20 steps that never overlap), or each run's last
window side by side. The end-of-run table of `python -m cispo.train` is the same table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

# is/round_1/clip_frac: the first off-policy round's clip fraction (algorithm.num_minibatches > 1)
SUMMARY_KEYS = ["reward/mean", "loss/policy", "is_weight/clip_frac", "is/round_1/clip_frac",
                "logprob/train_rollout_pearson", "logprob/entropy_mean", "response/length_mean",
                "reward/errors", "time/step_s"]
PLOT_KEYS = ["reward/mean", "loss/policy", "is_weight/clip_frac", "logprob/train_rollout_pearson",
             "logprob/entropy_mean", "response/length_mean", "grad/norm", "time/step_s"]
WINDOW = 20  # steps averaged at each end of a run


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl (a run folder has one from its first step)")
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def windows(n: int) -> int:
    """Steps in each end window: up to WINDOW, and at most half the run, so that the first and
    the last window never share a step (a 10-step run compares steps 1-5 with 6-10; a run of one
    step has a single window)."""
    return min(WINDOW, n // 2)


def _mean(rows: list[dict], key: str) -> str:
    vals = [r[key] for r in rows if isinstance(r.get(key), int | float) and math.isfinite(r[key])]
    return f"{sum(vals) / len(vals):.4g}" if vals else "-"


def _steps(k: int) -> str:
    return f"{k} step{'s' if k != 1 else ''}"


def table(runs: dict[str, list[dict]]) -> list[str]:
    """The summary table: one run, its first and last window; several, each one's last window."""
    keys = [k for k in SUMMARY_KEYS if any(k in r for rows in runs.values() for r in rows)]
    if len(runs) == 1:
        (rows,) = runs.values()
        k = windows(len(rows))
        if k == 0:
            head, cols = [f"all {_steps(len(rows))}"], [rows]
        else:
            head, cols = [f"first {_steps(k)}", f"last {_steps(k)}"], [rows[:k], rows[-k:]]
    else:
        head = [f"{name[-16:]}" for name in runs]
        cols = [rows[-(windows(len(rows)) or len(rows)):] for rows in runs.values()]
    out = [f"  {'metric':32} " + " ".join(f"{h:>16}" for h in head)]
    if len(runs) > 1:
        out.append(f"  {'(steps; last window)':32} " + " ".join(
            f"{f'{len(r)}; {windows(len(r)) or len(r)}':>16}" for r in runs.values()))
    out += [f"  {key:32} " + " ".join(f"{_mean(c, key):>16}" for c in cols) for key in keys]
    return out


def summary(run_dir: Path) -> str:
    """The end-of-run table of one run."""
    rows = read_metrics(run_dir)
    return "\n".join([f"done: {len(rows)} steps in {run_dir}", *table({str(run_dir): rows}),
                      f"  metrics: {Path(run_dir) / 'metrics.jsonl'}",
                      f"  samples: {Path(run_dir) / 'samples.jsonl'}",
                      f"  policy:  {Path(run_dir) / 'final_model'}",
                      f"  curves:  python -m cispo.report {run_dir}"])


def _smooth(ys: list[float], width: int) -> list[float]:
    """Trailing moving average over the finite values (NaN steps are left out)."""
    out, window = [], []
    for y in ys:
        if math.isfinite(y):
            window = (window + [y])[-width:]
        out.append(sum(window) / len(window) if window else float("nan"))
    return out


def plot(runs: dict[str, list[dict]], out_dir: Path, keys: list[str] | None = None) -> list[Path]:
    """One PNG per metric that any run has, plus curves.png with all of them; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    keys = [k for k in (keys or PLOT_KEYS) if any(k in r for rows in runs.values() for r in rows)]
    if not keys:
        raise ValueError("none of the metrics to plot is in these runs' metrics.jsonl")
    out_dir.mkdir(parents=True, exist_ok=True)
    colours = {name: f"C{i % 10}" for i, name in enumerate(runs)}
    cols = min(4, len(keys))
    grid_rows = -(-len(keys) // cols)
    fig_all, axes = plt.subplots(grid_rows, cols, figsize=(4.2 * cols, 3.2 * grid_rows), squeeze=False)
    written = []
    for i, key in enumerate(keys):
        fig, ax = plt.subplots(figsize=(6, 4))
        for target in (ax, axes[i // cols][i % cols]):
            _draw(target, key, runs, colours)
        fig.tight_layout()
        path = out_dir / f"{key.replace('/', '_')}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    for j in range(len(keys), grid_rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig_all.tight_layout()
    fig_all.savefig(out_dir / "curves.png", dpi=100)
    plt.close(fig_all)
    return [out_dir / "curves.png", *written]


def _draw(ax, key: str, runs: dict[str, list[dict]], colours: dict[str, str]) -> None:
    for name, rows in runs.items():
        pts = [(r["step"], float(r[key])) for r in rows if isinstance(r.get(key), int | float)]
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        width = max(1, len(xs) // 20)
        if width > 1:  # the raw curve faint, its moving average on top
            ax.plot(xs, ys, color=colours[name], alpha=0.25, linewidth=1)
            ax.plot(xs, _smooth(list(ys), width), color=colours[name], linewidth=2, label=name)
        else:
            ax.plot(xs, ys, color=colours[name], linewidth=2, marker="o" if len(xs) < 20 else None,
                    markersize=3, label=name)
    ax.set_title(key)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if len(runs) > 1:
        ax.legend(fontsize=7)


def default_out(run_dirs: list[Path]) -> Path:
    if len(run_dirs) == 1:
        return run_dirs[0] / "report"
    names = "-".join(d.resolve().name for d in run_dirs)[:80]
    return run_dirs[0].resolve().parent / f"compare-{names}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cispo.report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    ap.add_argument("--out", type=Path, default=None, help="folder for the PNGs (see above)")
    ap.add_argument("--metrics", default=None,
                    help=f"comma-separated keys to plot (default: {','.join(PLOT_KEYS)})")
    args = ap.parse_args(argv)
    runs: dict[str, list[dict]] = {}
    for d in args.run_dirs:
        try:
            rows = read_metrics(d)
        except FileNotFoundError as e:
            ap.error(str(e))
        name = d.resolve().name
        runs[name if name not in runs else str(d)] = rows
    out = args.out or default_out(args.run_dirs)
    try:
        paths = plot(runs, out, args.metrics.split(",") if args.metrics else None)
    except ValueError as e:
        ap.error(str(e))
    for name, rows in runs.items():
        print(f"{name}: {len(rows)} steps")
    print("\n".join(table(runs)))
    print(f"curves: {paths[0]} (and {len(paths) - 1} PNGs, one per metric, in {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
