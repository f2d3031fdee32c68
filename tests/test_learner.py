"""The DeepSpeed learner on CPU (gloo, real Ray actors): 2 ZeRO-3 ranks take the same steps as 1.

One 1-rank run (padded rows, no expert parallelism) is the reference for two 2-rank runs:
ZeRO-3 + AutoEP (EP=2, experts split over the ranks) with packed token-budget micro-batches, and
plain ZeRO-3 with padded rows. Both use the chunked FP32 head (no [T, V] logits). Two optimizer
steps: Adam's first update is lr·sign(g), its second depends on the gradients' magnitudes, so equal
weights after step 2 mean equal gradients, not only equal signs.
"""

import math
import random

import pytest
import ray
import torch
from omegaconf import OmegaConf

from cispo.config import LearnerConfig, ModelConfig, ParallelConfig
from cispo.learner import LearnerGroup, TrainItem


def _items(n: int, seed: int = 0) -> list[TrainItem]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = [1] + [rng.randrange(4, 21) for _ in range(rng.randint(2, 5))]
        resp = [rng.randrange(4, 21) for _ in range(rng.randint(1, 4))]
        out.append(TrainItem(prompt, resp, [-2.0] * len(resp), rng.uniform(-1, 1)))
    return out


def _run(world: int, path: str, items: list[TrainItem], **parallel) -> dict:
    cfg = OmegaConf.structured(LearnerConfig(num_workers=world, zero_stage=3, micro_batch_size=4,
                                             lr=1e-2, torch_threads=1, num_cpus_per_worker=1))
    group = LearnerGroup(cfg, OmegaConf.structured(ParallelConfig(**parallel)),
                         OmegaConf.structured(ModelConfig), path, len(items), 1.0)
    try:
        old, agree = group.old_logprobs(items)
        metrics = [group.train_minibatch(items, old, "cispo", {"eps_low": 1.0, "eps_high": 0.28})]
        old2, _ = group.old_logprobs(items)
        metrics.append(group.train_minibatch(items, old2, "cispo", {"eps_low": 1.0, "eps_high": 0.28}))
        weights = ray.get(group.state_dict_ref())
        # what the engines receive: the same weights, in small buckets (several per step here)
        refs, stats = group.weight_buckets(0.05)
        assert stats["sync/buckets"] == len(refs) > 1
        from cispo.models.build import load_model

        # every parameter, in transformers' names; buffers (lightning decay constants) are optional:
        # every engine rebuilds them
        params = {n for n, _ in load_model(path).named_parameters()}
        assert params <= {k for b in ray.get(refs) for k in b} <= weights.keys()
        for b in ray.get(refs):
            assert all(torch.equal(v, weights[k].to(v.dtype)) for k, v in b.items())
        assert group.set_grad_clip(0.5) == [0.5] * world  # the staged window lowers it later
        layout = group.expert_layout()
    finally:
        group.shutdown()
    assert len(old) == len(items) and all(len(o) == len(it.response_ids) for o, it in zip(old, items, strict=True))
    # the fake rollout log-probs are constant: no correlation is defined, and it says so
    assert math.isnan(agree["logprob/train_rollout_pearson"])
    assert agree["logprob/train_rollout_abs_diff"] > 0
    return {"old": old, "metrics": metrics, "weights": weights, "layout": layout}


ITEMS = _items(10)  # 10 over 2 ranks x micro-batch 4: uneven shards and a padded micro-batch


@pytest.fixture(scope="module")
def one_rank(ray_local, tiny_model_path):
    return _run(1, tiny_model_path, ITEMS)


@pytest.mark.parametrize("parallel", [
    # 40-token budget: 2-4 packed micro-batches per rank, unequal counts (the ranks agree on the max)
    {"expert_parallel": 2, "micro_batch_tokens": 40},
    {},
    # both ranks share every packed row, each computing half of it (cispo.seqpar)
    {"sequence_parallel": 2, "expert_parallel": 2, "micro_batch_tokens": 40},
], ids=["autoep2_packed", "rows", "sp2_autoep2_packed"])
def test_two_rank_zero3_steps_match_one_rank(one_rank, tiny_model_path, parallel):
    from cispo.models.build import load_model

    two = _run(2, tiny_model_path, ITEMS, **parallel)
    ep = parallel.get("expert_parallel", 0)
    n_layers, n_experts = ModelConfig().tiny.num_layers, ModelConfig().tiny.num_experts
    # AutoEP did replace every MoE block, each rank computing its half of the experts
    assert two["layout"] == [{"autoep_layers": n_layers if ep else 0,
                              "local_experts": n_experts // ep if ep else 0}] * 2
    for a, b in zip(one_rank["old"], two["old"], strict=True):
        assert a == pytest.approx(b, abs=1e-5)
    for m1, m2 in zip(one_rank["metrics"], two["metrics"], strict=True):
        assert m1["loss/policy"] == pytest.approx(m2["loss/policy"], rel=1e-5)
        assert m1["grad/norm"] == pytest.approx(m2["grad/norm"], rel=1e-5)
    assert one_rank["metrics"][0]["is_weight/mean"] == pytest.approx(1.0)  # on-policy: r = 1
    before = load_model(tiny_model_path).state_dict()
    w1, w2 = one_rank["weights"], two["weights"]
    assert set(w1) == set(w2)  # AutoEP's layers come back in transformers' names and layout
    changed = 0
    for k, v in w1.items():
        assert torch.allclose(v, w2[k], atol=2e-6, rtol=1e-4), k
        changed += int(not torch.equal(v, before[k]))
    assert changed > len(w1) // 2  # the steps moved the weights
