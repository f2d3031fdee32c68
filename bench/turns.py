"""Benchmark: multi-turn episodes with each episode's cache kept between turns, against
prefilling the whole conversation again at every turn (`rollout.engine=hf`).

    python bench/turns.py [--episodes 16] [--group 4] [--prompt-len 256] [--turns 6] [--new 32]
                          [--obs 64] [--hidden 256] [--layers 4] [--experts 4] [--vocab 0]
                          [--device cpu] [--dtype float32] [--out bench/results]

A random hybrid MiniMax (lightning layers then one softmax layer, MoE top-2; bench/rollout.py's
builder) plays `--episodes` episodes (episodes / group prompts × group samples) in an environment
that answers every turn with an observation of `--obs` characters and never ends them, so each
episode takes `--turns` turns of at most `--new` tokens. Both arms draw the same tokens (the
sampling noise follows the episode, not the batch; in bf16 the two arms' roundings differ, and
an episode may part ways at a near-tie: both are reported); the table gives wall seconds of the second
of two calls (the first pays one-time costs), the tokens forwarded through prefills, and the
model tokens generated. Asserts nothing about speed; writes turns.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

# bench/ first on sys.path (python bench/turns.py) would shadow the `rollout` package
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))


def _bench_rollout():
    spec = importlib.util.spec_from_file_location("bench_rollout", HERE / "rollout.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Answers:
    """Answers every turn with the same observation; never done (the turn limit ends episodes)."""

    def __init__(self, obs: str):
        self.obs = obs

    def reset(self, task: dict) -> str:
        return ""

    def step(self, text: str):
        return self.obs, False, {"tool_calls": 1, "errors": 0}


def run(engine, args, keep: bool) -> dict:
    from rollout.episodes import EpisodeLimits, run_episodes
    from rollout.types import SamplingParams

    g = torch.Generator().manual_seed(0)
    P = args.episodes // args.group
    low = len(engine.tokenizer.all_special_ids) + 1
    prompts = torch.randint(low, engine.model.config.vocab_size, (P, args.prompt_len), generator=g).tolist()
    params = SamplingParams(max_new_tokens=args.new, temperature=1.0, seed=1)
    limits = EpisodeLimits(max_turns=args.turns, max_total_tokens=args.turns * (args.new + args.obs + 8),
                           episode_timeout_s=3600, step_timeout_s=60, max_observation_tokens=args.obs + 8)
    engine.keep_turn_state = keep
    obs = "ab" * (args.obs // 2) + "a" * (args.obs % 2)

    def call():
        return run_episodes(prompts, [{}] * P, args.group, 0, lambda: Answers(obs), engine.tokenizer,
                            lambda *a: engine.decode_turns(*a, params=params), limits, args.new,
                            forget=engine.forget_turns)

    times = []
    for _ in range(2):
        before = dict(engine.turn_stats)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        samples = call()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    stats = {k: engine.turn_stats[k] - before[k] for k in before}
    model_tokens = sum(sum(s.response_mask) for s in samples)
    return {"keep": keep, "seconds": times[-1], "first_call_s": times[0],
            "forwarded_prefill_tokens": stats["prefilled_tokens"] + stats["reused_tokens"], **stats,
            "model_tokens": model_tokens, "turns_mean": sum(s.env["turns"] for s in samples) / len(samples),
            "tokens": [s.response_ids for s in samples], "logprobs": [s.logprobs for s in samples]}


def agreement(a: dict, b: dict) -> dict:
    """Episodes with the same tokens both ways, and the largest log-prob difference over the
    tokens each pair shares before its first different token."""
    same, worst = 0, 0.0
    for ta, tb, la, lb in zip(a.pop("tokens"), b.pop("tokens"), a.pop("logprobs"), b.pop("logprobs"),
                              strict=True):
        same += ta == tb
        n = next((i for i, (x, y) in enumerate(zip(ta, tb, strict=False)) if x != y), min(len(ta), len(tb)))
        worst = max([worst] + [abs(x - y) for x, y in zip(la[:n], lb[:n], strict=True)])
    return {"same_episodes": same, "max_abs_dlogp_shared": worst}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=16)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--obs", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=0, help="0: the character tokenizer's own size")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")

    import tempfile

    from cispo.models.tokenizer import build_char_tokenizer
    from rollout.engines.hf import HFEngine

    vocab = args.vocab or len(build_char_tokenizer())
    with tempfile.TemporaryDirectory() as tmp:
        path = _bench_rollout().build_model(Path(tmp) / "model", args.hidden, args.layers, vocab,
                                            args.experts, device=args.device)
        engine = HFEngine(path, dtype=dtype, device=args.device)
        rows = [run(engine, args, keep=False), run(engine, args, keep=True)]
    agree = agreement(*rows)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"
    print(f"\nmulti-turn episodes, hf engine, {device}, {dtype}: {args.episodes} episodes × {args.turns} turns, "
          f"prompt {args.prompt_len}, ≤{args.new} new/turn, observation {args.obs} tokens, "
          f"hidden {args.hidden}, {args.layers} layers")
    print(f"{'between turns':<22}{'seconds':>9}{'prefill tok':>13}{'model tok':>11}{'tok/s':>9}")
    for r in rows:
        name = "cache kept" if r["keep"] else "whole prefill"
        print(f"{name:<22}{r['seconds']:>9.2f}{r['forwarded_prefill_tokens']:>13}{r['model_tokens']:>11}"
              f"{r['model_tokens'] / r['seconds']:>9.0f}")
    speedup = rows[0]["seconds"] / rows[1]["seconds"]
    print(f"speed-up {speedup:.2f}×; episodes with the same tokens both ways: {agree['same_episodes']}"
          f"/{args.episodes}; max |Δ log-prob| before any difference: {agree['max_abs_dlogp_shared']:.2e}")
    out = Path(args.out) / "turns.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "device": device, "dtype": dtype, "rows": rows,
                               "speedup": speedup, **agree}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
