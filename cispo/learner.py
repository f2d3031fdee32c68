"""The learner group: W Ray actors, each one DeepSpeed rank around the policy.

The learner knows tensors and a loss *name* (looked up in `cispo.loss`), not the algorithm.
Per step the driver calls, on every rank at once (ZeRO-3 collectives need all ranks):
  `logprobs(shard)`          π_old of the sampled tokens (no grad) + train/rollout agreement sums
  `train_minibatch(shard)`   n_micro forward/backward passes, one optimizer step
  `state_dict()`             full weights on rank 0 (ZeRO-3 gathers them) for the engines
Every rank runs the same number of micro-batches (short shards are padded with fully-masked
rows), because each ZeRO-3 forward all-gathers parameters across ranks.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

import ray
import torch

from cispo.models.process import actor_env, setup_actor


@dataclass
class TrainItem:
    """One sequence for the learner: token ids, which positions to score, and their targets."""

    prompt_ids: list[int]
    response_ids: list[int]
    rollout_logprobs: list[float]
    advantage: float


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def collate(items: list[TrainItem], pad_id: int, old_logprobs: list[list[float]] | None = None) -> dict[str, torch.Tensor]:
    """Right-padded [B, L] ids plus [B, L-1] response mask / targets aligned with logits[:, :-1]."""
    width = max(len(it.prompt_ids) + len(it.response_ids) for it in items)
    B = len(items)
    ids = torch.full((B, width), pad_id, dtype=torch.long)
    attn = torch.zeros((B, width), dtype=torch.long)
    mask = torch.zeros((B, width - 1))
    rollout_lp = torch.zeros((B, width - 1))
    old = torch.zeros((B, width - 1))
    adv = torch.zeros(B)
    for i, it in enumerate(items):
        seq = it.prompt_ids + it.response_ids
        ids[i, :len(seq)] = torch.tensor(seq)
        attn[i, :len(seq)] = 1
        p, r = len(it.prompt_ids), len(it.response_ids)
        # logits at position t predict token t+1: response token j sits at p+j, scored at p+j-1
        mask[i, p - 1:p - 1 + r] = 1.0
        rollout_lp[i, p - 1:p - 1 + r] = torch.tensor(it.rollout_logprobs[:r])
        if old_logprobs is not None:
            old[i, p - 1:p - 1 + r] = torch.tensor(old_logprobs[i][:r])
        adv[i] = it.advantage
    return {"input_ids": ids, "attention_mask": attn, "mask": mask, "rollout_logprobs": rollout_lp,
            "old_logprobs": old, "advantages": adv}


@ray.remote
class LearnerWorker:
    def __init__(self, rank: int, world_size: int, master_port: int, model_path: str,
                 cfg: dict, n_micro: int, temperature: float):
        os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(master_port),
                           "RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": "0"})
        gpu = torch.cuda.is_available() and cfg["num_gpus_per_worker"] > 0
        if not gpu:
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        setup_actor(cfg["torch_threads"])
        import deepspeed

        from cispo.models.build import load_model, load_tokenizer

        deepspeed.utils.logger.setLevel(logging.WARNING)
        backend = cfg["backend"] if cfg["backend"] != "auto" else ("nccl" if gpu else "gloo")
        deepspeed.init_distributed(dist_backend=backend)
        self.rank, self.world_size, self.n_micro, self.temperature = rank, world_size, n_micro, temperature
        self.zero_stage = cfg["zero_stage"]
        model = load_model(model_path, cfg["dtype"], cfg.get("trust_remote_code", False),
                           fp32_head=cfg["fp32_lm_head"], rotary_dim=cfg["rotary_dim"])
        self.pad_id = load_tokenizer(model_path).pad_token_id
        if cfg["gradient_checkpointing"]:
            model.gradient_checkpointing_enable()
        model.config.use_cache = False
        ds_config = {
            "train_micro_batch_size_per_gpu": cfg["micro_batch_size"],
            "gradient_accumulation_steps": n_micro,
            "gradient_clipping": cfg["grad_clip"],
            "zero_optimization": {"stage": cfg["zero_stage"]},
            "optimizer": {"type": "AdamW", "params": {
                "lr": cfg["lr"], "betas": [cfg["beta1"], cfg["beta2"]], "eps": cfg["eps"],
                "weight_decay": cfg["weight_decay"], "torch_adam": True}},
            "bf16": {"enabled": cfg["dtype"] == "bfloat16"},
            "steps_per_print": 10**9,
        }
        self.engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                               config=ds_config)

    def ready(self) -> int:
        return self.rank

    def _micro_batches(self, items: list[TrainItem], old: list[list[float]] | None):
        per = -(-len(items) // self.n_micro) if items else 1
        for k in range(self.n_micro):
            chunk = items[k * per:(k + 1) * per]
            chunk_old = old[k * per:(k + 1) * per] if old is not None else None
            if not chunk:  # keep collectives in step with the other ranks: a fully masked row
                dummy = TrainItem([self.pad_id, self.pad_id], [self.pad_id], [0.0], 0.0)
                batch = collate([dummy], self.pad_id, [[0.0]] if old is not None else None)
                batch["mask"].zero_()
                yield batch
            else:
                yield collate(chunk, self.pad_id, chunk_old)

    def _token_logprobs(self, batch: dict[str, torch.Tensor], with_entropy: bool = False):
        """(log π of each next token [B, L-1], the entropy at the response positions [n] or
        None), from FP32 logits.

        Through the engine's own forward: calling the base model and the chunked FP32 head
        (cispo.models.fp32_head) directly gave 2 ZeRO-3 ranks different embedding gradients
        from 1 rank, so the chunked path waits until that is understood."""
        from cispo.ops.logprobs import token_entropy, token_logprobs

        ids = batch["input_ids"].to(self.engine.device)
        logits = self.engine(input_ids=ids, attention_mask=batch["attention_mask"].to(ids.device)).logits
        lp = token_logprobs(logits[:, :-1], ids[:, 1:], self.temperature)
        if not with_entropy:
            return lp, None
        # a metric: only the positions it is reported for, not the prompt or the padding
        return lp, token_entropy(logits[:, :-1][batch["mask"].to(ids.device) > 0], self.temperature)

    @torch.no_grad()
    def logprobs(self, items: list[TrainItem]) -> tuple[list[list[float]], dict[str, float]]:
        """π_old of each response token, and sums for the train/rollout agreement metrics."""
        self.engine.eval()
        out: list[list[float]] = []
        s = dict.fromkeys(("n", "x", "y", "xx", "yy", "xy", "absdiff", "entropy"), 0.0)
        for batch in self._micro_batches(items, None):
            lp, ent = self._token_logprobs(batch, with_entropy=True)
            lp = lp.cpu()
            m = batch["mask"] > 0
            if ent is not None:
                s["entropy"] += float(ent.double().sum())
            x, y = lp[m].double(), batch["rollout_logprobs"][m].double()
            s["n"] += float(m.sum())
            s["x"] += float(x.sum())
            s["y"] += float(y.sum())
            s["xx"] += float((x * x).sum())
            s["yy"] += float((y * y).sum())
            s["xy"] += float((x * y).sum())
            s["absdiff"] += float((x - y).abs().sum())
            for i in range(lp.shape[0]):
                if m[i].any():
                    out.append(lp[i][m[i]].tolist())
        return out[:len(items)], s

    def train_minibatch(self, items: list[TrainItem], old: list[list[float]], loss_name: str,
                        loss_kwargs: dict, global_tokens: float, global_samples: float) -> dict[str, float]:
        """One optimizer step over this rank's share of a minibatch."""
        from cispo.loss import policy_loss

        self.engine.train()
        # DeepSpeed averages gradients over ranks; dividing by global_tokens / W makes the
        # result the gradient of the loss normalised by the whole minibatch's token count.
        per_rank_tokens = global_tokens / self.world_size
        per_rank_samples = global_samples / self.world_size
        sums = {"loss": 0.0, "tokens": 0.0, "ratio": 0.0, "clipped": 0.0, "ratio_max": 0.0,
                "ratio_min": float("inf")}
        for batch in self._micro_batches(items, old):
            lp, _ = self._token_logprobs(batch)
            dev = {k: batch[k].to(lp.device) for k in ("old_logprobs", "advantages", "mask")}
            loss, m = policy_loss(loss_name, lp, dev["old_logprobs"], dev["advantages"],
                                  dev["mask"], token_count=per_rank_tokens,
                                  sample_count=per_rank_samples, **loss_kwargs)
            # scale_wrt_gas=False: the loss is already normalised by the token count.
            self.engine.backward(loss, scale_wrt_gas=False)
            self.engine.step()
            sums["loss"] += float(loss.detach()) / self.world_size
            sums["tokens"] += m["tokens"]
            sums["ratio"] += m["is_weight/mean"] * m["tokens"]
            sums["clipped"] += m["is_weight/clip_frac"] * m["tokens"]
            sums["ratio_max"] = max(sums["ratio_max"], m["is_weight/max"])
            sums["ratio_min"] = min(sums["ratio_min"], m.get("is_weight/min", float("inf")))
        norm = self.engine.get_global_grad_norm()
        sums["grad_norm"] = float(norm) if norm is not None else float("nan")
        return sums

    def set_grad_clip(self, value: float) -> float:
        """A new gradient-clip threshold (staged window). The ZeRO optimizers keep their own
        copy of it, so both places change."""
        self.engine._config.gradient_clipping = value
        if hasattr(self.engine.optimizer, "clip_grad"):
            self.engine.optimizer.clip_grad = value
        return self.engine.gradient_clipping()

    def state_dict(self) -> dict[str, torch.Tensor] | None:
        """Full weights (CPU) on rank 0, None elsewhere; call on all ranks together."""
        if self.zero_stage == 3:
            sd = self.engine._zero3_consolidated_16bit_state_dict()
        else:
            sd = self.engine.module.state_dict()
        if self.rank != 0:
            return None
        return {k: v.detach().to("cpu", copy=True) for k, v in sd.items()}

    def save(self, ckpt_dir: str, tag: str, client_state: dict) -> None:
        self.engine.save_checkpoint(ckpt_dir, tag=tag, client_state=client_state)

    def load(self, ckpt_dir: str, tag: str) -> dict:
        _, client_state = self.engine.load_checkpoint(ckpt_dir, tag=tag)
        return client_state or {}

    def export(self, out_dir: str) -> None:
        """Write the policy with `save_pretrained` (loadable by transformers); all ranks call."""
        sd = self.state_dict()
        if self.rank == 0:
            self.engine.module.save_pretrained(out_dir, state_dict=sd)


class LearnerGroup:
    def __init__(self, cfg: Any, model_cfg: Any, model_path: str, samples_per_minibatch: int,
                 temperature: float):
        self.W = cfg.num_workers
        per_rank = -(-samples_per_minibatch // self.W)
        self.n_micro = max(1, -(-per_rank // cfg.micro_batch_size))
        port = cfg.master_port or _free_port()
        wcfg = {**_plain(cfg), "dtype": model_cfg.dtype, "trust_remote_code": model_cfg.trust_remote_code,
                "fp32_lm_head": model_cfg.fp32_lm_head, "rotary_dim": model_cfg.rotary_dim}
        opts = {"num_cpus": cfg.num_cpus_per_worker, "num_gpus": cfg.num_gpus_per_worker,
                "runtime_env": {"env_vars": actor_env(cfg.torch_threads)}}
        self.workers = [LearnerWorker.options(**opts).remote(r, self.W, port, model_path, wcfg,
                                                             self.n_micro, temperature)
                        for r in range(self.W)]
        ray.get([w.ready.remote() for w in self.workers])

    def _shards(self, items: list) -> list[list]:
        per = -(-len(items) // self.W)
        return [items[r * per:(r + 1) * per] for r in range(self.W)]

    def old_logprobs(self, items: list[TrainItem]) -> tuple[list[list[float]], dict[str, float]]:
        parts = ray.get([w.logprobs.remote(s) for w, s in zip(self.workers, self._shards(items), strict=True)])
        lps = [lp for p, _ in parts for lp in p]
        s = {k: sum(p[1][k] for p in parts) for k in parts[0][1]}
        n = max(s["n"], 1.0)
        cov = s["xy"] / n - (s["x"] / n) * (s["y"] / n)
        vx = s["xx"] / n - (s["x"] / n) ** 2
        vy = s["yy"] / n - (s["y"] / n) ** 2
        pearson = cov / (vx * vy) ** 0.5 if vx > 0 and vy > 0 else float("nan")
        out = {"logprob/train_rollout_pearson": pearson,
               "logprob/train_rollout_abs_diff": s["absdiff"] / n}
        if s["entropy"]:
            out["logprob/entropy_mean"] = s["entropy"] / n  # of the policy at sampled positions
        return lps, out

    def train_minibatch(self, items: list[TrainItem], old: list[list[float]], loss_name: str,
                        loss_kwargs: dict) -> dict[str, float]:
        tokens = float(sum(len(it.response_ids) for it in items))
        shards, olds = self._shards(items), self._shards(old)
        parts = ray.get([w.train_minibatch.remote(s, o, loss_name, loss_kwargs, tokens, float(len(items)))
                         for w, s, o in zip(self.workers, shards, olds, strict=True)])
        t = max(sum(p["tokens"] for p in parts), 1.0)
        return {"loss/policy": sum(p["loss"] for p in parts),
                "is_weight/mean": sum(p["ratio"] for p in parts) / t,
                "is_weight/clip_frac": sum(p["clipped"] for p in parts) / t,
                "is_weight/max": max(p["ratio_max"] for p in parts),
                "is_weight/min": min(p["ratio_min"] for p in parts),  # inf: no tokens
                "grad/norm": parts[0]["grad_norm"]}

    def set_grad_clip(self, value: float) -> list[float]:
        return ray.get([w.set_grad_clip.remote(value) for w in self.workers])

    def state_dict_ref(self) -> ray.ObjectRef:
        """An object-store reference to the full weights (gathered on rank 0)."""
        refs = [w.state_dict.remote() for w in self.workers]
        ray.wait(refs, num_returns=len(refs))
        return refs[0]

    def save(self, ckpt_dir: str, tag: str, client_state: dict) -> None:
        ray.get([w.save.remote(ckpt_dir, tag, client_state) for w in self.workers])

    def load(self, ckpt_dir: str, tag: str) -> dict:
        return ray.get([w.load.remote(ckpt_dir, tag) for w in self.workers])[0]

    def export(self, out_dir: str) -> None:
        ray.get([w.export.remote(out_dir) for w in self.workers])

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w)


def _plain(cfg: Any) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
