"""Benchmark: the report's Figure 2 in miniature — CISPO vs DAPO vs GRPO (docs/ablation.md).

    python bench/ablation.py --task fork [--seeds 12] [--arms ...] [--runs-root DIR]
    python bench/ablation.py --task fork --plot-only       # table + PNG from the JSON
    python bench/ablation.py --task fork --real-loop cispo_eh0.28 0   # one run through cispo.train
    python bench/ablation.py --task arithmetic [--seeds 5] [--algos cispo dapo grpo] [-- overrides]

`--task fork` (the default; bench/fork_task.py): reward needs a token that is rare under the
initial policy, 8 minibatch updates per rollout batch, CISPO over a grid of eps_high against
DAPO (0.2 / 0.28) and GRPO (0.2); every run in this process (no Ray / DeepSpeed start-up), so
5 arms x 12 seeds took 56 minutes on two shared cores (docs/ablation.md). Writes
bench/results/ablation_fork.json and docs/ablation_fork.png; resumable (finished runs are kept
in the JSON and skipped).

`--task arithmetic` (the first ablation, kept as it was):

Each run is the real training loop, `python -m cispo.train +exp=ablation` in a subprocess, with the
algorithm's overrides (ALGOS) and a seed. A seed fixes the tiny model's initial weights, the prompt
order and torch's RNG (`model.tiny.init_seed`, `data.seed`, `trainer.seed`); sampling seeds depend
on the step only, so for one seed all algorithms start from the same model and see the same prompt
order. Runs go seed by seed (every algorithm for seed 0, then seed 1, ...) so a cut-short ablation
still has whole seeds. The JSON is rewritten after every run; finished runs are skipped when it is
run again (resume), unless the step budget or threshold changed.

Steps to threshold: the first step at which the trailing `--window`-step mean of `reward/mean` is
>= `--threshold` (None: not reached within the budget; the median counts those as beyond it).
Prints a table and writes JSON + PNG. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Each algorithm with the hyper-parameters its paper uses where they apply (docs/ablation.md).
ALGOS: dict[str, list[str]] = {
    # M1: no lower bound on the IS weight (eps_low=1: the bound is 0); eps_high unpublished,
    # 0.28 (the config default, DAPO's value) is ours. Token-level normalisation.
    "cispo": ["algorithm.loss=cispo", "algorithm.eps_low=1.0", "algorithm.eps_high=0.28",
              "algorithm.normalization=token"],
    # DAPO: clip-higher 0.2 / 0.28, token-level normalisation, no KL.
    "dapo": ["algorithm.loss=dapo", "algorithm.eps_low=0.2", "algorithm.eps_high=0.28",
             "algorithm.normalization=token"],
    # GRPO (DeepSeekMath): symmetric 0.2 clip, per-sample normalisation; no KL (as in M1's runs).
    "grpo": ["algorithm.loss=grpo", "algorithm.eps_low=0.2", "algorithm.eps_high=0.2",
             "algorithm.normalization=sample"],
}


def seed_overrides(seed: int) -> list[str]:
    return [f"model.tiny.init_seed={seed}", f"data.seed={seed}", f"trainer.seed={seed}"]


def moving_mean(xs: list[float], window: int) -> list[float]:
    """Trailing mean over up to `window` values (fewer at the start); NaNs are left out."""
    out = []
    for i in range(len(xs)):
        part = [x for x in xs[max(0, i - window + 1):i + 1] if not math.isnan(x)]
        out.append(sum(part) / len(part) if part else float("nan"))
    return out


def steps_to_threshold(rewards: list[float], threshold: float, window: int) -> int | None:
    """First step (0-based) whose trailing `window`-step mean reward is >= threshold; the first
    `window - 1` steps do not count (their mean is over fewer steps). None: never."""
    for i, m in enumerate(moving_mean(rewards, window)):
        if i >= window - 1 and m >= threshold:
            return i
    return None


def censored_median(values: list[int | None], budget: int) -> float | None:
    """Median with runs that never reached the threshold counted as beyond the budget; None if
    that median is itself beyond it (more than half never reached)."""
    if not values:
        return None
    m = statistics.median([budget + 1 if v is None else v for v in values])
    return None if m > budget else float(m)


def read_run(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x] if path.exists() else []


def run_record(rows: list[dict], threshold: float, window: int, wall_s: float | None) -> dict:
    rewards = [float(r.get("reward/mean", float("nan"))) for r in rows]
    step_s = [r["time/step_s"] for r in rows if "time/step_s" in r]
    clip = [r["is_weight/clip_frac"] for r in rows if "is_weight/clip_frac" in r]
    # per off-policy round: the mean over steps of the share of tokens outside the clip range
    # and of the largest IS weight (how far the minibatch rounds drift, and how often it binds)
    rounds = sorted({int(k.split("/")[1][6:]) for r in rows for k in r if k.startswith("is/round_")})
    per_round = {f"round_{k}": {stat: statistics.mean(r[f"is/round_{k}/{stat}"] for r in rows
                                                      if math.isfinite(r.get(f"is/round_{k}/{stat}", math.nan)))
                                for stat in ("clip_frac", "max")} for k in rounds}
    return {"steps": len(rows), "rewards": rewards, "per_round": per_round,
            "steps_to_threshold": steps_to_threshold(rewards, threshold, window),
            "final_reward": statistics.mean(rewards[-window:]) if rewards else None,
            "wall_s": wall_s, "median_step_s": statistics.median(step_s) if step_s else None,
            "clip_frac_mean": statistics.mean(clip) if clip else None}


def summarise(runs: dict, algos: list[str], budget: int) -> dict:
    out = {}
    for a in algos:
        recs = [r for k, r in sorted(runs.items()) if k.split("/")[0] == a]
        sts = [r["steps_to_threshold"] for r in recs]
        reached = sorted(v for v in sts if v is not None)
        finals = [r["final_reward"] for r in recs if r["final_reward"] is not None]
        out[a] = {"seeds": len(recs), "reached": len(reached),
                  "median_steps": censored_median(sts, budget),
                  "steps_reached": reached,
                  "min_steps": reached[0] if reached else None,
                  "max_steps": reached[-1] if reached else None,
                  "final_reward_median": statistics.median(finals) if finals else None,
                  "final_reward_min": min(finals) if finals else None,
                  "final_reward_max": max(finals) if finals else None}
    return out


def table(summary: dict, budget: int) -> str:
    def f(x, fmt="{:.0f}"):
        return "-" if x is None else fmt.format(x)

    lines = ["algorithm | seeds | reached | median steps to threshold | steps (reached runs) | "
             "final reward median [min, max]"]
    for a, s in summary.items():
        med = f(s["median_steps"]) if s["median_steps"] is not None else f"> {budget}"
        lines.append(f"{a} | {s['seeds']} | {s['reached']}/{s['seeds']} | {med} | "
                     f"{', '.join(map(str, s['steps_reached'])) or '-'} | "
                     f"{f(s['final_reward_median'], '{:.3f}')} [{f(s['final_reward_min'], '{:.3f}')}, "
                     f"{f(s['final_reward_max'], '{:.3f}')}]")
    return "\n".join(lines)


def plot(doc: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    algos, w, thr = doc["algos"], doc["window"], doc["threshold"]
    colors = dict(zip(algos, ["tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange"], strict=False))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    for a in algos:
        curves = [moving_mean(r["rewards"], w) for k, r in sorted(doc["runs"].items()) if k.split("/")[0] == a]
        for c in curves:
            ax.plot(c, color=colors[a], alpha=0.25, lw=0.8)
        if curves:
            n = min(len(c) for c in curves)
            med = [statistics.median(c[i] for c in curves) for i in range(n)]
            ax.plot(med, color=colors[a], lw=2.2, label=f"{a} (median of {len(curves)} seeds)")
    ax.axhline(thr, color="k", ls="--", lw=0.8, label=f"threshold {thr}")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"reward ({w}-step trailing mean)")
    ax.set_title("reward curves (thin: one seed each)")
    ax.legend(loc="upper left", fontsize=8)
    budget = doc["steps"]
    for i, a in enumerate(algos):
        sts = [r["steps_to_threshold"] for k, r in sorted(doc["runs"].items()) if k.split("/")[0] == a]
        ys = [budget + 5 if v is None else v for v in sts]
        bx.scatter([i + (j - (len(ys) - 1) / 2) * 0.06 for j in range(len(ys))], ys, color=colors[a],
                   marker="o", zorder=3)
        med = doc["summary"].get(a, {}).get("median_steps")
        if med is not None:
            bx.hlines(med, i - 0.3, i + 0.3, color=colors[a], lw=2)
    bx.axhline(budget, color="gray", ls=":", lw=0.8)
    bx.text(-0.45, budget + 5, "not reached", ha="left", va="center", fontsize=8, color="gray")
    bx.set_ylim(0, budget + 12)
    bx.set_xticks(range(len(algos)), algos)
    bx.set_ylabel("steps to threshold (bar: median)")
    bx.set_title("steps to reach the threshold, per seed")
    fig.suptitle(f"CISPO vs DAPO vs GRPO, tiny model, `+exp={doc['exp']}` ({doc['steps']} steps, "
                 f"commit {doc['commit'][:8]})", fontsize=10)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# ------------------------------------------------------------------------------ --task fork
# Arms: the loss settings of each (bench/fork_task.RunConfig fields). CISPO: no lower bound
# (eps_low 1), eps_high over a small grid (M1 does not publish its value): 0.28 (DAPO's, the
# config default), 1 and 4. DAPO: its published clip-higher range 0.2 / 0.28, token-level
# normalisation. GRPO: 0.2 / 0.2, per-sample normalisation (no KL, as in M1's comparison).
FORK_ARMS: dict[str, dict] = {
    "cispo_eh0.28": {"loss": "cispo", "eps_low": 1.0, "eps_high": 0.28, "normalization": "token"},
    "cispo_eh1": {"loss": "cispo", "eps_low": 1.0, "eps_high": 1.0, "normalization": "token"},
    "cispo_eh4": {"loss": "cispo", "eps_low": 1.0, "eps_high": 4.0, "normalization": "token"},
    "dapo": {"loss": "dapo", "eps_low": 0.2, "eps_high": 0.28, "normalization": "token"},
    "grpo": {"loss": "grpo", "eps_low": 0.2, "eps_high": 0.2, "normalization": "sample"},
}
# The primary comparison, fixed before the runs: CISPO and DAPO with the same clip range, so
# the one difference is whether a clipped token keeps its gradient.
PRIMARY = ("cispo_eh0.28", "dapo")
# Fixed from probe runs on seed 1000 (not one of the ablation's seeds): at 1e-4 the marker's IS
# ratio stays within 1.2 over a rollout batch's 8 updates (no loss clips it: the arms would not
# differ); at 1e-3 the policy is wrecked in 2-3 steps; 3e-4 moves it out of [0.8, 1.28] by the
# later rounds while the run stays stable.
FORK_LR = 3e-4
FORK_STEPS = 30
FORK_THRESHOLD = 0.5  # half the samples right (the initial policy: ~2%)
FORK_WINDOW = 3


def sign_test(a: list[int | None], b: list[int | None], budget: int) -> dict:
    """Paired two-sided sign test of steps to threshold (a run that never reached it counts as
    budget + 1; a tie is left out). `a_faster`: seeds where a needed fewer steps."""
    a_ = [budget + 1 if v is None else v for v in a]
    b_ = [budget + 1 if v is None else v for v in b]
    wins = sum(x < y for x, y in zip(a_, b_, strict=True))
    losses = sum(x > y for x, y in zip(a_, b_, strict=True))
    n = wins + losses
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2**n if n else 1.0
    diffs = [x - y for x, y in zip(a_, b_, strict=True)]
    return {"a_faster": wins, "b_faster": losses, "ties": len(a_) - n, "p_two_sided": min(1.0, 2 * tail),
            "median_diff": statistics.median(diffs) if diffs else None, "diffs": diffs}


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return statistics.mean(xs) if xs else None


def fork_record(rows: list[dict], threshold: float, window: int, wall_s: float) -> dict:
    rewards = [r["reward"] for r in rows]
    K = len(rows[0]["round_clip_frac"])
    return {"steps": len(rows), "wall_s": wall_s, "rewards": rewards,
            "p_fork": [r["p_fork"] for r in rows], "fork_sampled": [r["fork_sampled"] for r in rows],
            "entropy_first": [r["entropy_first"] for r in rows],
            "clip_frac": [r["clip_frac"] for r in rows],
            "fork_tokens": [r["fork_tokens"] for r in rows],
            "fork_dropped_frac": [r["fork_dropped_frac"] for r in rows],
            "fork_clipped_frac": [r["fork_clipped_frac"] for r in rows],
            "round_clip_frac": [_mean(r["round_clip_frac"][k] for r in rows) for k in range(K)],
            "steps_to_threshold": steps_to_threshold(rewards, threshold, window),
            "final_reward": statistics.mean(rewards[-window:])}


def _pooled(recs: list[dict], key: str, rare_below: float = 1.0) -> float | None:
    """A per-step fraction over fork tokens, pooled over steps and runs (weighted by tokens);
    only the steps whose P(fork) was below `rare_below` (the rising phase, where it matters)."""
    num = den = 0.0
    for r in recs:
        for f, n, p in zip(r[key], r["fork_tokens"], r["p_fork"], strict=True):
            if n and p < rare_below:
                num, den = num + f * n, den + n
    return num / den if den else None


def fork_summary(runs: dict, arms: list[str], budget: int) -> dict:
    out = {}
    for a in arms:
        recs = [r for k, r in sorted(runs.items()) if k.split("/")[0] == a]
        if not recs:
            continue
        sts = [r["steps_to_threshold"] for r in recs]
        full = sorted(budget + 1 if v is None else v for v in sts)
        finals = [r["final_reward"] for r in recs]
        q = statistics.quantiles(full, n=4) if len(full) > 1 else [full[0]] * 3
        out[a] = {"seeds": len(recs), "reached": sum(v is not None for v in sts),
                  "median_steps": censored_median(sts, budget),
                  "q1_steps": q[0], "q3_steps": q[2], "min_steps": full[0], "max_steps": full[-1],
                  "steps_per_seed": [r["steps_to_threshold"] for r in sorted(recs, key=lambda r: r["seed"])],
                  "final_reward_median": statistics.median(finals),
                  "final_reward_min": min(finals), "final_reward_max": max(finals),
                  "p_fork_median_at": {s: statistics.median(r["p_fork"][s] for r in recs)
                                       for s in (0, 2, 5, 10, 20, budget - 1) if s < budget},
                  "clip_frac_mean": _mean(_mean(r["clip_frac"]) for r in recs),
                  "round_clip_frac": [_mean(r["round_clip_frac"][k] for r in recs)
                                      for k in range(len(recs[0]["round_clip_frac"]))],
                  "fork_clipped_frac": _pooled(recs, "fork_clipped_frac"),
                  "fork_dropped_frac": _pooled(recs, "fork_dropped_frac"),
                  # while the fork token is still the rarer choice (P < 0.5 at the step's start)
                  "fork_clipped_frac_rare": _pooled(recs, "fork_clipped_frac", 0.5),
                  "fork_dropped_frac_rare": _pooled(recs, "fork_dropped_frac", 0.5),
                  "wall_s_median": statistics.median(r["wall_s"] for r in recs)}
    return out


def fork_tests(runs: dict, arms: list[str], budget: int) -> dict:
    """Paired sign tests over the seeds both arms ran: every arm against dapo and grpo."""
    out = {}
    for a in arms:
        for b in ("dapo", "grpo"):
            if a == b or b not in arms or (a, b) == ("grpo", "dapo"):
                continue
            seeds = sorted({r["seed"] for k, r in runs.items() if k.split("/")[0] == a}
                           & {r["seed"] for k, r in runs.items() if k.split("/")[0] == b})
            if seeds:
                out[f"{a} vs {b}"] = {"seeds": seeds, **sign_test(
                    [runs[f"{a}/seed{s}"]["steps_to_threshold"] for s in seeds],
                    [runs[f"{b}/seed{s}"]["steps_to_threshold"] for s in seeds], budget)}
    return out


def fork_table(doc: dict) -> str:
    budget = doc["steps"]

    def f(x, fmt="{:.0f}"):
        return "-" if x is None else fmt.format(x)

    lines = ["arm | seeds | reached | median steps [q1, q3] (min-max) | final reward median [min, max] | "
             "P(fork) step 0 / 5 / 10 | clipped tokens (all) | fork tokens outside range / without gradient "
             "(all steps; steps with P(fork) < 0.5)"]
    for a, s in doc["summary"].items():
        med = f(s["median_steps"]) if s["median_steps"] is not None else f"> {budget}"
        pf = s["p_fork_median_at"]
        lines.append(
            f"{a} | {s['seeds']} | {s['reached']}/{s['seeds']} | {med} [{f(s['q1_steps'], '{:g}')}, "
            f"{f(s['q3_steps'], '{:g}')}] ({s['min_steps']}-{s['max_steps']}) | "
            f"{s['final_reward_median']:.3f} [{s['final_reward_min']:.3f}, {s['final_reward_max']:.3f}] | "
            f"{pf.get(0, pf.get('0', 0)):.3f} / {pf.get(5, pf.get('5', 0)):.3f} / {pf.get(10, pf.get('10', 0)):.3f} | "
            f"{f(s['clip_frac_mean'], '{:.2%}')} | {f(s['fork_clipped_frac'], '{:.0%}')} / "
            f"{f(s['fork_dropped_frac'], '{:.0%}')}; {f(s.get('fork_clipped_frac_rare'), '{:.0%}')} / "
            f"{f(s.get('fork_dropped_frac_rare'), '{:.0%}')}")
    lines.append("")
    lines.append("paired sign test (steps to threshold) | a faster / b faster / ties | median diff (a-b) | p (two-sided)")
    for k, t in doc["tests"].items():
        lines.append(f"{k} | {t['a_faster']} / {t['b_faster']} / {t['ties']} | {t['median_diff']:+g} | "
                     f"{t['p_two_sided']:.3g}")
    return "\n".join(lines)


def fork_plot(doc: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms, w, thr, budget = list(doc["summary"]), doc["window"], doc["threshold"], doc["steps"]
    colors = {"cispo_eh0.28": "tab:red", "cispo_eh1": "darkred", "cispo_eh4": "salmon",
              "dapo": "tab:blue", "grpo": "tab:green"}
    fig, (ax, px, bx) = plt.subplots(1, 3, figsize=(16, 4.6), gridspec_kw={"width_ratios": [2, 2, 1.3]})
    for a in arms:
        runs = [r for k, r in sorted(doc["runs"].items()) if k.split("/")[0] == a]
        for key, axis in (("rewards", ax), ("p_fork", px)):
            curves = [moving_mean(r[key], w) if key == "rewards" else r[key] for r in runs]
            for c in curves:
                axis.plot(c, color=colors[a], alpha=0.15, lw=0.7)
            med = [statistics.median(c[i] for c in curves) for i in range(min(map(len, curves)))]
            axis.plot(med, color=colors[a], lw=2.2, label=f"{a} (median of {len(curves)})")
    ax.axhline(thr, color="k", ls="--", lw=0.8, label=f"threshold {thr}")
    ax.set(xlabel="training step", ylabel=f"reward ({w}-step trailing mean)", title="reward (thin: one seed each)")
    ax.legend(loc="lower right", fontsize=7)
    px.set_yscale("log")
    px.set(xlabel="training step", ylabel="P(<wait> first), mean over the step's prompts",
           title="the fork token's probability under the policy")
    for i, a in enumerate(arms):
        ys = [budget + 2 if v is None else v for v in doc["summary"][a]["steps_per_seed"]]
        bx.scatter([i + (j - (len(ys) - 1) / 2) * 0.05 for j in range(len(ys))], ys, color=colors[a], s=12, zorder=3)
        med = doc["summary"][a]["median_steps"]
        if med is not None:
            bx.hlines(med, i - 0.3, i + 0.3, color=colors[a], lw=2)
    top = max(budget + 2 if v is None else v for a in arms for v in doc["summary"][a]["steps_per_seed"])
    if top > budget:
        bx.axhline(budget, color="gray", ls=":", lw=0.8)
    bx.set_ylim(0, top + 2)
    bx.set_xticks(range(len(arms)), arms, rotation=30, fontsize=8)
    bx.set(ylabel="steps to threshold (bar: median)", title="per seed")
    fig.suptitle(f"fork-token task: {doc['config']['minibatches']} minibatch updates per rollout batch, "
                 f"lr {doc['config']['lr']:g}, {budget} steps (commit {doc['commit'][:8]})", fontsize=10)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)


def main_fork(args) -> None:
    sys.path.append(str(ROOT / "bench"))  # last: bench/rollout.py must not shadow the package
    import fork_task

    out = args.out or ROOT / "bench/results/ablation_fork.json"
    png = args.png or ROOT / "docs/ablation_fork.png"
    steps = args.steps or FORK_STEPS
    config = {"steps": steps, "lr": args.lr, "minibatches": fork_task.RunConfig.minibatches,
              "prompts_per_step": fork_task.RunConfig.prompts_per_step,
              "group_size": fork_task.RunConfig.group_size}
    doc = json.loads(out.read_text()) if out.exists() else {}
    if doc and not args.plot_only and doc.get("config") != config:
        sys.exit(f"{out} holds a fork ablation with other settings ({doc.get('config')}); move it "
                 f"away or pass --out")
    if not doc:
        doc = {"task": "fork", "config": config, "steps": steps, "runs": {}, "commit": git_commit(),
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "python": platform.python_version()},
               "arms": FORK_ARMS, "primary": PRIMARY, "bases": {}}
    doc.update(threshold=args.threshold, window=args.window)

    def save() -> None:
        for r in doc["runs"].values():
            r["steps_to_threshold"] = steps_to_threshold(r["rewards"], args.threshold, args.window)
            r["final_reward"] = statistics.mean(r["rewards"][-args.window:])
        arms = [a for a in FORK_ARMS if any(k.split("/")[0] == a for k in doc["runs"])]
        doc["summary"] = fork_summary(doc["runs"], arms, steps)
        doc["tests"] = fork_tests(doc["runs"], arms, steps)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(out)

    t_start = time.monotonic()
    for seed in range(0 if args.plot_only else args.seeds):
        base = args.runs_root / "base" / f"seed{seed}"
        t0 = time.monotonic()
        doc["bases"][str(seed)] = fork_task.build_base(base, seed)
        print(f"[{time.strftime('%H:%M:%S')}] base model seed {seed}: {doc['bases'][str(seed)]} "
              f"({time.monotonic() - t0:.0f}s)", flush=True)
        for a in args.arms:
            key = f"{a}/seed{seed}"
            if doc["runs"].get(key, {}).get("steps") == steps:
                continue  # finished earlier (resume)
            t0 = time.monotonic()
            rows = fork_task.train(base, fork_task.RunConfig(**FORK_ARMS[a], steps=steps, lr=args.lr, seed=seed))
            doc["runs"][key] = {"seed": seed, "arm": a,
                                **fork_record(rows, args.threshold, args.window, time.monotonic() - t0)}
            save()
            r = doc["runs"][key]
            print(f"[{time.strftime('%H:%M:%S')}] {key}: {r['wall_s']:.0f}s, steps to threshold "
                  f"{r['steps_to_threshold']}, final reward {r['final_reward']:.3f}, "
                  f"P(fork) {r['p_fork'][0]:.3f} -> {r['p_fork'][-1]:.3f}", flush=True)
    if not args.plot_only:
        doc.setdefault("wall_s_sessions", []).append(time.monotonic() - t_start)
    save()
    print(fork_table(doc))
    fork_plot(doc, png)
    print(f"wrote {out} and {png}")


def real_loop(args) -> None:
    """One arm and seed of the fork task through the real loop (`python -m cispo.train`): Ray
    engines, DeepSpeed ZeRO-3 learner, the reward in its worker process. Prints its rewards and
    P(fork)-sampled per step next to the in-process run's, from the JSON if that run is there."""
    sys.path.append(str(ROOT / "bench"))  # last: bench/rollout.py must not shadow the package
    import fork_task

    arm, seed = args.real_loop[0], int(args.real_loop[1])
    steps = args.steps or FORK_STEPS
    base = args.runs_root / "base" / f"seed{seed}"
    fork_task.build_base(base, seed)
    data = args.runs_root / "fork_rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in fork_task.rows(2000, 0)))
    run_dir = args.runs_root / f"real-{arm}-seed{seed}"
    subprocess.run(["rm", "-rf", str(run_dir)], check=True)
    a = FORK_ARMS[arm]
    cmd = [sys.executable, "-m", "cispo.train", "+exp=ablation", f"run_dir={run_dir}",
           f"model.name={base}", f"data.source={data}", f"data.seed={seed}", f"trainer.seed={seed}",
           "reward.modules=[bench/fork_reward.py]", "reward.default=fork",
           "++reward.sources={fork: fork, math: fork, arithmetic: fork}",  # only the fork reward
           "rollout.max_new_tokens=3", "rollout.prompts_per_step=16", "rollout.group_size=16",
           f"algorithm.num_minibatches={fork_task.RunConfig.minibatches}", f"learner.lr={args.lr}",
           f"trainer.total_steps={steps}", "logging.progress=false",
           f"algorithm.loss={a['loss']}", f"algorithm.eps_low={a['eps_low']}",
           f"algorithm.eps_high={a['eps_high']}", f"algorithm.normalization={a['normalization']}"]
    print(" ".join(cmd[2:]), flush=True)
    t0 = time.monotonic()
    subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    rows = read_run(run_dir)
    rewards = [r["reward/mean"] for r in rows]
    fork = [r.get("reward/fork/fork", math.nan) for r in rows]
    out = args.out or ROOT / "bench/results/ablation_fork.json"
    ref = json.loads(out.read_text())["runs"].get(f"{arm}/seed{seed}") if out.exists() else None
    print(f"real loop {arm} seed {seed}: {time.monotonic() - t0:.0f}s, steps to threshold "
          f"{steps_to_threshold(rewards, args.threshold, args.window)}"
          + (f" (in-process run: {ref['steps_to_threshold']})" if ref else ""))
    print("step | reward real / in-process | fork sampled real / in-process | clip frac real / in-process")
    for i, r in enumerate(rows):
        other = (f"{ref['rewards'][i]:.3f}", f"{ref['fork_sampled'][i]:.3f}", f"{ref['clip_frac'][i]:.3f}") \
            if ref and i < len(ref["rewards"]) else ("-", "-", "-")
        print(f"{i} | {rewards[i]:.3f} / {other[0]} | {fork[i]:.3f} / {other[1]} | "
              f"{r['is_weight/clip_frac']:.3f} / {other[2]}")
    summary = {"arm": arm, "seed": seed, "run_dir": str(run_dir), "wall_s": time.monotonic() - t0,
               "rewards": rewards, "fork_sampled": fork,
               "clip_frac": [r["is_weight/clip_frac"] for r in rows],
               "steps_to_threshold": steps_to_threshold(rewards, args.threshold, args.window)}
    path = ROOT / "bench/results" / f"ablation_fork_real_{arm}_seed{seed}.json"
    path.write_text(json.dumps(summary, indent=1))
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=["fork", "arithmetic"], default="fork")
    ap.add_argument("--exp", default="ablation", help="arithmetic: the experiment config (conf/exp/NAME.yaml)")
    ap.add_argument("--algos", nargs="+", default=list(ALGOS), choices=list(ALGOS), help="arithmetic")
    ap.add_argument("--arms", nargs="+", default=list(FORK_ARMS), choices=list(FORK_ARMS), help="fork")
    ap.add_argument("--seeds", type=int, default=None, help="fork: 12, arithmetic: 5")
    ap.add_argument("--steps", type=int, default=None, help="step budget (arithmetic: the exp's total_steps)")
    ap.add_argument("--threshold", type=float, default=None, help="fork: 0.5, arithmetic: 0.4")
    ap.add_argument("--window", type=int, default=None, help="fork: 3, arithmetic: 10")
    ap.add_argument("--lr", type=float, default=FORK_LR, help="fork: the learning rate of every arm")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--png", type=Path, default=None)
    ap.add_argument("--runs-root", type=Path, default=None)
    ap.add_argument("--plot-only", action="store_true")
    ap.add_argument("--real-loop", nargs=2, metavar=("ARM", "SEED"),
                    help="fork: run one arm and seed through `python -m cispo.train` instead")
    ap.add_argument("overrides", nargs="*", help="arithmetic: extra Hydra overrides for every run")
    args = ap.parse_args()
    fork = args.task == "fork"
    defaults = {"seeds": 12 if fork else 5, "threshold": FORK_THRESHOLD if fork else 0.4,
                "window": FORK_WINDOW if fork else 10,
                "runs_root": Path("/tmp/cispo-ablation-fork" if fork else "/tmp/cispo-ablation")}
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if not fork:
        return main_arithmetic(args)
    if args.real_loop:
        return real_loop(args)
    return main_fork(args)


def main_arithmetic(args) -> None:
    """The first ablation: real `cispo.train` runs of +exp=ablation, one subprocess each."""
    out = args.out or ROOT / "bench/results/ablation.json"
    png = args.png or ROOT / "docs/ablation.png"
    steps = args.steps
    if steps is None:
        from omegaconf import OmegaConf

        steps = int(OmegaConf.load(ROOT / f"conf/exp/{args.exp}.yaml").trainer.total_steps)
    doc = json.loads(out.read_text()) if out.exists() else {}
    same = (doc.get("steps") == steps and doc.get("exp") == args.exp
            and doc.get("overrides") == args.overrides)
    if not args.plot_only and doc and not same:
        sys.exit(f"{out} holds an ablation with other settings (exp, steps or overrides); "
                 f"move it away or pass --out")
    if not doc:
        doc = {"exp": args.exp, "steps": steps, "overrides": args.overrides, "runs": {},
               "commit": git_commit(),
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "python": platform.python_version()},
               "algo_overrides": {a: ALGOS[a] for a in args.algos}}
    doc.update(threshold=args.threshold, window=args.window, algos=args.algos)

    def save() -> None:
        for r in doc["runs"].values():  # threshold/window may have changed: recompute
            if "per_round" not in r and read_run(Path(r["run_dir"])):  # JSON of an older version
                r["per_round"] = run_record(read_run(Path(r["run_dir"])), 0, 1, None)["per_round"]
            r["steps_to_threshold"] = steps_to_threshold(r["rewards"], args.threshold, args.window)
        doc["summary"] = summarise(doc["runs"], args.algos, steps)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(out)

    for seed in range(0 if args.plot_only else args.seeds):
        for a in args.algos:
            key = f"{a}/seed{seed}"
            if doc["runs"].get(key, {}).get("steps") == steps:
                continue  # finished earlier (resume)
            run_dir = args.runs_root / f"{a}-seed{seed}"
            if run_dir.exists():  # a run cut short earlier: start it again from scratch
                subprocess.run(["rm", "-rf", str(run_dir)], check=True)
            run_dir.mkdir(parents=True)
            cmd = [sys.executable, "-m", "cispo.train", f"+exp={args.exp}", f"run_dir={run_dir}",
                   f"trainer.total_steps={steps}", "logging.progress=false", "logging.wandb_mode=disabled",
                   *ALGOS[a], *seed_overrides(seed), *args.overrides]
            print(f"[{time.strftime('%H:%M:%S')}] {key}: {' '.join(cmd[2:])}", flush=True)
            t0 = time.monotonic()
            with open(run_dir / "stdout.log", "w") as log:
                rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                    env={**os.environ, "PYTHONPATH": str(ROOT)}).returncode
            rows = read_run(run_dir)
            if rc != 0 or len(rows) != steps:
                sys.exit(f"{key} failed (exit {rc}, {len(rows)}/{steps} steps); see {run_dir}/stdout.log")
            doc["runs"][key] = {"seed": seed, "algo": a, "run_dir": str(run_dir),
                                **run_record(rows, args.threshold, args.window, time.monotonic() - t0)}
            save()
            r = doc["runs"][key]
            print(f"  {r['steps']} steps in {r['wall_s']:.0f}s (median {r['median_step_s']:.2f} s/step), "
                  f"steps to threshold {r['steps_to_threshold']}, final reward {r['final_reward']:.3f}",
                  flush=True)
    save()
    print(table(doc["summary"], steps))
    plot(doc, png)
    print(f"wrote {out} and {png}")



if __name__ == "__main__":
    main()
