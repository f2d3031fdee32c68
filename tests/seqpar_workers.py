"""Worker processes for tests/test_seqpar_dist.py (gloo, 2 ranks): importable by
torch.multiprocessing's spawn, which pickles functions by module name."""

from __future__ import annotations

import copy
import os
import traceback

import torch
import torch.distributed as dist

VOCAB = 64


def tiny_hybrid(dtype=torch.float64, seed=0):
    """A random hybrid MiniMax: lightning, softmax (GQA, partial RoPE), lightning, softmax; 4
    experts top-2; lightning block 4 so chunks span several blocks."""
    from transformers import MiniMaxConfig, MiniMaxForCausalLM

    from cispo.models.rope import apply_m1_partial_rope

    cfg = MiniMaxConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=24, num_hidden_layers=4,
                        num_attention_heads=4, head_dim=8, num_key_value_heads=2, block_size=4,
                        num_local_experts=4, num_experts_per_tok=2, tie_word_embeddings=False,
                        layer_types=["linear_attention", "full_attention"] * 2,
                        rope_parameters={"rope_type": "default", "rope_theta": 1e4})
    cfg._experts_implementation = "eager"  # grouped_mm has no float64
    torch.manual_seed(seed)
    model = MiniMaxForCausalLM(cfg).to(dtype)
    apply_m1_partial_rope(model, rotary_dim=4)
    model.config.use_cache = False
    return model


def packed_batch(lens, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (1, sum(lens)), generator=g)
    pos = torch.cat([torch.arange(n) for n in lens])[None]
    weight = torch.randn(1, sum(lens), generator=g, dtype=torch.float64)
    ends = torch.cumsum(torch.tensor(lens), 0) - 1
    weight[0, ends] = 0.0  # a sequence's last token has no next token of its own to score
    return {"input_ids": ids, "position_ids": pos, "weight": weight}


def local_loss(model, local, n_total, scale=1.0):
    """Σ weight · log π(target) over this rank's chunk / n_total (x scale)."""
    from cispo import seqpar
    from cispo.ops.logprobs import token_logprobs

    logits = model(**seqpar.model_inputs(local)).logits
    lp = token_logprobs(logits[0], local["target_ids"][0])
    return (lp * local["weight"][0].to(lp.dtype)).sum() * scale / n_total


def _init(rank, world, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), DS_ACCELERATOR="cpu")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)


def both(rank, world, port, out_dir, lens_list, lens0, lens1):
    """One spawn for both comparisons (process start-up dominates the test's time)."""
    try:
        _init(rank, world, port)
        plain_sp(rank, out_dir, lens_list)
        zero3_autoep(rank, world, out_dir, lens0, lens1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def plain_sp(rank, out_dir, lens_list):
    """SP=2 with plain torch.distributed in float64 against SP=1 on the same model: for each
    packed batch, the loss (summed over ranks) and every parameter's gradient (summed over ranks)."""
    try:
        from cispo import seqpar

        ref = tiny_hybrid()
        seqpar.patch_model(ref, None)
        model = copy.deepcopy(ref)
        sp = seqpar.patch_model(model, dist.group.WORLD)
        results = []
        for i, lens in enumerate(lens_list):
            batch = packed_batch(lens, seed=i)
            n = float(batch["weight"].abs().sum())
            ref.zero_grad()
            ref_loss = local_loss(ref, seqpar.split_packed(batch, 0, 1), n)
            ref_loss.backward()
            model.zero_grad()
            loss = local_loss(model, seqpar.split_packed(batch, sp.rank, sp.size), n)
            loss.backward()
            total = loss.detach().clone()
            dist.all_reduce(total)
            worst = 0.0
            for p, q in zip(model.parameters(), ref.parameters(), strict=True):
                g = p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                dist.all_reduce(g)
                rq = q.grad if q.grad is not None else torch.zeros_like(q)
                err = float((g - rq).norm() / rq.norm().clamp(min=1e-30))
                worst = max(worst, err if rq.norm() > 0 else float(g.norm()))
            results.append({"lens": lens, "loss": float(total), "ref_loss": ref_loss.item(),
                            "worst_grad_rel_err": worst})
        torch.save(results, f"{out_dir}/plain_{rank}.pt")
    except Exception:
        torch.save({"error": traceback.format_exc()}, f"{out_dir}/plain_{rank}.pt")
        raise


def _engine(model):
    import deepspeed

    from cispo.learner import autoep_config

    ds = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
          "zero_optimization": {"stage": 3},
          "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
          "expert_parallel": autoep_config(2),  # the learner's own AutoEP block
          "steps_per_print": 10**9}
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds)
    return engine


def zero3_autoep(rank, world, out_dir, lens0, lens1):
    """ZeRO-3 + AutoEP (EP=2), float32, two engines from one initial model. SP=1: rank r trains on
    batch r alone (plain data parallelism). SP=2: both ranks train on batches 0 and 1 packed into
    one row and split across them. The learner's loss scaling (x world / global tokens) is used for
    both, so DeepSpeed's average over ranks gives the gradient of the whole batch; every
    parameter's gradient (each rank's local experts included) must agree."""
    try:
        import logging

        import deepspeed
        from deepspeed.utils import safe_get_full_grad

        from cispo import seqpar

        deepspeed.utils.logger.setLevel(logging.WARNING)
        base = tiny_hybrid(torch.float32)
        b0, b1 = packed_batch(lens0, seed=10), packed_batch(lens1, seed=11)
        n = float(b0["weight"].abs().sum() + b1["weight"].abs().sum())
        both = {k: torch.cat([b0[k], b1[k]], dim=1) for k in b0}

        m1 = copy.deepcopy(base)
        seqpar.patch_model(m1, None)
        e1 = _engine(m1)
        loss1 = local_loss(e1, seqpar.split_packed(b0 if rank == 0 else b1, 0, 1), n, scale=world)
        e1.backward(loss1)
        g1 = {k: safe_get_full_grad(p).clone() for k, p in e1.module.named_parameters()}

        m2 = copy.deepcopy(base)
        sp = seqpar.patch_model(m2, dist.group.WORLD)
        e2 = _engine(m2)
        loss2 = local_loss(e2, seqpar.split_packed(both, sp.rank, sp.size), n, scale=world)
        e2.backward(loss2)
        g2 = {k: safe_get_full_grad(p).clone() for k, p in e2.module.named_parameters()}

        l1, l2 = loss1.detach().double() / world, loss2.detach().double() / world
        dist.all_reduce(l1)
        dist.all_reduce(l2)
        errs = {k: float((g2[k] - g1[k]).norm() / g1[k].norm().clamp(min=1e-30)) for k in g1}
        experts = sorted(k for k in g1 if ".experts." in k)
        norms = {k: float(g1[k].norm()) for k in g1}
        torch.save({"loss_sp1": float(l1), "loss_sp2": float(l2), "errs": errs, "experts": experts,
                    "norms": norms, "local_losses": (float(loss1), float(loss2))},
                   f"{out_dir}/zero3_{rank}.pt")
    except Exception:
        torch.save({"error": traceback.format_exc()}, f"{out_dir}/zero3_{rank}.pt")
        raise
