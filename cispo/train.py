"""`python -m cispo.train +exp=tiny`: the CISPO training loop.

One step: prompts → rollout (Ray generation workers) → rewards (sandboxed) → group advantages
→ learner update (DeepSpeed) → weight sync → log + checkpoint.
"""

from __future__ import annotations

import time

T_START = time.time()  # the command's start, near enough (imports below take a few seconds)

import sys  # noqa: E402

if __name__ == "__main__":  # the command line is checked before the heavy imports below (~1 s)
    from cispo.config_check import check_command_line

    check_command_line()

import logging  # noqa: E402
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import hydra
import ray
import torch
from omegaconf import DictConfig

from cispo import checkpoint, data, interrupt, sampling, user_modules, watchdog
from cispo.advantages import ADVANTAGES, compute_advantages, zero_variance_fraction
from cispo.colocate import GpuShare
from cispo.config import as_dict
from cispo.config_check import local_ray_problems, resource_problems, value_problems
from cispo.data_mix import build_mixed_stream
from cispo.handover import make_handover
from cispo.learner import LearnerGroup, TrainItem
from cispo.loss import LOSSES
from cispo.models.build import load_tokenizer, prepare
from cispo.monitor import Progress, RunLogger, sample_rows
from cispo.placement import choose_transport, plan_layout, reserve
from cispo.planner import run_plan
from cispo.preflight import run_preflight
from cispo.report import summary
from cispo.sampling import Rollout
from cispo.schedule import WindowSchedule, stats_from_samples
from cispo.staleness import RolloutsAhead, from_checkpoint, max_staleness, to_checkpoint
from rewards.manager import RewardManager, RewardStopped
from rewards.scorers import ScorerUnavailable
from rollout.episodes import episode_metrics, reward_item
from rollout.manager import RolloutManager, env_spec
from sandboxes.engine import DockerUnavailable

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
log = logging.getLogger("cispo.train")
NODES_WAIT_S = 600.0  # a joined cluster's nodes may still be starting (KubeRay pods)


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    if cfg.plan:  # resources only: no Docker, no Ray, no GPU
        return run_plan(cfg)
    if cfg.preflight:  # the cluster only: nodes, Docker on the sandbox nodes, a shared run_dir
        return run_preflight(cfg)
    p = build(cfg)
    A, G, total = cfg.algorithm, cfg.rollout.group_size, cfg.trainer.total_steps
    # async: later steps' rollouts (Ray calls + reward scoring) run in a thread while the learner
    # trains, each sampled at most rollout.max_staleness syncs ago (cispo.staleness); resumed:
    # the rollouts the checkpoint kept come first
    ahead = RolloutsAhead(partial(rollout_step, p, cfg), max_staleness(cfg), p.start, total, p.resumed)
    with Progress(total, p.start, cfg.logging.progress, cfg.logging.progress_every_s) as bar, \
            interrupt.StopRequest() as stop:  # Ctrl-C: finish the step, checkpoint, stop
        for step in range(p.start, total):
            t0 = time.monotonic()
            ro = ahead.take(step)                                    # 1-3. prompts → rollout → reward
            t_wait = time.monotonic() - t0
            staleness = p.rollout.version - ro.version  # syncs since these samples' weights
            _, samples, scores = sampling.flatten(ro.groups)
            stage_metrics = p.schedule.metrics()  # the stage these samples were drawn in
            items, rewards, valid = advantages(samples, scores, A, G)                 # 4. advantages
            t1 = time.monotonic()
            share_metrics = p.share.to_train()  # colocated: engines sleep, learner state back
            if step == cfg.logging.profile_learn_step:
                p.learner.profile_next(str(p.run_dir / f"profile_learn_step{step}.txt"))
            l_metrics = learn(p.learner, items, A)                                    # 5. learn
            t2 = time.monotonic()
            ahead.settle()  # the engines finish what they sample with the old weights
            share_metrics.update(p.share.to_rollout())  # learner state off (if asked), engines wake
            t3 = time.monotonic()
            sync_metrics = p.handover.sync()                                          # 6. sync
            t4 = time.monotonic()
            if p.schedule.enabled and samples and p.schedule.update(stats_from_samples(samples)):
                apply_stage(cfg, p.schedule, p.learner)
            metrics = {**l_metrics, **ro.reward_metrics, **ro.sampling_metrics,      # 7. log
                       **stage_metrics, **ro.data_metrics, **sync_metrics,
                       **sample_metrics(samples, rewards, valid, G), **episode_metrics(samples),
                       "data/skipped_rows": float(p.skipped_rows), "time/rollout_s": ro.seconds,
                       "time/rollout_wait_s": t_wait,
                       "rollout/staleness": float(staleness),
                       "rollout/worker_restarts": float(p.rollout.restarts),
                       "time/learn_s": t2 - t1, "time/sync_s": t4 - t3,
                       "time/step_s": time.monotonic() - t0, **share_metrics,
                       "time/since_start_s": time.time() - T_START,
                       **perf_metrics(samples, items, ro.seconds, t2 - t1)}
            if step == p.start:
                metrics.update(p.startup.metrics(end_of_first_step=time.time()))
                p.startup.write(p.run_dir / "startup.json", metrics)
                log.info("%s", p.startup.table())
            p.logger.log(step, metrics)
            p.logger.log_samples(step, sample_rows(samples, scores, p.tokenizer, cfg.logging.samples_per_step))
            bar.update(step, metrics)
            stopping = stop.requested and step + 1 < total
            if (cfg.trainer.save_every and (step + 1) % cfg.trainer.save_every == 0) or \
                    (stopping and cfg.trainer.save_on_interrupt):
                save(p, step + 1, ahead)
            if stopping:
                ahead.close()
                return stopped(cfg, p, step + 1, stop.signal_name)
    ahead.close()
    finish(cfg, p)


def save(p: Parts, step: int, ahead: RolloutsAhead) -> Path:
    next_ros = ahead.kept()  # finished: settled in the step
    with p.share.learner_on_gpu():  # colocated with offload_while_generating: state back first
        return checkpoint.save(p.learner, p.run_dir, step, states(p, next_ros),
                               to_checkpoint(next_ros, p.rollout.version))


@dataclass
class Parts:
    run_dir: Path
    start: int
    tokenizer: object
    stream: data.PromptStream
    skipped_rows: int
    rewarder: RewardManager
    learner: LearnerGroup
    rollout: RolloutManager
    logger: RunLogger
    schedule: WindowSchedule
    handover: object  # cispo.handover: how the weights reach the engines
    share: GpuShare  # colocated: who holds the GPU (a no-op otherwise)
    startup: StartupClock
    resumed: list = ()  # async resume: the rollouts of steps start, start + 1, ... the checkpoint kept


def rollout_step(p: Parts, cfg: DictConfig, step: int) -> Rollout:
    """Prompts → G responses each → rewards (with dynamic sampling's refills)."""
    t0, version, rounds, before = time.monotonic(), p.rollout.version, [], p.stream.state()
    groups, metrics = sampling.collect(
        cfg.rollout.prompts_per_step, partial(p.stream.next_batch, step=step), partial(generate, p, step),
        partial(score, p, cfg, rounds), cfg.rollout.group_size, cfg.algorithm.dynamic_sampling,
        cfg.algorithm.max_sampling_rounds)
    return Rollout(groups, metrics, merge_rounds(rounds), time.monotonic() - t0, version, before,
                   p.stream.state(), p.stream.metrics())


class StartupClock:
    """Where the time to the first step goes: wall-clock marks from the command's start,
    logged as a table with step 0 and kept as `startup/*` metrics of the first step."""

    def __init__(self, t0: float = T_START):
        self.t0, self.last, self.parts, self.details = t0, t0, [], []

    def mark(self, name: str) -> None:
        now = time.time()
        self.parts.append((name, now - self.last))
        self.last = now
        log.info("start-up: %s %.1f s (%.1f s since start)", name, self.parts[-1][1], now - self.t0)

    def detail(self, who: str, parts: dict[str, float]) -> None:
        """An actor's own start-up parts (they overlap the marks above)."""
        self.details.append((who, parts))
        log.info("start-up: %s: %s", who, ", ".join(f"{k} {v:.1f} s" for k, v in parts.items()))

    def metrics(self, end_of_first_step: float) -> dict[str, float]:
        out = {f"startup/{name}_s": sec for name, sec in self.parts}
        for who, parts in self.details:
            out.update({f"startup/{who.replace(' ', '_')}/{k}_s": v for k, v in parts.items()})
        out["startup/to_step0_s"] = self.last - self.t0
        out["startup/step0_done_s"] = end_of_first_step - self.t0
        return out

    def write(self, path: Path, metrics: dict[str, float]) -> None:
        import json

        path.write_text(json.dumps({"t0": self.t0, **{k: v for k, v in metrics.items()
                                                       if k.startswith("startup/")}}, indent=1))

    def table(self) -> str:
        rows = [f"  {name:24} {sec:7.1f} s" for name, sec in self.parts]
        rows += [f"    ({who}: " + ", ".join(f"{k} {v:.1f} s" for k, v in parts.items()) + ")"
                 for who, parts in self.details]
        return "start-up to step 0:\n" + "\n".join(rows) + f"\n  {'total':24} {self.last - self.t0:7.1f} s"


def build(cfg: DictConfig) -> Parts:
    """Everything the loop needs, cheapest user-fixable checks first; restores a checkpoint."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bar is the one to watch
    clock = StartupClock()
    clock.mark("imports")
    if problems := value_problems(cfg):  # cli() checked already; main() may be called directly
        print("config: " + "\nconfig: ".join(problems), file=sys.stderr)
        sys.exit(2)
    modules = algorithm_modules(cfg.algorithm)  # users' losses: here, and in every learner rank
    run_dir = Path(cfg.run_dir)
    interrupt.remember(cfg)  # a Ctrl-C from here on says how to resume
    watchdog.start(run_dir)  # if this process is killed, what it starts goes with it
    start_ray(cfg)  # joins the cluster; stops here if the GPUs the run asks for are not there
    clock.mark("ray")
    ckpt = checkpoint.find(run_dir, cfg.resume)
    if cfg.resume == "auto" and ckpt is None:
        log.warning("resume=auto: no checkpoint in %s; starting fresh", run_dir / "checkpoints")
    state = checkpoint.read_state(ckpt) if ckpt else {}
    torch.manual_seed(cfg.trainer.seed)
    try:
        rewarder = RewardManager(cfg.reward, cfg.sandbox)  # sandbox.placement: here, or scorer actors
    except (DockerUnavailable, ScorerUnavailable) as e:
        sys.exit(str(e))
    except (ImportError, FileNotFoundError) as e:  # a reward.modules file: named, with its line
        sys.exit(f"reward: {e}")
    clock.mark("rewards")
    model_path = prepare(cfg.model, run_dir / "base_model")
    tokenizer = load_tokenizer(model_path, cfg.model.trust_remote_code)
    clock.mark("model_files")
    try:
        stream, skipped = make_stream(cfg, tokenizer)
    except data.DataError as e:
        sys.exit(f"data: {e}")
    sched = WindowSchedule(cfg.schedule, cfg.algorithm.eps_high, cfg.learner.grad_clip)
    if state.get("schedule"):
        sched.load_state_dict(state["schedule"])
    apply_stage(cfg, sched)  # window, eps_high, grad clip of the (restored) stage
    try:
        env = env_spec(cfg.env)  # multi-turn episodes, or None
    except (KeyError, ImportError, FileNotFoundError) as e:
        sys.exit(f"env: {e}")
    clock.mark("data")
    R, L, P = cfg.rollout, cfg.learner, cfg.parallel
    on_gpu = L.num_gpus_per_worker > 0 or R.num_gpus_per_worker > 0
    transport = choose_transport(P.placement, on_gpu, R.sync_transport)
    layout = plan_layout(P.placement, L.num_workers, L.num_cpus_per_worker, L.num_gpus_per_worker,
                         R.num_workers, R.num_cpus_per_worker, R.num_gpus_per_worker,
                         P.rollout_tensor_parallel * P.rollout_pipeline_parallel)
    where = reserve(layout)
    # learner ranks and engines load at the same time (each in its own process)
    per_minibatch = R.prompts_per_step * R.group_size // cfg.algorithm.num_minibatches
    learner = LearnerGroup(L, P, cfg.model, model_path, per_minibatch, R.temperature, modules,
                           scheduling=where.learner, wait=False)
    rollout = RolloutManager(R, model_path, cfg.model.dtype, cfg.model.trust_remote_code,
                             {"fp32_head": cfg.model.fp32_lm_head, "rotary_dim": cfg.model.rotary_dim},
                             P, env=env, scheduling=where.engines, wait=False)
    learner.ready()
    clock.mark("learner_init")
    rollout.ready()
    clock.mark("engines_init")
    clock.detail("learner rank 0", learner.startup_times())
    clock.detail("engine 0", rollout.startup_times())
    resumed = None
    if ckpt is not None:
        checkpoint.restore(learner, ckpt, state, stream)
        log.info("resumed from %s at step %d", ckpt, state["step"])
        if resumed := from_checkpoint(checkpoint.read_kept(ckpt), max_staleness(cfg)):
            stream.load_state(resumed[-1][0].data_after)  # their prompts are drawn already
    if R.async_generation and cfg.algorithm.old_logprobs != "rollout":
        # one step off-policy: π_old must be the policy that sampled (the engine's log-probs);
        # the learner's recomputation would be the current policy, one update newer
        log.info("rollout.async_generation: algorithm.old_logprobs=rollout (the behaviour policy)")
        cfg.algorithm.old_logprobs = "rollout"
    handover = make_handover(transport, learner, rollout, R.sync_bucket_mb, on_gpu, layout.engine_rank)
    handover.start()
    colocated = P.placement == "colocated"
    if colocated and R.async_generation:
        log.info("rollout.async_generation: engines and learner run at once, so neither sleeps "
                 "nor offloads (parallel.placement=colocated shares the GPU without taking turns)")
    share = GpuShare(learner, rollout, active=colocated and not R.async_generation,
                     offload=L.offload_while_generating, sleep=R.sleep_while_training)
    first = handover.sync()
    share.to_rollout()
    log.info("weights: %s (%s placement), %.0f MB in %d buckets, first sync %.3f s", handover.name,
             P.placement, first["sync/bytes"] / 1e6, first["sync/buckets"], first["sync/seconds"])
    for ro, behind in resumed or ():  # sampled `behind` syncs before the checkpoint's weights
        ro.version = rollout.version - behind
    clock.mark("first_sync")
    start = int(state.get("step", 0))
    logger = RunLogger(run_dir, cfg.logging, as_dict(cfg), start_step=start)
    log.info("run_dir=%s  model=%s  (%d data rows skipped)", run_dir, model_path, skipped)
    clock.mark("logger")
    return Parts(run_dir, start, tokenizer, stream, skipped, rewarder, learner, rollout, logger, sched,
                 handover, share, clock, [ro for ro, _ in resumed or ()])


def algorithm_modules(A: DictConfig) -> list[tuple[str, str, str]]:
    """Import `algorithm.modules` (users' @register_loss / @register_advantage files) and check
    that `algorithm.loss` and `algorithm.advantage` name registered functions. Returns the files
    as (module name, source, path) for the learner ranks, which import them too."""
    try:
        mods = user_modules.read(list(A.modules), "cispo_user_algorithm", "algorithm.modules")
        for m in mods:
            user_modules.load_source(*m)
    except FileNotFoundError as e:
        sys.exit(f"config: {e}")
    except ImportError as e:  # names the file and the line
        sys.exit(f"config: algorithm.modules: {e}")
    for key, name, registry in (("loss", A.loss, LOSSES), ("advantage", A.advantage, ADVANTAGES)):
        if name not in registry:
            sys.exit(f"config: algorithm.{key}={name!r} is not registered (registered: "
                     f"{', '.join(sorted(registry))}); a {key} of your own goes in a file listed "
                     f"in algorithm.modules")
    return mods


def make_stream(cfg: DictConfig, tokenizer):
    """The prompt stream: one source (`data.*`) or several mixed by weights (`data_mix.*`)."""
    if cfg.data_mix.sources:
        return build_mixed_stream(cfg, tokenizer)
    prompts, skipped = data.validate(data.load_rows(cfg.data), cfg.data, tokenizer)
    return data.PromptStream(prompts, cfg.data.shuffle, cfg.data.seed), sum(skipped.values())


def apply_stage(cfg: DictConfig, sched: WindowSchedule, learner: LearnerGroup | None = None) -> None:
    """Put the staged window's current settings into the config (and the running learner)."""
    if not sched.enabled:
        return
    stage = sched.current()
    cfg.rollout.max_new_tokens, cfg.algorithm.eps_high = stage.window, stage.eps_high
    cfg.learner.grad_clip = stage.grad_clip
    if learner is not None:
        learner.set_grad_clip(stage.grad_clip)
        log.info("window stage %d: %d tokens, eps_high %g, grad clip %g (%s)", stage.stage,
                 stage.window, stage.eps_high, stage.grad_clip, stage.reason)


def advantages(samples, scores: list, A: DictConfig, G: int):
    """Group advantages → the learner's items; skipped samples (score None) are left out."""
    valid = torch.tensor([x is not None for x in scores], dtype=torch.bool)
    rewards = torch.tensor([0.0 if x is None else float(x) for x in scores], dtype=torch.float32)
    adv = compute_advantages(A.advantage, rewards, G, valid, eps=A.advantage_eps)
    items = [TrainItem(s.prompt_ids, s.response_ids, s.logprobs, a, s.routing, s.prompt_index, s.response_mask)
             for s, a, ok in zip(samples, adv.tolist(), valid.tolist(), strict=True) if ok]
    return items, rewards, valid


def learn(learner: LearnerGroup, items: list[TrainItem], A: DictConfig) -> dict[str, float]:
    """π_old, then one optimizer step per minibatch (off-policy rounds after the first)."""
    if not items:  # every reward of the step said "skip": nothing to learn from
        log.warning("no scored samples this step; skipping the update")
        return dict.fromkeys(("loss/policy", "is_weight/mean", "is_weight/clip_frac",
                              "is_weight/max", "is_weight/min", "grad/norm",
                              "logprob/train_rollout_pearson", "logprob/train_rollout_abs_diff"),
                             float("nan"))
    kwargs = {"eps_low": A.eps_low, "eps_high": A.eps_high, "normalization": A.normalization,
              **A.loss_options}
    rollout_old = [it.rollout_logprobs for it in items] if A.old_logprobs == "rollout" else None
    if A.num_minibatches == 1:
        # one update per rollout: π_old (learner) is the policy before this update, i.e. the
        # update's own forward, detached; the agreement metrics come from that forward too.
        # One pass over the tokens instead of two.
        return merge_minibatch_rounds([learner.train_minibatch(items, rollout_old, A.loss, kwargs,
                                                               agreement=True)])
    old, agree = learner.old_logprobs(items)
    if rollout_old is not None:
        old = rollout_old
    mb = -(-len(items) // A.num_minibatches)
    rounds = [learner.train_minibatch(items[k:k + mb], old[k:k + mb], A.loss, kwargs)
              for k in range(0, len(items), mb)]
    return {**merge_minibatch_rounds(rounds), **agree}


def merge_minibatch_rounds(rounds: list[dict[str, float]]) -> dict[str, float]:
    """The step's learner metrics over its minibatch rounds (means; IS-weight max/min over all),
    plus each off-policy round's IS-weight stats as `is/round_<k>/...` when there are several:
    round 0 is on-policy (r = 1 with learner-side π_old), later rounds show the drift."""
    out = {k: sum(r[k] for r in rounds) / len(rounds) for k in rounds[0]}
    out["is_weight/max"] = max(r["is_weight/max"] for r in rounds)
    out["is_weight/min"] = min(r["is_weight/min"] for r in rounds)
    if len(rounds) > 1:
        for k, r in enumerate(rounds):
            for stat in ("mean", "min", "max", "clip_frac"):
                out[f"is/round_{k}/{stat}"] = r[f"is_weight/{stat}"]
    return {k: (float("nan") if math.isinf(v) else v) for k, v in out.items()}  # inf: no tokens


def states(p: Parts, next_ros: list | tuple = ()) -> dict:
    """What a checkpoint keeps besides the learner: the position after the prompts consumed so
    far, and the window schedule. With async generation the next steps' rollouts have already
    drawn their prompts (`next_ros`); they are not consumed yet, so the position is the one before."""
    data = next_ros[0].data_before if next_ros else p.stream.state()
    return {"data": data, "schedule": p.schedule.state_dict()}


def stopped(cfg: DictConfig, p: Parts, step: int, why: str) -> None:
    """Ctrl-C: the step is done (and saved with trainer.save_on_interrupt); say how to resume."""
    p.logger.close()
    p.rewarder.shutdown()
    saved = p.run_dir / "checkpoints" / f"step_{step}" if cfg.trainer.save_on_interrupt else None
    interrupt.stopped(step, cfg.trainer.total_steps, why if saved else
                      f"{why}; not saved: trainer.save_on_interrupt=false", saved)


def finish(cfg: DictConfig, p: Parts) -> None:
    total = cfg.trainer.total_steps
    if p.start < total or not (p.run_dir / "checkpoints" / f"step_{total}").exists():
        with p.share.learner_on_gpu():
            checkpoint.save(p.learner, p.run_dir, total, states(p))
    p.learner.export(str(p.run_dir / "final_model"))
    p.tokenizer.save_pretrained(p.run_dir / "final_model")
    where = p.logger.where()
    p.logger.close()
    p.rewarder.shutdown()
    print(summary(p.run_dir))
    print("\n".join(where))


def start_ray(cfg: DictConfig) -> None:
    """Join the cluster (`ray.address`) or start a local Ray sized for the run's actors; exit
    with what is missing if Ray lacks the GPUs they ask for (they would wait forever)."""
    if not ray.is_initialized() and not cfg.ray.address:  # check before starting anything
        if problems := (resource_problems(cfg, torch.cuda.device_count(), "this machine (local Ray)")
                        + local_ray_problems(cfg)):
            sys.exit("resources: " + problems[0])
        r, lr = cfg.rollout, cfg.learner
        need = r.num_workers * r.num_cpus_per_worker + lr.num_workers * lr.num_cpus_per_worker
        ray.init(num_cpus=cfg.ray.num_cpus or max(int(need + 0.999), 1), include_dashboard=False,
                 log_to_driver=True, configure_logging=False)
    elif not ray.is_initialized():
        ray.init(address=cfg.ray.address, log_to_driver=True)
    deadline = time.monotonic() + (NODES_WAIT_S if cfg.ray.address else 0)
    while problems := resource_problems(cfg, ray.cluster_resources().get("GPU", 0), "the Ray cluster"):
        if time.monotonic() >= deadline:
            sys.exit("resources: " + problems[0])
        log.info("waiting for nodes to join: %s", problems[0])
        time.sleep(10)


def reward_items(samples, batch: list[data.Prompt], tokenizer) -> list[dict]:
    out = []
    for s in samples:
        q = batch[s.prompt_index]
        out.append(reward_item(s, {  # an episode: its last turn or what its environment says
            "completion": tokenizer.decode(s.response_ids, skip_special_tokens=True),
            "response_length": len(s.response_ids),  # tokens: the overlong penalty
            "reference": q.reference, "prompt": q.text, "data_source": q.data_source,
            "metadata": q.row}))
    return out


def generate(p: Parts, step: int, batch: list, round_index: int) -> list:
    """G responses (or episodes, with env.name) per prompt from the generation workers, seeded by
    step and sampling round; an episode's environment is reset with its prompt's row."""
    tasks = [{**q.row, "prompt": q.text, "reference": q.reference, "data_source": q.data_source}
             for q in batch]
    return p.rollout.generate([q.token_ids for q in batch], seed=sampling.round_seed(step, round_index),
                              tasks=tasks)


def score(p: Parts, cfg: DictConfig, rounds: list, batch: list, samples: list) -> list:
    """Rewards of a round's samples (None: skipped), repetition-stopped ones by policy; the
    round's reward metrics are appended to `rounds`."""
    failed = [s.finish_reason == "env_error" for s in samples]  # scored env.error_reward, not called
    try:
        scored, metrics = p.rewarder.score(reward_items([s for s, f in zip(samples, failed, strict=True) if not f],
                                                        batch, p.tokenizer))
    except RewardStopped as e:  # a reward that only times out: one message, not hours of limits
        raise SystemExit(f"reward: {e}") from None
    it = iter(scored)
    scores = [cfg.env.error_reward if f else next(it) for f in failed]
    rounds.append(metrics)
    scores = repetition_policy(samples, scores, cfg.rollout.repetition_reward)
    if cfg.data.retire_pass_rate is not None:  # no-positive-resampling (dropped groups count too)
        p.stream.retire(data.solved_prompts(batch, samples, scores, cfg.data.pass_score,
                                            cfg.data.retire_pass_rate))
    return scores


SUMMED = ("errors", "timeouts", "skips", "time/")  # per-round counts and durations
MAXED = ("latency", "sandbox/", "_total", "restarts", "abandoned")  # percentiles, running totals


def merge_rounds(rounds: list[dict[str, float]]) -> dict[str, float]:
    """One step's reward metrics over its sampling rounds: counts and times add up, latency
    percentiles and running totals take the largest, means and extras are averaged over the
    rounds that reported them. Empties the list for the next step."""
    out: dict[str, float] = {}
    seen: dict[str, int] = {}
    for m in rounds:
        for k, v in m.items():
            if any(t in k for t in MAXED):
                out[k] = max(out.get(k, v), v)
            else:
                out[k] = out.get(k, 0.0) + v
                seen[k] = seen.get(k, 0) + 1
    for k, n in seen.items():
        if not any(t in k for t in SUMMED):
            out[k] /= n
    rounds.clear()
    return out


def repetition_policy(samples, scores: list, reward: float | None) -> list:
    """Responses cut by the repetition stop score `reward` (default 0: failed) unless it is None."""
    if reward is None:
        return scores
    return [reward if s.finish_reason == "repetition" else x for s, x in zip(samples, scores, strict=True)]


def sample_metrics(samples, rewards: torch.Tensor, valid: torch.Tensor, G: int) -> dict[str, float]:
    lengths = [len(s.response_ids) for s in samples] or [0]
    n = max(len(samples), 1)  # 0 when dynamic sampling kept no group this step
    return {"reward/mean": float(rewards[valid].mean()) if valid.any() else float("nan"),
            "reward/skipped": float((~valid).sum()),
            "reward/zero_variance_groups": zero_variance_fraction(rewards, G, valid),
            "response/length_mean": sum(lengths) / n,
            "response/length_max": float(max(lengths)),
            "response/finish_stop": sum(s.finish_reason == "stop" for s in samples) / n,
            "response/finish_length": sum(s.finish_reason == "length" for s in samples) / n,
            "response/finish_repetition": sum(s.finish_reason == "repetition" for s in samples) / n}


def perf_metrics(samples, items: list[TrainItem], rollout_s: float, learn_s: float) -> dict[str, float]:
    """Throughput: generated tokens per second of rollout (scoring included), and trained
    tokens (prompt + response) per second of the learner stage."""
    generated = sum(len(s.response_ids) for s in samples)
    trained = sum(len(it.prompt_ids) + len(it.response_ids) for it in items)
    return {"perf/rollout_tokens_per_s": generated / max(rollout_s, 1e-9),
            "perf/learn_tokens_per_s": trained / max(learn_s, 1e-9)}


def cli() -> None:
    import signal

    from cispo.config_check import check_command_line

    check_command_line(CONF_DIR)
    # `timeout`, a scheduler or kill during start-up or the final save: exit through Python, so
    # Ray's atexit shutdown stops this run's actors (and frees their GPU memory) instead of
    # leaving them behind; in the loop, interrupt.StopRequest turns it into finish-step-and-save
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        main()
    except KeyboardInterrupt:  # a second Ctrl-C, or one during start-up: no traceback
        interrupt.stopped_at_once()


if __name__ == "__main__":
    cli()
