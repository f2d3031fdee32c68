"""Score completions from the command line, exactly as training would (same manager, limits).

    python -m rewards.score --reward math --completion 'so \\boxed{4}' --reference 4
    {"score": 1.0}

    python -m rewards.score --jsonl in.jsonl [--out out.jsonl]

Each input line is {"reward": NAME, "completion": ..., "reference": ..., "prompt": ...,
"metadata": {...}, any other column...}; output line N answers input line N (a blank or broken
input line gets a line with its `error`), with `score` (null for a skip), the reward's extras,
and `error` when the call failed (its score is then the failure policy's). Lines are written as
soon as they and the lines before them are scored, so a long file can be watched, and Ctrl-C
keeps what was scored. `--module my_rewards.py` (repeatable) registers your own rewards first
(its folder is on the import path); `--reward` may also name a plain function in such a file (no
decorator needed to try one out); `--option name.key=value` sets reward.options (value parsed as
JSON when it parses). A reward that raised is named with its file:line in `error`.

Exit status: 0; 2 for usage errors (bad flags, unknown --reward, missing files, `--reward math`
without --reference); 1 when a reward was stopped after
reward.max_consecutive_timeouts timeouts in a row (its remaining lines say so); 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from rewards.manager import RewardManager, parse_route
from rewards.registry import REWARDS, get_spec, load_module, reward


def _config(names: list[str], modules: list[str], options: dict, timeout_s: float,
            sandbox_backend: str, max_concurrency: int = 8):
    """The manager's settings for a one-off run (plain namespaces: `rewards` does not import
    the training package's config; these mirror cispo.config's defaults)."""
    from types import SimpleNamespace

    from sandboxes.image import DEFAULT_IMAGE

    cfg = SimpleNamespace(sources={n: n for n in names}, default=names[0], modules=modules,
                          options=options, timeout_s=timeout_s, error_score=0.0,
                          max_concurrency=max_concurrency, num_workers=1, worker_memory_mb=8192,
                          max_consecutive_timeouts=3, length_penalty=SimpleNamespace(enabled=False))
    sandbox = SimpleNamespace(backend=sandbox_backend, image=DEFAULT_IMAGE, num_workers=1,
                              memory_mb=512, cpus=1.0, pids_limit=64, verdict_timeout_s=10.0,
                              start_timeout_s=60.0)
    return cfg, sandbox


def resolve(name: str, module_names: list[str]) -> str:
    """The registered reward `name`, or a function of that name in a --module file (registered
    under its own name if it has no @reward, so a plain function can be tried as is)."""
    try:
        get_spec(name)
        return name
    except KeyError:
        pass
    for mod in module_names:
        fn = getattr(sys.modules[mod], name, None)
        if callable(fn):
            for spec in REWARDS.values():
                if spec.fn is fn:
                    return spec.name
            reward(name)(fn)
            return name
    get_spec(name)  # raises the registry's message (the known names)
    return name


def _parse_options(pairs: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for p in pairs:
        key, eq, raw = p.partition("=")
        name, dot, opt = key.partition(".")
        if not eq or not dot or not opt:
            raise ValueError(f"--option {p!r}: use NAME.KEY=VALUE, e.g. code.mode=all")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        out.setdefault(name, {})[opt] = value
    return out


def _line_result(res) -> dict[str, Any]:
    out: dict[str, Any] = {"score": None if res.status == "skip" else res.score, **res.extras}
    if res.error:
        out["error"] = f"{res.status}: {res.error}"
    return out


def score_rows(rows: list[dict | str], modules: list[str], options: dict, timeout_s: float,
               sandbox_backend: str = "docker", on_line=None, max_concurrency: int = 8,
               stopped: list | None = None) -> list[dict[str, Any]]:
    """One result dict per row, in order. A row that is not a valid request gets an error.
    `on_line(i, result)` is called for each row as soon as it is known (any order); `stopped`
    collects the messages of rewards stopped for timing out."""
    out: list[dict[str, Any] | None] = [None] * len(rows)

    def known(i: int, result: dict[str, Any]) -> None:
        out[i] = result
        if on_line is not None:
            on_line(i, result)

    items, where, names = [], [], []
    module_names = [load_module(m) for m in modules]
    for i, row in enumerate(rows):
        if isinstance(row, str):  # an unparsable input line
            known(i, {"score": None, "error": row})
            continue
        name = row.get("reward")
        problem = None
        if not isinstance(name, str) or not isinstance(row.get("completion"), str):
            problem = "each line needs \"reward\" (a name) and \"completion\" (a string)"
        else:
            try:
                name = resolve(name, module_names)
            except KeyError as e:
                problem = str(e.args[0])
            else:
                if get_spec(name).needs_reference and row.get("reference") is None:
                    problem = f"no \"reference\": {name} compares with one (without it, it skips)"
        if problem:
            known(i, {"score": None, "error": problem})
            continue
        extra = {k: v for k, v in row.items()
                 if k not in ("reward", "completion", "reference", "prompt", "metadata")}
        items.append({"completion": row["completion"], "reference": row.get("reference"),
                      "prompt": row.get("prompt") or "", "data_source": name,
                      "metadata": {**(row.get("metadata") or {}), **extra}})
        where.append(i)
        if name not in names:
            names.append(name)
    if items:
        if "genrm" in names:  # the judge is a Ray actor; Ray must start in the main thread
            import ray

            if not ray.is_initialized():
                ray.init(include_dashboard=False, configure_logging=False)
        cfg, sandbox = _config(names, modules, {k: v for k, v in options.items() if k in names},
                               timeout_s, sandbox_backend, max_concurrency)

        def finished(name: str, results: dict) -> None:
            for k, res in results.items():
                known(where[k], _line_result(res))

        with RewardManager(cfg, sandbox) as mgr:
            routes = [parse_route(it["data_source"], "reward") for it in items]
            mgr.score_detailed(items, routes, on_result=finished)
            if stopped is not None:
                stopped += list(mgr.stopped.values())
    return out  # type: ignore[return-value]


class InOrder:
    """Writes result lines in input order as soon as a line and every line before it are known."""

    def __init__(self, f):
        self.f, self.next, self.waiting = f, 0, {}

    def __call__(self, i: int, result: dict[str, Any]) -> None:
        self.waiting[i] = result
        while self.next in self.waiting:
            self.f.write(json.dumps(self.waiting.pop(self.next)) + "\n")
            self.next += 1
        self.f.flush()


def read_requests(path: Path) -> list[dict | str]:
    """One entry per line of the file, blank lines included (a string: why it is not a request)."""
    rows: list[dict | str] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            rows.append(f"line {n}: blank")
            continue
        try:
            row = json.loads(line)
            rows.append(row if isinstance(row, dict) else f"line {n}: not a JSON object")
        except ValueError as e:
            rows.append(f"line {n}: not JSON ({e})")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rewards.score", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reward", help="reward name (built-in or from --module)")
    ap.add_argument("--completion", help="the text to score")
    ap.add_argument("--reference", help="the reference, as text")
    ap.add_argument("--reference-json", help="the reference as a JSON value (lists, objects)")
    ap.add_argument("--prompt", default="")
    ap.add_argument("--jsonl", metavar="IN", help="score every line of this file")
    ap.add_argument("--out", metavar="OUT", help="write the --jsonl results here (default stdout)")
    ap.add_argument("--module", action="append", default=[], help="a .py file with @reward functions")
    ap.add_argument("--option", action="append", default=[], metavar="NAME.KEY=VALUE")
    ap.add_argument("--timeout-s", type=float, default=30.0, help="wall clock per reward call")
    ap.add_argument("--max-concurrency", type=int, default=8,
                    help="reward calls in flight (async rewards: coroutines at once)")
    ap.add_argument("--sandbox-backend", default="docker", choices=("docker", "process"),
                    help="process: verdicts in local subprocesses, NOT isolated")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    try:
        options = _parse_options(args.option)
        module_names = [load_module(m) for m in args.module]
    except (ValueError, FileNotFoundError, ImportError) as e:
        ap.error(str(e))
    if args.jsonl:
        if args.reward or args.completion is not None:
            ap.error("--jsonl takes the reward and completion from each line; drop --reward/--completion")
        path = Path(args.jsonl)
        if not path.is_file():
            ap.error(f"--jsonl {args.jsonl}: no such file")
        rows = read_requests(path)
        try:  # opened before any scoring: a bad --out path costs nothing
            if args.out:
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            sink = open(args.out, "w") if args.out else sys.stdout
        except OSError as e:
            ap.error(f"--out {args.out}: {e.strerror}")
        writer, stopped = InOrder(sink), []
        try:
            score_rows(rows, args.module, options, args.timeout_s, args.sandbox_backend, writer,
                       args.max_concurrency, stopped)
        except KeyboardInterrupt:
            print(f"rewards.score: interrupted; the first {writer.next} of {len(rows)} lines are "
                  f"in {args.out or 'stdout'}", file=sys.stderr)
            return 130
        finally:
            if sink is not sys.stdout:
                sink.close()
        if stopped:
            print("rewards.score: " + "\n".join(stopped), file=sys.stderr)
            return 1
        return 0
    if not args.reward or args.completion is None:
        ap.error("give --reward NAME --completion TEXT (and --reference), or --jsonl IN")
    if args.reference is not None and args.reference_json is not None:
        ap.error("give --reference or --reference-json, not both")
    try:
        name = resolve(args.reward, module_names)
    except KeyError as e:
        ap.error(str(e.args[0]))
    reference: Any = args.reference
    if args.reference_json is not None:
        try:
            reference = json.loads(args.reference_json)
        except ValueError as e:
            ap.error(f"--reference-json is not JSON: {e}")
    if reference is None and get_spec(name).needs_reference:
        ap.error(f"--reward {name} compares the completion with a reference: give --reference "
                 f"ANSWER (or --reference-json VALUE); without one it skips the completion")
    row = {"reward": name, "completion": args.completion, "reference": reference,
           "prompt": args.prompt}
    stopped: list[str] = []
    result = score_rows([row], args.module, options, args.timeout_s, args.sandbox_backend,
                        stopped=stopped)[0]
    print(json.dumps(result))
    if stopped:
        print("rewards.score: " + "\n".join(stopped), file=sys.stderr)
    return 1 if stopped else 0


if __name__ == "__main__":
    sys.exit(main())
