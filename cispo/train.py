"""`python -m cispo.train +exp=tiny`: the CISPO training loop.

One step: prompts → rollout (Ray generation workers) → rewards (sandboxed) → group advantages
→ learner update (DeepSpeed) → weight sync → log + checkpoint.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import hydra
import ray
import torch
from omegaconf import DictConfig

from cispo import checkpoint, data
from cispo.advantages import compute_advantages, zero_variance_fraction
from cispo.config import as_dict
from cispo.learner import LearnerGroup, TrainItem
from cispo.models.build import load_tokenizer, prepare
from cispo.monitor import Progress, RunLogger
from rewards.manager import RewardManager
from rollout.manager import RolloutManager
from sandboxes.engine import DockerUnavailable

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
log = logging.getLogger("cispo.train")


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    run_dir = Path(cfg.run_dir)
    torch.manual_seed(cfg.trainer.seed)
    try:  # first: the cheap checks that a user can fix, before Ray and the learner start
        rewarder = RewardManager(cfg.reward, cfg.sandbox)
    except DockerUnavailable as e:
        sys.exit(str(e))
    start_ray(cfg)
    model_path = prepare(cfg.model, run_dir / "base_model")
    tokenizer = load_tokenizer(model_path, cfg.model.trust_remote_code)
    try:
        prompts, skipped = data.validate(data.load_rows(cfg.data), cfg.data, tokenizer)
    except data.DataError as e:
        sys.exit(f"data: {e}")
    stream = data.PromptStream(prompts, cfg.data.shuffle, cfg.data.seed)
    G, A = cfg.rollout.group_size, cfg.algorithm
    batch_size = cfg.rollout.prompts_per_step * G
    learner = LearnerGroup(cfg.learner, cfg.model, model_path, batch_size // A.num_minibatches,
                           cfg.rollout.temperature)
    rollout = RolloutManager(cfg.rollout, model_path, cfg.model.dtype, cfg.model.trust_remote_code)
    rollout.sync_weights(learner.state_dict_ref())
    logger = RunLogger(run_dir, cfg.logging, as_dict(cfg))
    loss_kwargs = {"eps_low": A.eps_low, "eps_high": A.eps_high, "normalization": A.normalization}
    log.info("run_dir=%s  model=%s  %d prompts (%d rows skipped)", run_dir, model_path,
             len(prompts), sum(skipped.values()))

    with Progress(cfg.trainer.total_steps, 0, cfg.logging.progress) as bar:
        for step in range(cfg.trainer.total_steps):
            t0 = time.monotonic()
            batch = stream.next_batch(cfg.rollout.prompts_per_step)                 # 1. prompts
            samples = rollout.generate([p.token_ids for p in batch], seed=step)     # 2. rollout
            t_gen = time.monotonic() - t0
            rewards, r_metrics = rewarder.score(reward_items(samples, batch, tokenizer))  # 3. reward
            adv = compute_advantages(A.advantage, torch.tensor(rewards), G, eps=A.advantage_eps)  # 4.
            items = to_train_items(samples, adv.tolist())
            t1 = time.monotonic()
            old, agree = learner.old_logprobs(items)                                # 5. learn
            if A.old_logprobs == "rollout":
                old = [it.rollout_logprobs for it in items]
            mb = -(-len(items) // A.num_minibatches)
            l_metrics = [learner.train_minibatch(items[k:k + mb], old[k:k + mb], A.loss, loss_kwargs)
                         for k in range(0, len(items), mb)]
            t_learn = time.monotonic() - t1
            t2 = time.monotonic()
            rollout.sync_weights(learner.state_dict_ref())                         # 6. sync
            metrics = {**mean_of(l_metrics), **agree, **r_metrics,                  # 7. log
                       **sample_metrics(samples, rewards, G),
                       "data/skipped_rows": float(sum(skipped.values())),
                       "time/generate_s": t_gen, "time/learn_s": t_learn,
                       "time/sync_s": time.monotonic() - t2,
                       "time/step_s": time.monotonic() - t0}
            logger.log(step, metrics)
            bar.update(step, metrics)
            if cfg.trainer.save_every and (step + 1) % cfg.trainer.save_every == 0:
                checkpoint.save(learner, run_dir, step + 1, stream.state())

    checkpoint.save(learner, run_dir, cfg.trainer.total_steps, stream.state())
    learner.export(str(run_dir / "final_model"))
    tokenizer.save_pretrained(run_dir / "final_model")
    logger.close()
    rewarder.shutdown()
    print(f"done: metrics in {run_dir / 'metrics.jsonl'}, policy in {run_dir / 'final_model'}")


def start_ray(cfg: DictConfig) -> None:
    if ray.is_initialized():
        return
    if cfg.ray.address:
        ray.init(address=cfg.ray.address, log_to_driver=True)
        return
    r, lr = cfg.rollout, cfg.learner
    need = r.num_workers * r.num_cpus_per_worker + lr.num_workers * lr.num_cpus_per_worker
    ray.init(num_cpus=cfg.ray.num_cpus or max(int(need + 0.999), 1), include_dashboard=False,
             log_to_driver=True, configure_logging=False)


def reward_items(samples, batch: list[data.Prompt], tokenizer) -> list[dict]:
    out = []
    for s in samples:
        p = batch[s.prompt_index]
        out.append({"completion": tokenizer.decode(s.response_ids, skip_special_tokens=True),
                    "reference": p.reference, "prompt": p.text, "data_source": p.data_source,
                    "metadata": p.row})
    return out


def sample_metrics(samples, rewards: list[float], G: int) -> dict[str, float]:
    lengths = [len(s.response_ids) for s in samples]
    n = len(samples)
    return {"reward/mean": sum(rewards) / n,
            "reward/zero_variance_groups": zero_variance_fraction(torch.tensor(rewards), G),
            "response/length_mean": sum(lengths) / n,
            "response/length_max": float(max(lengths)),
            "response/finish_stop": sum(s.finish_reason == "stop" for s in samples) / n,
            "response/finish_length": sum(s.finish_reason == "length" for s in samples) / n}


def to_train_items(samples, advantages: list[float]) -> list[TrainItem]:
    return [TrainItem(s.prompt_ids, s.response_ids, s.logprobs, a)
            for s, a in zip(samples, advantages, strict=True)]


def mean_of(rows: list[dict[str, float]]) -> dict[str, float]:
    out = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
    out["is_weight/max"] = max(r["is_weight/max"] for r in rows)
    return out


def cli() -> None:
    from cispo.config_check import check_or_exit

    check_or_exit(CONF_DIR, "config", sys.argv[1:])
    main()


if __name__ == "__main__":
    cli()
