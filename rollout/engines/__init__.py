"""Generation engines, selected by `rollout.engine`.

An engine is a class constructed as `Engine(model_path, dtype, device, trust_remote_code,
model_options, **engine_options)` (`engine_options`: what `rollout.manager.engine_options_from`
gives that engine) whose instances implement the `Engine` protocol below. Register the class
with `@register_engine("name")`; a name can be registered once.

Engine modules are found, not listed: `make_engine` imports every module of this package once
(`rollout/engines/*.py`), and each registers its engines as it is imported. So a module that
needs an optional dependency (vLLM) must import it inside its engine's constructor, and a new
engine is one new file here. A module that fails to import takes only its own engines away:
asking for one of them raises with that import error.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path
from typing import Protocol, runtime_checkable

from rollout.types import Sample, SamplingParams


@runtime_checkable
class Engine(Protocol):
    """What the generation worker (`rollout.worker.GenerationWorker`) calls on its engine."""

    def generate(self, prompts: list[list[int]], group_size: int, params: SamplingParams,
                 first_index: int = 0) -> list[Sample]:
        """G samples per prompt, grouped by prompt, in prompt order; `first_index` is the global
        index of prompts[0] (it names the samples' random streams and their `prompt_index`).
        Each sample carries the log-prob of every sampled token under the distribution sampled
        from, and a finish reason (`stop`, `length`, `repetition`)."""
        ...

    def load_state_dict(self, state_dict: dict, strict: bool = True) -> None:
        """New weights in the model's own (transformers) parameter names: the whole state dict
        (strict), or one bucket of it (strict=False: only unknown names fail). Tensors may
        already be on the engine's device."""
        ...

    def check_complete(self, names: set[str]) -> None:
        """After a bucketed sync: raise if a parameter the model needs was not among `names`."""
        ...

    def sleep(self) -> None:
        """Release the cache and state memory (KV cache, lightning states, graphs' buffers) while
        the learner trains on the same GPU; the weights stay. A no-op where there is nothing to
        release (the hf engine)."""
        ...

    def wake(self) -> None:
        """Take back what `sleep` released, before the next `generate`."""
        ...


PROTOCOL_METHODS = ("generate", "load_state_dict", "check_complete", "sleep", "wake")
ENGINES: dict[str, type] = {}
_import_errors: dict[str, BaseException] = {}  # engine module -> why it did not import
_discovered = False


def register_engine(name: str):
    """Class decorator: make the engine selectable as `rollout.engine=name`."""

    def deco(cls: type) -> type:
        old = ENGINES.get(name)
        if old is not None and _qualified(old) != _qualified(cls):
            raise ValueError(f"rollout engine {name!r} is already registered by {_qualified(old)}; "
                             f"pick another name for {_qualified(cls)}")
        missing = [m for m in PROTOCOL_METHODS if not callable(getattr(cls, m, None))]
        if missing:
            raise TypeError(f"rollout engine {name!r} ({_qualified(cls)}) lacks {missing}: every "
                            "engine implements rollout.engines.Engine")
        ENGINES[name] = cls
        return cls

    return deco


def _qualified(obj) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def discover() -> None:
    """Import every module of this package once; each registers its engines."""
    global _discovered
    if _discovered:
        return
    for mod in pkgutil.iter_modules(__path__):
        try:
            importlib.import_module(f"{__name__}.{mod.name}")
        except Exception as e:  # noqa: BLE001 (reported when one of its engines is asked for)
            _import_errors[mod.name] = e
    _discovered = True


_REGISTERS = re.compile(r"""^@register_engine\(\s*["']([^"']+)["']\s*\)""", re.MULTILINE)  # a class decorator


def declared_names() -> set[str]:
    """The names this package's modules register, read from their source without importing them
    (torch, Triton, vLLM), plus any registered already: what the start-up check
    (`cispo.config_check`) accepts for `rollout.engine` within a second of the command, before
    any worker starts. A module that then fails to import still says why in `make_engine`."""
    names = set(ENGINES)
    for folder in __path__:
        for f in Path(folder).glob("*.py"):
            names.update(_REGISTERS.findall(f.read_text(errors="replace")))
    return names


def make_engine(name: str, *args, **kwargs):
    discover()
    if name not in ENGINES:
        broken = "".join(f"; module rollout.engines.{m} did not import: {type(e).__name__}: {e}"
                         for m, e in sorted(_import_errors.items()))
        raise KeyError(f"unknown rollout.engine {name!r}; registered: {sorted(ENGINES)}{broken}")
    return ENGINES[name](*args, **kwargs)
