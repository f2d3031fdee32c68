"""The values each config key allows: a range or a set of choices, beside the schema.

`cispo/config.py` declares every key with its type and default; this table adds what the type
cannot say (a count of at least 1, a probability in (0, 1], one of a few names). The start-up
checks (`cispo.config_check`) test every value against it before anything starts, so
`trainer.total_steps=-1` or `model.dtype=fp16` is one line at once instead of a run that does
nothing or a traceback from inside a worker half a minute later.

Keys whose values name something registered (`rollout.engine`, `algorithm.loss`,
`algorithm.advantage`, reward names) are checked against their registries where those are
read (`rollout.engine` at start-up too, against the names `rollout/engines/*.py` register);
booleans need no rule (the schema's type refuses anything else); free-form strings (paths, names, patterns) have no rule. Every int and float key has one:
`tests/test_config_values.py` fails on a new numeric key without it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Range:
    """lo <= value <= hi (open ends with lo_open / hi_open); None: unbounded on that side."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    note: str = ""  # why, or what a special value means (shown in the message)

    def problem(self, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            return "not a number"
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            return f"must be {'>' if self.lo_open else '>='} {self.lo:g}"
        if self.hi is not None and (value > self.hi or (self.hi_open and value == self.hi)):
            return f"must be {'<' if self.hi_open else '<='} {self.hi:g}"
        return None

    def describe(self) -> str:
        lo = "" if self.lo is None else f"{'>' if self.lo_open else '>='} {self.lo:g}"
        hi = "" if self.hi is None else f"{'<' if self.hi_open else '<='} {self.hi:g}"
        return " and ".join(x for x in (lo, hi) if x)


@dataclass(frozen=True)
class Choice:
    values: tuple
    note: str = ""

    def problem(self, value: Any) -> str | None:
        return None if value in self.values else f"use one of {', '.join(map(str, self.values))}"


@dataclass(frozen=True)
class Each:
    """Every element of a list follows `rule`."""

    rule: Range | Choice

    def problem(self, value: Any) -> str | None:
        for i, v in enumerate(value or []):
            if p := self.rule.problem(v):
                return f"element {i} ({v!r}) {p}"
        return None


def at_least(lo: float, note: str = "") -> Range:
    return Range(lo, note=note)


def positive(note: str = "") -> Range:
    return Range(0, lo_open=True, note=note)


def one_of(*values: Any, note: str = "") -> Choice:
    return Choice(tuple(values), note)


COUNT = at_least(1)
OPTIONAL_COUNT = at_least(0, "0 = off")
SECONDS = positive()
PROBABILITY = Range(0, 1, lo_open=True)

RULES: dict[str, Range | Choice | Each] = {
    "model.dtype": one_of("float32", "bfloat16",
                          note="float16 would need loss scaling, which the learner does not do"),
    "model.rotary_dim": at_least(2),
    "model.tiny.hidden_size": COUNT, "model.tiny.num_layers": COUNT,
    "model.tiny.softmax_every": COUNT, "model.tiny.num_heads": COUNT,
    "model.tiny.num_kv_heads": COUNT, "model.tiny.num_experts": COUNT,
    "model.tiny.experts_per_token": COUNT, "model.tiny.expert_ffn": COUNT,
    "model.tiny.block_size": COUNT, "model.tiny.max_positions": COUNT,
    "model.tiny.rope_theta": positive(), "model.tiny.init_seed": at_least(0),
    "data.max_prompt_tokens": COUNT, "data.seed": at_least(0),
    "data.arithmetic_rows": COUNT, "data.arithmetic_max_operand": at_least(0),
    "data.retire_pass_rate": Range(0, 1, note="a pass rate; ScaleRL: 0.9; null = off"),
    "data.pass_score": Range(),  # any score
    "rollout.num_workers": COUNT, "rollout.prompts_per_step": COUNT,
    "rollout.group_size": COUNT, "rollout.max_new_tokens": COUNT,
    "rollout.temperature": positive("sampling needs a temperature above 0"),
    "rollout.top_p": PROBABILITY, "rollout.top_k": OPTIONAL_COUNT,
    "rollout.repetition_window": OPTIONAL_COUNT, "rollout.repetition_threshold": PROBABILITY,
    "rollout.repetition_reward": Range(),  # any score (null: score such responses)
    "rollout.max_restarts": at_least(0), "rollout.num_cpus_per_worker": at_least(0),
    "rollout.num_gpus_per_worker": at_least(0), "rollout.torch_threads": COUNT,
    "rollout.sync_bucket_mb": positive(), "rollout.max_prompts_per_batch": OPTIONAL_COUNT,
    "rollout.placement_groups": one_of("auto", "on", "off"),
    "rollout.max_staleness": at_least(1, "async generation is at least 1 step off-policy; for "
                                         "on-policy rollouts set rollout.async_generation=false"),
    "rollout.sync_transport": one_of("auto", "object_store", "ipc", "broadcast",
                                     note="auto: ipc colocated on GPUs, broadcast separate, object_store on CPU"),
    "rollout.gpu_memory_fraction": Range(0, 1, lo_open=True, note="rollout.engine=graph: its share of the GPU"),
    "reward.timeout_s": SECONDS, "reward.error_score": Range(), "reward.max_concurrency": COUNT, "reward.num_workers": COUNT,
    "reward.max_consecutive_timeouts": OPTIONAL_COUNT,
    "reward.length_penalty.max_length": COUNT, "reward.length_penalty.cache": at_least(0),
    "reward.length_penalty.factor": at_least(0),
    "sandbox.backend": one_of("docker", "process"), "sandbox.num_workers": COUNT,
    "sandbox.cpus": positive(), "sandbox.pids_limit": COUNT,
    "sandbox.verdict_timeout_s": SECONDS, "sandbox.start_timeout_s": SECONDS,
    "sandbox.scorers_per_node": COUNT, "sandbox.max_restarts": at_least(0),
    "sandbox.nodes_wait_s": at_least(0, "0 = only the sandbox nodes already joined"),
    "algorithm.eps_low": Range(0, 1, note="1 = no lower bound (M1)"),
    "algorithm.eps_high": at_least(0), "algorithm.normalization": one_of("token", "sample", "prompt"),
    "algorithm.advantage_eps": at_least(0), "algorithm.max_sampling_rounds": COUNT,
    "algorithm.num_minibatches": COUNT, "algorithm.old_logprobs": one_of("learner", "rollout"),
    "learner.num_workers": COUNT, "learner.zero_stage": one_of(0, 1, 2, 3),
    "learner.backend": one_of("auto", "nccl", "gloo"), "learner.micro_batch_size": COUNT,
    "learner.lr": at_least(0), "learner.beta1": Range(0, 1, hi_open=True),
    "learner.beta2": Range(0, 1, hi_open=True), "learner.eps": positive(),
    "learner.weight_decay": at_least(0), "learner.grad_clip": at_least(0, "0 = off"),
    "learner.num_cpus_per_worker": at_least(0), "learner.num_gpus_per_worker": at_least(0),
    "learner.torch_threads": COUNT, "learner.master_port": Range(0, 65535, note="0 = pick a free port"),
    "learner.checkpoint_layers": at_least(-1, "-1 = every layer; k = the k that hold the most activations"),
    "learner.head_precision": one_of("split_bf16", "ieee", "3xtf32"),  # cispo.models.fp32_head
    "learner.grouped_mm_backend": one_of("grouped_mm", "fused_gate_up", "loop"),  # cispo.models.speed
    "trainer.total_steps": COUNT, "trainer.save_every": OPTIONAL_COUNT, "trainer.seed": at_least(0),
    "logging.wandb_mode": one_of("auto", "online", "offline", "disabled"),
    "logging.progress_every_s": positive(), "logging.samples_per_step": at_least(0),
    "logging.profile_learn_step": at_least(0, "a step number; null = none"),
    "ray.num_cpus": COUNT,
    "cluster.nodes": COUNT, "cluster.gpus_per_node": at_least(0), "cluster.gpu_memory_gib": positive(),
    "cluster.cpus_per_node": at_least(0), "cluster.cpu_nodes": at_least(0),
    "cluster.cpus_per_cpu_node": COUNT, "cluster.cpu_node_memory_gib": positive(),
    "cluster.reserve_gib": at_least(0),
    "parallel.head_chunk_tokens": at_least(0), "parallel.prefetch_layers": COUNT,
    "parallel.rollout_tensor_parallel": COUNT, "parallel.rollout_pipeline_parallel": COUNT,
    "parallel.rollout_concurrency": at_least(0), "parallel.rollout_batched_tokens": COUNT,
    "parallel.placement": one_of("colocated", "separate", note="cispo.placement"),
    "schedule.windows": Each(COUNT), "schedule.eps_high": Each(at_least(0)),
    "schedule.grad_clip": Each(at_least(0)), "schedule.p99_fraction": PROBABILITY,
    "schedule.ppl_rel_tol": at_least(0), "schedule.ppl_window": COUNT,
    "schedule.min_steps_per_stage": at_least(0),
    "env.max_turns": COUNT, "env.max_total_tokens": COUNT, "env.episode_timeout_s": SECONDS,
    "env.step_timeout_s": SECONDS, "env.max_observation_tokens": COUNT, "env.error_reward": Range(),
}
# checked where they are read (a layout function, a size parser) with their own messages;
# rollout.engine against the engines rollout/engines/*.py register (cispo.config_check)
CHECKED_ELSEWHERE = ("parallel.expert_parallel", "parallel.sequence_parallel",
                     "parallel.micro_batch_tokens", "sandbox.memory_mb", "reward.worker_memory_mb",
                     "sandbox.placement")


def rule_problems(cfg: Any, rules: dict | None = None) -> list[str]:
    """One line per value outside its rule: `key=value: must be >= 1 (why)`. Keys the config
    does not have (an older schema) and unset values (`???`, or null where null is allowed)
    are passed over."""
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    out = []
    for key, rule in (rules or RULES).items():
        try:
            value = OmegaConf.select(cfg, key, throw_on_missing=True)
        except MissingMandatoryValue:
            continue
        if value is None:
            continue  # Optional keys: null is their "off"; the schema refuses null elsewhere
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        if (why := rule.problem(value)) is not None:
            note = rule.rule.note if isinstance(rule, Each) else rule.note
            out.append(f"{key}={value!r}: {why}" + (f" ({note})" if note else ""))
    return out


def numeric_keys(schema: type, prefix: str = "") -> Iterable[str]:
    """Every int/float key of the schema (dataclasses nested), for the completeness test."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            yield from numeric_keys(t, f"{prefix}{f.name}.")
            continue
        args = set(typing.get_args(t)) - {type(None)}
        if t in (int, float) or (args and args <= {int, float}) or \
                typing.get_origin(t) is list and set(typing.get_args(t)) <= {int, float}:
            yield prefix + f.name
