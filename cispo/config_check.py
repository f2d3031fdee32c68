"""Fail fast, and helpfully, on a config the run cannot use: checked before anything starts.

Before handing the command line to `@hydra.main`, `check_or_exit` reads every override and
composes the config once: a key the schema does not declare (with the keys valid at that level
and the closest match), a `+key` outside the dicts that take free keys, a config group set
without its `+` (`exp=tiny`), a value outside its range or choices (`cispo.config_rules`) and
settings that cannot work together (`value_problems`) are printed together, in one message, and
the process exits 2. It takes well under the 5 s a user waits for a typo to be pointed out.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path

from omegaconf import OmegaConf

from cispo.config import Config


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


def free_key_dicts(schema: type = Config, prefix: str = "") -> list[str]:
    """The keys declared as dicts of free keys (`reward.options`, `algorithm.loss_options`,
    `rollout.vllm`, ...): keys under them are the user's, not the schema's."""
    import dataclasses
    import typing

    out, hints = [], typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            out += free_key_dicts(t, f"{prefix}{f.name}.")
        elif typing.get_origin(t) is dict:
            out.append(prefix + f.name)
    return out


def _under_free_dict(key: str) -> bool:
    return any(key == d or key.startswith(d + ".") for d in free_key_dicts())


def config_groups(conf_dir: Path) -> list[str]:
    return sorted(p.name for p in conf_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def check_or_exit(conf_dir: Path, config_name: str, argv: list[str]) -> list[str]:
    """Check the command line's overrides and every value of the config they compose, before
    anything starts; on problems print them all in one message and exit 2. Returns argv with
    overrides of keys under free-key dicts made `++key=value`, so that
    `reward.options.code.mode=all` works as the docs write it (Hydra wants a `+` for a key an
    empty dict does not have yet)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    positions = [i for i, a in enumerate(argv)
                 if not a.startswith("-") and "=" in a and not a.startswith("hydra.")]
    try:
        parsed = OverridesParser.create().parse_overrides([argv[i] for i in positions])
    except Exception as exc:  # noqa: BLE001  (a syntax error: Hydra's message says where)
        _exit([f"{exc}"])
    groups, problems, argv = config_groups(conf_dir), [], list(argv)
    keep: list[str] = []
    for i, ov in zip(positions, parsed, strict=True):
        key = ov.key_or_group
        if key in groups or key.split("@")[0] in groups:
            if not (ov.is_add() or ov.is_force_add() or ov.is_delete()):
                options = sorted(p.stem for p in (conf_dir / key).glob("*.yaml"))
                problems.append(f"'{key}' is a config group ({', '.join(options)}): select one with "
                                f"+{ov.input_line} (the + adds it to the defaults list)")
                continue
        elif ov.is_delete():
            pass
        elif _under_free_dict(key):
            if not ov.is_force_add():
                argv[i] = "++" + argv[i].lstrip("+")
        elif not _declared(key):
            problems.append(explain(key) + ("" if ov.type.name == "CHANGE" else
                            f"\n('+' adds keys only under {', '.join(free_key_dicts())}, which "
                            f"take keys of your own)"))
            continue
        keep.append(argv[i])
    # a sweep (`-m a=1,2`) composes one config per job: each job's build() checks its values
    if not any(ov.is_sweep_override() for ov in parsed):
        cfg = _compose_or_problems(conf_dir, config_name, keep, problems)
        if cfg is not None:
            problems += value_problems(cfg)
    if problems:
        _exit(problems)
    return argv


_checked_argv: list[str] | None = None


def check_command_line(conf_dir: Path | None = None) -> None:
    """`check_or_exit` on this process's command line (sys.argv, rewritten in place); once per
    process, so the entry point may call it before its heavy imports and again in `cli()`."""
    global _checked_argv
    if _checked_argv is not None and _checked_argv == sys.argv[1:]:
        return
    conf_dir = conf_dir or Path(__file__).resolve().parent.parent / "conf"
    sys.argv[1:] = check_or_exit(conf_dir, "config", sys.argv[1:])
    _checked_argv = list(sys.argv[1:])


def _compose_or_problems(conf_dir: Path, config_name: str, overrides: list[str], problems: list[str]):
    """The composed config, or None with what went wrong appended to `problems` (each bad
    override found by composing it alone)."""
    from hydra import compose, initialize_config_dir

    def attempt(ovs: list[str]):
        with initialize_config_dir(str(conf_dir), version_base=None):
            return compose(config_name, overrides=ovs)

    try:
        return attempt(overrides)
    except Exception as exc:  # noqa: BLE001  (hydra wraps omegaconf's errors in several layers)
        first = exc
    base = [o for o in overrides if o.lstrip("+~").split("=")[0].split("@")[0] in config_groups(conf_dir)]
    found = []
    for o in overrides:
        if o in base:
            continue
        try:
            attempt(base + [o])
        except Exception as exc:  # noqa: BLE001
            found.append(f"{o}: {_reason(exc)}")
    problems += found or [_reason(first)]
    return None


def _reason(exc: BaseException) -> str:
    """Hydra's message and the omegaconf cause under it, on one or two lines."""
    parts, seen = [], exc
    while seen is not None and len(parts) < 3:
        text = str(seen).strip().split("\n")[0]
        if text and text not in parts:
            parts.append(text)
        seen = seen.__cause__ or seen.__context__
    return ": ".join(parts)


def _exit(problems: list[str]) -> None:
    head = "config: 1 problem" if len(problems) == 1 else f"config: {len(problems)} problems"
    print(f"{head} (nothing was started):", file=sys.stderr)
    for p in problems:
        lines = p.splitlines()
        print("  - " + "\n    ".join(lines), file=sys.stderr)
    sys.exit(2)


def value_problems(cfg) -> list[str]:
    """Settings that are each valid but cannot work together; checked before any worker starts,
    so the user reads one line instead of a traceback from inside a Ray actor after generation."""
    from cispo.config_rules import rule_problems
    from cispo.layout import layout_problems

    P = cfg.parallel
    problems = rule_problems(cfg) + layout_problems(cfg.learner.num_workers, P)
    longest = cfg.data.max_prompt_tokens + max([cfg.rollout.max_new_tokens, *cfg.schedule.windows])
    if P.micro_batch_tokens > 0 and P.micro_batch_tokens < longest:
        problems.append(f"parallel.micro_batch_tokens={P.micro_batch_tokens} is smaller than the longest "
                        f"sequence the run can produce ({longest} = data.max_prompt_tokens + the largest "
                        f"output window): raise it to at least {longest}")
    G, adv = cfg.rollout.group_size, cfg.algorithm.advantage
    if G == 1 and adv in ("group_norm", "group_mean", "rloo"):
        problems.append(f"rollout.group_size=1: algorithm.advantage={adv} compares a prompt's samples "
                        f"with each other; one sample per prompt makes every advantage 0: use >= 2")
    if cfg.rollout.routing_replay and P.micro_batch_tokens:
        problems.append("rollout.routing_replay replays padded rows only: set parallel.micro_batch_tokens=0")
    if not cfg.model.fp32_lm_head:  # the defaults (split_bf16, and ieee) mean nothing without it
        for key, value, off in (("parallel.head_chunk_tokens", P.head_chunk_tokens, (0,)),
                                ("learner.head_precision", cfg.learner.head_precision, ("split_bf16", "ieee"))):
            if value not in off:
                problems.append(f"{key}={value} applies to the FP32 LM head: set model.fp32_lm_head=true")
    problems += _size_problems(cfg) + _sandbox_problems(cfg) + _recipe_problems(cfg)
    problems += placement_problems(cfg) + _engine_problems(cfg)
    return problems


def _engine_problems(cfg) -> list[str]:
    """`rollout.engine` names an engine `rollout/engines/*.py` registers (read from their
    source: no torch import here), so a typo is one line now rather than a KeyError inside a
    generation worker after the model has loaded."""
    from rollout.engines import declared_names

    names = declared_names()
    if cfg.rollout.engine not in names:
        return [f"rollout.engine={cfg.rollout.engine!r}: use one of {', '.join(sorted(names))} (an engine "
                "of your own is a module in rollout/engines/ that uses @register_engine)"]
    if cfg.env.name and cfg.rollout.engine not in ("hf",):
        # multi-turn episodes continue token contexts (`decode_turns`), which only hf implements:
        # said before the model loads, not as a worker error in step 0
        return [f"env.name={cfg.env.name!r} runs multi-turn episodes, which need rollout.engine=hf "
                f"(rollout.engine={cfg.rollout.engine!r} has no decode_turns yet)"]
    return []


def _recipe_problems(cfg) -> list[str]:
    """Loss averaging that the loss cannot do (ranges of ScaleRL's options: cispo.config_rules)."""
    out = []
    if cfg.algorithm.normalization == "prompt" and cfg.algorithm.loss == "grpo":
        out.append("algorithm.loss=grpo normalises per sample: use normalization=sample, or "
                   "loss=dapo/cispo for prompt-level averaging")
    return out


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


def _sandbox_problems(cfg) -> list[str]:
    """Where the sandboxed rewards run (sandbox.placement, rewards.scorers); the message names
    the resource the actors need, so this check is here rather than a plain choice rule."""
    S = cfg.sandbox
    if S.placement not in ("local", "actors"):
        return [f"sandbox.placement={S.placement!r}: use local (this machine's Docker engine) or "
                f"actors (scorer actors on the Ray nodes that advertise the '{S.resource}' resource)"]
    return []


def local_ray_problems(cfg) -> list[str]:
    """What a local Ray (no ray.address) cannot give the run besides GPUs: nodes that advertise
    the sandbox resource, for sandbox.placement=actors."""
    S = cfg.sandbox
    if S.placement == "actors" and not cfg.ray.address:
        return [f"sandbox.placement=actors puts the scorers on the Ray nodes that advertise the "
                f"'{S.resource}' resource: join that cluster with ray.address (launch/), or score "
                "on this machine with sandbox.placement=local"]
    return []


def placement_problems(cfg) -> list[str]:
    """`parallel.placement` with the transport and resources asked for (cispo.placement)."""
    from cispo.placement import PLACEMENTS, TRANSPORTS, choose_transport, plan_layout

    R, L = cfg.rollout, cfg.learner
    if cfg.parallel.placement not in PLACEMENTS or R.sync_transport not in TRANSPORTS:
        return []  # the value rules (cispo.config_rules) say so, once
    on_gpu = L.num_gpus_per_worker > 0 or R.num_gpus_per_worker > 0
    problems = []
    if L.offload_while_generating and cfg.parallel.placement != "colocated":
        problems.append("learner.offload_while_generating=true makes room for engines on the learner's "
                        "GPUs: it needs parallel.placement=colocated (separate engines have GPUs of their own)")
    try:
        choose_transport(cfg.parallel.placement, on_gpu, R.sync_transport)
        plan_layout(cfg.parallel.placement, L.num_workers, L.num_cpus_per_worker, L.num_gpus_per_worker,
                    R.num_workers, R.num_cpus_per_worker, R.num_gpus_per_worker,
                    cfg.parallel.rollout_tensor_parallel * cfg.parallel.rollout_pipeline_parallel)
    except ValueError as e:
        problems.append(str(e))
    return problems
