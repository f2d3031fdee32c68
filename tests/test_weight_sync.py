"""Bucketed weight sync: the bucket plan, the broadcast path (gloo here, NCCL on GPU), and that
after a sync through ZeRO-3 gathers a generation worker computes the learner's log-probs."""

import socket

import pytest
import torch
import torch.multiprocessing as mp
from omegaconf import OmegaConf

from cispo.weight_sync import (
    broadcast_recv,
    broadcast_send,
    make_group,
    param_entries,
    plan_buckets,
    unflatten,
)


def test_plan_buckets_cover_every_parameter_once_in_order():
    f32, bf16 = torch.float32, torch.bfloat16
    entries = [("a", (10,), f32), ("b", (300,), f32), ("c", (5,), f32), ("d", (5,), bf16), ("e", (1,), f32)]
    plan = plan_buckets(entries, bucket_bytes=1024)
    assert [[n for n, _, _ in b] for b in plan] == [["a"], ["b"], ["c"], ["d"], ["e"]]  # b: 1200 B alone
    plan = plan_buckets(entries, bucket_bytes=4096)
    assert [[n for n, _, _ in b] for b in plan] == [["a", "b", "c"], ["d"], ["e"]]  # one dtype per bucket
    assert [e for b in plan for e in b] == entries
    with pytest.raises(ValueError, match="> 0"):
        plan_buckets(entries, 0)


def test_unflatten_restores_shapes():
    bucket = [("x", (2, 3), torch.float32), ("y", (4,), torch.float32)]
    flat = torch.arange(10, dtype=torch.float32)
    out = unflatten(flat, bucket)
    assert torch.equal(out["x"], torch.arange(6.0).view(2, 3)) and torch.equal(out["y"], torch.arange(6.0, 10))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _broadcast_rank(rank: int, port: int, queue) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Linear(32, 8))
    group = make_group("gloo", "127.0.0.1", port, rank, 2)
    plan = plan_buckets(param_entries(model), bucket_bytes=600)
    if rank == 0:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(-3.0)  # the "trained" weights the engine must end up with
        _, stats = broadcast_send(group, model, 600, zero3=False, is_sender=True, device="cpu")
        queue.put(("sent", {n: p.detach().clone() for n, p in model.named_parameters()}, stats))
    else:
        def load(bucket):
            model.load_state_dict(bucket, strict=False)
        stats = broadcast_recv(group, plan, "cpu", load)
        queue.put(("got", {n: p.detach().clone() for n, p in model.named_parameters()}, stats))


def test_broadcast_path_over_gloo():
    ctx = mp.get_context("spawn")
    queue, port = ctx.Queue(), _free_port()
    procs = [ctx.Process(target=_broadcast_rank, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    out = dict((tag, (w, s)) for tag, w, s in (queue.get(timeout=120) for _ in procs))
    for p in procs:
        p.join(30)
    sent, got = out["sent"][0], out["got"][0]
    assert sent.keys() == got.keys() and all(torch.equal(sent[k], got[k]) for k in sent)
    n_bytes = sum(v.numel() * 4 for v in sent.values())
    assert out["sent"][1]["sync/bytes"] == out["got"][1]["sync/bytes"] == n_bytes
    assert out["got"][1]["sync/buckets"] > 1


def test_bucketed_sync_worker_logprobs_equal_learner(ray_local, tiny_model_path):
    from cispo.config import LearnerConfig, ModelConfig, ParallelConfig, RolloutConfig
    from cispo.learner import LearnerGroup, TrainItem
    from cispo.models.build import load_tokenizer
    from rollout.manager import RolloutManager

    tok = load_tokenizer(tiny_model_path)
    prompts = [[tok.bos_token_id] + tok(t, add_special_tokens=False).input_ids for t in ["1+2=", "2+2="]]
    lcfg = OmegaConf.structured(LearnerConfig(num_workers=2, zero_stage=3, micro_batch_size=8, lr=1e-2,
                                              torch_threads=1, num_cpus_per_worker=1))
    rcfg = OmegaConf.structured(RolloutConfig(num_workers=1, group_size=4, max_new_tokens=6,
                                              num_cpus_per_worker=1, sync_bucket_mb=0.05))
    learner = LearnerGroup(lcfg, OmegaConf.structured(ParallelConfig), OmegaConf.structured(ModelConfig),
                           tiny_model_path, 8, 1.0)
    mgr = RolloutManager(rcfg, tiny_model_path)
    try:
        first = mgr.generate(prompts, seed=1)
        items = [TrainItem(s.prompt_ids, s.response_ids, s.logprobs, 1.0 if i % 2 else -1.0)
                 for i, s in enumerate(first)]
        old, _ = learner.old_logprobs(items)
        learner.train_minibatch(items, old, "cispo", {"eps_low": 1.0, "eps_high": 0.28})  # move the weights
        refs, stats = learner.weight_buckets(rcfg.sync_bucket_mb)
        assert len(refs) > 5 and stats["sync/buckets"] == len(refs)  # 2 MB model in 50 KiB buckets
        assert stats["sync/bytes"] > 1e6 and stats["sync/gb_per_s"] > 0
        mgr.sync_weights(refs)
        after = mgr.generate(prompts, seed=2)
        trained, _ = learner.old_logprobs([TrainItem(s.prompt_ids, s.response_ids, s.logprobs, 0.0)
                                           for s in after])
        for s, lp in zip(after, trained, strict=True):
            torch.testing.assert_close(torch.tensor(s.logprobs), torch.tensor(lp), atol=1e-4, rtol=0)
        # before the update the learner agreed with the first rollout too
        for s, lp in zip(first, old, strict=True):
            torch.testing.assert_close(torch.tensor(s.logprobs), torch.tensor(lp), atol=1e-4, rtol=0)
        # and the sync mattered: the checkpoint's weights give these tokens other log-probs
        from cispo.models.build import load_model
        from cispo.ops.logprobs import token_logprobs

        s = after[0]
        ids = torch.tensor([s.prompt_ids + s.response_ids])
        with torch.no_grad():
            base = token_logprobs(load_model(tiny_model_path)(ids).logits[0, :-1], ids[0, 1:])
        assert (base[len(s.prompt_ids) - 1:] - torch.tensor(s.logprobs)).abs().max() > 1e-3
    finally:
        mgr.shutdown()
        learner.shutdown()
