"""What to change when a plan does not fit: the smallest single change that makes it fit.

`advice(term, cfg)` is the one-line hint for the largest term of a GPU over budget, without the
settings already in force (no "learner.zero_stage>=1" under ZeRO-3). `changes_that_fit(cfg,
plan)` tries, per role over budget, one key at a time, each from its current value outward (the
nearest value first), and keeps the first values at which that role fits the GPU without a new
placement problem: `parallel.micro_batch_tokens=43008`, not "lower the token budget".
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

# Largest term -> what helps, as (key, hint); a hint whose key is already at its best is dropped.
HINTS: dict[str, list[tuple[str, str]]] = {
    "params": [("learner.num_workers", "more learner ranks (learner.num_workers)"),
               ("learner.zero_stage", "learner.zero_stage=3")],
    "grads": [("learner.num_workers", "more learner ranks (learner.num_workers)"),
              ("learner.zero_stage", "learner.zero_stage>=2")],
    "optimizer": [("learner.num_workers", "more learner ranks (learner.num_workers)"),
                  ("learner.zero_stage", "learner.zero_stage>=1")],
    "gathered_layers": [("parallel.expert_parallel", "raise parallel.expert_parallel"),
                        ("parallel.prefetch_layers", "lower parallel.prefetch_layers")],
    "checkpoints": [("parallel.sequence_parallel", "raise parallel.sequence_parallel"),
                    ("parallel.micro_batch_tokens", "lower parallel.micro_batch_tokens")],
    "layer_recompute": [("learner.gradient_checkpointing", "set learner.gradient_checkpointing=true"),
                        ("parallel.sequence_parallel", "raise parallel.sequence_parallel"),
                        ("parallel.micro_batch_tokens", "lower parallel.micro_batch_tokens")],
    "sp_buffers": [("parallel.micro_batch_tokens",
                    "lower parallel.micro_batch_tokens (the gathered K/V hold the whole micro-batch)")],
    "head_weight": [("", "more learner ranks cannot help (the head is gathered whole): use a "
                         "smaller vocab or model")],
    "head_hidden": [("parallel.sequence_parallel", "raise parallel.sequence_parallel"),
                    ("parallel.micro_batch_tokens", "lower parallel.micro_batch_tokens")],
    "head_chunk": [("parallel.head_chunk_tokens", "set parallel.head_chunk_tokens lower (e.g. 2048)")],
    "weights": [("parallel.rollout_tensor_parallel", "raise parallel.rollout_tensor_parallel"),
                ("parallel.rollout_pipeline_parallel", "raise parallel.rollout_pipeline_parallel")],
    "kv_cache": [("parallel.rollout_concurrency", "lower parallel.rollout_concurrency"),
                 ("", "lower the window (rollout.max_new_tokens / schedule.windows)")],
    "lightning_state": [("parallel.rollout_concurrency", "lower parallel.rollout_concurrency")],
    "forward_workspace": [("parallel.rollout_batched_tokens", "lower parallel.rollout_batched_tokens")],
    "reserve": [("", "lower cluster.reserve_gib only if a measured peak allows it")],
}


def _in_force(key: str, cfg: Any) -> bool:
    """The hint's setting is already as far as it goes."""
    if key == "learner.zero_stage":
        return cfg.learner.zero_stage >= 3
    if key == "learner.gradient_checkpointing":
        return bool(cfg.learner.gradient_checkpointing)
    if key == "parallel.prefetch_layers":
        return cfg.parallel.prefetch_layers <= 1
    if key == "parallel.micro_batch_tokens":  # already one sequence per micro-batch
        from cispo.planner import seq_tokens

        return cfg.parallel.micro_batch_tokens == seq_tokens(cfg)
    return False


def advice(term: str, cfg: Any) -> str:
    hints = [h for key, h in HINTS.get(term, []) if not (key and _in_force(key, cfg))]
    return " or ".join(hints) or "no setting of this run lowers it: use a smaller model or larger GPUs"


def _candidates(cfg: Any, role: str) -> Iterator[tuple[str, list[Any]]]:
    """(key, values to try, nearest to the current value first) for one role."""
    from cispo.planner import seq_tokens

    L, P, C = cfg.learner, cfg.parallel, cfg.cluster
    seq, ranks = seq_tokens(cfg), L.num_workers
    if role == "learner":
        if L.zero_stage < 3:
            yield "learner.zero_stage", list(range(L.zero_stage + 1, 4))
        if not L.gradient_checkpointing:
            yield "learner.gradient_checkpointing", [True]
        current = P.micro_batch_tokens or L.micro_batch_size * seq
        packed = [seq * k for k in _halvings(current // seq) if seq * k < current]
        if packed:
            yield "parallel.micro_batch_tokens", packed
        if not P.micro_batch_tokens and L.micro_batch_size > 1:
            yield "learner.micro_batch_size", list(_halvings(L.micro_batch_size))[1:]
        if P.micro_batch_tokens:
            yield "parallel.sequence_parallel", [d for d in range(P.sequence_parallel + 1, ranks + 1)
                                                 if ranks % d == 0]
        if not P.head_chunk_tokens or P.head_chunk_tokens > 1024:
            yield "parallel.head_chunk_tokens", [c for c in (16384, 8192, 4096, 2048, 1024)
                                                 if not P.head_chunk_tokens or c < P.head_chunk_tokens]
        yield "parallel.expert_parallel", [d for d in range(P.expert_parallel + 1, ranks + 1) if ranks % d == 0]
        yield "learner.num_workers", [ranks * k for k in (2, 4, 8, 16)]
        if P.prefetch_layers > 1:
            yield "parallel.prefetch_layers", list(range(P.prefetch_layers - 1, 0, -1))
    else:
        top = max(C.gpus_per_node, 1)
        yield "parallel.rollout_tensor_parallel", [t for t in (2, 4, 8, 16, 32)
                                                   if P.rollout_tensor_parallel < t <= top]
        yield "parallel.rollout_pipeline_parallel", list(range(P.rollout_pipeline_parallel + 1, 17))
        sequences = cfg.rollout.prompts_per_step * cfg.rollout.group_size
        conc = P.rollout_concurrency or -(-sequences // cfg.rollout.num_workers)
        yield "parallel.rollout_concurrency", list(_halvings(conc))[1:]
        yield "parallel.rollout_batched_tokens", list(_halvings(P.rollout_batched_tokens))[1:]


def _halvings(n: int) -> Iterator[int]:
    while n >= 1:
        yield n
        n //= 2


def _other_problems(plan: dict) -> set[str]:
    return {p for p in plan["problems"] if not p.startswith(("learner:", "rollout:", "GPU "))}


def changes_that_fit(cfg: Any, plan: dict, limit: int = 2) -> dict[str, list[str]]:
    """Per role over budget, up to `limit` single changes (`key=value`) at which it fits."""
    from omegaconf import OmegaConf

    from cispo.planner import build_plan
    from cispo.planner_model import PlanError

    budget = plan["gpu_memory_gib"]
    if not budget:
        return {}
    out: dict[str, list[str]] = {}
    for role in ("learner", "rollout"):
        if plan[role]["per_gpu_memory_gib"] <= budget:
            continue
        found: list[str] = []
        for key, values in _candidates(cfg, role):
            for value in values:
                trial = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
                OmegaConf.update(trial, key, value, force_add=True)
                try:
                    tried = build_plan(trial)
                except (PlanError, ValueError, KeyError):
                    continue
                if tried[role]["per_gpu_memory_gib"] <= budget and \
                        _other_problems(tried) <= _other_problems(plan):
                    found.append(f"{key}={str(value).lower() if isinstance(value, bool) else value}")
                    break
            if len(found) >= limit:
                break
        out[role] = found
    return out


def summary(plan: dict, changes: dict[str, list[str]]) -> list[str]:
    """The lines a plan that does not fit ends with: what is short and by how much, and the
    smallest changes that fit, at most three lines per cause."""
    budget = plan["gpu_memory_gib"]
    lines = [f"does not fit: {len(plan['problems'])} problem{'s' if len(plan['problems']) > 1 else ''}"]
    for p in plan["problems"]:
        role = p.split(":", 1)[0]
        lines.append(f"  - {p}")
        if role in ("learner", "rollout") and budget:
            over = plan[role]["per_gpu_memory_gib"] - budget
            fix = changes.get(role) or []
            lines.append(f"    short by {over:.1f} GiB per GPU; " + (
                "smallest change that fits: " + " (or " .join(fix) + ")" * (len(fix) - 1)
                if fix else "no single change fits: combine the hints above"))
    return lines
