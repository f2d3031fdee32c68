"""The weight hand-over wired through the Ray actors (cispo.handover), on CPU: colocated
placement with shared-memory bucket buffers (the CUDA IPC path's CPU analogue) and separate
placement with the broadcast group over gloo (NCCL's path). After a sync the engines compute
the learner's log-probs; an engine Ray restarts after a crash gets the weights back."""

import os

import pytest
import ray
import torch
from omegaconf import OmegaConf


@pytest.mark.parametrize("transport,placement", [("ipc", "colocated"), ("broadcast", "separate")])
def test_engines_sample_the_learners_policy_after_each_sync(ray_local, tiny_model_path, transport, placement):
    from cispo.config import LearnerConfig, ModelConfig, ParallelConfig, RolloutConfig
    from cispo.handover import make_handover
    from cispo.learner import LearnerGroup, TrainItem
    from cispo.models.build import load_tokenizer
    from cispo.placement import plan_layout, release, reserve
    from rollout.manager import RolloutManager

    tok = load_tokenizer(tiny_model_path)
    prompts = [[tok.bos_token_id] + tok(t, add_special_tokens=False).input_ids for t in ["1+2=", "2+2="]]
    lcfg = OmegaConf.structured(LearnerConfig(num_workers=2, zero_stage=3, micro_batch_size=8, lr=1e-2,
                                              torch_threads=1, num_cpus_per_worker=1))
    rcfg = OmegaConf.structured(RolloutConfig(num_workers=2, group_size=4, max_new_tokens=6,
                                              num_cpus_per_worker=1, sync_bucket_mb=0.05, max_restarts=2))
    layout = plan_layout(placement, 2, 1, 0, 2, 1, 0)
    where = reserve(layout, timeout_s=60)
    learner = LearnerGroup(lcfg, OmegaConf.structured(ParallelConfig), OmegaConf.structured(ModelConfig),
                           tiny_model_path, 8, 1.0, scheduling=where.learner, wait=False)
    mgr = RolloutManager(rcfg, tiny_model_path, scheduling=where.engines, wait=False)
    learner.ready()
    mgr.ready()
    try:
        h = make_handover(transport, learner, mgr, rcfg.sync_bucket_mb, on_gpu=False,
                          engine_rank=layout.engine_rank)
        assert h.name == transport
        h.start()

        def step(seed):
            samples = mgr.generate(prompts, seed=seed)
            items = [TrainItem(s.prompt_ids, s.response_ids, s.logprobs, 1.0 if i % 2 else -1.0)
                     for i, s in enumerate(samples)]
            m = learner.train_minibatch(items, None, "cispo", {"eps_low": 1.0, "eps_high": 0.28},
                                        agreement=True)
            # the update's own forward as π_old: on-policy ratios are exactly 1
            assert m["is_weight/mean"] == pytest.approx(1.0) and m["logprob/train_rollout_pearson"] > 0.99
            stats = h.sync()
            assert stats["sync/bytes"] > 1e6 and stats["sync/buckets"] > 5 and stats["sync/load_s"] > 0
            return stats

        def engines_match_learner(seed):
            after = mgr.generate(prompts, seed=seed)
            trained, _ = learner.old_logprobs([TrainItem(s.prompt_ids, s.response_ids, s.logprobs, 0.0)
                                               for s in after])
            for s, lp in zip(after, trained, strict=True):
                torch.testing.assert_close(torch.tensor(s.logprobs), torch.tensor(lp), atol=1e-4, rtol=0)
            return after

        step(1)
        engines_match_learner(2)
        step(3)
        before = engines_match_learner(4)
        # worker 1 crashes between steps: Ray restarts it with the checkpoint's weights; the
        # manager's resync (by this hand-over) gives it the current ones before it generates.
        # The process exits inside a call we wait on, so it is gone before the next generate
        # (ray.kill only asks the GCS: the old process may still answer a fast call after it)
        with pytest.raises((ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)):
            ray.get(mgr.workers[1].__ray_call__.remote(lambda worker: os._exit(1)))
        again = mgr.generate(prompts, seed=4)
        assert mgr.restarts == 1
        assert [s.response_ids for s in again] == [s.response_ids for s in before]
        step(5)  # and the next sync reaches every engine (the broadcast group is formed anew)
        engines_match_learner(6)
    finally:
        mgr.shutdown()
        learner.shutdown()
        release(where)
