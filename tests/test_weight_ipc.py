"""Colocated weight hand-over (cispo.weight_sync.SharedBuckets): flat bucket buffers that an
engine process opens once and reads every sync. CPU: shared-memory files; GPU (marked): CUDA
IPC handles, an engine process on the same GPU receiving bit-identical weights."""

import pickle

import pytest
import torch
import torch.multiprocessing as mp

from cispo.weight_sync import (
    SharedBuckets,
    load_buckets,
    open_buckets,
    param_entries,
    plan_buckets,
    unflatten,
)


def _model(seed: int, dtype=torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Embedding(50, 24), torch.nn.Linear(24, 40), torch.nn.LayerNorm(40),
                            torch.nn.Linear(40, 7, bias=False))
    m[1].to(torch.bfloat16)  # a second dtype: buckets never mix dtypes
    return m.to(dtype) if dtype != torch.float32 else m


def test_flatten_unflatten_round_trip_every_parameter_bit_for_bit(tmp_path):
    src, dst = _model(0), _model(1)
    plan = plan_buckets(param_entries(src), bucket_bytes=2000)
    assert len(plan) >= 3 and {b[0][2] for b in plan} == {torch.float32, torch.bfloat16}
    bufs = SharedBuckets(plan, "cpu", shm_dir=str(tmp_path))
    stats = bufs.fill(src, 2000, zero3=False)
    assert stats["sync/bytes"] == sum(p.numel() * p.element_size() for p in src.parameters())
    opened = open_buckets(plan, [pickle.loads(pickle.dumps(h)) for h in bufs.handles()])

    def load(bucket):
        dst.load_state_dict(bucket, strict=False)

    load_buckets(opened, load)
    for (n, a), b in zip(src.named_parameters(), dst.parameters(), strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b), n
    # the buffers are reused: change the source, refill, read again through the same mapping
    with torch.no_grad():
        for p in src.parameters():
            p.mul_(-2).add_(0.5)
    bufs.fill(src, 2000, zero3=False)
    load_buckets(opened, load)
    assert all(torch.equal(a, b) for a, b in zip(src.parameters(), dst.parameters(), strict=True))
    bufs.close()


def test_unflatten_is_views_of_the_buffer_in_plan_order():
    bucket = [("a", (2, 3), torch.float32), ("b", (5,), torch.float32), ("c", (1, 1, 2), torch.float32)]
    flat = torch.randn(13)
    out = unflatten(flat, bucket)
    assert list(out) == ["a", "b", "c"]
    assert torch.equal(torch.cat([v.reshape(-1) for v in out.values()]), flat)
    flat[0] = 42.0  # views, not copies: the loader copies out of the shared memory itself
    assert out["a"][0, 0] == 42.0


def test_fill_refuses_a_model_whose_buckets_changed(tmp_path):
    src = _model(0)
    plan = plan_buckets(param_entries(src), 2000)
    bufs = SharedBuckets(plan, "cpu", shm_dir=str(tmp_path))
    src.add_module("extra", torch.nn.Linear(3, 3))
    with pytest.raises(RuntimeError, match="changed since the buffers were made"):
        bufs.fill(src, 2000, zero3=False)
    bufs.close()


def test_open_refuses_handles_of_another_plan(tmp_path):
    src = _model(0)
    plan = plan_buckets(param_entries(src), 2000)
    bufs = SharedBuckets(plan, "cpu", shm_dir=str(tmp_path))
    with pytest.raises(ValueError, match="handles for a plan"):
        open_buckets(plan[:-1], bufs.handles())
    bufs.close()


def _engine(handles, plan, queue, done):
    """The engine process: open the buffers once, then load twice (two syncs)."""
    model = _model(1, dtype=torch.float32).to("cuda" if handles[0].cuda is not None else "cpu")
    opened = open_buckets(plan, handles)
    for _ in range(2):
        load_buckets(opened, lambda b: model.load_state_dict(b, strict=False))
        queue.put({n: p.detach().cpu() for n, p in model.named_parameters()})
        done.wait(60)
        done.clear()


def _hand_over(device: str, tmp_path) -> None:
    ctx = mp.get_context("spawn")
    src = _model(0).to(device)
    plan = plan_buckets(param_entries(src), 4096)
    bufs = SharedBuckets(plan, device, shm_dir=str(tmp_path))
    bufs.fill(src, 4096, zero3=False)
    queue, done = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=_engine, args=(bufs.handles(), plan, queue, done))
    proc.start()
    try:
        for round_ in range(2):
            got = queue.get(timeout=120)
            for n, p in src.named_parameters():
                assert got[n].dtype == p.dtype and torch.equal(got[n], p.detach().cpu()), (round_, n)
            with torch.no_grad():  # the "update", then the next sync into the same buffers
                for p in src.parameters():
                    p.copy_(torch.randn_like(p))
            bufs.fill(src, 4096, zero3=False)
            done.set()
    finally:
        proc.join(60)
        bufs.close()
    assert proc.exitcode == 0


def test_engine_process_opens_shared_memory_once_and_reads_every_sync(tmp_path):
    _hand_over("cpu", tmp_path)


@pytest.mark.gpu
def test_cuda_ipc_engine_on_same_gpu_gets_bit_identical_weights(tmp_path):
    _hand_over("cuda", tmp_path)
