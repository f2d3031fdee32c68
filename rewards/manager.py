"""RewardManager: scores a batch concurrently; every call has a wall clock and a failure policy.

    scores, metrics = RewardManager(cfg.reward, cfg.sandbox).score(items)

`items` are dicts with `completion`, `reference`, `prompt`, `data_source`, `metadata` (the row's
other columns) and, when the length penalty is on, `response_length` (tokens). `scores[i]` is a
float, or None when a reward skipped sample i: a skipped sample takes no part in the advantage
(the caller drops it from its group). A sample routed to several rewards is skipped if any of
them skips; otherwise it scores the weighted sum.

Every call ends within its reward's `timeout_s`: process-isolated rewards run in worker processes
that are killed at the limit; thread-isolated ones (whose work is bounded by a sandbox or actor)
are abandoned at the limit. A call that raises, times out, or returns something that is not a
score (NaN, a string) gets `error_score` (default 0) and is counted and logged; the batch always
completes. `async def` rewards run as coroutines, `max_concurrency` at once (rewards.workers).

Where the sandboxed rewards (`@reward(..., sandbox=True)`: math, code, swe) run is
`sandbox.placement`: `local`, in this process on this machine's Docker engine, or `actors`, in
scorer actors on the Ray nodes that advertise the sandbox resource (rewards.scorers).

A reward that times out `reward.max_consecutive_timeouts` times in a row (default 3) is stopped:
its remaining calls return at once as errors, and `score` raises `RewardStopped` with one message
(what timed out, the limit, what to try), instead of the reward costing its full limit on every
sample of every step.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rewards import length_penalty
from rewards.outcome import BadRewardValue, coerce
from rewards.registry import RewardSpec, get_spec, load_module
from rewards.workers import AsyncRunner, CallResult, ProcessPool, run_in_thread

log = logging.getLogger(__name__)

MANAGER_OPTIONS = ("timeout_s", "error_score", "batch_size")  # consumed here, not passed on
ITEM_KEYS = ("completion", "reference", "prompt", "metadata", "data_source")


class RewardStopped(RuntimeError):
    """A reward kept timing out and was stopped (reward.max_consecutive_timeouts)."""


@dataclass
class ItemResult:
    """One sample's result from one reward."""

    status: str  # ok | skip | error | timeout
    score: float | None
    extras: dict[str, float] = field(default_factory=dict)
    latency_s: float = 0.0
    error: str | None = None


def parse_route(value: Any, where: str) -> list[tuple[str, float]]:
    """"math" | ["math", "format"] | {"math": 1.0, "format": 0.1} → [(name, weight), ...]."""
    value = _plain(value)
    if isinstance(value, str):
        return [(value, 1.0)]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return [(v, 1.0) for v in value]
    if isinstance(value, dict) and value and all(
            isinstance(k, str) and isinstance(w, int | float) for k, w in value.items()):
        return [(k, float(w)) for k, w in value.items()]
    raise ValueError(f"{where}={value!r}: use a reward name, a list of names, or "
                     "{name: weight}, e.g. {math: 1.0, format: 0.1}")


def _plain(x: Any) -> Any:
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(x):
            return OmegaConf.to_container(x, resolve=True)
    except ImportError:
        pass
    return x


class RewardManager:
    def __init__(self, cfg: Any, sandbox_cfg: Any = None):
        self.cfg = cfg
        self.sandbox_cfg = sandbox_cfg
        self.modules = [str(Path(m).expanduser().resolve()) for m in (cfg.modules or [])]
        for m in self.modules:
            load_module(m)
        self.routes = {str(src): parse_route(v, f"reward.sources.{src}")
                       for src, v in (_plain(cfg.sources) or {}).items()}
        self.default_route = parse_route(cfg.default, "reward.default")
        names = {n for r in [*self.routes.values(), self.default_route] for n, _ in r}
        self.specs: dict[str, RewardSpec] = {n: get_spec(n) for n in sorted(names)}
        options = _plain(cfg.options) or {}
        unknown = set(options) - set(self.specs)
        if unknown:
            raise ValueError(f"reward.options names rewards no data source uses: {sorted(unknown)}; "
                             f"in use: {sorted(self.specs)}")
        self.limits: dict[str, dict[str, Any]] = {}
        self.fn_options: dict[str, dict[str, Any]] = {}
        for n in self.specs:
            opts = dict(options.get(n) or {})
            self.limits[n] = {"timeout_s": float(opts.get("timeout_s", cfg.timeout_s)),
                              "error_score": float(opts.get("error_score", cfg.error_score)),
                              "batch_size": opts.get("batch_size")}
            self.fn_options[n] = {k: v for k, v in opts.items() if k not in MANAGER_OPTIONS}
        self._started: list[RewardSpec] = []
        self._scorers = None  # sandbox.placement=actors: the sandboxed rewards' scorer actors
        remote = [n for n, s in self.specs.items() if s.sandbox and _on_actors(sandbox_cfg)]
        try:
            for n, spec in self.specs.items():
                if spec.setup is not None and n not in remote:
                    spec.setup(self.fn_options[n], sandbox_cfg)
                    self._started.append(spec)
            if remote:
                from rewards.scorers import Scorers

                self._scorers = Scorers(remote, self.modules, self.fn_options, sandbox_cfg)
        except BaseException:
            self.shutdown()
            raise
        self._procs = (ProcessPool(max(1, cfg.num_workers), self.modules, cfg.worker_memory_mb)
                       if any(s.isolation == "process" for s in self.specs.values()) else None)
        # with scorer actors, enough threads to fill every slot they offer
        threads = max(1, cfg.max_concurrency, self._scorers.slots if self._scorers else 0)
        self._threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="reward")
        self._async = AsyncRunner() if any(s.is_async for s in self.specs.values()) else None
        self.abandoned_threads = 0
        self.max_timeouts_in_row = int(getattr(cfg, "max_consecutive_timeouts", 3) or 0)
        self._timeouts_in_row: dict[str, int] = defaultdict(int)
        self.stopped: dict[str, str] = {}  # reward name -> why it was stopped
        self._lock = threading.Lock()

    def route(self, data_source: str) -> list[tuple[str, float]]:
        return self.routes.get(data_source, self.default_route)

    # --- scoring -------------------------------------------------------------------------------

    def score(self, items: list[dict]) -> tuple[list[float | None], dict[str, float]]:
        """Scores in order (None = skipped) and the batch's metrics."""
        t0 = time.monotonic()
        if self._scorers is not None:
            self._scorers.refresh()  # sandbox nodes that joined since
        routes = [self.route(str(it.get("data_source", ""))) for it in items]
        per_reward = self.score_detailed(items, routes)
        scores: list[float | None] = []
        for i, route in enumerate(routes):
            parts = [(per_reward[n][i], w) for n, w in route]
            if any(r.status == "skip" for r, _ in parts):
                scores.append(None)
            else:
                scores.append(sum(w * r.score for r, w in parts))  # type: ignore[operator]
        metrics = self._metrics(per_reward)
        lp = self.cfg.length_penalty
        if lp.enabled:
            lengths = [_response_length(it) for it in items]
            scores, pens = length_penalty.apply(scores, lengths, lp.max_length, lp.cache, lp.factor)
            metrics["reward/length_penalty_mean"] = sum(pens) / max(1, len(pens))
            metrics["reward/length_penalty_frac"] = sum(p < 0 for p in pens) / max(1, len(pens))
        metrics["reward/skips"] = float(sum(s is None for s in scores))
        metrics["time/reward_s"] = time.monotonic() - t0
        if self.stopped:
            raise RewardStopped("; ".join(self.stopped.values()))
        return scores, metrics

    def score_detailed(self, items: list[dict], routes: list[list[tuple[str, float]]],
                       on_result=None) -> dict[str, dict[int, ItemResult]]:
        """{reward name: {item index: ItemResult}} for every (item, reward) the routes ask for;
        `on_result(name, {index: ItemResult})` is called (in this thread) as each call finishes."""
        wanted: dict[str, list[int]] = defaultdict(list)
        for i, route in enumerate(routes):
            for n, _ in route:
                wanted[n].append(i)
        futures = []
        for n, idxs in wanted.items():
            spec = self.specs[n]
            if spec.batched:
                size = int(self.limits[n]["batch_size"] or len(idxs))
                chunks = [idxs[k:k + size] for k in range(0, len(idxs), size)]
            else:
                chunks = [[i] for i in idxs]
            futures += [self._threads.submit(self._run, spec, [items[i] for i in c], c)
                        for c in chunks]
        out: dict[str, dict[int, ItemResult]] = defaultdict(dict)
        for fut in as_completed(futures):
            name, results = fut.result()  # _run never raises
            out[name].update(results)
            if on_result is not None:
                on_result(name, results)
        return out

    def _run(self, spec: RewardSpec, batch: list[dict], idxs: list[int]
             ) -> tuple[str, dict[int, ItemResult]]:
        lim = self.limits[spec.name]
        try:
            kwargs = call_kwargs(spec, batch, self.fn_options[spec.name])
        except TypeError as e:
            res = CallResult("error", error=str(e))
        else:
            if spec.name in self.stopped:
                res = CallResult("error", error=f"not scored: {self.stopped[spec.name]}")
            elif self._scorers is not None and spec.sandbox:  # on a sandbox node (awaits async ones)
                res = self._scorers.call(spec.name, kwargs, lim["timeout_s"])
            elif spec.is_async:
                res = self._async.call(spec.fn, kwargs, lim["timeout_s"])  # type: ignore[union-attr]
            elif spec.isolation == "process":
                res = self._procs.call(spec.fn, kwargs, lim["timeout_s"])  # type: ignore[union-attr]
            else:
                res = run_in_thread(spec.fn, kwargs, lim["timeout_s"])
                if res.status == "timeout":
                    self.abandoned_threads += 1
            self._count_timeouts(spec.name, res)
        values: list[Any]
        if res.status == "ok" and spec.batched:
            values = list(res.value) if isinstance(res.value, list | tuple) else []
            if len(values) != len(batch):
                res = CallResult("error", error=f"batched reward returned {type(res.value).__name__}"
                                 f" of length {len(values)} for {len(batch)} samples",
                                 latency_s=res.latency_s)
        else:
            values = [res.value]
        results = {}
        for k, i in enumerate(idxs):
            if res.status != "ok":
                results[i] = ItemResult(res.status, lim["error_score"], latency_s=res.latency_s,
                                        error=res.error)
                continue
            try:
                score, extras = coerce(values[k])
            except BadRewardValue as e:
                results[i] = ItemResult("error", lim["error_score"], latency_s=res.latency_s,
                                        error=str(e))
                continue
            status = "skip" if score is None else "ok"
            results[i] = ItemResult(status, score, extras, res.latency_s)
        return spec.name, results

    def _count_timeouts(self, name: str, res: CallResult) -> None:
        """Stop a reward after `max_timeouts_in_row` timeouts with no other answer between."""
        if name in self.stopped or not self.max_timeouts_in_row:
            return
        with self._lock:
            self._timeouts_in_row[name] = self._timeouts_in_row[name] + 1 if res.status == "timeout" else 0
            if self._timeouts_in_row[name] >= self.max_timeouts_in_row:
                t = self.limits[name]["timeout_s"]
                self.stopped[name] = (
                    f"reward {name!r} timed out {self._timeouts_in_row[name]} times in a row "
                    f"(limit {t:g} s each) and was stopped, so that it does not cost {t:g} s on every "
                    f"remaining sample. Try it on one sample: python -m rewards.score --reward {name} "
                    f"--completion ... --reference ... (with --module for your own file); if it is "
                    f"only slow, raise reward.options.{name}.timeout_s (reward.max_consecutive_timeouts=0 "
                    f"never stops a reward)")

    # --- metrics -------------------------------------------------------------------------------

    def _metrics(self, per_reward: dict[str, dict[int, ItemResult]]) -> dict[str, float]:
        m: dict[str, float] = {}
        totals = {"errors": 0, "timeouts": 0}
        for name, results in sorted(per_reward.items()):
            rs = list(results.values())
            scored = [r.score for r in rs if r.status != "skip"]
            lat = sorted(r.latency_s for r in rs)
            counts = {"skips": sum(r.status == "skip" for r in rs),
                      "errors": sum(r.status == "error" for r in rs),
                      "timeouts": sum(r.status == "timeout" for r in rs)}
            p = f"reward/{name}/"
            if scored:  # all skipped: no mean (NaN would not survive metrics.jsonl as JSON)
                m[p + "mean"] = sum(scored) / len(scored)
            for k, v in counts.items():
                m[p + k] = float(v)
            m[p + "latency_p50_s"] = _quantile(lat, 0.50)
            m[p + "latency_p99_s"] = _quantile(lat, 0.99)
            extra_vals: dict[str, list[float]] = defaultdict(list)
            for r in rs:
                for k, v in r.extras.items():
                    extra_vals[k].append(v)
            for k, vs in extra_vals.items():  # mean over the samples that reported it
                m[p + k] = sum(vs) / len(vs)
            totals["errors"] += counts["errors"]
            totals["timeouts"] += counts["timeouts"]
            failed = [r for r in rs if r.status in ("error", "timeout")]
            if failed:
                log.warning("reward %s: %d of %d calls failed (scored %s), e.g. %s", name,
                            len(failed), len(rs), self.limits[name]["error_score"],
                            "; ".join(sorted({f"{r.status}: {r.error}" for r in failed})[:3]))
            if counts["skips"]:
                log.info("reward %s: %d of %d samples skipped", name, counts["skips"], len(rs))
        every = sorted(r.latency_s for rs in per_reward.values() for r in rs.values())
        m["reward/latency_p50_s"] = _quantile(every, 0.50)
        m["reward/latency_p99_s"] = _quantile(every, 0.99)
        m["reward/errors"] = float(totals["errors"])
        m["reward/timeouts"] = float(totals["timeouts"])
        m["reward/abandoned_threads"] = float(self.abandoned_threads)
        if self._procs is not None:
            m["reward/worker_restarts"] = float(self._procs.restarts)
        for spec in self._started:
            if spec.stats is not None:
                m.update(spec.stats())
        if self._scorers is not None:  # theirs, summed over the scorers
            m.update(self._scorers.stats())
        return m

    def shutdown(self) -> None:
        if getattr(self, "_threads", None) is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
        if getattr(self, "_procs", None) is not None:
            self._procs.close()
        if getattr(self, "_async", None) is not None:
            self._async.close()
        if getattr(self, "_scorers", None) is not None:
            self._scorers.close()
            self._scorers = None
        for spec in reversed(getattr(self, "_started", [])):
            try:
                if spec.teardown is not None:
                    spec.teardown()
            except Exception as e:  # shutting down: report, keep closing the rest
                log.warning("reward %s teardown failed: %s", spec.name, e)
        self._started = []

    def __enter__(self) -> RewardManager:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


def call_kwargs(spec: RewardSpec, batch: list[dict], options: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments for one call: the item's fields, its row's columns, the options.

    Options win over same-named columns (config is explicit; a column may be incidental).
    Only names the function accepts are passed, unless it takes **kwargs.
    """
    def one(it: dict) -> dict[str, Any]:
        md = it.get("metadata") or {}
        kw = {k: v for k, v in md.items() if isinstance(k, str)}
        kw.update({k: it.get(k) for k in ITEM_KEYS})
        kw["metadata"] = md
        kw["prompt"] = kw["prompt"] if kw["prompt"] is not None else ""
        return kw

    rows = [one(it) for it in batch]
    if spec.batched:
        keys = set().union(*rows)
        kw = {k: [r.get(k) for r in rows] for k in keys}
    else:
        kw = rows[0]
    kw.update(options)
    accepted, required = spec.accepted()
    if accepted is not None:
        kw = {k: v for k, v in kw.items() if k in accepted}
    missing = required - set(kw)
    if missing:
        raise TypeError(f"reward {spec.name!r} requires {sorted(missing)}, which this sample "
                        f"does not have (it has {sorted(rows[0])[:12]}); give the parameter a "
                        "default or add the column to the dataset")
    return kw


def _on_actors(sandbox_cfg: Any) -> bool:
    """sandbox.placement=actors (a config without the key, e.g. the score CLI's: local)."""
    return getattr(sandbox_cfg, "placement", "local") == "actors"


def _response_length(it: dict) -> int:
    if "response_length" not in it:
        raise KeyError("reward.length_penalty.enabled needs each item's 'response_length' "
                       "(response tokens); the caller of RewardManager.score must provide it")
    return int(it["response_length"])


def _quantile(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return 0.0
    return sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))]
