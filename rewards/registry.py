"""The reward registry: `@reward("name")` turns a plain function into a reward the config can name.

A reward is called with keyword arguments `completion: str`, `reference` (any JSON value, may be
None), `prompt: str`, `metadata: dict` (the dataset row's other columns), `data_source: str`,
each other dataset column under its own name, and the options configured for it
(`reward.options.<name>`). It receives only the arguments its signature names (or all of them if
it takes `**kwargs`), so `def f(completion, reference)` is a complete reward.

It returns a float, a dict with `"score"` plus extra numbers to log, or None (skip: the sample
takes no part in the advantage). `async def` rewards are awaited. A batched reward
(`@reward("name", batched=True)`) gets the same keywords with a list per argument and returns a
list of results, one per sample.

The decorator returns the function unchanged, so a reward can be unit-tested by calling it.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The built-ins, imported on first lookup so that importing `rewards` stays cheap.
BUILTIN_MODULES = ("rewards.math_reward", "rewards.format_reward", "rewards.code_reward",
                   "rewards.swe_reward", "rewards.genrm", "rewards.tool_use")
ISOLATIONS = ("process", "thread")
USER_MODULE_PREFIX = "cispo_user_rewards"


@dataclass(frozen=True)
class RewardSpec:
    name: str
    fn: Callable[..., Any]
    batched: bool = False
    # "process": each call runs in a worker process that is killed at the wall-clock limit (any
    # code, C extensions included). "thread": runs in the manager's process; only for rewards
    # whose untrusted work is bounded elsewhere (a sandbox container, a Ray actor) because a
    # thread cannot be killed.
    isolation: str = "process"
    # setup(options, sandbox_cfg) / teardown(): start and stop what the reward needs (a sandbox
    # pool, a judge actor). They run in the manager's process.
    setup: Callable[..., Any] | None = None
    teardown: Callable[[], Any] | None = None
    stats: Callable[[], dict[str, float]] | None = None  # extra metrics, e.g. sandbox restarts
    # True: the reward runs model output in a sandbox (Docker). With sandbox.placement=actors
    # its calls, setup and stats run in scorer actors on the sandbox nodes (rewards.scorers)
    sandbox: bool = False
    # it compares with the sample's reference and skips a sample without one (math): the CLI
    # refuses a completion given without a reference instead of printing a bare null
    needs_reference: bool = False

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)

    def accepted(self) -> tuple[set[str] | None, set[str]]:
        """(names the function accepts or None for **kwargs, names it requires)."""
        params = inspect.signature(self.fn).parameters.values()
        if any(p.kind is p.VAR_KEYWORD for p in params):
            names = None
        else:
            names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        required = {p.name for p in params if p.default is p.empty
                    and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        return names, required


REWARDS: dict[str, RewardSpec] = {}
_builtins_loaded = False


def reward(name: str, *, batched: bool = False, isolation: str = "process",
           setup: Callable[..., Any] | None = None,
           teardown: Callable[[], Any] | None = None,
           stats: Callable[[], dict[str, float]] | None = None,
           sandbox: bool = False,
           needs_reference: bool = False) -> Callable[[Callable], Callable]:
    """Register `fn` as the reward `name` (see the module docstring for the calling convention).
    `sandbox=True`: it needs a Docker engine (sandbox.placement=actors runs it on sandbox nodes)."""
    if isolation not in ISOLATIONS:
        raise ValueError(f"@reward({name!r}, isolation={isolation!r}): use one of {ISOLATIONS}")

    def deco(fn: Callable) -> Callable:
        old = REWARDS.get(name)
        # Re-registering the same function (a module imported twice by path) is harmless.
        if old is not None and _qualified(old.fn) != _qualified(fn):
            raise ValueError(f"reward {name!r} is already registered by {_qualified(old.fn)}; "
                             f"pick another name for {_qualified(fn)}")
        REWARDS[name] = RewardSpec(name, fn, batched, isolation, setup, teardown, stats, sandbox,
                                   needs_reference)
        return fn

    return deco


def _qualified(fn: Callable) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        for mod in BUILTIN_MODULES:
            importlib.import_module(mod)
        _builtins_loaded = True


def get_spec(name: str) -> RewardSpec:
    load_builtins()
    if name not in REWARDS:
        raise KeyError(f"unknown reward {name!r}; registered: {sorted(REWARDS)}. A reward of "
                       "your own must be in a module listed in reward.modules (or --module).")
    return REWARDS[name]


def get_reward(name: str) -> Callable[..., Any]:
    """The registered function itself (call it directly in a unit test)."""
    return get_spec(name).fn


def load_module(path: str | Path) -> str:
    """Import a user's reward file by path (its `@reward` functions register themselves).

    The module gets a stable name derived from the resolved path, so a worker process that loads
    the same path can unpickle references to its functions. Returns that module name.
    """
    from cispo.user_modules import load_file

    return load_file(path, USER_MODULE_PREFIX, "reward.modules (a reward module)")
