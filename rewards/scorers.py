"""Scorer actors: the sandboxed rewards run on the nodes that have a Docker engine.

With `sandbox.placement=actors` the RewardManager starts no sandbox itself. Every Ray node that
advertises the `sandbox.resource` resource (`ray start --resources='{"sandbox": N}'`: N reward
calls at once; launch/ sets it on the CPU sandbox nodes) gets `sandbox.scorers_per_node`
ScorerActors, pinned to it and holding its N slots between them. A ScorerActor imports the
rewards, runs the setup hooks of the sandboxed ones (`@reward(..., sandbox=True)`: math, code,
swe), which start their warm pools on that node's engine, and answers calls.

The trainer's side, `Scorers.call`, blocks until some actor has a free slot (back-pressure: an
actor never holds more calls than its slots), sends the call to the least-loaded one (fewest
calls in flight per slot) and waits for the result. If the actor dies with the call in flight,
the call goes once more to another live actor (or to the same one once Ray has restarted it);
if that fails too, the call is scored as an error. Every call gets an answer: none is dropped.

Rewards with `sandbox=False` (format, genrm, users' process-isolated ones) stay where they were.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError

from rewards.workers import CallResult, run_in_thread

log = logging.getLogger(__name__)

GRACE_S = 30.0  # beyond a call's own limit (enforced inside the actor) before the trainer gives up
RESTART_WAIT_S = 120.0  # how long a call waits for some scorer to be up when none is
REFRESH_S = 30.0  # how often the trainer looks for sandbox nodes that joined later
EXTRA_THREADS = 4  # an actor's threads beyond its slots: ready / stats calls never queue behind scoring
POOL_SIZE_ENV = "CISPO_SANDBOX_POOL_SIZE"  # sandboxes.run's warm containers per pool (code runs)


class ScorerUnavailable(RuntimeError):
    """No scorer actor could be started (no sandbox node, or its Docker engine or image is
    missing); the message names the node and what to do."""


class ScorerActor:
    """One node's sandboxed rewards (a threaded Ray actor: `slots` calls at once)."""

    def __init__(self, names: list[str], modules: list[tuple[str, str, str]],
                 options: dict[str, dict], sandbox: dict[str, Any]):
        from cispo.user_modules import load_source
        from rewards.registry import get_spec

        for m in modules:  # users' reward files, sent as text: the path need not exist here
            load_source(*m)
        self.specs = {n: get_spec(n) for n in names}
        self.abandoned = 0
        self._started: list = []
        try:
            for n, spec in self.specs.items():
                if spec.setup is not None:
                    spec.setup(options.get(n, {}), SimpleNamespace(**sandbox))
                    self._started.append(spec)
        except BaseException:
            self.shutdown()
            raise

    def ready(self) -> dict[str, Any]:
        ctx = ray.get_runtime_context()
        return {"node_id": ctx.get_node_id(), "ip": ray.util.get_node_ip_address(),
                "host": socket.gethostname(), "pid": os.getpid()}

    def call(self, name: str, kwargs: dict, timeout_s: float) -> CallResult:
        res = run_in_thread(self.specs[name].fn, kwargs, timeout_s)
        if res.status == "timeout":
            self.abandoned += 1
        return res

    def stats(self) -> dict[str, float]:
        out = {"sandbox/scorer_abandoned_threads": float(self.abandoned)}
        for spec in self._started:
            if spec.stats is not None:
                out.update(spec.stats())
        return out

    def shutdown(self) -> None:
        for spec in reversed(self._started):
            try:
                if spec.teardown is not None:
                    spec.teardown()
            except Exception as e:  # shutting down: report, keep closing the rest
                log.warning("reward %s teardown failed: %s", spec.name, e)
        self._started = []


@dataclass
class _Scorer:
    handle: Any
    node_id: str
    where: str  # "ip (hostname)", for messages
    slots: int
    inflight: int = 0
    started: int = 0  # calls sent to it, ever
    up: bool = True
    dead: bool = False
    probe: Any = None  # a ready() ref while it is down: answers once Ray has restarted it
    info: dict = field(default_factory=dict)


def sandbox_nodes(resource: str) -> list[dict]:
    """The live Ray nodes that advertise `resource`, with their slot counts."""
    return [{"node_id": n["NodeID"], "slots": int(n["Resources"][resource]),
             "where": f"{n.get('NodeManagerAddress', '?')} ({n.get('NodeManagerHostname', '?')})"}
            for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get(resource, 0) >= 1]


def _as_dict(cfg: Any) -> dict[str, Any]:
    """The sandbox settings as a plain dict (an OmegaConf node or a namespace), for the actors."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(vars(cfg))


class Scorers:
    """The trainer's handle on the scorer actors: placement, least-loaded calls, retries."""

    def __init__(self, names: list[str], modules: list[str], options: dict[str, dict],
                 sandbox_cfg: Any):
        from cispo.user_modules import read
        from rewards.registry import USER_MODULE_PREFIX

        if not ray.is_initialized():
            raise ScorerUnavailable("sandbox.placement=actors needs Ray: the trainer joins the "
                                    "cluster before it builds the reward manager")
        s = sandbox_cfg
        self.names = list(names)
        self.options = {n: dict(options.get(n) or {}) for n in names}
        self.modules = read(list(modules), USER_MODULE_PREFIX, "reward.modules")
        self.resource, self.per_node = str(s.resource), max(1, int(s.scorers_per_node))
        self.max_restarts = int(s.max_restarts)
        self.start_timeout_s = float(s.start_timeout_s)
        self.sandbox = _as_dict(s)
        self._lock = threading.Condition()
        self.scorers: list[_Scorer] = []
        self.counts: Counter = Counter()  # calls, deaths, retries, lost
        self.by_node: Counter = Counter()  # calls answered, per node id
        self._nodes_seen: set[str] = set()
        self._last_refresh = time.monotonic()
        nodes = self._wait_for_nodes(float(s.nodes_wait_s))
        # sandbox.num_workers warm verdict containers in all, split by slots (later nodes too)
        self._per_slot = int(s.num_workers) / max(1, sum(n["slots"] for n in nodes))
        self._place(nodes)

    # --- placement -----------------------------------------------------------------------------

    def _wait_for_nodes(self, wait_s: float) -> list[dict]:
        deadline = time.monotonic() + wait_s
        while not (nodes := sandbox_nodes(self.resource)):
            if time.monotonic() >= deadline:
                raise ScorerUnavailable(
                    f"sandbox.placement=actors: no Ray node advertises the '{self.resource}' "
                    f"resource after {wait_s:g} s. Start the sandbox nodes with "
                    f"`ray start --address=HEAD:PORT --resources='{{\"{self.resource}\": N}}'` "
                    "(N = reward calls at once; launch/slurm/train.sbatch and "
                    "launch/k8s/rayjob.yaml do this), or score on this machine with "
                    "sandbox.placement=local")
            log.info("waiting for a node with the '%s' resource (sandbox.nodes_wait_s=%g)",
                     self.resource, wait_s)
            time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))
        return nodes

    def _place(self, nodes: list[dict]) -> None:
        """Start scorers on the nodes of `nodes` that have none yet; raises ScorerUnavailable
        if none could start at all."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        actor_cls = ray.remote(ScorerActor)
        new = []
        for node in nodes:
            if node["node_id"] in self._nodes_seen:
                continue
            self._nodes_seen.add(node["node_id"])
            k = min(self.per_node, node["slots"])
            for i in range(k):
                slots = node["slots"] // k + (1 if i < node["slots"] % k else 0)
                sandbox = dict(self.sandbox, num_workers=max(1, round(self._per_slot * slots)))
                env = {POOL_SIZE_ENV: os.environ.get(POOL_SIZE_ENV, str(slots))}
                handle = actor_cls.options(
                    num_cpus=0, resources={self.resource: slots},
                    max_concurrency=slots + EXTRA_THREADS,
                    max_restarts=self.max_restarts, max_task_retries=0,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node["node_id"], soft=False),
                    runtime_env={"env_vars": env},
                ).remote(self.names, self.modules, self.options, sandbox)
                new.append(_Scorer(handle, node["node_id"], node["where"], slots))
        if not new:
            return
        # a scorer's start brings up its warm containers (a worker's start_timeout_s each, and
        # the Ray worker's own start): allow a minute beyond it
        wait = self.start_timeout_s + 60.0
        refs = {sc.handle.ready.remote(): sc for sc in new}
        ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=wait)
        problems = []
        for ref in ready:
            sc = refs[ref]
            try:
                sc.info = ray.get(ref)
            except Exception as e:  # its __init__ raised: no Docker, no image, a bad option
                problems.append(f"scorer on {sc.where}: {_reason(e)}")
                ray.kill(sc.handle, no_restart=True)
                continue
            with self._lock:
                self.scorers.append(sc)
        for ref in pending:
            sc = refs[ref]
            problems.append(f"scorer on {sc.where} did not start within {wait:g} s (are its "
                            f"'{self.resource}' slots taken by another run?)")
            ray.kill(sc.handle, no_restart=True)
        for p in problems:
            log.error("%s", p)
        if not self.scorers:
            raise ScorerUnavailable("no scorer actor started:\n" + "\n".join(problems))
        log.info("scorer actors: %s", ", ".join(
            f"{sc.where} pid {sc.info.get('pid')} ({sc.slots} slots)" for sc in self.scorers))

    def refresh(self) -> None:
        """Place scorers on sandbox nodes that joined since the last look (at most every
        REFRESH_S seconds; the manager calls it before each batch)."""
        now = time.monotonic()
        if now - self._last_refresh < REFRESH_S:
            return
        self._last_refresh = now
        try:
            self._place(sandbox_nodes(self.resource))
        except ScorerUnavailable as e:  # cannot happen once one scorer runs; kept for clarity
            log.error("%s", e)

    @property
    def slots(self) -> int:
        with self._lock:
            return sum(sc.slots for sc in self.scorers if not sc.dead)

    # --- calls ---------------------------------------------------------------------------------

    def call(self, name: str, kwargs: dict, timeout_s: float) -> CallResult:
        """One reward call on a scorer; never raises. A scorer that dies under it costs one
        retry on another scorer; a second death scores the call as an error."""
        t0 = time.monotonic()
        failed: _Scorer | None = None
        why = ""
        for attempt in range(2):
            if attempt:
                with self._lock:
                    self.counts["retries"] += 1
                log.warning("%s; sending its %s call to another scorer", why, name)
            sc = self._acquire(avoid=failed)
            if sc is None:
                why = f"no scorer actor up within {RESTART_WAIT_S:g} s" + (f" ({why})" if why else "")
                break
            try:
                res = ray.get(sc.handle.call.remote(name, kwargs, timeout_s),
                              timeout=timeout_s + GRACE_S)
            except GetTimeoutError:
                self._release(sc)
                return CallResult("timeout", latency_s=time.monotonic() - t0,
                                  error=f"scorer on {sc.where} gave no answer within "
                                  f"{timeout_s + GRACE_S:g} s")
            except (RayActorError, ActorUnavailableError) as e:
                self._release(sc, failed=e)
                failed, why = sc, f"scorer on {sc.where} died: {_reason(e)}"
                continue
            except Exception as e:  # the result did not come back (unpicklable value, ...)
                self._release(sc)
                return CallResult("error", error=f"scorer on {sc.where}: {_reason(e)}",
                                  latency_s=time.monotonic() - t0)
            self._release(sc)
            with self._lock:
                self.counts["calls"] += 1
                self.by_node[sc.node_id] += 1
            return res
        with self._lock:
            self.counts["lost"] += 1  # the manager scores it as an error and counts it there too
        return CallResult("error", error=why + (" (after one retry)" if attempt else ""),
                          latency_s=time.monotonic() - t0)

    def _acquire(self, avoid: _Scorer | None) -> _Scorer | None:
        """The least-loaded live scorer with a free slot (not `avoid` while another is up);
        waits while all are busy (back-pressure) or all are down (being restarted)."""
        deadline = time.monotonic() + RESTART_WAIT_S
        with self._lock:
            while True:
                self._check_probes()
                free = [sc for sc in self.scorers if sc.up and sc.inflight < sc.slots]
                if avoid is not None and any(sc is not avoid for sc in free):
                    free = [sc for sc in free if sc is not avoid]
                if free:
                    sc = min(free, key=lambda c: (c.inflight / c.slots, c.started))
                    sc.inflight += 1
                    sc.started += 1
                    return sc
                alive = [sc for sc in self.scorers if not sc.dead]
                down = any(not sc.up for sc in alive)
                if not alive or (down and not any(sc.up for sc in alive)
                                 and time.monotonic() >= deadline):
                    return None
                # a call's end notifies; a down scorer's probe is polled
                self._lock.wait(0.2 if down else 5.0)

    def _release(self, sc: _Scorer, failed: BaseException | None = None) -> None:
        with self._lock:
            sc.inflight -= 1
            if failed is not None and sc.up:
                # ready() answers once Ray has restarted it (sandbox.max_restarts), and raises
                # if it will not come back
                sc.up, sc.probe = False, sc.handle.ready.remote()
                self.counts["deaths"] += 1
            self._lock.notify_all()

    def _check_probes(self) -> None:
        """Scorers that Ray brought back rejoin; those gone for good are dropped (lock held)."""
        for sc in self.scorers:
            if sc.up or sc.dead or sc.probe is None:
                continue
            ready, _ = ray.wait([sc.probe], timeout=0)
            if not ready:
                continue
            try:
                sc.info = ray.get(sc.probe)
                sc.up, sc.probe = True, None
                log.info("scorer on %s is back (pid %s)", sc.where, sc.info.get("pid"))
            except ActorUnavailableError:  # still restarting: ask again
                sc.probe = sc.handle.ready.remote()
            except Exception as e:  # ActorDiedError: out of restarts, or its node is gone
                sc.dead, sc.probe = True, None
                log.error("scorer on %s is gone: %s", sc.where, _reason(e))

    # --- metrics and shutdown ------------------------------------------------------------------

    def stats(self) -> dict[str, float]:
        """The scorers' own counters plus the sandboxed rewards' stats, summed over scorers."""
        with self._lock:
            live = [sc for sc in self.scorers if sc.up]
            out = {"sandbox/scorers_up": float(len(live)),
                   "sandbox/scorer_slots": float(sum(sc.slots for sc in live)),
                   "sandbox/scorer_nodes": float(len({sc.node_id for sc in live})),
                   **{f"sandbox/scorer_{k}_total": float(self.counts[k])
                      for k in ("calls", "deaths", "retries", "lost")}}
        refs = [sc.handle.stats.remote() for sc in live]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=10.0)
        for ref in ready:
            try:
                for k, v in ray.get(ref).items():
                    out[k] = out.get(k, 0.0) + float(v)
            except Exception:  # died since: its counters went with it
                pass
        return out

    def calls_by_node(self) -> dict[str, int]:
        """Calls answered per scorer node: {"ip (host) node-id-prefix": count}."""
        with self._lock:
            where = {sc.node_id: sc.where for sc in self.scorers}
            return {f"{where.get(n, '?')} {n[:8]}": c for n, c in self.by_node.items()}

    def close(self) -> None:
        if self.by_node:
            log.info("scorer calls by node: %s", self.calls_by_node())
        with self._lock:
            scorers, self.scorers = self.scorers, []
        refs = [sc.handle.shutdown.remote() for sc in scorers if sc.up]
        ray.wait(refs, num_returns=len(refs), timeout=30.0)  # containers removed by their owner
        for sc in scorers:
            try:
                ray.kill(sc.handle, no_restart=True)
            except Exception:
                pass


def _reason(e: BaseException) -> str:
    """The useful part of a Ray error, e.g. the DockerUnavailable an actor's start raised."""
    text = str(e).strip()
    for marker in ("DockerUnavailable: ", "ScorerUnavailable: ", "SandboxError: "):
        if marker in text:
            return text.split(marker, 1)[1].strip()[:2000]
    lines = [x for x in text.splitlines() if x.strip()]
    return " | ".join(lines[-3:])[:2000] if lines else type(e).__name__
