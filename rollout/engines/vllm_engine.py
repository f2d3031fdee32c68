"""The vLLM engine (`rollout.engine=vllm`): an adapter over vLLM's public offline API.

Optional dependency: `pip install vllm` on GPU machines. NOT verified here: vLLM cannot be
installed on this project's machines (no CUDA wheels reachable), so this adapter has never run;
its tests (tests/test_rollout_vllm.py) runs only where `import vllm` works. What it relies on,
from vLLM's documented API (v0.10.2 and later):

- `vllm.LLM(model, dtype, tensor_parallel_size, pipeline_parallel_size, seed, enable_sleep_mode,
  gpu_memory_utilization, logprobs_mode="processed_logprobs")`: log-probs of the distribution
  sampled from (after temperature / top-k / top-p), the same definition as the HF engine.
- `LLM.generate([{"prompt_token_ids": ids}], SamplingParams(n=G, temperature, top_p, top_k,
  max_tokens, seed, logprobs=0))`: G samples per prompt; `logprobs=0` returns the sampled
  token's log-prob only; `CompletionOutput.token_ids / logprobs / finish_reason`.
- `LLM.collective_rpc(fn)`: runs `fn(worker)` in every worker process; weight updates go
  through `worker.model_runner.model.load_weights([(name, tensor), ...])`, bucket by bucket.
- `LLM.sleep(level=1)` / `LLM.wake_up(tags=[...])` (our `sleep()` / `wake()`) when engine and learner share GPUs
  (`colocated=True`): weights are offloaded and the KV cache freed while the learner trains.

Differences from the HF engine, stated: sampling noise comes from vLLM's per-request seed, so a
sample does not have the HF engine's batch-independent stream; M1's repetition stop is applied
after generation from the returned log-probs (the response is cut where the run of confident
tokens reaches the window, finish reason `repetition`), so vLLM still spends the tokens after
it; routing replay is not available.
"""

from __future__ import annotations

import math

import torch

from rollout.engines import register_engine
from rollout.types import Sample, SamplingParams


@register_engine("vllm")
class VLLMEngine:
    def __init__(self, model_path: str, dtype: str = "bfloat16", device: str = "cuda",
                 trust_remote_code: bool = False, model_options: dict | None = None,
                 tensor_parallel_size: int = 1, pipeline_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.85,
                 colocated: bool = False, seed: int = 0, max_num_batched_tokens: int | None = None,
                 max_num_seqs: int | None = None):
        """`max_num_batched_tokens` / `max_num_seqs`: parallel.rollout_batched_tokens /
        parallel.rollout_concurrency (what the planner sized the engine's memory for)."""
        try:
            import vllm
        except ImportError as e:
            raise ImportError("rollout.engine=vllm needs the optional dependency vLLM "
                              "(`pip install vllm`, CUDA only); use rollout.engine=hf otherwise") from e
        if (model_options or {}).get("rotary_dim"):
            raise ValueError("rollout.engine=vllm cannot apply model.rotary_dim (M1's partial RoPE); "
                             "serve a checkpoint whose config already has it")
        self.colocated = colocated
        limits = {k: v for k, v in (("max_num_batched_tokens", max_num_batched_tokens),
                                    ("max_num_seqs", max_num_seqs)) if v}
        self.llm = vllm.LLM(**limits, model=model_path, dtype=dtype, tensor_parallel_size=tensor_parallel_size,
                            pipeline_parallel_size=pipeline_parallel_size,
                            # several devices: vLLM's Ray executor, inside the worker's placement group
                            distributed_executor_backend="ray" if tensor_parallel_size * pipeline_parallel_size > 1
                            else None,
                            trust_remote_code=trust_remote_code, seed=seed,
                            gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=colocated,
                            logprobs_mode="processed_logprobs")
        self.eos_id = self.llm.get_tokenizer().eos_token_id

    def generate(self, prompts: list[list[int]], group_size: int, params: SamplingParams,
                 first_index: int = 0) -> list[Sample]:
        from vllm import SamplingParams as VSamplingParams

        outs = self.llm.generate(
            [{"prompt_token_ids": p} for p in prompts],
            [VSamplingParams(n=group_size, temperature=params.temperature, top_p=params.top_p,
                             top_k=params.top_k if params.top_k > 0 else -1,
                             max_tokens=params.max_new_tokens, logprobs=0,
                             seed=params.seed * 1_000_003 + first_index + i)  # one stream per prompt
             for i in range(len(prompts))],
            use_tqdm=False)
        samples = []
        for i, (prompt, out) in enumerate(zip(prompts, outs, strict=True)):
            for c in sorted(out.outputs, key=lambda c: c.index):
                toks = list(c.token_ids)
                lps = [step[t].logprob for t, step in zip(toks, c.logprobs, strict=True)]
                reason = "stop" if c.finish_reason == "stop" else "length"
                toks, lps, reason = _repetition_cut(toks, lps, reason, params)
                samples.append(Sample(first_index + i, list(prompt), toks, lps, reason))
        return samples

    def load_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = True) -> None:
        """One bucket (or all) of the learner's weights into every vLLM worker. vLLM's loaders
        map HF names to its fused layouts; names it does not know raise inside vLLM."""
        items = list(state_dict.items())

        def load(worker):
            worker.model_runner.model.load_weights(weights=items)

        self.llm.collective_rpc(load)

    def check_complete(self, names: set[str]) -> None:
        if not names:
            raise RuntimeError("weight sync delivered no parameters")

    def sleep(self) -> None:
        """Colocated with the learner: free the GPU (weights offloaded, KV cache dropped);
        a no-op otherwise."""
        if self.colocated:
            self.llm.sleep(level=1)

    def wake(self) -> None:
        if self.colocated:
            self.llm.wake_up(tags=["weights"])  # load new weights before the KV cache returns
            self.llm.wake_up(tags=["kv_cache"])


def _repetition_cut(toks: list[int], lps: list[float], reason: str,
                    params: SamplingParams) -> tuple[list[int], list[float], str]:
    """M1's repetition stop applied afterwards: cut at the first token that completes a run of
    `window` tokens with p > threshold (an EOS there still counts as EOS)."""
    w, log_t, run = params.repetition_window, math.log(params.repetition_threshold), 0
    if w <= 0:
        return toks, lps, reason
    for n, lp in enumerate(lps, start=1):
        run = run + 1 if lp > log_t else 0
        if run >= w:
            if n == len(toks) and reason == "stop":
                return toks, lps, reason
            return toks[:n], lps[:n], "repetition"
    return toks, lps, reason
