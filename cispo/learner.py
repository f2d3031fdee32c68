"""The learner group: W Ray actors, each one DeepSpeed rank around the policy.

The learner knows tensors and a loss *name* (looked up in `cispo.loss`), not the algorithm.
Per step the driver calls, on every rank at once (ZeRO-3 collectives need all ranks):
  `logprobs(shard)`          π_old of the sampled tokens (no grad) + train/rollout agreement sums
  `train_minibatch(shard)`   n_micro forward/backward passes, one optimizer step
  `state_dict()`             full weights on rank 0 (ZeRO-3 gathers them) for the engines
Every rank runs the same number of micro-batches (short shards are padded with fully-masked
micro-batches), because each ZeRO-3 forward all-gathers parameters across ranks.

The rank layout comes from the `parallel` config group (`cispo.layout`, the same function the
planner plans with). Micro-batches are either `learner.micro_batch_size` right-padded rows
(`parallel.micro_batch_tokens: 0`) or sequences packed back to back into one row of at most
`parallel.micro_batch_tokens` tokens (`cispo.packing`); the ranks agree on the largest
micro-batch count with one all-reduce. Log-probs come from `model(..., targets=...)`
(`cispo.models.fp32_head.enable_token_scoring`): the chunked FP32 head, never [T, V] logits.
AutoEP (`parallel.expert_parallel > 1`) swaps the MoE blocks for DeepSpeed's expert-parallel
layers; `parallel.sequence_parallel > 1` splits each packed row over a group of ranks.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

import ray
import torch

from cispo.layout import RankLayout, learner_layout
from cispo.models.process import actor_env, setup_actor
from cispo.packing import pack, plan_micro_batches


@dataclass
class TrainItem:
    """One sequence for the learner: token ids, which positions to score, and their targets."""

    prompt_ids: list[int]
    response_ids: list[int]
    rollout_logprobs: list[float]
    advantage: float
    routing: Any = None  # routing replay: the rollout's experts per position (cispo.models.routing_replay)
    prompt_index: int = 0  # which prompt of the step it answers (prompt-level loss averaging)
    # multi-turn episodes: 1 where response_ids[t] is the model's own token (trained), 0 where
    # the environment wrote it (context only); None: every response token is the model's
    loss_mask: list[int] | None = None

    @property
    def trained_tokens(self) -> int:
        """Response tokens the loss sees: the model's own."""
        return len(self.response_ids) if self.loss_mask is None else int(sum(self.loss_mask))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def collate(items: list[TrainItem], pad_id: int, old_logprobs: list[list[float]] | None = None,
            prompt_tokens: list[float] | None = None) -> dict[str, torch.Tensor]:
    """Right-padded [B, L] ids plus [B, L-1] response mask / targets aligned with logits[:, :-1];
    `prompt_tokens` [B]: each row's prompt-group token total (normalization="prompt").
    Built with one tensor per field and index arithmetic, not per-row slices: a step's 1,024
    rows would otherwise cost tens of milliseconds of Python here."""
    B = len(items)
    plen = torch.tensor([len(it.prompt_ids) for it in items], dtype=torch.long)
    rlen = torch.tensor([len(it.response_ids) for it in items], dtype=torch.long)
    lengths = plen + rlen
    width = int(lengths.max())
    ids = torch.full((B, width), pad_id, dtype=torch.long)
    flat = torch.tensor([t for it in items for t in (*it.prompt_ids, *it.response_ids)], dtype=torch.long)
    rows = torch.repeat_interleave(torch.arange(B), lengths)
    cols = torch.arange(len(flat)) - torch.repeat_interleave(lengths.cumsum(0) - lengths, lengths)
    ids[rows, cols] = flat
    attn = (torch.arange(width)[None, :] < lengths[:, None]).long()
    # logits at position t predict token t+1: response token j sits at p+j, scored at p+j-1
    rrows = torch.repeat_interleave(torch.arange(B), rlen)
    rcols = (torch.arange(int(rlen.sum())) - torch.repeat_interleave(rlen.cumsum(0) - rlen, rlen)
             + torch.repeat_interleave(plen - 1, rlen))
    mask = torch.zeros((B, width - 1))
    mask[rrows, rcols] = 1.0
    rollout_lp = torch.zeros((B, width - 1))
    rollout_lp[rrows, rcols] = torch.tensor([x for it, r in zip(items, rlen.tolist(), strict=True)
                                             for x in it.rollout_logprobs[:r]], dtype=torch.float32)
    old = torch.zeros((B, width - 1))
    if any(it.loss_mask is not None for it in items):  # multi-turn: environment tokens are context
        mask[rrows, rcols] = torch.tensor([float(x) for it, r in zip(items, rlen.tolist(), strict=True)
                                           for x in (it.loss_mask[:r] if it.loss_mask is not None else [1] * r)],
                                          dtype=mask.dtype)
    if old_logprobs is not None:
        # one value per response position (the rollout's own log-probs), or one per trained token
        # (`logprobs` returns the masked positions only): spread those over the mask's positions
        vals: list[float] = []
        for it, o, r in zip(items, old_logprobs, rlen.tolist(), strict=True):
            if len(o) >= r or it.loss_mask is None:
                vals.extend(o[:r])
            else:
                it_o = iter(o)
                vals.extend(next(it_o) if m else 0.0 for m in it.loss_mask[:r])
        old[rrows, rcols] = torch.tensor(vals, dtype=torch.float32)
    adv = torch.tensor([float(it.advantage) for it in items], dtype=torch.float32)
    out = {"input_ids": ids, "attention_mask": attn, "mask": mask, "rollout_logprobs": rollout_lp,
           "old_logprobs": old, "advantages": adv}
    if prompt_tokens is not None:
        out["prompt_tokens"] = torch.tensor(prompt_tokens, dtype=torch.float32)
    if any(it.routing is not None for it in items):
        from cispo.models.routing_replay import pad_routing

        shape = next(it.routing for it in items if it.routing is not None).shape
        out["routing"] = pad_routing([it.routing for it in items], width, shape[2], shape[1])
    return out


def worker_config(learner: Any, parallel: Any, model: Any) -> dict:
    """The plain dict every LearnerWorker builds from: the `learner` keys, the layout keys of
    `parallel` (checked by `cispo.layout`) and the model's dtype and head settings."""
    lay = learner_layout(learner, parallel)
    return {**_plain(learner), "expert_parallel": lay.expert_parallel,
            "sequence_parallel": lay.sequence_parallel, "micro_batch_tokens": lay.micro_batch_tokens,
            "head_chunk_tokens": parallel.head_chunk_tokens, "prefetch_layers": parallel.prefetch_layers, "dtype": model.dtype,
            "trust_remote_code": model.trust_remote_code, "fp32_lm_head": model.fp32_lm_head,
            "rotary_dim": model.rotary_dim}


def autoep_config(size: int, preset: str = "mixtral", pattern: str = r"model\.layers\.\d+\.mlp") -> dict:
    """DeepSpeed's `expert_parallel` block: AutoEP replaces each module matching `pattern`
    (transformers' MiniMaxSparseMoeBlock) with an expert-parallel layer, router replicated,
    experts split over `size` ranks. Its `mixtral` preset routes as MiniMax does (see
    docs/configuration.md)."""
    return {"enabled": True, "autoep_size": size, "preset_model": preset, "moe_layer_pattern": pattern}


def deepspeed_config(cfg: dict, n_micro: int, world_size: int, model: torch.nn.Module | None = None) -> dict:
    """The DeepSpeed config of a `worker_config` dict (docs/configuration.md, `learner:` and
    `parallel:`). Given the model, ZeRO-3's prefetch and bucket sizes come from its layer size and
    the plan's `parallel.prefetch_layers` (`cispo.models.speed.zero3_tuning`) instead of
    DeepSpeed's fixed defaults."""
    stage = cfg["zero_stage"]
    zero: dict[str, Any] = {"stage": stage}
    if model is not None and stage == 3:
        from cispo.models.speed import zero3_tuning

        zero.update(zero3_tuning(model, cfg.get("prefetch_layers", 2), world_size))
    if cfg.get("offload_optimizer"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if cfg.get("offload_params"):
        if stage != 3:
            raise ValueError("learner.offload_params needs learner.zero_stage=3 (only stage 3 "
                             "partitions parameters)")
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg["micro_batch_size"],
        "gradient_accumulation_steps": n_micro,
        "gradient_clipping": cfg["grad_clip"],
        "zero_optimization": zero,
        # torch's AdamW: no JIT-built fused/CPU Adam needed (also when the optimizer is offloaded)
        "optimizer": {"type": "AdamW", "params": {
            "lr": cfg["lr"], "betas": [cfg["beta1"], cfg["beta2"]], "eps": cfg["eps"],
            "weight_decay": cfg["weight_decay"], "torch_adam": True,
            # on GPU torch's fused AdamW: one kernel per step instead of a dozen elementwise passes
            **({"fused": True} if (cfg.get("num_gpus_per_worker", 0) > 0 and torch.cuda.is_available()
                                   and not cfg.get("offload_optimizer")) else {})}},
        "zero_force_ds_cpu_optimizer": False,
        "bf16": {"enabled": cfg["dtype"] == "bfloat16"},
        "steps_per_print": 10**9,
    }
    ep = cfg.get("expert_parallel", 1)
    if ep > 1:
        if world_size % ep:
            raise ValueError(f"parallel.expert_parallel={ep} must divide learner.num_workers={world_size}")
        ds["expert_parallel"] = autoep_config(ep, cfg["autoep_preset"], cfg["autoep_layer_pattern"])
        if cfg.get("grouped_mm_backend"):  # the experts' GEMMs (cispo.models.speed, bench/moe.py)
            from cispo.models.speed import autoep_grouped_mm

            ds["expert_parallel"].update(autoep_grouped_mm(cfg["grouped_mm_backend"]))
    return ds


@ray.remote
class LearnerWorker:
    def __init__(self, rank: int, world_size: int, master_port: int, model_path: str,
                 cfg: dict, n_micro: int, temperature: float):
        import time

        t0 = time.time()
        self.init_times: dict[str, float] = {}

        def mark(name: str) -> None:
            nonlocal t0
            now = time.time()
            self.init_times[name] = now - t0
            t0 = now

        os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(master_port),
                           "RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": "0"})
        gpu = torch.cuda.is_available() and cfg["num_gpus_per_worker"] > 0
        if not gpu:
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        setup_actor(cfg["torch_threads"])
        from cispo.user_modules import load_source

        for name, source, path in cfg.get("modules", []):  # algorithm.modules: users' losses
            load_source(name, source, path)
        import deepspeed

        from cispo.models.build import load_model, load_tokenizer

        deepspeed.utils.logger.setLevel(logging.WARNING)
        backend = cfg["backend"] if cfg["backend"] != "auto" else ("nccl" if gpu else "gloo")
        mark("import")
        deepspeed.init_distributed(dist_backend=backend)
        mark("init_distributed")
        self.rank, self.world_size, self.n_micro, self.temperature = rank, world_size, n_micro, temperature
        self.zero_stage = cfg["zero_stage"]
        from cispo.models.fp32_head import HEAD_PRECISIONS, FP32LMHead, enable_token_scoring

        model = load_model(model_path, cfg["dtype"], cfg.get("trust_remote_code", False),
                           fp32_head=cfg["fp32_lm_head"], rotary_dim=cfg["rotary_dim"])
        self.pad_id = load_tokenizer(model_path).pad_token_id
        mark("load_model")
        if cfg["gradient_checkpointing"]:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if cfg.get("checkpoint_layers", -1) >= 0:  # selective: only the layers the plan needs
                from cispo.models.speed import checkpoint_layers

                checkpoint_layers(model, cfg["checkpoint_layers"])
        model.config.use_cache = False
        enable_token_scoring(model)
        # sequence parallelism: consecutive ranks share each packed row (cispo.seqpar)
        self.sp_size = cfg["sequence_parallel"]  # checked by cispo.layout: packed rows only
        self.sp = None
        if self.sp_size > 1:
            from cispo import seqpar

            self.sp = seqpar.patch_model(model, seqpar.new_groups(self.sp_size))
        head = model.get_output_embeddings()
        precision = cfg.get("head_precision", "split_bf16")
        if isinstance(head, FP32LMHead):
            if precision not in HEAD_PRECISIONS:
                raise ValueError(f"learner.head_precision must be one of {HEAD_PRECISIONS}, got {precision!r}")
            head.precision = precision
            if cfg.get("head_chunk_tokens", 0):  # parallel.head_chunk_tokens
                head.chunk_tokens = cfg["head_chunk_tokens"]
        else:  # the defaults are fine without the FP32 head; anything else needs it
            for key, allowed in (("head_precision", ("split_bf16", "ieee")), ("head_chunk_tokens", (0,))):
                if cfg.get(key, allowed[0]) not in allowed:
                    raise ValueError(f"{key}={cfg[key]} applies to the FP32 head (model.fp32_lm_head=true)")
        if gpu and self.sp is None:  # varlen flash attention, fused RMSNorm (cispo.models.speed)
            from cispo.models.speed import enable_fast_paths

            enable_fast_paths(model, precision, cuda=True)
        self.micro_batch_tokens = cfg["micro_batch_tokens"]
        self.expert_parallel = cfg["expert_parallel"]
        if gpu and self.sp is None:  # compile the GPU kernels now, beside the engines' start-up
            from cispo.models.warmup import fits_for_warm_up, warm_up_learner

            dev = torch.device("cuda", torch.cuda.current_device())
            if fits_for_warm_up(model, dev):
                warm_up_learner(model, dev, self.micro_batch_tokens > 0, self.pad_id, temperature)
                mark("warm_up")
        self.engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                               config=deepspeed_config(cfg, n_micro, world_size, model))
        mark("deepspeed_initialize")

    def ready(self) -> int:
        return self.rank

    def startup_times(self) -> dict[str, float]:
        """Seconds of each part of this rank's start (import, model load, warm-up, DeepSpeed)."""
        return dict(self.init_times)

    def expert_layout(self) -> dict[str, int]:
        """How the MoE blocks are held: AutoEP layers and the experts this rank computes."""
        layers = [m for m in self.engine.module.modules() if type(m).__name__ == "AutoEPMoELayer"]
        return {"autoep_layers": len(layers),
                "local_experts": layers[0].num_local_experts if layers else 0}

    def _dummy(self, with_old: bool, with_prompts: bool = False) -> dict[str, torch.Tensor]:
        """A fully masked micro-batch: keeps this rank's collectives in step with the others."""
        dummy = TrainItem([self.pad_id, self.pad_id], [self.pad_id], [0.0], 0.0)
        batch = collate([dummy], self.pad_id, [[0.0]] if with_old else None, [1.0] if with_prompts else None)
        batch["mask"].zero_()
        return batch

    def _micro_batches(self, items: list[TrainItem], old: list[list[float]] | None,
                       prompt_tokens: list[float] | None = None):
        """(micro-batch, indices of its items) pairs, the same count on every rank."""
        if self.micro_batch_tokens > 0:
            groups = plan_micro_batches([len(it.prompt_ids) + len(it.response_ids) for it in items],
                                        self.micro_batch_tokens)
            n = self._max_over_ranks(len(groups))
        else:
            per = -(-len(items) // self.n_micro) if items else 1
            groups = [list(range(k * per, min((k + 1) * per, len(items)))) for k in range(self.n_micro)]
            groups = [g for g in groups if g]
            n = self.n_micro
        for k in range(n):
            if k >= len(groups):
                dummy = self._dummy(old is not None, prompt_tokens is not None)
                if self.sp is not None:  # the sequence-parallel layers take packed rows only
                    dummy["packed"] = pack([[self.pad_id] * 3], pad_id=self.pad_id)
                yield dummy, []
                continue
            idx = groups[k]
            batch = collate([items[i] for i in idx], self.pad_id,
                            [old[i] for i in idx] if old is not None else None,
                            [prompt_tokens[i] for i in idx] if prompt_tokens is not None else None)
            if self.micro_batch_tokens > 0:
                batch["packed"] = pack([items[i].prompt_ids + items[i].response_ids for i in idx],
                                       pad_id=self.pad_id)
            yield batch, idx

    def _max_over_ranks(self, n: int) -> int:
        import deepspeed.comm as dist

        t = torch.tensor([n], dtype=torch.long, device=self.engine.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def _token_logprobs(self, batch: dict[str, torch.Tensor], with_entropy: bool = False):
        """(log π of each next token [B, L-1] in `collate`'s layout, the entropy at the response
        positions [n] or None), through the engine's forward (see `enable_token_scoring` for
        why it must be the engine's) and the chunked FP32 head: no [T, V] logits."""
        dev = self.engine.device
        packed = batch.get("packed")
        if packed is not None and batch.get("routing") is not None:
            raise ValueError("rollout.routing_replay replays padded rows only: set parallel.micro_batch_tokens=0")
        if packed is not None and self.sp is not None:  # this rank's chunk of the row
            from cispo import seqpar

            local = seqpar.split_packed({"input_ids": packed.input_ids, "position_ids": packed.position_ids,
                                         "targets": packed.targets}, self.sp.rank, self.sp.size, self.pad_id)
            kwargs = {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in seqpar.model_inputs(local).items()}
            lp, ent = self.engine(**kwargs, targets=local["targets"].to(dev), temperature=self.temperature,
                                  with_entropy=with_entropy)
            # the whole row's log-probs on every rank of the group (T floats); the gather's
            # backward sends each rank's share of the gradient back to the rank that computed it
            T = packed.num_tokens
            lp = packed.unpack(seqpar.gather_seq(lp[0], self.sp.group)[:T][None])
            ent = packed.unpack(seqpar.gather_seq_nograd(ent, self.sp.group)[:, :T]) if ent is not None else None
        elif packed is not None:  # one row, boundaries from position_ids / cu_seqlens
            kwargs = {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in packed.model_kwargs().items()}
            lp, ent = self.engine(**kwargs, targets=packed.targets.to(dev), temperature=self.temperature,
                                  with_entropy=with_entropy)
            lp = packed.unpack(lp)
            ent = packed.unpack(ent) if ent is not None else None
        else:
            from cispo.models.routing_replay import replay

            ids = batch["input_ids"].to(dev)
            # the last position has no next token: score a pad there and drop it
            targets = torch.cat([ids[:, 1:], ids[:, :1]], dim=1)
            with replay(self.engine.module, batch.get("routing")):  # the rollout's experts, if recorded
                lp, ent = self.engine(input_ids=ids, attention_mask=batch["attention_mask"].to(dev),
                                      targets=targets, temperature=self.temperature, with_entropy=with_entropy)
            lp, ent = lp[:, :-1], (ent[:, :-1] if ent is not None else None)
        if ent is None:
            return lp, None
        # a metric: only the positions it is reported for, not the prompt or the padding
        return lp, ent[batch["mask"].to(dev) > 0]

    @torch.no_grad()
    def logprobs(self, items: list[TrainItem]) -> tuple[list[list[float]], dict[str, float]]:
        """π_old of each response token, and sums for the train/rollout agreement metrics."""
        self.engine.eval()
        s = _agreement_zero()
        out: list[list[float] | None] = [None] * len(items)
        with self._profiled("logprobs"):
            for batch, idx in self._micro_batches(items, None):
                lp, ent = self._token_logprobs(batch, with_entropy=True)
                lp = lp.cpu()
                m = batch["mask"] > 0
                _agreement_add(s, lp, batch["rollout_logprobs"], m, ent)
                for row, i in enumerate(idx):
                    out[i] = lp[row][m[row]].tolist()
        return out, {k: float(v) for k, v in s.items()}

    def profile_next(self, path: str) -> None:
        """Profile the next `logprobs` and `train_minibatch` calls (torch.profiler, CPU + CUDA);
        their tables of the heaviest ops are written to `path` (rank 0 only)."""
        self._profile_path = path if self.rank == 0 else None

    def _profiled(self, what: str):
        from contextlib import nullcontext

        path = getattr(self, "_profile_path", None)
        if not path:
            return nullcontext()
        return _profile_to(path, what)

    def train_minibatch(self, items: list[TrainItem], old: list[list[float]] | None, loss_name: str,
                        loss_kwargs: dict, global_tokens: float, global_samples: float,
                        prompt_tokens: list[float] | None = None, global_prompts: float | None = None,
                        agreement: bool = False) -> dict[str, float]:
        """One optimizer step over this rank's share of a minibatch. `old=None`: π_old is this
        forward's own log-probs, detached (on-policy, one update per rollout: the same numbers a
        separate no-grad pass would give, without that pass). `prompt_tokens` (each item's
        prompt-group token total over the minibatch) and `global_prompts` come with
        normalization="prompt". `agreement`: also the sums of the train/rollout agreement
        metrics and the entropy, from the same forward."""
        with self._profiled("train_minibatch"):
            out = self._train_minibatch(items, old, loss_name, loss_kwargs, global_tokens, global_samples,
                                        prompt_tokens, global_prompts, agreement)
        self._profile_path = None
        return out

    def _train_minibatch(self, items, old, loss_name, loss_kwargs, global_tokens, global_samples,
                         prompt_tokens, global_prompts, agreement):
        from cispo.loss import policy_loss

        self.engine.train()
        agree = _agreement_zero() if agreement else None
        # DeepSpeed averages gradients over ranks; dividing by global_tokens / W makes the
        # result the gradient of the loss normalised by the whole minibatch's token count.
        per_rank_tokens = global_tokens / self.world_size
        per_rank_samples = global_samples / self.world_size
        extra = {}
        sums = {"loss": 0.0, "tokens": 0.0, "ratio": 0.0, "clipped": 0.0, "ratio_max": 0.0,
                "ratio_min": float("inf")}
        batches = list(self._micro_batches(items, old, prompt_tokens))
        for k, (batch, _) in enumerate(batches):
            # the boundary is the last micro-batch, whatever their number this step
            self.engine.set_gradient_accumulation_boundary(k == len(batches) - 1)
            lp, ent = self._token_logprobs(batch, with_entropy=agreement)
            dev = {k: batch[k].to(lp.device, non_blocking=True) for k in ("old_logprobs", "advantages", "mask")}
            if old is None:
                dev["old_logprobs"] = lp.detach()
            if agree is not None:
                _agreement_add(agree, lp.detach(), batch["rollout_logprobs"].to(lp.device, non_blocking=True),
                               dev["mask"] > 0, ent.detach() if ent is not None else None)
            if prompt_tokens is not None:  # the same per-rank scaling as token_count
                extra = {"prompt_tokens": batch["prompt_tokens"].to(lp.device, non_blocking=True),
                         "prompt_count": global_prompts / self.world_size}
            loss, m = policy_loss(loss_name, lp, dev["old_logprobs"], dev["advantages"],
                                  dev["mask"], token_count=per_rank_tokens,
                                  sample_count=per_rank_samples, **extra, **loss_kwargs)
            # scale_wrt_gas=False: the loss is already normalised by the token count. Every rank of
            # a sequence-parallel group holds the whole row's loss: / sp_size so the group adds
            # up to it once (the log-prob gather's backward sums the group's gradients).
            self.engine.backward(loss / self.sp_size, scale_wrt_gas=False)
            self.engine.step()
            sums["loss"] += float(loss.detach()) / self.world_size
            sums["tokens"] += m["tokens"]
            sums["ratio"] += m["is_weight/mean"] * m["tokens"]
            sums["clipped"] += m["is_weight/clip_frac"] * m["tokens"]
            sums["ratio_max"] = max(sums["ratio_max"], m["is_weight/max"])
            sums["ratio_min"] = min(sums["ratio_min"], m.get("is_weight/min", float("inf")))
        norm = self.engine.get_global_grad_norm()
        sums["grad_norm"] = float(norm) if norm is not None else float("nan")
        if agree is not None:
            sums["agreement"] = {k: float(v) for k, v in agree.items()}
        return sums

    def set_grad_clip(self, value: float) -> float:
        """A new gradient-clip threshold (staged window). The ZeRO optimizers keep their own
        copy of it, so both places change."""
        self.engine._config.gradient_clipping = value
        if hasattr(self.engine.optimizer, "clip_grad"):
            self.engine.optimizer.clip_grad = value
        return self.engine.gradient_clipping()

    def state_dict(self) -> dict[str, torch.Tensor] | None:
        """Full weights (CPU, the model's own parameter names) on rank 0, None elsewhere; call on
        all ranks together."""
        if self.zero_stage == 3 and self.expert_parallel > 1:
            sd = self._gather_autoep_state_dict()
        elif self.zero_stage == 3:
            sd = self.engine._zero3_consolidated_16bit_state_dict()
        else:
            sd = self.engine.module.state_dict()
        if self.rank != 0:
            return None
        return {k: v.detach().to("cpu", copy=True) for k, v in sd.items()}

    def _gather_autoep_state_dict(self) -> dict[str, torch.Tensor]:
        """ZeRO-3 + AutoEP: DeepSpeed refuses its consolidated export (expert tensors are
        partitioned over expert groups), so gather each parameter here (`full_tensors`) and add
        the persistent buffers."""
        from deepspeed.runtime.zero import GatheredParameters

        def weights(p: torch.nn.Parameter) -> torch.Tensor:
            with GatheredParameters([p], modifier_rank=None):
                return p.data.detach().to("cpu", copy=True)

        full = self.full_tensors(weights)
        module = self.engine.module
        for owner_name, owner in module.named_modules():  # persistent buffers, as state_dict()
            for bname, b in owner.named_buffers(recurse=False):
                name = f"{owner_name}.{bname}" if owner_name else bname
                if bname in owner._non_persistent_buffers_set or type(owner).__name__ == "AutoEPMoELayer":
                    continue
                full[name] = b.detach().to("cpu", copy=True)
        return full

    def full_tensors(self, fetch) -> dict[str, torch.Tensor]:
        """Every parameter's whole tensor (CPU) in transformers' names and layout; `fetch(p)` gives
        p's tensor gathered over its ZeRO partition group, a copy the caller may keep (its weights,
        or its reduced gradient: `deepspeed.utils.safe_get_full_grad`). AutoEP's layers are mapped back: each layer's
        experts are gathered over the expert group, router.gate.weight → gate.weight, and
        (w1 = gate, w3 = up: [E_local, I, H]; w2 = down: [E_local, H, I]) →
        experts.gate_up_proj [E, 2I, H] (gate rows first, as transformers chunks it) and
        experts.down_proj [E, H, I]. Call on all ranks together (collectives)."""
        import deepspeed.comm as dist

        module = self.engine.module
        ep_layers = {name: m for name, m in module.named_modules() if type(m).__name__ == "AutoEPMoELayer"}
        full: dict[str, torch.Tensor] = {}
        for name, p in module.named_parameters():
            t = fetch(p).detach().to("cpu")
            owner, _, leaf = name.rpartition(".")
            layer_name = owner.removesuffix(".experts")
            if owner.endswith(".experts") and layer_name in ep_layers:
                group = ep_layers[layer_name].ep_group  # this rank's experts → all of them
                local = t.to(self.engine.device)
                parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group=group))]
                dist.all_gather(parts, local, group=group)
                t = torch.cat([x.to("cpu") for x in parts], dim=0)
            full[name] = t
        for prefix in ep_layers:
            full[f"{prefix}.gate.weight"] = full.pop(f"{prefix}.router.gate.weight")
            w1, w2, w3 = (full.pop(f"{prefix}.experts.{w}") for w in ("w1", "w2", "w3"))
            full[f"{prefix}.experts.gate_up_proj"] = torch.cat([w1, w3], dim=1)
            full[f"{prefix}.experts.down_proj"] = w2
        return full

    def weight_buckets(self, bucket_mb: float) -> tuple[list, dict[str, float]] | None:
        """The weights as object-store buckets, gathered one bucket at a time (cispo.weight_sync);
        (refs, bytes/seconds stats) on rank 0, None elsewhere; call on all ranks together."""
        import time

        from cispo.weight_sync import plan_buckets, sync_stats, to_object_store

        if self.zero_stage == 3 and self.expert_parallel > 1:
            # AutoEP's layers hold experts in their own layout, split over expert groups: the
            # engines need transformers' names, so rank 0 gathers the whole model once and
            # buckets that (the per-bucket gather bound does not hold with AutoEP yet)
            t0 = time.perf_counter()
            sd = self._gather_autoep_state_dict()
            if self.rank != 0:
                return None
            plan = plan_buckets([(n, tuple(t.shape), t.dtype) for n, t in sd.items()], int(bucket_mb * 2**20))
            refs = [ray.put({n: sd[n] for n, _, _ in bucket}) for bucket in plan]
            nbytes = sum(t.nbytes for t in sd.values())
            return refs, sync_stats(nbytes, time.perf_counter() - t0, len(refs))
        out = to_object_store(self.engine.module, int(bucket_mb * 2**20), self.zero_stage == 3,
                              self.rank == 0, ray.put)
        return out if self.rank == 0 else None

    # --- weight hand-over to engines on this rank's GPU (parallel.placement=colocated) -------

    def open_shared_buckets(self, bucket_mb: float, write: bool) -> tuple[list, list] | None:
        """Make this rank's flat bucket buffers once (cispo.weight_sync.SharedBuckets); returns
        (plan, handles) for the engines that read them, or None on a rank that only joins the
        gathers (`write=False`). All ranks call it together."""
        from cispo.weight_sync import SharedBuckets, param_entries, plan_buckets

        self._shared_write = write
        self._shared_bytes = int(bucket_mb * 2**20)
        plan = plan_buckets(param_entries(self.engine.module), self._shared_bytes)
        if not write:
            self._shared = None
            return None
        self._shared = SharedBuckets(plan, self.engine.device)
        return plan, self._shared.handles()

    def fill_shared_buckets(self) -> dict[str, float] | None:
        """The current weights into the buffers (every rank: ZeRO-3 gathers); stats on rank 0."""
        from cispo.weight_sync import iter_buckets, sync_stats

        if self._shared is not None:
            stats = self._shared.fill(self.engine.module, self._shared_bytes, self.zero_stage == 3)
        else:  # gathers only: the collectives need every rank
            for _ in iter_buckets(self.engine.module, self._shared_bytes, self.zero_stage == 3):
                pass
            stats = sync_stats(0, 0.0, 0)
        return stats if self.rank == 0 else None

    # --- weight hand-over by broadcast to engines on other GPUs (parallel.placement=separate) --

    def weight_group_address(self) -> tuple[str, int]:
        """Where the engines meet learner rank 0 for the weight group: (node address, free port)."""
        return ray.util.get_node_ip_address(), _free_port()

    def join_weight_group(self, backend: str, addr: str, port: int, world_size: int) -> None:
        """Rank 0 hosts the weight group as its rank 0 (the engines are 1..world_size-1); the
        other ranks are not in it: they only take part in the gathers."""
        from cispo.weight_sync import make_group

        self._wgroup = make_group(backend, addr, port, 0, world_size) if self.rank == 0 else None

    def broadcast_weights(self, bucket_mb: float) -> tuple[list, dict[str, float]] | None:
        """Every rank gathers bucket by bucket; rank 0 broadcasts each as one flat buffer.
        (plan, stats) on rank 0, None elsewhere."""
        from cispo.weight_sync import broadcast_send

        out = broadcast_send(self._wgroup, self.engine.module, int(bucket_mb * 2**20), self.zero_stage == 3,
                             self.rank == 0, self.engine.device)
        return out if self.rank == 0 else None

    def weight_plan(self, bucket_mb: float) -> list:
        from cispo.weight_sync import param_entries, plan_buckets

        return plan_buckets(param_entries(self.engine.module), int(bucket_mb * 2**20))

    # --- colocated memory: optimizer state and gradients off the GPU while engines generate ---

    def _host_state(self) -> list[torch.Tensor]:
        """The tensors `offload` moves: ZeRO-3's FP32 master partitions and AdamW's moments."""
        opt = self.engine.optimizer
        out = list(getattr(opt, "fp32_partitioned_groups_flat", []))
        inner = getattr(opt, "optimizer", None)
        for state in (inner.state.values() if inner is not None else []):
            out += [state[k] for k in ("exp_avg", "exp_avg_sq") if torch.is_tensor(state.get(k))]
        return out

    def offload(self) -> float:
        """Optimizer state, FP32 master weights and gradients to pinned host memory, and the freed
        memory back to the driver, so colocated engines can use it; the bf16 parameters stay (the
        weight sync gathers them). Seconds taken; 0 when there is nothing to move (CPU).

        The moments and master weights move here (DeepSpeed's own `offload_states` accepts only
        its FusedAdam, a JIT-built op; the learner runs torch's AdamW); gradients and the reduce
        buckets through DeepSpeed's."""
        import time

        if self.engine.device.type != "cuda" or getattr(self, "_offloaded", False):
            return 0.0
        if self.zero_stage != 3:
            raise ValueError("learner.offload_while_generating needs learner.zero_stage=3")
        from deepspeed.runtime.zero.offload_config import OffloadDeviceEnum, OffloadStateTypeEnum

        t0 = time.perf_counter()
        pinned = self.__dict__.setdefault("_pinned", {})
        tensors = self._host_state()
        for t in tensors:
            if id(t) not in pinned:
                pinned[id(t)] = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=True)
            pinned[id(t)].copy_(t.data, non_blocking=True)
        torch.cuda.synchronize()
        for t in tensors:
            t.data = pinned[id(t)]
        self.engine.offload_states(include=[OffloadStateTypeEnum.lp_grads,
                                            OffloadStateTypeEnum.contiguous_grad_buffer],
                                   device=OffloadDeviceEnum.cpu, pin_memory=True, non_blocking=False)
        torch.cuda.empty_cache()
        self._offloaded = True
        return time.perf_counter() - t0

    def reload(self) -> float:
        """Back on the GPU before training (the inverse of `offload`); seconds taken."""
        import time

        if not getattr(self, "_offloaded", False):
            return 0.0
        t0 = time.perf_counter()
        for t in self._host_state():
            t.data = t.data.to(self.engine.device, non_blocking=True)
        self.engine.reload_states(non_blocking=False)
        torch.cuda.synchronize()
        self._offloaded = False
        return time.perf_counter() - t0

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


def prompt_token_totals(items: list[TrainItem]) -> dict[int, float]:
    """Response tokens per prompt (`prompt_index`) over `items`: T_g of prompt-level averaging."""
    out: dict[int, float] = {}
    for it in items:
        out[it.prompt_index] = out.get(it.prompt_index, 0.0) + it.trained_tokens
    return out


def micro_batches_per_step(learner: Any, samples_per_minibatch: int) -> int:
    """Padded-row micro-batches per rank and optimizer step (DeepSpeed's accumulation steps)."""
    per_rank = -(-samples_per_minibatch // learner.num_workers)
    return max(1, -(-per_rank // learner.micro_batch_size))


class LearnerGroup:
    def __init__(self, cfg: Any, parallel: Any, model_cfg: Any, model_path: str,
                 samples_per_minibatch: int, temperature: float, modules: list | tuple = (),
                 scheduling: list[dict] | None = None, wait: bool = True):
        """`cfg`: the `learner` config group, `parallel`: the `parallel` group (the layout);
        `modules`: users' loss files as (module name, source, path) (`cispo.user_modules.read`),
        imported by every rank before it builds its engine. `scheduling`: Ray options per rank
        from `cispo.placement` (None: Ray places them); `wait=False` returns while the ranks
        still start (call `ready()`)."""
        wcfg = {**worker_config(cfg, parallel, model_cfg), "modules": [list(m) for m in modules]}
        self.layout: RankLayout = learner_layout(cfg, parallel)
        self.W, self.sp = self.layout.ranks, self.layout.sequence_parallel
        self.n_micro = micro_batches_per_step(cfg, samples_per_minibatch)
        port = cfg.master_port or _free_port()
        opts = {"num_cpus": cfg.num_cpus_per_worker, "num_gpus": cfg.num_gpus_per_worker,
                "runtime_env": {"env_vars": actor_env(cfg.torch_threads)}}
        self.workers = [LearnerWorker.options(**opts, **(scheduling[r] if scheduling else {})).remote(
                            r, self.W, port, model_path, wcfg, self.n_micro, temperature)
                        for r in range(self.W)]
        if wait:
            self.ready()

    def ready(self) -> None:
        """Block until every rank has built its DeepSpeed engine."""
        ray.get([w.ready.remote() for w in self.workers])

    def startup_times(self) -> dict[str, float]:
        """Rank 0's start-up parts, seconds."""
        return ray.get(self.workers[0].startup_times.remote())

    def _shards(self, items: list) -> list[list]:
        """Each data-parallel group's share, given to every rank of its sequence-parallel group."""
        return self.layout.shards(items)

    def _leaders(self, parts: list) -> list:
        """One result per sequence-parallel group (its ranks return the same items)."""
        return parts[::self.sp]

    def old_logprobs(self, items: list[TrainItem]) -> tuple[list[list[float]], dict[str, float]]:
        parts = self._leaders(ray.get([w.logprobs.remote(s) for w, s in
                                       zip(self.workers, self._shards(items), strict=True)]))
        lps = [lp for p, _ in parts for lp in p]
        return lps, agreement_metrics({k: sum(p[1][k] for p in parts) for k in parts[0][1]})

    def train_minibatch(self, items: list[TrainItem], old: list[list[float]] | None, loss_name: str,
                        loss_kwargs: dict, agreement: bool = False) -> dict[str, float]:
        """One optimizer step. `old=None`: π_old from the update's own forward (see
        LearnerWorker.train_minibatch); `agreement`: the train/rollout agreement metrics too."""
        tokens = float(sum(it.trained_tokens for it in items))
        shards = self._shards(items)
        olds = self._shards(old) if old is not None else [None] * self.W
        per_item, n_prompts = [None] * len(shards), None
        if loss_kwargs.get("normalization") == "prompt":  # each item's T_g, and the prompt count
            per_prompt = prompt_token_totals(items)
            per_item = self._shards([per_prompt[it.prompt_index] for it in items])
            n_prompts = float(sum(t > 0 for t in per_prompt.values()))  # as cispo.loss counts P
        parts = self._leaders(ray.get([
            w.train_minibatch.remote(s, o, loss_name, loss_kwargs, tokens, float(len(items)), pt, n_prompts,
                                     agreement)
            for w, s, o, pt in zip(self.workers, shards, olds, per_item, strict=True)]))
        t = max(sum(p["tokens"] for p in parts), 1.0)
        out = {"loss/policy": sum(p["loss"] for p in parts),
               "is_weight/mean": sum(p["ratio"] for p in parts) / t,
               "is_weight/clip_frac": sum(p["clipped"] for p in parts) / t,
               "is_weight/max": max(p["ratio_max"] for p in parts),
               "is_weight/min": min(p["ratio_min"] for p in parts),  # inf: no tokens
               "grad/norm": parts[0]["grad_norm"]}
        if agreement:
            sums = [p["agreement"] for p in parts]
            out.update(agreement_metrics({k: sum(x[k] for x in sums) for k in sums[0]}))
        return out

    def profile_next(self, path: str) -> None:
        ray.get([w.profile_next.remote(path) for w in self.workers])

    def set_grad_clip(self, value: float) -> list[float]:
        return ray.get([w.set_grad_clip.remote(value) for w in self.workers])

    def expert_layout(self) -> list[dict[str, int]]:
        return ray.get([w.expert_layout.remote() for w in self.workers])

    def state_dict_ref(self) -> ray.ObjectRef:
        """An object-store reference to the full weights (gathered on rank 0)."""
        refs = [w.state_dict.remote() for w in self.workers]
        ray.wait(refs, num_returns=len(refs))
        return refs[0]

    def weight_buckets(self, bucket_mb: float) -> tuple[list[ray.ObjectRef], dict[str, float]]:
        """(object-store refs of the weight buckets, sync stats) from rank 0."""
        return ray.get([w.weight_buckets.remote(bucket_mb) for w in self.workers])[0]

    def open_shared_buckets(self, bucket_mb: float, writers: set[int]) -> list[tuple[list, list] | None]:
        """Each rank in `writers` makes its bucket buffers; (plan, handles) per rank (None for
        the others)."""
        return ray.get([w.open_shared_buckets.remote(bucket_mb, r in writers)
                        for r, w in enumerate(self.workers)])

    def fill_shared_buckets(self) -> dict[str, float]:
        return ray.get([w.fill_shared_buckets.remote() for w in self.workers])[0]

    def weight_group_address(self) -> tuple[str, int]:
        return ray.get(self.workers[0].weight_group_address.remote())

    def join_weight_group(self, backend: str, addr: str, port: int, world_size: int) -> list:
        """Ray references: wait on them together with the engines' joins."""
        return [w.join_weight_group.remote(backend, addr, port, world_size) for w in self.workers]

    def broadcast_weights(self, bucket_mb: float) -> list:
        """Ray references (every rank gathers; rank 0's result is (plan, stats))."""
        return [w.broadcast_weights.remote(bucket_mb) for w in self.workers]

    def weight_plan(self, bucket_mb: float) -> list:
        return ray.get(self.workers[0].weight_plan.remote(bucket_mb))

    def offload(self) -> float:
        return max(ray.get([w.offload.remote() for w in self.workers]))

    def reload(self) -> float:
        return max(ray.get([w.reload.remote() for w in self.workers]))

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


def _agreement_zero() -> dict:
    return dict.fromkeys(("n", "x", "y", "xx", "yy", "xy", "absdiff", "entropy"), 0.0)


def _agreement_add(s: dict, lp: torch.Tensor, rollout_lp: torch.Tensor, mask: torch.Tensor,
                   entropy: torch.Tensor | None) -> None:
    """Add one micro-batch's sums for the train/rollout agreement metrics (float64; on the
    tensors' device: read once at the end, not once per micro-batch)."""
    x, y = lp[mask].double(), rollout_lp[mask].double()
    s["n"] = s["n"] + mask.sum()
    s["x"] = s["x"] + x.sum()
    s["y"] = s["y"] + y.sum()
    s["xx"] = s["xx"] + (x * x).sum()
    s["yy"] = s["yy"] + (y * y).sum()
    s["xy"] = s["xy"] + (x * y).sum()
    s["absdiff"] = s["absdiff"] + (x - y).abs().sum()
    if entropy is not None:
        s["entropy"] = s["entropy"] + entropy.double().sum()


def agreement_metrics(s: dict[str, float]) -> dict[str, float]:
    """Train/rollout log-prob agreement over all ranks' sums: Pearson, mean |diff|, entropy."""
    n = max(s["n"], 1.0)
    cov = s["xy"] / n - (s["x"] / n) * (s["y"] / n)
    vx = s["xx"] / n - (s["x"] / n) ** 2
    vy = s["yy"] / n - (s["y"] / n) ** 2
    pearson = cov / (vx * vy) ** 0.5 if vx > 0 and vy > 0 else float("nan")
    out = {"logprob/train_rollout_pearson": pearson,
           "logprob/train_rollout_abs_diff": s["absdiff"] / n}
    if s["entropy"]:
        out["logprob/entropy_mean"] = s["entropy"] / n  # of the policy at sampled positions
    return out


def _profile_to(path: str, what: str):
    """torch.profiler around one learner call; appends its op table to `path`."""
    from contextlib import contextmanager

    @contextmanager
    def run():
        import time

        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        t0 = time.perf_counter()
        with profile(activities=acts, record_shapes=False) as prof:
            yield
            if torch.cuda.is_available():
                torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        with open(path, "a") as f:
            f.write(f"== {what}: {wall * 1e3:.1f} ms wall (profiled)\n")
            f.write(prof.key_averages().table(sort_by=key, row_limit=40, max_name_column_width=60))
            f.write("\n")
    return run()
