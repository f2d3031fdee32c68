"""The CUDA-graph engine (`rollout.engine=graph`): static slot pool, captured decode steps,
continuous batching.

Memory, allocated once (`SlotPool`, sized by `max_slots` and the memory budget):
  - a pool of slots, one per sequence in flight, plus one dummy slot (index `slots`) that the
    padded rows of a batch-size bucket point at;
  - per slot the lightning layers' running state in FP32, [slots, lightning layers, H, D, D]
    (as M1 and vLLM keep it), and the softmax layers' K/V in per-slot buffers
    [slots, max_len, kv_heads, D]: a slot's keys are contiguous, so the decode kernel reads them
    with no block table, and the hybrid model has one softmax layer in eight, so sizing each slot
    for the longest sequence costs little (a paged cache would pay off for long windows on dense
    models; not done here);
  - per slot its next token, position, step, finish code, repetition run, sampling key, and its
    output row (tokens, log-probs, routing).
  Budget: at most `gpu_memory_fraction` of the device's memory for the engine as a whole
  (weights included) and never more than is free; `memory` reports what each part takes.

A call (`generate`): the P·G samples wait in a queue; whenever slots are free the next samples
are admitted: their prompts (all but the last token) are prefilled eagerly, packed, into a small
prefix pool (`StaticModel.prefill`: fla's chunked kernel on GPU), and each of a prompt's G
samples gets a copy of that prefix's state and K/V in its slot (prefix sharing by slot copies);
the prompt's last token is the sample's first decode input. Every step decodes one token for
all live slots: `StaticModel.decode` over the rows (slot indices), padded to a batch-size
bucket, replayed from a CUDA graph captured once per bucket. The step ends in one kernel that
samples (the project's counter-based noise), scores, writes the output, applies the stop rules
and advances the slot, so the host only reads back, one step late, each slot's (step, code)
pair: finished slots are copied to the results and refilled at once from the queue, and the
batch stays full to the end of the rollout.

CPU: the same code runs eagerly with torch ops (no graphs); `tests/test_engine_graph.py` checks
it against the `hf` engine and the learner.
"""

from __future__ import annotations

import collections
import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from cispo.models.build import load_model, load_tokenizer
from rollout.engines import register_engine
from rollout.fused_sampling import IDLE, MAX_STOP_IDS, RUNNING, vocab_hashes
from rollout.sampler import sample_keys
from rollout.static_model import StaticModel
from rollout.types import Sample, SamplingParams

log = logging.getLogger(__name__)
REASONS = {0: "length", 1: "stop", 2: "repetition"}
BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512,
           640, 768, 896, 1024, 1280, 1536, 1792, 2048)
RESERVE_BYTES = 1 << 30  # left free on the device beside the pool (allocator slack, other kernels)


def bucket(n: int) -> int:
    """The captured batch size that serves n live rows."""
    for b in BUCKETS:
        if b >= n:
            return b
    return -(-n // 256) * 256


@dataclass
class SlotPool:
    slots: int  # real slots; index `slots` is the dummy
    max_len: int  # positions per slot (longest prompt + max_new_tokens)
    max_new: int  # output columns per slot (plus one scratch column)
    tok: torch.Tensor  # [S+1] next input token
    pos: torch.Tensor  # [S+1] its position
    info: torch.Tensor  # [2, S+1]: tokens generated so far, code (RUNNING, a finish reason, IDLE)
    run: torch.Tensor  # [S+1] trailing tokens with p > repetition threshold
    key: torch.Tensor  # [S+1] the sample's noise key
    out_tok: torch.Tensor  # [S+1, max_new+1] int32
    out_lp: torch.Tensor  # [S+1, max_new+1] float32
    out_route: torch.Tensor | None  # [S+1, max_new+1, moe layers, k] int16
    state: torch.Tensor  # [S+1, lightning layers, H, D, D] float32
    k_cache: list  # per softmax layer [S+1, max_len, kv_heads, D]
    v_cache: list
    fparams: torch.Tensor  # [2] float32: temperature, log(repetition threshold)
    iparams: torch.Tensor  # [3] int64: repetition window, max_new_tokens, stop ids in use
    stop_ids: torch.Tensor  # [MAX_STOP_IDS] int64

    def nbytes(self) -> dict[str, int]:
        def size(*ts):
            return sum(t.numel() * t.element_size() for t in ts if t is not None)

        return {"lightning_state": size(self.state), "kv_cache": size(*self.k_cache, *self.v_cache),
                "outputs": size(self.out_tok, self.out_lp, self.out_route),
                "slot_scalars": size(self.tok, self.pos, self.info, self.run, self.key)}


@dataclass
class PrefixPool:
    entries: int
    max_len: int
    state: torch.Tensor  # [E, lightning layers, H, D, D]
    k: list  # per softmax layer [E, max_len, kv_heads, D]
    v: list


MAX_PREFIX_ENTRIES = 64  # prompts prefilled and waiting to be copied into slots, at most


def prefix_entries(slots: int, group_size: int) -> int:
    """Prefix-pool entries: enough for every prompt that one full refill of the slots spans."""
    return max(2, min(MAX_PREFIX_ENTRIES, -(-slots // max(group_size, 1)) + 1))


def _slot_bytes(shapes, max_len: int, max_new: int, elt: int, routing: bool) -> int:
    s = shapes
    state = s.lin_layers * s.lin_heads * s.lin_dim ** 2 * 4
    kv = s.kv_layers * 2 * max_len * s.kv_heads * s.head_dim * elt
    out = (max_new + 1) * (8 + (2 * s.moe_layers * s.top_k if routing else 0))
    return state + kv + out + 5 * 8


def _prefix_bytes(shapes, max_len: int, elt: int) -> int:
    s = shapes
    return s.lin_layers * s.lin_heads * s.lin_dim ** 2 * 4 + s.kv_layers * 2 * max_len * s.kv_heads * s.head_dim * elt


def _workspace_bytes(static, rows: int, prefill_tokens: int) -> int:
    """A generous estimate of the decode step's activations at `rows` (the logits in float32, a
    processed copy and top-p's sort buffers, and a few hidden-wide tensors) and of a prefill."""
    s, elt = static.shapes, static.dtype.itemsize
    wide = max(s.hidden, 4 * s.lin_heads * s.lin_dim, (s.heads + 2 * s.kv_heads) * s.head_dim,
               max((L.experts_gu.shape[1] if L.experts_gu is not None else 0) * max(L.top_k, 1)
                   for L in static.layers),
               max((L.w_gu.shape[0] if L.w_gu is not None else 0) for L in static.layers))
    decode = rows * (4 * s.vocab * 4 + 12 * wide * elt)
    prefill = prefill_tokens * 12 * wide * elt + prefill_tokens * s.lin_heads * s.lin_dim * 4 * 2
    return decode + prefill


def _alloc_pool(static, slots: int, max_len: int, max_new: int, routing: bool, device) -> SlotPool:
    s, S1 = static.shapes, slots + 1
    long = dict(dtype=torch.long, device=device)
    info = torch.zeros((2, S1), **long)
    info[1] = IDLE
    kv = [torch.zeros((S1, max_len, s.kv_heads, s.head_dim), dtype=static.dtype, device=device)
          for _ in range(2 * s.kv_layers)]
    state_shape = (S1, s.lin_layers, s.lin_heads, s.lin_dim, s.lin_dim) if s.lin_layers else (S1, 0, 1, 1, 1)
    return SlotPool(
        slots=slots, max_len=max_len, max_new=max_new,
        tok=torch.zeros(S1, **long), pos=torch.zeros(S1, **long), info=info, run=torch.zeros(S1, **long),
        key=torch.zeros(S1, **long),
        out_tok=torch.zeros((S1, max_new + 1), dtype=torch.int32, device=device),
        out_lp=torch.zeros((S1, max_new + 1), dtype=torch.float32, device=device),
        out_route=(torch.zeros((S1, max_new + 1, s.moe_layers, s.top_k), dtype=torch.int16, device=device)
                   if routing and s.moe_layers else None),
        state=torch.zeros(state_shape, dtype=torch.float32, device=device),
        k_cache=kv[:s.kv_layers], v_cache=kv[s.kv_layers:],
        fparams=torch.zeros(2, dtype=torch.float32, device=device), iparams=torch.zeros(3, **long),
        stop_ids=torch.full((MAX_STOP_IDS,), -1, **long))


@register_engine("graph")
class GraphEngine:
    def __init__(self, model_path: str, dtype: str = "float32", device: str = "cpu",
                 trust_remote_code: bool = False, model_options: dict | None = None, *,
                 max_slots: int = 256, prefill_tokens: int = 8192, gpu_memory_fraction: float = 0.5,
                 cuda_graphs: bool = True, record_routing: bool = False, stop_token_ids=(),
                 kernels: str | None = None, max_new_tokens: int = 0, max_prompts_per_batch: int = 0):
        """`max_slots`: sequences in flight at most (the pool may get fewer if the memory budget
        is smaller); `prefill_tokens`: tokens per packed prefill forward; `gpu_memory_fraction`:
        the engine's whole share of the device (weights, pool, activations); `cuda_graphs`:
        capture decode steps (CUDA only); `kernels`: None (Triton on CUDA, torch on CPU),
        "torch" or "triton"; `max_new_tokens`: the window the pool is sized for at least (the
        run's `rollout.max_new_tokens`: a shorter warm-up call then does not size it too small).
        `max_prompts_per_batch` is accepted for the `hf` engine's settings and not needed here
        (continuous batching bounds the batch by the slots)."""
        self.device = torch.device(device)
        if self.device.type == "cuda":
            if self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
            torch.cuda.set_device(self.device)
        self.tokenizer = load_tokenizer(model_path, trust_remote_code)
        self.model = load_model(model_path, dtype, trust_remote_code, **(model_options or {})).to(self.device).eval()
        self.model.requires_grad_(False)
        self.static = StaticModel(self.model, kernels)
        self.eos_id = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else -1
        self.stop_ids = [self.eos_id] + [int(t) for t in stop_token_ids if int(t) != self.eos_id]
        if len(self.stop_ids) > MAX_STOP_IDS:
            raise ValueError(f"at most {MAX_STOP_IDS} stop tokens, got {len(self.stop_ids)}")
        self.max_slots, self.prefill_tokens = int(max_slots), int(prefill_tokens)
        self.min_window = int(max_new_tokens)
        if self.max_slots < 1 or self.prefill_tokens < 1:
            raise ValueError("max_slots and prefill_tokens must be >= 1")
        if not 0 < gpu_memory_fraction <= 1:
            raise ValueError(f"gpu_memory_fraction must be in (0, 1], got {gpu_memory_fraction}")
        self.memory_fraction = gpu_memory_fraction
        self.record_routing = record_routing and self.static.shapes.moe_layers > 0
        if record_routing and not self.static.shapes.moe_layers:
            raise ValueError("routing replay: the model has no MoE layers")
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        if self.static.shapes.moe_layers and not self.static.grouped_mm_ok and self.device.type == "cuda":
            log.warning("torch grouped GEMM does not run %s on %s: the experts use a masked product per "
                        "expert (E times the arithmetic)", self.static.dtype, self.device)
        self.vocab_hash = vocab_hashes(self.static.shapes.vocab, self.device)
        self.pool: SlotPool | None = None
        self.prefix: PrefixPool | None = None
        self._geometry: tuple | None = None  # (max_len, max_new) of the pool, kept across sleep
        self._graphs: dict = {}
        self._warm: set = set()  # graph keys whose kernels ran once in this process
        self._graph_pool = None
        self._rows: torch.Tensor | None = None
        self._asleep = False
        self.memory: dict = {"weights_bytes": self.static.weight_bytes()}
        self.stats = {"captures": 0, "capture_s": 0.0, "steps": 0, "prefill_tokens": 0, "prefills": 0,
                      "rows_sum": 0, "padded_rows_sum": 0}

    # -- weights -----------------------------------------------------------------------------
    def load_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = True) -> None:
        """Whole weights (strict) or one bucket (strict=False), copied into the static weights:
        captured graphs keep working with the new values."""
        with torch.no_grad():
            missing, unexpected = self.model.load_state_dict(state_dict, strict=False)
        tied = {"lm_head.weight"} if self.model.config.tie_word_embeddings else set()
        if (strict and set(missing) - tied) or unexpected:
            raise RuntimeError(f"weight sync mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
        if self.static.refresh(state_dict.keys()):
            self._graphs.clear()  # the FP32 head's piece count changed: other shapes, capture again

    def check_complete(self, names: set[str]) -> None:
        tied = {"lm_head.weight"} if self.model.config.tie_word_embeddings else set()
        missing = sorted({n for n, _ in self.model.named_parameters()} - set(names) - tied)
        if missing:
            raise RuntimeError(f"weight sync incomplete: {len(missing)} parameters missing, e.g. {missing[:5]}")

    # -- memory ------------------------------------------------------------------------------
    def sleep(self) -> None:
        """Give the slot pool, the prefix pool and the captured graphs back to the device (a
        colocated learner trains meanwhile); weights stay. `wake` takes the pool again; graphs
        are captured again on first use (`stats['capture_s']`)."""
        self._release()
        self._asleep = True

    def wake(self) -> None:
        self._asleep = False
        if self._geometry is not None and self.pool is None:
            self._ensure_pool(*self._geometry)

    def _release(self) -> None:
        self._graphs.clear()
        self._graph_pool = None
        self.pool = self.prefix = self._rows = None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()

    def _ensure_pool(self, max_len: int, max_new: int) -> None:
        if self.pool is not None and self.pool.max_len >= max_len and self.pool.max_new >= max_new:
            return
        if self.pool is not None:  # a longer window than before: grow (round up, to grow rarely)
            max_len, max_new = max(max_len, self.pool.max_len), max(max_new, self.pool.max_new)
        max_len = -(-max_len // 64) * 64
        self._release()
        s, elt = self.static.shapes, self.static.dtype.itemsize
        per_slot = _slot_bytes(s, max_len, max_new, elt, self.record_routing)
        slots = self.max_slots
        budget = None
        if self.device.type == "cuda":
            total = torch.cuda.get_device_properties(self.device).total_memory
            free, _ = torch.cuda.mem_get_info(self.device)
            budget = min(self.memory_fraction * total - self.memory["weights_bytes"], free - RESERVE_BYTES)
            fixed = _workspace_bytes(self.static, bucket(slots), self.prefill_tokens) + \
                MAX_PREFIX_ENTRIES * _prefix_bytes(s, max_len, elt)
            fit = int((budget - fixed) // per_slot)
            if fit < 1:
                raise RuntimeError(
                    f"graph engine: no room for one sequence of {max_len} positions "
                    f"({per_slot / 2**20:.1f} MiB a slot) in the budget of {budget / 2**30:.2f} GiB "
                    f"(rollout.gpu_memory_fraction={self.memory_fraction} of {total / 2**30:.0f} GiB, "
                    f"weights {self.memory['weights_bytes'] / 2**30:.2f} GiB, {free / 2**30:.1f} GiB free): "
                    "raise rollout.gpu_memory_fraction or shorten the window")
            if fit < slots:
                log.warning("graph engine: memory budget holds %d of the %d slots asked for", fit, slots)
            slots = min(slots, fit)
        self.pool = _alloc_pool(self.static, slots, max_len, max_new, self.record_routing, self.device)
        self.static.ensure_rope(max_len + 1)  # graphs read this table: allocated before any capture
        self._rows = torch.full((bucket(slots),), slots, dtype=torch.long, device=self.device)
        self._geometry = (max_len, max_new)
        if self.device.type == "cuda":
            self._graph_pool = torch.cuda.graph_pool_handle()
        parts = self.pool.nbytes()
        self.memory.update({"slots": slots, "max_len": max_len, "max_new": max_new,
                            "budget_bytes": budget, "per_slot_bytes": per_slot, **{f"{k}_bytes": v for k, v in parts.items()}})
        log.info("graph engine pool: %d slots x %d positions: state %.2f GiB, KV %.2f GiB, outputs %.2f GiB "
                 "(weights %.2f GiB, budget %s)", slots, max_len, parts["lightning_state"] / 2**30,
                 parts["kv_cache"] / 2**30, parts["outputs"] / 2**30, self.memory["weights_bytes"] / 2**30,
                 "-" if budget is None else f"{budget / 2**30:.2f} GiB")

    def _ensure_prefix(self, entries: int, max_len: int) -> None:
        p = self.prefix
        if p is not None and p.entries >= entries and p.max_len >= max_len:
            return
        s, dev = self.static.shapes, self.device
        entries = max(entries, p.entries if p else 0)
        max_len = -(-max(max_len, p.max_len if p else 1) // 64) * 64
        self.prefix = None
        state_shape = (entries, s.lin_layers, s.lin_heads, s.lin_dim, s.lin_dim) if s.lin_layers else (entries, 0, 1, 1, 1)
        kv = [torch.zeros((entries, max_len, s.kv_heads, s.head_dim), dtype=self.static.dtype, device=dev)
              for _ in range(2 * s.kv_layers)]
        self.prefix = PrefixPool(entries, max_len, torch.zeros(state_shape, dtype=torch.float32, device=dev),
                                 kv[:s.kv_layers], kv[s.kv_layers:])
        self.memory["prefix_bytes"] = sum(t.numel() * t.element_size() for t in [self.prefix.state, *kv])

    # -- generation --------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: list[list[int]], group_size: int, params: SamplingParams,
                 first_index: int = 0) -> list[Sample]:
        """G samples per prompt, grouped by prompt (sample j of prompt i at i·G + j); `first_index`
        is the global index of prompts[0] (it names the samples' noise streams)."""
        if self._asleep:
            raise RuntimeError("the graph engine is asleep: call wake() before generate()")
        if not prompts:
            return []
        if min(len(p) for p in prompts) == 0:
            raise ValueError("empty prompt")
        if params.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        G, T = group_size, params.max_new_tokens
        window = max(T, self.min_window)
        self._ensure_pool(max(len(p) for p in prompts) + window, window)
        pool, dev = self.pool, self.device
        self._set_params(params)
        n = len(prompts) * G
        idx = torch.arange(n)
        keys = sample_keys(params.seed, first_index + idx // G, idx % G).tolist()
        res_tok = torch.zeros((n, T), dtype=torch.int32, device=dev)
        res_lp = torch.zeros((n, T), dtype=torch.float32, device=dev)
        res_route = (torch.zeros((n, T, *pool.out_route.shape[2:]), dtype=torch.int16, device=dev)
                     if pool.out_route is not None else None)
        lengths, codes = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
        done = np.zeros(n, dtype=bool)
        call = _Call(prompts, G, keys, collections.deque(range(n)), [G] * len(prompts), {}, {})
        free = list(range(pool.slots - 1, -1, -1))
        slot_sample = np.full(pool.slots + 1, -1, dtype=np.int64)
        live: set[int] = set()
        # prefix pool: prompts whose samples are being placed (at most one partly placed at a time)
        self._ensure_prefix(min(len(prompts), prefix_entries(pool.slots, G)), max(len(p) for p in prompts))
        entries_free = list(range(self.prefix.entries - 1, -1, -1))
        inflight: collections.deque = collections.deque()
        rows_np = np.zeros(0, dtype=np.int64)
        rows_changed = True
        sampling = (params.temperature, params.top_k, params.top_p)
        n_done = 0
        while n_done < n:
            if free and call.queue:
                entries_free = self._admit(call, free, live, slot_sample, entries_free)
                rows_changed = True
            if not live and not inflight:
                raise RuntimeError(f"graph engine: {len(call.queue)} samples wait and none runs")
            if live:
                if rows_changed:
                    rows_np = np.array(sorted(live), dtype=np.int64)
                    nb = bucket(len(rows_np))
                    padded = np.full(nb, pool.slots, dtype=np.int64)
                    padded[:len(rows_np)] = rows_np
                    self._rows[:nb].copy_(_to_device(padded, dev))
                    rows_changed = False
                self._step(nb, sampling)
                self.stats["steps"] += 1
                self.stats["rows_sum"] += len(rows_np)
                self.stats["padded_rows_sum"] += nb
                inflight.append(self._status(rows_np, slot_sample[rows_np]))
            if inflight and (len(inflight) > 1 or not live):
                finished = self._finished(inflight.popleft(), done, lengths, codes)
                if finished:
                    slots = [s for s, _ in finished]
                    samples = [i for _, i in finished]
                    s_t, i_t = _to_device(slots, dev), _to_device(samples, dev)
                    res_tok.index_copy_(0, i_t, pool.out_tok.index_select(0, s_t)[:, :T])
                    res_lp.index_copy_(0, i_t, pool.out_lp.index_select(0, s_t)[:, :T])
                    if res_route is not None:
                        res_route.index_copy_(0, i_t, pool.out_route.index_select(0, s_t)[:, :T])
                    for s in slots:
                        live.discard(s)
                        slot_sample[s] = -1
                        free.append(s)
                    n_done += len(finished)
                    rows_changed = True
        toks, lps = res_tok.cpu(), res_lp.cpu()
        routes = res_route.cpu() if res_route is not None else None
        out = []
        for i in range(n):
            p, m = i // G, int(lengths[i])
            s = Sample(first_index + p, list(prompts[p]), toks[i, :m].tolist(), lps[i, :m].tolist(),
                       REASONS[int(codes[i])])
            if routes is not None:
                s.routing = torch.cat([call.prefix_routing[p], routes[i, :m]])
            out.append(s)
        return out

    def _set_params(self, params: SamplingParams) -> None:
        pool = self.pool
        log_t = math.log(params.repetition_threshold) if params.repetition_threshold > 0 else float("-inf")
        pool.fparams.copy_(torch.tensor([params.temperature, log_t], dtype=torch.float32))
        pool.iparams.copy_(torch.tensor([params.repetition_window, params.max_new_tokens, len(self.stop_ids)]))
        stop = self.stop_ids + [-1] * (MAX_STOP_IDS - len(self.stop_ids))
        pool.stop_ids.copy_(torch.tensor(stop, dtype=torch.long))

    def _step(self, nb: int, sampling) -> None:
        rows = self._rows[:nb]
        if self.cuda_graphs:
            try:
                graph = self._graph(nb, sampling)
            except RuntimeError as e:  # a capture that fails must not lose the rollout
                torch.cuda.synchronize(self.device)
                self.stats["capture_error"] = str(e)[:500]
                if self.static.grouped_mm_ok and self.static.shapes.moe_layers:
                    # torch's grouped GEMM is the one op here that might not capture: try the
                    # masked expert products (graph-safe, E times the expert arithmetic) once
                    log.warning("graph engine: CUDA graph capture failed (%s); retrying with masked "
                                "expert products instead of torch's grouped GEMM", e)
                    self.static.grouped_mm_ok = False
                    self._graphs.clear()
                    self._warm.clear()
                    return self._step(nb, sampling)
                log.warning("graph engine: CUDA graph capture failed (%s); decoding eagerly from now on", e)
                self.cuda_graphs = False
            else:
                graph.replay()
                return
        self.static.decode(rows, self.pool, self.vocab_hash, sampling)

    def _graph(self, nb: int, sampling):
        temperature, top_k, top_p = sampling
        # the fused sampler reads the temperature from the pool; top-k / top-p bake it in
        key = (nb, (temperature, top_k, top_p) if (top_k or top_p < 1.0) else None, self.static.head.parts)
        graph = self._graphs.get(key)
        if graph is not None:
            return graph
        t0 = time.perf_counter()
        rows = self._rows[:nb]
        saved = rows.clone()
        rows.fill_(self.pool.slots)  # warm-up and capture touch only the (idle) dummy slot
        if key not in self._warm:  # once per process: captures after a wake() skip it
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(2):  # compiles the Triton kernels, creates cuBLAS handles, outside capture
                    self.static.decode(rows, self.pool, self.vocab_hash, sampling)
            torch.cuda.current_stream(self.device).wait_stream(side)
            self._warm.add(key)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self._graph_pool):
                self.static.decode(rows, self.pool, self.vocab_hash, sampling)
        finally:
            rows.copy_(saved)
        self._graphs[key] = graph
        self.stats["captures"] += 1
        self.stats["capture_s"] += time.perf_counter() - t0
        return graph

    def _status(self, rows_np, samples_np):
        """Each slot's (step, code) after the step just launched, read back asynchronously."""
        info = self.pool.info[:, :self.pool.slots]
        if self.device.type != "cuda":
            return None, info.clone(), rows_np, samples_np
        buf = torch.empty(info.shape, dtype=info.dtype, pin_memory=True)
        buf.copy_(info, non_blocking=True)
        ev = torch.cuda.Event()
        ev.record()
        return ev, buf, rows_np, samples_np

    @staticmethod
    def _finished(item, done, lengths, codes) -> list[tuple[int, int]]:
        """(slot, sample) pairs that finished by that step and were not seen finished before."""
        ev, buf, rows_np, samples_np = item
        if ev is not None:
            ev.synchronize()
        info = buf.numpy()
        code = info[1, rows_np]
        new = (code != RUNNING) & ~done[samples_np]
        out = []
        for s, i in zip(rows_np[new].tolist(), samples_np[new].tolist(), strict=True):
            done[i], lengths[i], codes[i] = True, info[0, s], info[1, s]
            out.append((s, i))
        return out

    def _admit(self, call, free: list, live: set, slot_sample, entries_free: list) -> list:
        """Place waiting samples in free slots: prefill the prompts they need (packed, into the
        prefix pool), then copy each prefix into its samples' slots. Returns the free entries."""
        G = call.G
        while free and call.queue:
            take = [call.queue.popleft() for _ in range(min(len(free), len(call.queue)))]
            need = list(dict.fromkeys(i // G for i in take if i // G not in call.entry))
            if need:
                if len(need) > len(entries_free):  # place only what the free entries can serve
                    ok = set(need[:len(entries_free)]) | set(call.entry)
                    back = [i for i in take if i // G not in ok]
                    take = [i for i in take if i // G in ok]
                    call.queue.extendleft(reversed(back))
                    need = need[:len(entries_free)]
                for p in need:
                    call.entry[p] = entries_free.pop()
                self._prefill(call, need)
            if not take:  # cannot happen (held entries' samples lead the queue); never spin
                break
            slots = [free.pop() for _ in take]
            ents = [call.entry[i // G] for i in take]
            self._copy_prefix(call, take, slots, ents)
            for i, s in zip(take, slots, strict=True):
                slot_sample[s] = i
                live.add(s)
                p = i // G
                call.left[p] -= 1
                if call.left[p] == 0:
                    entries_free.append(call.entry.pop(p))
        return entries_free

    def _prefill(self, call, prompts_idx: list[int]) -> None:
        """Prefill the prompts (all but their last token) in packed batches of prefill_tokens."""
        pref = self.prefix
        todo = []
        for p in prompts_idx:
            if len(call.prompts[p]) == 1:  # nothing before the first decode token: a zero state
                pref.state[call.entry[p]].zero_()
                call.prefix_routing[p] = torch.zeros((0, *self._route_shape()), dtype=torch.int16)
            else:
                todo.append(p)
        batch: list[int] = []
        for p in todo + [None]:
            n = sum(len(call.prompts[q]) - 1 for q in batch)
            if p is None or (batch and n + len(call.prompts[p]) - 1 > self.prefill_tokens):
                if batch:
                    self._prefill_batch(call, batch)
                batch = []
            if p is not None:
                batch.append(p)

    def _prefill_batch(self, call, batch: list[int]) -> None:
        pref, dev = self.prefix, self.device
        seqs = [call.prompts[p][:-1] for p in batch]
        ents = _to_device([call.entry[p] for p in batch], dev)

        def write_state(li, states):
            pref.state[ents, li] = states

        def write_kv(ki, k, v, seg, pos):
            e = ents[seg]
            pref.k[ki][e, pos] = k
            pref.v[ki][e, pos] = v

        routes = self.static.prefill(seqs, write_state, write_kv, self.record_routing)
        self.stats["prefills"] += 1
        self.stats["prefill_tokens"] += sum(len(q) for q in seqs)
        if routes is not None:
            for p, r in zip(batch, routes, strict=True):
                call.prefix_routing[p] = r

    def _route_shape(self) -> tuple[int, int]:
        return self.static.shapes.moe_layers, self.static.shapes.top_k

    def _copy_prefix(self, call, take: list[int], slots: list[int], ents: list[int]) -> None:
        """Each new sample's slot gets its prompt's prefix (state, K/V) and its scalars."""
        pool, pref, dev = self.pool, self.prefix, self.device
        s_t, e_t = _to_device(slots, dev), _to_device(ents, dev)
        if pool.state.shape[1]:
            pool.state[s_t] = pref.state[e_t]
        width = max(len(call.prompts[i // call.G]) - 1 for i in take)
        if width > 0:
            for kc, vc, pk, pv in zip(pool.k_cache, pool.v_cache, pref.k, pref.v, strict=True):
                kc[s_t, :width] = pk[e_t, :width]
                vc[s_t, :width] = pv[e_t, :width]
        vals = np.array([[call.prompts[i // call.G][-1] for i in take],
                         [len(call.prompts[i // call.G]) - 1 for i in take],
                         [call.keys[i] for i in take]], dtype=np.int64)
        v = _to_device(vals, dev)
        pool.tok[s_t] = v[0]
        pool.pos[s_t] = v[1]
        pool.key[s_t] = v[2]
        pool.run[s_t] = 0
        pool.info[0, s_t] = 0
        pool.info[1, s_t] = RUNNING


@dataclass
class _Call:
    prompts: list
    G: int
    keys: list
    queue: collections.deque  # sample indices waiting for a slot
    left: list  # per prompt: samples not yet placed
    entry: dict  # prompt → prefix entry while some of its samples wait
    prefix_routing: dict  # prompt → routing of its prefilled tokens (routing replay)


def _to_device(x, device) -> torch.Tensor:
    """A host list / array as an int64 device tensor without stalling the host (pinned copy)."""
    t = torch.as_tensor(np.asarray(x, dtype=np.int64))
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)
