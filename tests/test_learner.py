"""The DeepSpeed learner on CPU (gloo, real Ray actors): 2 ZeRO-3 ranks take the same steps as 1.

One 1-rank run (padded rows, no expert parallelism) is the reference for 2-rank runs: ZeRO-3 +
AutoEP (EP=2, experts split over the ranks) with packed token-budget micro-batches, plain ZeRO-3
with padded rows, and sequence parallelism. All use the chunked FP32 head (no [T, V] logits). Two
optimizer steps; each step's reduced gradient (what the optimizer receives) is compared to the
reference's, and the weights after step 2 within what those gradients' rounding can explain.
"""

import math
import random
import sys

import pytest
import ray
import torch
from omegaconf import OmegaConf
from ray import cloudpickle

from cispo.config import LearnerConfig, ModelConfig, ParallelConfig
from cispo.learner import LearnerGroup, TrainItem

LR = 1e-2


def _record_grads(worker) -> None:
    """In a LearnerWorker: keep each step's reduced, unclipped gradients (transformers' names and
    layout), taken just before the optimizer applies them."""
    from deepspeed.utils import safe_get_full_grad

    step = worker.engine.optimizer.step
    worker.recorded_grads = []

    def recording_step(*args, **kwargs):
        worker.recorded_grads.append(worker.full_tensors(lambda p: safe_get_full_grad(p).clone()))
        return step(*args, **kwargs)

    worker.engine.optimizer.step = recording_step


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
                                             lr=LR, torch_threads=1, num_cpus_per_worker=1))
    group = LearnerGroup(cfg, OmegaConf.structured(ParallelConfig(**parallel)),
                         OmegaConf.structured(ModelConfig), path, len(items), 1.0)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # _record_grads runs in the workers
    try:
        ray.get([w.__ray_call__.remote(_record_grads) for w in group.workers])
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
        grads = ray.get(group.workers[0].__ray_call__.remote(lambda w: w.recorded_grads))
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        group.shutdown()
    assert len(old) == len(items) and all(len(o) == len(it.response_ids) for o, it in zip(old, items, strict=True))
    # the fake rollout log-probs are constant: no correlation is defined, and it says so
    assert math.isnan(agree["logprob/train_rollout_pearson"])
    assert agree["logprob/train_rollout_abs_diff"] > 0
    assert len(grads) == 2  # one optimizer step per minibatch
    return {"old": old, "metrics": metrics, "weights": weights, "layout": layout, "grads": grads}


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
    g1, g2 = one_rank["grads"], two["grads"]
    params = {n for n, _ in load_model(tiny_model_path).named_parameters()}
    for step in range(2):
        assert set(g1[step]) == set(g2[step]) == params
        for k, g in g1[step].items():
            _assert_reduced_grads_match(g, g2[step][k], f"step {step + 1}: {k}")
    changed = 0
    for k, v in w1.items():
        if k in g1[0]:
            # each element within what its gradients' rounding can move Adam's two updates
            delta = torch.stack([_relative_gap(g1[s][k], g2[s][k]) for s in range(2)]).amax(0)
            tol = 2e-6 + 1e-4 * v.abs() + LR * _adam_two_step_bound(delta, LearnerConfig.beta1, LearnerConfig.beta2)
            over = (v - w2[k]).abs() > tol
            assert not over.any(), (k, int(over.sum()), float((v - w2[k]).abs().max()))
        else:  # a buffer: never trained
            assert torch.allclose(v, w2[k], atol=2e-6, rtol=1e-4), k
        changed += int(not torch.equal(v, before[k]))
    assert changed > len(w1) // 2  # the steps moved the weights


# The reduced gradients: each element is a float32 sum whose order differs between the runs (the
# micro-batch split, packed vs padded matmul shapes, the 2-rank average). Each matmul/sum of the
# tiny model (inner sizes <= 128, ~60 response tokens) errs by at most k·u (u = 2^-24 ≈ 6e-8)
# relative to its operands' scale, ~1e-5; a chain of ~10 of them (4 layers, forward and backward)
# bounds the gap by ~1e-4 of the tensor's scale (its max and its norm), worst case; typical
# rounding is far smaller (5e-7 seen). A wrong reduction (a halved gradient, a rank's share
# missing, experts summed over the wrong group) moves whole tensors by 0.3-1 of their scale.
GRAD_RTOL = 1e-4


def _assert_reduced_grads_match(ref: torch.Tensor, got: torch.Tensor, what: str) -> None:
    assert got.shape == ref.shape, what
    gap = (got - ref).abs()
    assert gap.max() <= GRAD_RTOL * ref.abs().max(), (what, float(gap.max()), float(ref.abs().max()))
    assert gap.norm() <= GRAD_RTOL * ref.norm(), (what, float(gap.norm()), float(ref.norm()))


def _relative_gap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| / min(|a|, |b|) elementwise in float64: 0 where equal, inf where a sign may differ."""
    a, b = a.double(), b.double()
    gap = (a - b).abs()
    return torch.where(gap == 0, 0.0, gap / torch.minimum(a.abs(), b.abs()))


def _adam_two_step_bound(delta: torch.Tensor, beta1: float, beta2: float) -> torch.Tensor:
    """How far (in units of lr) AdamW's first two updates of an element can move when each of its
    two gradients moves by a relative `delta` (< 1: same sign). Step 1 is F1 = g/(|g| + eps):
    |ΔF1| <= δ/(1-δ), |F1| <= 1. Step 2 is F2 = k·N/(D + eps) with N = β1·g1 + g2,
    D = sqrt(β2·g1² + g2²), k = sqrt(1+β2)/(1+β1) (bias corrections); Cauchy-Schwarz gives
    |N| <= c·D and β1|g1| + |g2| <= c·D with c = sqrt(β1²/β2 + 1), so |F2| <= B = k·c and
    |ΔF2| <= 2B·δ/(1-δ). A sign flip (δ >= 1) moves them by at most 2 + 2B: where a gradient is
    zero up to rounding (eps = 1e-15 makes F1 ≈ sign(g)), Adam's update may differ by ~2·lr per
    step on any CPU; where it is well above rounding, the bound is ~3δ·lr. Gradient clipping scales a
    step by min(1, clip/‖g‖); the norms agree to 1e-5 (checked above), which adds <= 4e-7 here,
    inside the atol."""
    B = math.sqrt(1 + beta2) / (1 + beta1) * math.sqrt(beta1**2 / beta2 + 1)
    d = delta.clamp(max=1.0)
    sensitive = torch.where(d < 1, (1 + 2 * B) * d / (1 - d).clamp(min=1e-300), math.inf)
    return sensitive.clamp(max=2 + 2 * B)
