"""MoE routing replay: the HF engine records each token's experts; with replay the learner's
forward routes every token to the recorded experts even when its router would choose others."""

import torch

from cispo.learner import TrainItem, collate
from cispo.models.build import load_model, load_tokenizer
from cispo.models.routing_replay import pad_routing, replay, routers
from cispo.ops.logprobs import token_logprobs
from rollout.engines.hf import HFEngine
from rollout.types import SamplingParams


def _routed(model, ids, routing=None):
    """(log-probs of the next tokens, the experts each router chose) of one forward."""
    seen = []
    hooks = [r.register_forward_hook(lambda m, a, out: seen.append(out[2].clone())) for r in routers(model)]
    try:
        with torch.no_grad(), replay(model, routing):
            logits = model(ids).logits
    finally:
        for h in hooks:
            h.remove()
    return token_logprobs(logits[0, :-1], ids[0, 1:]), torch.stack(seen, 1)  # [T, layers, k]


def test_recorded_routing_is_replayed_under_perturbed_routers(tiny_model_path):
    tok = load_tokenizer(tiny_model_path)
    prompts = [[tok.bos_token_id] + tok(t, add_special_tokens=False).input_ids for t in ["1+2=\\boxed{", "0+1="]]
    engine = HFEngine(tiny_model_path, record_routing=True)
    samples = engine.generate(prompts, 3, SamplingParams(max_new_tokens=6, seed=4))
    model = load_model(tiny_model_path).eval()
    layers, k = len(routers(model)), model.config.num_experts_per_tok
    for s in samples:
        n = len(s.prompt_ids) + len(s.response_ids) - 1
        assert s.routing.shape == (n, layers, k), s.routing.shape
        ids = torch.tensor([s.prompt_ids + s.response_ids])
        # what the engine recorded (cached decode) is what a plain forward routes to
        lp, chosen = _routed(model, ids)
        assert torch.equal(chosen[:n].sort(-1).values, s.routing.long().sort(-1).values)
        forced = pad_routing([s.routing], ids.shape[1], k, layers)
        lp_replay, _ = _routed(model, ids, forced)
        torch.testing.assert_close(lp_replay[len(s.prompt_ids) - 1:], torch.tensor(s.logprobs), atol=1e-4, rtol=0)
    # perturb every router: on its own it now picks other experts, with replay the recorded ones
    with torch.no_grad():
        for r in routers(model):
            r.weight.copy_(-r.weight.flip(0))
    s = samples[0]
    ids = torch.tensor([s.prompt_ids + s.response_ids])
    n = s.routing.shape[0]
    _, free = _routed(model, ids)
    assert not torch.equal(free[:n].sort(-1).values, s.routing.long().sort(-1).values)
    _, forced = _routed(model, ids, pad_routing([s.routing], ids.shape[1], k, layers))
    assert torch.equal(forced[:n], s.routing.long())


def test_collate_carries_routing_for_the_learner():
    r = torch.tensor([[[1, 2]], [[0, 3]], [[2, 1]]], dtype=torch.int16)  # 3 positions, 1 layer, top-2
    items = [TrainItem([1, 5], [6, 7], [-1.0, -1.0], 1.0, r), TrainItem([1, 5, 6], [2], [-1.0], 1.0)]
    batch = collate(items, 0)
    assert batch["routing"].shape == (2, 4, 1, 2)
    assert torch.equal(batch["routing"][0, :3], r) and batch["routing"][1].tolist() == [[[0, 1]]] * 4
