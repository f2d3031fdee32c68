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


def _declared(dotted: str) -> bool:
    parent, keys = valid_keys(dotted)
    return parent == ".".join(dotted.split(".")[:-1]) and dotted.split(".")[-1] in keys


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
        if key is None or _declared(key.lstrip("+~")):
            # some other problem (e.g. setting keys in an empty dict without `+`): let Hydra
            # report it in its own words
            return
        print(explain(key.lstrip("+~")), file=sys.stderr)
        sys.exit(2)


def value_problems(cfg) -> list[str]:
    """Settings that are each valid but cannot work together; checked before any worker starts,
    so the user reads one line instead of a traceback from inside a Ray actor after generation."""
    from cispo.layout import layout_problems

    P = cfg.parallel
    problems = layout_problems(cfg.learner.num_workers, P)
    longest = cfg.data.max_prompt_tokens + max([cfg.rollout.max_new_tokens, *cfg.schedule.windows])
    if P.micro_batch_tokens > 0 and P.micro_batch_tokens < longest:
        problems.append(f"parallel.micro_batch_tokens={P.micro_batch_tokens} is smaller than the longest "
                        f"sequence the run can produce ({longest} = data.max_prompt_tokens + the largest "
                        f"output window): raise it to at least {longest}")
    if cfg.rollout.routing_replay and P.micro_batch_tokens:
        problems.append("rollout.routing_replay replays padded rows only: set parallel.micro_batch_tokens=0")
    from cispo.models.fp32_head import HEAD_PRECISIONS

    if cfg.learner.head_precision not in HEAD_PRECISIONS:
        problems.append(f"learner.head_precision={cfg.learner.head_precision}: use one of {', '.join(HEAD_PRECISIONS)}")
    if not cfg.model.fp32_lm_head:  # the defaults (split_bf16, and ieee) mean nothing without it
        for key, value, off in (("parallel.head_chunk_tokens", P.head_chunk_tokens, (0,)),
                                ("learner.head_precision", cfg.learner.head_precision, ("split_bf16", "ieee"))):
            if value not in off:
                problems.append(f"{key}={value} applies to the FP32 LM head: set model.fp32_lm_head=true")
    problems += _size_problems(cfg)
    problems += placement_problems(cfg)
    return problems


def resource_problems(cfg, gpus_available: float, where: str) -> list[str]:
    """The run asks Ray for more GPUs than `where` has: one line instead of actors that wait
    for resources forever."""
    from cispo.planner import engine_gpus, gpus_needed

    need = gpus_needed(cfg)
    if need <= gpus_available:
        return []
    L, R = cfg.learner, cfg.rollout
    engines = ("on the learner's GPUs" if cfg.parallel.placement == "colocated"
               else f"{R.num_workers} engines x {engine_gpus(cfg):g}")
    fix = ("join the cluster: start Ray on it (launch/: SLURM, KubeRay) and pass ray.address=auto"
           if not cfg.ray.address else "add GPU nodes or lower learner.num_workers / rollout.num_workers")
    return [f"this run needs {need:g} GPUs (learner: {L.num_workers} ranks x {L.num_gpus_per_worker:g}; "
            f"engines: {engines}); {where} has {gpus_available:g}: {fix}. "
            f"`plan=true` shows where everything goes"]


def _size_problems(cfg) -> list[str]:
    """Memory sizes that do not parse (MB, or Docker's syntax: sandboxes.sizes)."""
    from sandboxes.sizes import memory_mb

    out = []
    for key, value in (("sandbox.memory_mb", cfg.sandbox.memory_mb),
                       ("reward.worker_memory_mb", cfg.reward.worker_memory_mb)):
        try:
            memory_mb(value, key)
        except ValueError as e:
            out.append(str(e))
    return out


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
