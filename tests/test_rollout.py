"""Ray rollout with the tiny hybrid model: shapes, order, finish reasons, and that the returned
log-probs are those of the sampled tokens under the policy."""

import torch

from cispo.models.build import load_model, load_tokenizer
from cispo.ops.logprobs import token_logprobs


def test_ray_rollout_two_workers(ray_local, tiny_model_path):
    from omegaconf import OmegaConf

    from cispo.config import RolloutConfig
    from rollout.manager import RolloutManager

    # placement groups on CPU resources: one group of one {CPU: 1} bundle per engine
    cfg = OmegaConf.structured(RolloutConfig(num_workers=2, group_size=3, max_new_tokens=5,
                                             num_cpus_per_worker=1, placement_groups="on"))
    mgr = RolloutManager(cfg, tiny_model_path)
    import ray

    groups = [ray.get(w.__ray_call__.remote(lambda self: ray.util.get_current_placement_group().id.hex()))
              for w in mgr.workers]
    assert groups == [g.id.hex() for g in mgr.placement_groups]
    assert all(ray.util.placement_group_table(g)["bundles"] == {0: {"CPU": 1.0}} for g in mgr.placement_groups)
    tok = load_tokenizer(tiny_model_path)
    prompts = [[tok.bos_token_id] + tok(t, add_special_tokens=False).input_ids
               for t in ["1+2=\\boxed{", "2+2=\\boxed{", "0+1=\\boxed{"]]
    try:
        samples = mgr.generate(prompts, seed=7)
    finally:
        mgr.shutdown()
    assert len(samples) == 9
    assert [s.prompt_index for s in samples] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    model = load_model(tiny_model_path).eval()
    for s in samples:
        assert s.prompt_ids == prompts[s.prompt_index]
        assert 1 <= len(s.response_ids) <= 5 and len(s.logprobs) == len(s.response_ids)
        assert s.finish_reason in ("stop", "length")
        assert (s.finish_reason == "stop") == (s.response_ids[-1] == tok.eos_token_id)
        # teacher-forced log-probs of the same tokens under the same weights
        ids = torch.tensor([s.prompt_ids + s.response_ids])
        with torch.no_grad():
            logits = model(ids).logits
        lp = token_logprobs(logits[0, :-1], ids[0, 1:])[len(s.prompt_ids) - 1:]
        assert torch.allclose(lp, torch.tensor(s.logprobs), atol=1e-4), (lp, s.logprobs)
