"""Prompt-level averaging through the real learner (Ray actors, DeepSpeed ZeRO-3 over gloo, 2
ranks, micro-batches of 2 rows): the reduced gradient the optimizer receives equals the gradient
of `aggregate(..., "prompt")` over the whole minibatch, computed here in one process. Prompts are
split across micro-batches and ranks, so this checks the totals the learner hands each part."""

import random
import sys

import pytest
import ray
import torch
from omegaconf import OmegaConf
from ray import cloudpickle

from cispo.config import LearnerConfig, ModelConfig, ParallelConfig
from cispo.learner import LearnerGroup, TrainItem


def _record_grads(worker) -> None:
    from deepspeed.utils import safe_get_full_grad

    step = worker.engine.optimizer.step
    worker.recorded_grads = []

    def recording_step(*args, **kwargs):
        worker.recorded_grads.append(worker.full_tensors(lambda p: safe_get_full_grad(p).clone()))
        return step(*args, **kwargs)

    worker.engine.optimizer.step = recording_step


def _items() -> list[TrainItem]:
    rng = random.Random(5)
    out = []
    for i in range(9):  # prompts of 4, 3 and 2 responses of 1-5 tokens
        prompt = [1] + [rng.randrange(4, 21) for _ in range(3)]
        resp = [rng.randrange(4, 21) for _ in range(rng.randint(1, 5))]
        out.append(TrainItem(prompt, resp, [-2.0] * len(resp), rng.uniform(-1, 1),
                             prompt_index=0 if i < 4 else 1 if i < 7 else 2))
    return out


def _reference_grads(path: str, items: list[TrainItem]) -> dict[str, torch.Tensor]:
    """d/dθ of the prompt-averaged CISPO loss over all items, on-policy (π_old = π): one process."""
    from cispo.loss import policy_loss
    from cispo.models.build import load_model

    model = load_model(path, fp32_head=True)
    model.zero_grad()
    width = max(len(it.prompt_ids) + len(it.response_ids) for it in items)
    lps, masks = [], []
    for it in items:
        seq = torch.tensor([it.prompt_ids + it.response_ids])
        logp = torch.log_softmax(model(input_ids=seq).logits[0, :-1].float(), -1)
        lp = logp.gather(-1, seq[0, 1:, None])[:, 0]
        m = torch.zeros(width - 1)
        m[len(it.prompt_ids) - 1:len(it.prompt_ids) - 1 + len(it.response_ids)] = 1.0
        lps.append(torch.nn.functional.pad(lp, (0, width - 1 - lp.numel())))
        masks.append(m)
    lp, mask = torch.stack(lps), torch.stack(masks)
    loss, _ = policy_loss("cispo", lp, lp.detach(), torch.tensor([it.advantage for it in items]), mask,
                          normalization="prompt", prompt_index=torch.tensor([it.prompt_index for it in items]))
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.slow
def test_two_ranks_prompt_averaged_gradient_matches_one_process(ray_local, tiny_model_path):
    items = _items()
    cfg = OmegaConf.structured(LearnerConfig(num_workers=2, zero_stage=3, micro_batch_size=2,
                                             lr=1e-3, torch_threads=1, num_cpus_per_worker=1))
    group = LearnerGroup(cfg, OmegaConf.structured(ParallelConfig()), OmegaConf.structured(ModelConfig),
                         tiny_model_path, len(items), 1.0)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        ray.get([w.__ray_call__.remote(_record_grads) for w in group.workers])
        old, _ = group.old_logprobs(items)
        group.train_minibatch(items, old, "cispo", {"eps_low": 1.0, "eps_high": 0.28, "normalization": "prompt"})
        (grads,) = ray.get(group.workers[0].__ray_call__.remote(lambda w: w.recorded_grads))
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        group.shutdown()
    ref = _reference_grads(tiny_model_path, items)
    assert ref.keys() <= grads.keys()
    scale = max(g.abs().max().item() for g in ref.values())
    for name, g in ref.items():
        # float32 sums in a different order (per rank, per micro-batch): a few ulps of the largest
        assert torch.allclose(grads[name].to(g.dtype), g, rtol=1e-4, atol=1e-5 * scale), name
