"""The DeepSpeed config the GPU benches (bench/learner.py, bench/seqpar.py) train under: ZeRO-3 with
communication overlap, bf16, torch's AdamW with M1's betas and eps, and AutoEP when asked.

A bench setting, not the learner's (cispo.learner.deepspeed_config builds that from the config
keys): one micro-batch per step, a tiny learning rate (the weights barely move while timed).
The AutoEP block is the learner's own (`cispo.learner.autoep_config`, what
`parallel.expert_parallel` turns on); `autoep` 1 keeps AutoEP's layers with all experts local,
which the learner's `parallel.expert_parallel=1` (off) does not."""

from cispo.learner import autoep_config


def zero3_bench_config(autoep: int) -> dict:
    ds = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
          "bf16": {"enabled": True}, "gradient_clipping": 1.0,
          "zero_optimization": {"stage": 3, "overlap_comm": True},
          "optimizer": {"type": "AdamW", "params": {"lr": 1e-6, "betas": [0.9, 0.95], "eps": 1e-15,
                                                    "torch_adam": True}},
          "steps_per_print": 10**9}
    if autoep:
        ds["expert_parallel"] = autoep_config(autoep)
    return ds
