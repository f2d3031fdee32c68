"""The resource planner: `python -m cispo.train +exp=NAME plan=true [run_dir=DIR]`.

Runs no training and needs no GPU. It places the learner ranks, the rollout engines
(tensor x pipeline parallel) and the sandbox containers on the cluster `cfg.cluster` describes,
estimates every GPU's memory term by term (cispo.planner_memory), prints a table and writes
`run_dir/plan.json`. A plan that does not fit names the largest term and what to change.

`build_plan(cfg)` is the pure part (config in, dict out); `run_plan(cfg)` prints and writes.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from cispo.layout import learner_layout
from cispo.planner_advice import advice, changes_that_fit, summary
from cispo.planner_memory import (
    DTYPE_BYTES,
    GIB,
    EngineLayout,
    LearnerLayout,
    engine_terms,
    learner_terms,
)
from cispo.planner_model import PlanError, param_counts, resolve_config, shape_of
from sandboxes.sizes import memory_mb


def seq_tokens(cfg: Any) -> int:
    """Prompt + the largest output window the run will reach (the last schedule stage)."""
    windows = list(cfg.schedule.windows) or [cfg.rollout.max_new_tokens]
    return cfg.data.max_prompt_tokens + max(max(windows), cfg.rollout.max_new_tokens)


def engine_gpus(cfg: Any) -> float:
    """GPUs one engine occupies: tp x pp whole GPUs, or a fraction when it shares one."""
    r, par = cfg.rollout, cfg.parallel
    if r.num_gpus_per_worker <= 0:
        return 0.0
    tp_pp = par.rollout_tensor_parallel * par.rollout_pipeline_parallel
    return float(tp_pp) if tp_pp > 1 else float(r.num_gpus_per_worker)


def gpus_needed(cfg: Any) -> float:
    """GPUs the run's actors ask Ray for: the learner ranks' and the engines'. Colocated, both
    ask for their fractions of the same GPUs (cispo.placement: one bundle of at most one GPU per
    learner rank, its engines inside), so the sum is what Ray must have."""
    learner = cfg.learner.num_workers * cfg.learner.num_gpus_per_worker
    return float(learner + cfg.rollout.num_workers * engine_gpus(cfg))


def place(gpus: int, jobs: list[tuple[str, float]]) -> tuple[list[list[str]], list[str]]:
    """First-fit: whole-GPU jobs take contiguous free GPUs, fractional ones share.
    Returns (occupants of each GPU, problems)."""
    free = [1.0] * gpus
    used: list[list[str]] = [[] for _ in range(gpus)]
    problems: list[str] = []
    for name, need in jobs:
        if need <= 0:
            continue
        if need >= 1:
            k = math.ceil(need)
            start = next((i for i in range(gpus - k + 1)
                          if all(free[j] == 1.0 for j in range(i, i + k))), None)
            slots = range(start, start + k) if start is not None else None
        else:
            i = next((i for i in range(gpus) if free[i] >= need - 1e-9), None)
            slots = [i] if i is not None else None
        if slots is None:
            problems.append(f"no room for {name} ({need:g} GPU): the cluster has {gpus} GPUs "
                            f"(cluster.nodes x cluster.gpus_per_node); add nodes or use fewer "
                            f"learner ranks / engines")
            continue
        for j in slots:
            free[j] -= min(need, 1.0)
            used[j].append(name)
    return used, problems


def smallest_fitting_sp(shape, counts, lay: LearnerLayout, reserve: float, budget: float) -> int | None:
    """The smallest sequence-parallel size (a divisor of the ranks, at most the ranks) at which
    one learner rank fits `budget` bytes, with everything else as configured; None if none does."""
    for sp in range(1, lay.ranks + 1):
        if lay.ranks % sp:
            continue
        trial = LearnerLayout(**{**lay.__dict__, "sequence_parallel": sp})
        if sum(learner_terms(shape, counts, trial, reserve).values()) <= budget:
            return sp
    return None


def fewest_checkpoint_layers(shape, counts, lay: LearnerLayout, reserve: float, budget: float) -> int | None:
    """Selective activation checkpointing from the plan: the fewest layers whose activations must
    be recomputed for one learner rank to fit `budget` bytes (0: none), everything else as
    configured; None if even recomputing every layer does not fit."""
    for k in range(0, shape.layers + 1):
        trial = LearnerLayout(**{**lay.__dict__, "checkpointing": k > 0, "checkpoint_layers": k})
        if sum(learner_terms(shape, counts, trial, reserve).values()) <= budget:
            return k
    return None


def colocate(occupants: list[list[str]], engines: list[tuple[str, float]]) -> list[str]:
    """parallel.placement=colocated: the engines go onto the learner's GPUs, in order, each GPU
    taking one engine's share (an engine sleeps while the learner trains). Returns problems."""
    learner_gpus = [i for i, occ in enumerate(occupants) if any(o.startswith("learner") for o in occ)]
    need = sum(math.ceil(g) for _, g in engines)
    if need > len(learner_gpus):
        return [f"parallel.placement=colocated puts the engines on the learner's GPUs: they need "
                f"{need} GPUs, the learner has {len(learner_gpus)}; lower rollout.num_workers or "
                f"use parallel.placement=separate"]
    slots = iter(learner_gpus)
    for name, g in engines:
        for _ in range(math.ceil(g)):
            occupants[next(slots)].append(name)
    return []


def gpu_bytes(occupants: list[str], l_terms: dict[str, float], e_terms: dict[str, float]) -> float:
    """One GPU's peak. A learner rank and an engine on one GPU (colocated) take turns: while the
    learner trains the engine sleeps but keeps its weights; while the engine generates the
    learner keeps its parameters, gradients and optimizer state. One reserve counts once."""
    n_l = sum(o.startswith("learner") for o in occupants)
    n_e = len(occupants) - n_l
    l_bytes, e_bytes = sum(l_terms.values()), sum(e_terms.values())
    if n_l and n_e:
        resident = sum(l_terms.get(k, 0.0) for k in ("params", "grads", "optimizer"))
        return max(l_bytes + e_terms["weights"], e_bytes + resident) - e_terms.get("reserve", 0.0)
    return n_l * l_bytes + n_e * e_bytes


def _gib(terms: dict[str, float]) -> dict[str, float]:
    return {k: round(v / GIB, 3) for k, v in terms.items()}


def build_plan(cfg: Any) -> dict:
    """The plan as a dict (the content of plan.json). Raises PlanError on an unplannable config."""
    C, P, L, R = cfg.cluster, cfg.parallel, cfg.learner, cfg.rollout
    shape = shape_of(resolve_config(cfg.model))
    counts = param_counts(shape)
    b = DTYPE_BYTES[cfg.model.dtype]
    seq = seq_tokens(cfg)
    if P.micro_batch_tokens and P.micro_batch_tokens < seq:
        raise PlanError(f"parallel.micro_batch_tokens={P.micro_batch_tokens} cannot hold "
                        f"one sequence of {seq} tokens (data.max_prompt_tokens + the largest "
                        f"window): raise it to at least {seq}")
    try:  # the layout the learner builds (LearnerGroup calls the same function)
        ranks = learner_layout(L, P)
    except ValueError as e:
        raise PlanError(str(e)) from None
    sp = ranks.sequence_parallel
    if shape.experts % ranks.expert_parallel and ranks.expert_parallel % shape.experts:
        raise PlanError(f"parallel.expert_parallel={ranks.expert_parallel} does not divide the "
                        f"model's {shape.experts} experts")
    lay = LearnerLayout(ranks=L.num_workers, zero_stage=L.zero_stage, dtype_bytes=b,
                        expert_parallel=ranks.expert_parallel, sequence_parallel=sp,
                        tokens_per_micro_batch=ranks.micro_batch_tokens or L.micro_batch_size * seq,
                        head_chunk_tokens=P.head_chunk_tokens,
                        checkpointing=L.gradient_checkpointing, prefetch_layers=P.prefetch_layers,
                        checkpoint_layers=L.get("checkpoint_layers", -1))
    on_gpu = C.gpus_per_node > 0
    reserve = C.reserve_gib if on_gpu else 0.0
    l_terms = learner_terms(shape, counts, lay, reserve)
    sequences = R.prompts_per_step * R.group_size
    concurrency = P.rollout_concurrency or -(-sequences // R.num_workers)
    elay = EngineLayout(tensor_parallel=P.rollout_tensor_parallel,
                        pipeline_parallel=P.rollout_pipeline_parallel, dtype_bytes=b,
                        concurrency=concurrency, seq_tokens=seq, batched_tokens=P.rollout_batched_tokens)
    e_terms = engine_terms(shape, counts, elay, reserve)

    gpus = C.nodes * C.gpus_per_node
    problems: list[str] = []
    if on_gpu and P.rollout_tensor_parallel > C.gpus_per_node:
        problems.append(f"parallel.rollout_tensor_parallel={P.rollout_tensor_parallel} spans "
                        f"nodes ({C.gpus_per_node} GPUs each): keep tensor parallelism inside a "
                        f"node and add parallel.rollout_pipeline_parallel stages instead")
    colocated = P.placement == "colocated"
    learner_jobs = [(f"learner{i}", float(L.num_gpus_per_worker)) for i in range(L.num_workers)]
    engine_jobs = [(f"engine{i}", engine_gpus(cfg)) for i in range(R.num_workers)]
    occupants, placement_problems = (place(gpus, learner_jobs + ([] if colocated else engine_jobs))
                                     if on_gpu else ([], []))
    if on_gpu and colocated:
        placement_problems += colocate(occupants, engine_jobs)
    problems += placement_problems
    if not on_gpu and gpus_needed(cfg) > 0:  # e.g. a GPU run planned on the default cluster
        problems.append(f"the run asks for {gpus_needed(cfg):g} GPUs (learner.num_gpus_per_worker, "
                        f"rollout.num_gpus_per_worker) but cluster.gpus_per_node=0 describes machines "
                        f"without any: set cluster.nodes, cluster.gpus_per_node and "
                        f"cluster.gpu_memory_gib to where it will run, or memory goes unchecked")
    l_bytes, e_bytes = sum(l_terms.values()), sum(e_terms.values())
    per_gpu = [gpu_bytes(occ, l_terms, e_terms) for occ in occupants]
    budget = C.gpu_memory_gib * GIB
    needed_sp = smallest_fitting_sp(shape, counts, lay, reserve, budget) if on_gpu else None
    needed_ckpt = fewest_checkpoint_layers(shape, counts, lay, reserve, budget) if on_gpu else None
    if on_gpu:
        for role, terms, total in (("learner", l_terms, l_bytes), ("rollout", e_terms, e_bytes)):
            if total > budget:
                worst = max(terms, key=lambda k: terms[k])
                problems.append(f"{role}: {total / GIB:.1f} GiB per GPU > cluster.gpu_memory_gib="
                                f"{C.gpu_memory_gib:g}; largest term {worst} = "
                                f"{terms[worst] / GIB:.1f} GiB: {advice(worst, cfg)}")
        shared = [i for i, occ in enumerate(occupants) if len(occ) > 1 and per_gpu[i] > budget]
        if shared and not any(p.startswith(("learner:", "rollout:")) for p in problems):
            problems.append(f"GPU {shared[0]} is shared by {', '.join(occupants[shared[0]])}: "
                            f"{per_gpu[shared[0]] / GIB:.1f} GiB together > "
                            f"{C.gpu_memory_gib:g} GiB; give each its own GPU or shrink one")

    sandbox, sandbox_problems = plan_sandboxes(cfg)
    problems += sandbox_problems

    used_gpus = sum(1 for occ in occupants if occ)
    return {
        "exp_name": cfg.exp_name,
        "gpus": used_gpus, "cluster_gpus": gpus, "nodes": C.nodes, "cpu_nodes": C.cpu_nodes,
        "model": {"name": cfg.model.name, "total_params": counts.total,
                  "active_params": counts.active, "shape": shape.as_dict(),
                  "counts": counts.as_dict()},
        "learner": {"ranks": L.num_workers, "gpus": sum(1 for o in occupants if any(x.startswith("learner") for x in o)),
                    "zero_stage": L.zero_stage, "expert_parallel": ranks.expert_parallel,
                    "sequence_parallel": sp,
                    "micro_batch_tokens": ranks.micro_batch_tokens,  # 0: padded rows
                    # the smallest size at which a learner rank fits cluster.gpu_memory_gib
                    "sequence_parallel_needed": needed_sp,
                    # selective checkpointing: the fewest layers to recompute so a rank fits
                    # (learner.checkpoint_layers; None: not even all of them)
                    "checkpoint_layers_needed": needed_ckpt,
                    "data_parallel": ranks.data_parallel,
                    "tokens_per_rank": lay.tokens_per_micro_batch / sp,
                    "per_gpu_memory_gib": round(l_bytes / GIB, 3), "terms_gib": _gib(l_terms)},
        "rollout": {"engines": R.num_workers, "tensor_parallel": P.rollout_tensor_parallel,
                    "pipeline_parallel": P.rollout_pipeline_parallel,
                    "gpus_per_engine": engine_gpus(cfg), "placement": P.placement,
                    "sequence_tokens": seq,
                    "concurrency_per_engine": concurrency, "sequences_per_step": sequences,
                    "waves_per_step": -(-sequences // (concurrency * R.num_workers)),
                    "per_gpu_memory_gib": round(e_bytes / GIB, 3), "terms_gib": _gib(e_terms)},
        "sandbox": sandbox,
        "max_gpu_memory_gib": round(max(per_gpu, default=0.0) / GIB, 3),
        "gpu_memory_gib": C.gpu_memory_gib if on_gpu else None,
        "placement": _placement_summary(occupants, C.gpus_per_node),
        "fits": not problems,
        "problems": problems,
    }


def plan_sandboxes(cfg: Any) -> tuple[dict, list[str]]:
    """Where the sandboxes go, as the run places them (sandbox.placement): `local`, in the
    trainer's process on the driver's node (a GPU node's CPUs); `actors`, scorer actors on the
    CPU nodes (cluster.cpu_nodes), each node advertising cpus_per_cpu_node / sandbox.cpus slots
    (what launch/ starts them with). The warm verdict containers (sandbox.num_workers) are split
    over the scorers by slots."""
    C, S = cfg.cluster, cfg.sandbox
    gib = memory_mb(S.memory_mb) / 1024
    out = {"placement": S.placement, "containers": S.num_workers, "cpus": S.num_workers * S.cpus,
           "memory_gib": round(S.num_workers * gib, 3)}
    problems: list[str] = []
    if S.placement != "actors":
        out.update(placed_on="the driver's node", scorers=0, available_cpus=C.cpus_per_node)
        if C.cpu_nodes:
            problems.append(f"cluster.cpu_nodes={C.cpu_nodes} plans sandbox nodes, but "
                            "sandbox.placement=local scores in the trainer's process on the "
                            "driver's node: set sandbox.placement=actors")
        if out["cpus"] > C.cpus_per_node:
            problems.append(f"sandboxes need {out['cpus']:g} CPUs (sandbox.num_workers x "
                            f"sandbox.cpus) on the driver's node, which has {C.cpus_per_node} "
                            "(cluster.cpus_per_node): use sandbox.placement=actors with CPU nodes")
        return out, problems
    slots = int(C.cpus_per_cpu_node // S.cpus) if S.cpus > 0 else C.cpus_per_cpu_node
    per_node = min(S.scorers_per_node, max(slots, 1))
    per_container_node = -(-S.num_workers // max(C.cpu_nodes, 1))
    out.update(placed_on="cpu nodes", scorers=C.cpu_nodes * per_node, scorers_per_node=per_node,
               slots_per_node=slots, containers_per_node=per_container_node,
               available_cpus=C.cpu_nodes * C.cpus_per_cpu_node)
    if not C.cpu_nodes:
        problems.append(f"sandbox.placement=actors puts scorers on the nodes that advertise the "
                        f"'{S.resource}' resource, and cluster.cpu_nodes=0 plans none: set "
                        "cluster.cpu_nodes (the CPU nodes launch/ starts with that resource)")
    elif per_container_node * S.cpus > C.cpus_per_cpu_node:
        problems.append(f"sandboxes need {per_container_node * S.cpus:g} CPUs per CPU node "
                        f"(sandbox.num_workers / cluster.cpu_nodes x sandbox.cpus), a node has "
                        f"{C.cpus_per_cpu_node}: add cluster.cpu_nodes")
    elif per_container_node * gib > C.cpu_node_memory_gib:
        problems.append("sandboxes need more memory per CPU node than it has: add "
                        "cluster.cpu_nodes or lower sandbox.memory_mb")
    return out, problems


def _placement_summary(occupants: list[list[str]], per_node: int) -> list[dict]:
    """Runs of nodes with the same kind of occupants, e.g. nodes 0-31: learner ranks."""
    rows: list[dict] = []
    for n in range(len(occupants) // per_node if per_node else 0):
        occ = sorted({o.rstrip("0123456789") for g in occupants[n * per_node:(n + 1) * per_node]
                      for o in g}) or ["idle"]
        what = "+".join(occ)
        if rows and rows[-1]["what"] == what and rows[-1]["last_node"] == n - 1:
            rows[-1]["last_node"] = n
        else:
            rows.append({"first_node": n, "last_node": n, "what": what})
    return rows


def format_plan(plan: dict) -> str:
    """The human-readable table `run_plan` prints."""
    m, lr, ro = plan["model"], plan["learner"], plan["rollout"]
    out = [f"plan for {plan['exp_name']}: {plan['gpus']} of {plan['cluster_gpus']} GPUs on "
           f"{plan['nodes']} nodes (+{plan['cpu_nodes']} CPU nodes)",
           f"model {m['name']}: {m['total_params'] / 1e9:.2f}B params, "
           f"{m['active_params'] / 1e9:.2f}B active per token (excl. embedding and head)",
           f"learner: {lr['ranks']} ranks, ZeRO-{lr['zero_stage']}, EP {lr['expert_parallel']}, "
           f"SP {lr['sequence_parallel']}, {lr['tokens_per_rank']:.0f} tokens/rank/micro-batch",
           "sequence parallel: " + (f"SP {lr['sequence_parallel_needed']} is the smallest size at which "
                                    f"a learner rank fits" if lr.get("sequence_parallel_needed")
                                    else "no size makes a learner rank fit" if plan["gpu_memory_gib"]
                                    else "not checked (CPU only)"),
           f"rollout: {ro['engines']} engines x {ro['gpus_per_engine']:g} GPUs "
           f"(TP {ro['tensor_parallel']} x PP {ro['pipeline_parallel']}), "
           f"{ro['concurrency_per_engine']} sequences of {ro['sequence_tokens']} tokens in flight "
           f"each, {ro['waves_per_step']} wave(s) per step",
           sandbox_line(plan["sandbox"]), ""]
    out.append(f"{'term':<20}{'GiB/GPU':>10}   {'term':<20}{'GiB/GPU':>10}")
    lt, rt = list(lr["terms_gib"].items()), list(ro["terms_gib"].items())
    for i in range(max(len(lt), len(rt))):
        left = f"{lt[i][0]:<20}{lt[i][1]:>10.2f}" if i < len(lt) else " " * 30
        right = f"{rt[i][0]:<20}{rt[i][1]:>10.2f}" if i < len(rt) else ""
        out.append(f"{left}   {right}")
    out.append(f"{'learner total':<20}{lr['per_gpu_memory_gib']:>10.2f}   "
               f"{'rollout total':<20}{ro['per_gpu_memory_gib']:>10.2f}")
    for row in plan["placement"]:
        out.append(f"nodes {row['first_node']}-{row['last_node']}: {row['what']}")
    budget = plan["gpu_memory_gib"]
    out.append(f"fits: {plan['fits']}" + (f" (budget {budget:g} GiB/GPU, largest "
                                            f"{plan['max_gpu_memory_gib']:.2f})" if budget else " (CPU only: memory not checked)"))
    if plan["problems"]:
        out += summary(plan, plan.get("changes_that_fit", {}))
    return "\n".join(out)


def sandbox_line(sb: dict) -> str:
    if sb["placement"] != "actors":
        return (f"sandboxes: in the trainer's process on {sb['placed_on']} "
                f"(sandbox.placement={sb['placement']}): {sb['containers']} containers, "
                f"{sb['cpus']:g} of its {sb['available_cpus']} CPUs")
    return (f"sandboxes: {sb['scorers']} scorer actors on {sb['placed_on']} "
            f"({sb['scorers_per_node']} per node, {sb['slots_per_node']} calls at once each node), "
            f"{sb['containers']} warm containers ({sb['containers_per_node']} per node), "
            f"{sb['cpus']:g} of {sb['available_cpus']} CPUs")


def run_plan(cfg: Any) -> dict:
    """Print the plan and write run_dir/plan.json; exits 1 with the message on a PlanError, and
    1 after the plan when it does not fit (with the smallest changes that would)."""
    try:
        plan = build_plan(cfg)
        if not plan["fits"]:
            plan["changes_that_fit"] = changes_that_fit(cfg, plan)
    except PlanError as e:
        sys.exit(f"plan: {e}")
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "plan.json").write_text(json.dumps(plan, indent=2) + "\n")
    print(format_plan(plan))
    print(f"written: {run_dir / 'plan.json'}")
    if not plan["fits"]:
        sys.exit(1)
    return plan


def _main() -> None:
    """`python -m cispo.planner +exp=NAME` = `python -m cispo.train +exp=NAME plan=true`."""
    import hydra

    from cispo.config_check import check_command_line

    conf = Path(__file__).resolve().parent.parent / "conf"
    check_command_line(conf)

    @hydra.main(config_path=str(conf), config_name="config", version_base=None)
    def main(cfg) -> None:
        run_plan(cfg)

    main()


def compare_with_measured(plan: dict, measured_gib: float) -> dict:
    """The learner estimate against a measured peak of one rank (GiB, e.g.
    torch.cuda.max_memory_reserved() / 2**30 after a train_minibatch): relative error. The
    allocator does not see the CUDA context, so the `reserve` term is left out here."""
    lr = plan["learner"]
    est = lr["per_gpu_memory_gib"] - lr.get("terms_gib", {}).get("reserve", 0.0)
    return {"estimated_gib": est, "measured_gib": measured_gib,
            "relative_error": (est - measured_gib) / measured_gib,
            "within_10_percent": abs(est - measured_gib) <= 0.1 * measured_gib}


if __name__ == "__main__":
    _main()
