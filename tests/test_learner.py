"""The DeepSpeed learner on CPU: 2 ZeRO-3 ranks (gloo) take the same step as 1 rank."""

import math
import random

import pytest
import ray
import torch
from omegaconf import OmegaConf

from cispo.config import LearnerConfig, ModelConfig
from cispo.learner import LearnerGroup, TrainItem


def _items(n: int, seed: int = 0) -> list[TrainItem]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = [1] + [rng.randrange(4, 21) for _ in range(rng.randint(2, 5))]
        resp = [rng.randrange(4, 21) for _ in range(rng.randint(1, 4))]
        out.append(TrainItem(prompt, resp, [-2.0] * len(resp), rng.uniform(-1, 1)))
    return out


def _step(world: int, path: str, items: list[TrainItem]) -> tuple[dict, dict]:
    cfg = OmegaConf.structured(LearnerConfig(num_workers=world, zero_stage=3, micro_batch_size=4,
                                             lr=1e-2, torch_threads=1, num_cpus_per_worker=1))
    group = LearnerGroup(cfg, OmegaConf.structured(ModelConfig), path, len(items), 1.0)
    try:
        old, agree = group.old_logprobs(items)
        metrics = group.train_minibatch(items, old, "cispo", {"eps_low": 1.0, "eps_high": 0.28})
        weights = ray.get(group.state_dict_ref())
        assert group.set_grad_clip(0.5) == [0.5] * world  # the staged window lowers it later
    finally:
        group.shutdown()
    assert len(old) == len(items) and all(len(o) == len(it.response_ids) for o, it in zip(old, items, strict=True))
    # the fake rollout log-probs are constant: no correlation is defined, and it says so
    assert math.isnan(agree["logprob/train_rollout_pearson"])
    assert agree["logprob/train_rollout_abs_diff"] > 0
    return metrics, weights


def test_two_rank_zero3_step_matches_one_rank(ray_local, tiny_model_path):
    from cispo.models.build import load_model

    items = _items(10)  # 10 over 2 ranks x micro-batch 4: uneven shards and a padded micro-batch
    m1, w1 = _step(1, tiny_model_path, items)
    m2, w2 = _step(2, tiny_model_path, items)
    before = load_model(tiny_model_path).state_dict()
    assert m1["loss/policy"] == pytest.approx(m2["loss/policy"], rel=1e-5)
    assert m1["is_weight/mean"] == pytest.approx(1.0)  # on-policy: r = 1
    changed = 0
    for k, v in w1.items():
        assert torch.allclose(v, w2[k], atol=2e-6, rtol=1e-4), k
        changed += int(not torch.equal(v, before[k]))
    assert changed > len(w1) // 2  # the step moved the weights
