"""Fail fast, and helpfully, on a config key the schema does not declare.

Hydra already rejects unknown keys; its message names the key but not the valid ones. Before
handing the command line to `@hydra.main`, `check_or_exit` composes the config once and, on a
bad key, prints the keys that are valid at that level (with the closest match) and exits 2.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path

from omegaconf import OmegaConf

from cispo.config import Config


def _unknown_key(exc: BaseException) -> str | None:
    """The dotted key behind a composition error, if the error is about an unknown key."""
    seen = exc
    while seen is not None:
        full_key = getattr(seen, "full_key", None)
        if full_key and any(s in str(seen) for s in ("not in", "not found", "Could not")):
            return str(full_key)
        text = str(seen)
        for marker in ("Could not override '", "Could not append to config. An item is already at '"):
            if marker in text:
                return text.split(marker, 1)[1].split("'", 1)[0]
        seen = seen.__cause__ or seen.__context__
    return None


def valid_keys(dotted: str) -> tuple[str, list[str]]:
    """(the deepest existing parent of `dotted`, the keys declared under it)."""
    node = OmegaConf.structured(Config)
    parts = dotted.split(".")
    parent: list[str] = []
    for part in parts[:-1]:
        child = node.get(part) if OmegaConf.is_dict(node) else None
        if child is None or not OmegaConf.is_dict(child):
            break
        node, parent = child, parent + [part]
    return ".".join(parent), sorted(str(k) for k in node.keys())


def explain(dotted: str) -> str:
    parent, keys = valid_keys(dotted)
    leaf = dotted.split(".")[len(parent.split(".")) if parent else 0]
    close = difflib.get_close_matches(leaf, keys, n=1)
    where = f"under '{parent}'" if parent else "at the top level"
    hint = f" Did you mean '{(parent + '.') if parent else ''}{close[0]}'?" if close else ""
    return (f"Unknown config key '{dotted}'.{hint}\n"
            f"Valid keys {where}: {', '.join(keys)}\n"
            f"(every key, with its default and unit: cispo/config.py; `--cfg job` prints the config)")


def check_or_exit(conf_dir: Path, config_name: str, argv: list[str]) -> None:
    from hydra import compose, initialize_config_dir

    overrides = [a for a in argv if not a.startswith("-") and "=" in a and not a.startswith("hydra.")]
    try:
        with initialize_config_dir(str(conf_dir), version_base=None):
            compose(config_name, overrides=overrides)
    except Exception as exc:  # hydra wraps omegaconf's errors in several layers
        key = _unknown_key(exc)
        if key is None:
            return  # some other problem: let Hydra report it in its own words
        print(explain(key.lstrip("+~")), file=sys.stderr)
        sys.exit(2)


def value_problems(cfg) -> list[str]:
    """Settings that are each valid but cannot work together; checked before any worker starts,
    so the user reads one line instead of a traceback from inside a Ray actor after generation."""
    problems = []
    L = cfg.learner
    longest = cfg.data.max_prompt_tokens + max([cfg.rollout.max_new_tokens, *cfg.schedule.windows])
    if L.micro_batch_tokens and L.micro_batch_tokens < longest:
        problems.append(f"learner.micro_batch_tokens={L.micro_batch_tokens} is smaller than the longest "
                        f"sequence the run can produce ({longest} = data.max_prompt_tokens + the largest "
                        f"output window): raise it to at least {longest}")
    if L.sequence_parallel_size > 1 and not L.micro_batch_tokens:
        problems.append("learner.sequence_parallel_size > 1 splits packed rows: set learner.micro_batch_tokens")
    if cfg.rollout.routing_replay and L.micro_batch_tokens:
        problems.append("rollout.routing_replay replays padded rows only: set learner.micro_batch_tokens=0")
    problems += placement_problems(cfg)
    return problems


def placement_problems(cfg) -> list[str]:
    """`parallel.placement` with the transport and resources asked for (cispo.placement)."""
    from cispo.placement import choose_transport, plan_layout

    R, L = cfg.rollout, cfg.learner
    on_gpu = L.num_gpus_per_worker > 0 or R.num_gpus_per_worker > 0
    try:
        choose_transport(cfg.parallel.placement, on_gpu, R.sync_transport)
        plan_layout(cfg.parallel.placement, L.num_workers, L.num_cpus_per_worker, L.num_gpus_per_worker,
                    R.num_workers, R.num_cpus_per_worker, R.num_gpus_per_worker,
                    cfg.parallel.rollout_tensor_parallel * cfg.parallel.rollout_pipeline_parallel)
    except ValueError as e:
        return [str(e)]
    return []
