"""The DeepSpeed config the GPU benches (bench/learner.py, bench/seqpar.py) train under: ZeRO-3 with
communication overlap, bf16, torch's AdamW with M1's betas and eps, and AutoEP when asked.

A bench setting, not the learner's (cispo.learner.deepspeed_config builds that from the config
keys): one micro-batch per step, a tiny learning rate (the weights barely move while timed).
The AutoEP block is the learner's own (`cispo.learner.autoep_config`, what
`parallel.expert_parallel` turns on); `autoep` 1 keeps AutoEP's layers with all experts local,
which the learner's `parallel.expert_parallel=1` (off) does not.
Given the model, the ZeRO-3 bucket/prefetch sizes come from its layer size and the plan's
prefetch depth (`cispo.models.speed.zero3_tuning`), as the learner's do, and AdamW runs as torch's
fused (one kernel per parameter group instead of a dozen elementwise passes)."""

from cispo.learner import autoep_config


def zero3_bench_config(autoep: int, model=None, prefetch_layers: int = 2, world_size: int | None = None,
                       grouped_mm_backend: str | None = None) -> dict:
    zero = {"stage": 3, "overlap_comm": True}
    params = {"lr": 1e-6, "betas": [0.9, 0.95], "eps": 1e-15, "torch_adam": True}
    if model is not None:
        import torch.distributed as dist

        from cispo.models.speed import zero3_tuning

        ws = world_size or (dist.get_world_size() if dist.is_initialized() else 1)
        zero.update(zero3_tuning(model, prefetch_layers, ws))
        params["fused"] = True
    ds = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
          "bf16": {"enabled": True}, "gradient_clipping": 1.0, "zero_optimization": zero,
          "optimizer": {"type": "AdamW", "params": params},
          "steps_per_print": 10**9}
    if autoep:
        ds["expert_parallel"] = autoep_config(autoep)
        if grouped_mm_backend:
            from cispo.models.speed import autoep_grouped_mm

            ds["expert_parallel"].update(autoep_grouped_mm(grouped_mm_backend))
    return ds
