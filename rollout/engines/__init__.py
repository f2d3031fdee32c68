"""Generation engines, selected by `rollout.engine`.

An engine is a class `Engine(model_path, dtype, device)` with `generate(prompts, group_size,
params) -> list[Sample]` and `load_state_dict(state_dict)`. Register one with `@register_engine`.
"""

from __future__ import annotations

ENGINES: dict[str, type] = {}


def register_engine(name: str):
    def deco(cls):
        ENGINES[name] = cls
        return cls

    return deco


def make_engine(name: str, *args, **kwargs):
    if name == "hf":
        from rollout.engines import hf  # noqa: F401  (registers itself)
    if name == "graph":
        from rollout.engines import graph  # noqa: F401  (registers itself)
    if name == "vllm":
        from rollout.engines import vllm_engine  # noqa: F401  (optional dependency, imported inside)
    if name not in ENGINES:
        raise KeyError(f"unknown rollout.engine {name!r}; registered: {sorted(set(ENGINES) | {'hf', 'graph', 'vllm'})}")
    return ENGINES[name](*args, **kwargs)
