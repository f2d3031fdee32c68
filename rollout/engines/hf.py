"""The transformers engine, for any causal LM (CPU or GPU), with group prefix sharing.

The G samples of a prompt share one prefill: the prompts are prefilled once (left-padded, one
row each), the cache (for MiniMax a `MiniMaxCache`: lightning KV state + softmax KV cache) is
expanded G times with `batch_repeat_interleave`, and the P·G rows decode together. Rows that
finish (EOS, length, repetition stop) leave the batch (`batch_select_indices`), so the decode
cost follows the live rows. Sampling noise is per sample (rollout.sampler), so a sample's
tokens and log-probs do not depend on what else is in the batch.

Log-probs are of the distribution sampled from: logits / temperature, then top-k, top-p.
"""

from __future__ import annotations

import math

import torch

from cispo.models.build import load_model, load_tokenizer
from rollout.engines import register_engine
from rollout.sampler import gumbel_noise, mix32, process_logits, sample, sample_keys
from rollout.turn_cache import Kept, keepable, map_cache, merge, take_row
from rollout.types import Sample, SamplingParams

LENGTH, STOP, REPETITION = 0, 1, 2
REASONS = {LENGTH: "length", STOP: "stop", REPETITION: "repetition"}


@register_engine("hf")
class HFEngine:
    def __init__(self, model_path: str, dtype: str = "float32", device: str = "cpu",
                 trust_remote_code: bool = False, model_options: dict | None = None,
                 max_prompts_per_batch: int = 0, record_routing: bool = False):
        self.device = torch.device(device)
        self.tokenizer = load_tokenizer(model_path, trust_remote_code)
        # model_options (fp32_head, rotary_dim): the learner's, so both compute the same model
        self.model = load_model(model_path, dtype, trust_remote_code,
                                **(model_options or {})).to(self.device).eval()
        self.eos_id = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else -1
        self.pad_id = self.tokenizer.pad_token_id
        self.max_prompts_per_batch = max_prompts_per_batch  # 0: all of a call's prompts at once
        self.recorder = None  # routing replay: records each token's experts (cispo.models.routing_replay)
        if record_routing:
            from cispo.models.routing_replay import RoutingRecorder

            self.recorder = RoutingRecorder(self.model)
        types = list(getattr(self.model.config, "layer_types", None) or [])
        # hybrid models (lightning + softmax layers): the first softmax layer, see `_forward`
        self.full_layer = types.index("full_attention") if "full_attention" in types and \
            len(set(types)) > 1 else None
        # multi-turn episodes: caches kept between turns (decode_turns), keyed by sample stream
        self.keep_turn_state = True  # False: prefill every turn's whole context (benchmarks)
        self._kept: dict[tuple[int, int], Kept] = {}
        self.turn_stats = dict.fromkeys(("prefilled_rows", "prefilled_tokens", "reused_rows",
                                         "reused_tokens"), 0)

    def load_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = True) -> None:
        """Whole weights (strict) or one bucket of them (strict=False: only unknown names fail)."""
        self._kept.clear()  # caches kept between turns were computed with the old weights
        missing, unexpected = self.model.load_state_dict(state_dict, strict=False)
        # A tied LM head appears under one name only; anything else missing is a real mismatch.
        tied = {"lm_head.weight"} if self.model.config.tie_word_embeddings else set()
        if (strict and set(missing) - tied) or unexpected:
            raise RuntimeError(f"weight sync mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")

    def check_complete(self, names: set[str]) -> None:
        """After a bucketed sync: every parameter arrived (a tied head counts as its embedding)."""
        tied = {"lm_head.weight"} if self.model.config.tie_word_embeddings else set()
        missing = sorted({n for n, _ in self.model.named_parameters()} - set(names) - tied)
        if missing:
            raise RuntimeError(f"weight sync incomplete: {len(missing)} parameters missing, e.g. {missing[:5]}")

    def sleep(self) -> None:
        """Release the caches kept between turns; everything else this engine allocates per
        `generate` call and frees when the call returns."""
        self._kept.clear()

    def wake(self) -> None:
        """Nothing to take back (see `sleep`)."""

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], group_size: int, params: SamplingParams,
                 first_index: int = 0) -> list[Sample]:
        """G samples per prompt, grouped by prompt; `first_index` is the global index of
        prompts[0] (it names the samples' random streams and their `prompt_index`)."""
        step = self.max_prompts_per_batch or len(prompts)
        out: list[Sample] = []
        for a in range(0, len(prompts), step):
            out += self._generate(prompts[a:a + step], group_size, params, first_index + a)
        return out

    def _generate(self, prompts: list[list[int]], G: int, params: SamplingParams,
                  first_index: int, first_sample: int = 0) -> list[Sample]:
        """Row r is sample first_sample + r % G of prompt first_index + r // G."""
        dev, P, T = self.device, len(prompts), params.max_new_tokens
        ids, attn = self._left_padded(prompts)
        if self.recorder is not None:
            self.recorder.start([len(p) for p in prompts], G, ids.shape[1])
        # 1. one prefill per prompt; positions count real tokens only (left padding)
        out = self._forward(ids, attn, (attn.cumsum(-1) - 1).clamp(min=0), None)
        if self.recorder is not None:
            self.recorder.after_forward()
        cache, logits = out.past_key_values, out.logits[:, -1]
        # 2. expand to the G samples of each prompt: row r is sample r % G of prompt r // G
        if G > 1:
            cache_rows(cache, lambda x: x.repeat_interleave(G, dim=0))
            logits, attn = logits.repeat_interleave(G, 0), attn.repeat_interleave(G, 0)
        B = P * G
        row = torch.arange(B)
        keys = sample_keys(params.seed, first_index + row // G, first_sample + row % G).to(dev)
        vocab_hash = mix32(torch.arange(logits.shape[-1], device=dev))
        toks = torch.full((B, T), self.pad_id, dtype=torch.long, device=dev)
        lps = torch.zeros((B, T), device=dev)
        lengths = torch.zeros(B, dtype=torch.long, device=dev)
        reasons = torch.zeros(B, dtype=torch.long, device=dev)
        alive = torch.arange(B, device=dev)  # original row of each live batch row
        run = torch.zeros(B, dtype=torch.long, device=dev)  # trailing tokens with p > threshold
        pos = attn.sum(-1)  # position of the next token
        log_t = math.log(params.repetition_threshold)
        # 3. batched decode; finished rows leave the batch
        for t in range(T):
            z = process_logits(logits, params.temperature, params.top_k, params.top_p)
            tok, lp = sample(z, gumbel_noise(keys[alive], t, vocab_hash))
            toks[alive, t], lps[alive, t] = tok, lp
            eos = tok == self.eos_id
            done, code = eos.clone(), torch.where(eos, STOP, LENGTH)
            if params.repetition_window > 0:
                run = torch.where(lp > log_t, run + 1, torch.zeros_like(run))
                rep = (run >= params.repetition_window) & ~eos  # an EOS still counts as EOS
                done, code = done | rep, torch.where(rep, REPETITION, code)
            if t == T - 1:
                done = torch.ones_like(done)
            lengths[alive[done]], reasons[alive[done]] = t + 1, code[done]
            if bool(done.all()):
                break
            if bool(done.any()):
                keep = (~done).nonzero().squeeze(1)
                cache_rows(cache, lambda x, keep=keep: x[keep])
                alive, tok, attn, run, pos = alive[keep], tok[keep], attn[keep], run[keep], pos[keep]
                if self.recorder is not None:
                    self.recorder.select(keep)
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
            out = self._forward(tok[:, None], attn, pos[:, None], cache)
            if self.recorder is not None:
                self.recorder.after_forward()
            logits, pos = out.logits[:, -1], pos + 1
        toks, lps, lengths, reasons = toks.cpu(), lps.float().cpu(), lengths.tolist(), reasons.tolist()
        routing = self.recorder.finish(lengths) if self.recorder is not None else None
        samples = []
        for r in range(B):
            n = lengths[r]
            s = Sample(first_index + r // G, list(prompts[r // G]), toks[r, :n].tolist(),
                       lps[r, :n].tolist(), REASONS[reasons[r]])
            if routing is not None:
                s.routing = routing[r]
            samples.append(s)
        return samples

    @torch.no_grad()
    def decode_turns(self, contexts: list[list[int]], streams: list[tuple[int, int]],
                     offsets: list[int], max_new: list[int], stop_sequences: list[list[int]],
                     params: SamplingParams) -> list[tuple[list[int], list[float], str, str]]:
        """One turn of each multi-turn episode (rollout.episodes): row r continues the token
        context `contexts[r]` (prompt and every turn so far, as ids: nothing is re-tokenised)
        until EOS ("stop"), one of `stop_sequences` ("tool"), `max_new[r]` tokens ("length") or a
        repetition stop. Row r's noise is the stream `streams[r]` = (prompt index, sample index)
        at decode steps offsets[r], offsets[r] + 1, ... (its model tokens so far), so an episode
        draws the same tokens however the turns of a batch interleave. Returns (tokens, log-probs,
        reason, the turn's text without EOS) per row.

        The episode's cache is kept between its turns (rollout.turn_cache), keyed by its stream:
        a context that extends what the kept cache has seen forwards only the new tokens (the
        last turn's final token and the observation); any other context is prefilled whole.
        `forget_turns` drops an ended episode's cache. `turn_stats` counts both kinds of rows and
        the tokens each forwarded."""
        dev, B = self.device, len(contexts)
        lengths = [len(c) for c in contexts]
        singles: list = [None] * B
        logits_rows: list = [None] * B
        extend: dict[int, list[tuple[int, Kept]]] = {}  # new-token count → (row, its kept cache)
        for r, (c, s) in enumerate(zip(contexts, streams, strict=True)):
            kept = self._kept.pop(tuple(s), None)
            n = len(kept.tokens) if kept is not None else 0
            if kept is not None and len(c) > n and c[:n] == kept.tokens:
                extend.setdefault(len(c) - n, []).append((r, kept))
        for m, group in extend.items():
            # rows with as many new tokens forward them together: their kept caches merged,
            # left-padded (a lightning state has no length, so only equal new counts batch)
            merged, attn = merge([k.cache for _, k in group], [len(k.tokens) for _, k in group])
            attn = torch.cat([attn, torch.ones((len(group), m), dtype=torch.long)], 1).to(dev)
            ids = torch.tensor([contexts[r][-m:] for r, _ in group], device=dev)
            pos = torch.tensor([len(k.tokens) for _, k in group], device=dev)[:, None] + \
                torch.arange(m, device=dev)
            out = self._forward(ids, attn, pos, merged)
            for i, (r, _) in enumerate(group):
                singles[r] = take_row(out.past_key_values, i, lengths[r])
                logits_rows[r] = out.logits[i:i + 1, -1]
            self.turn_stats["reused_rows"] += len(group)
            self.turn_stats["reused_tokens"] += m * len(group)
        fresh = [r for r in range(B) if singles[r] is None]
        if fresh:  # one left-padded prefill for the rows with nothing kept
            ids, attn = self._left_padded([contexts[r] for r in fresh])
            out = self._forward(ids, attn, (attn.cumsum(-1) - 1).clamp(min=0), None)
            self.turn_stats["prefilled_rows"] += len(fresh)
            self.turn_stats["prefilled_tokens"] += sum(lengths[r] for r in fresh)
            cache, logits = out.past_key_values, out.logits[:, -1]
        if len(fresh) < B:  # some rows come from kept caches: one batch of all, left-padded
            for i, r in enumerate(fresh):
                singles[r], logits_rows[r] = take_row(cache, i, lengths[r]), logits[i:i + 1]
            cache, attn = merge(singles, lengths)
            logits, attn = torch.cat(logits_rows), attn.to(dev)
        keep_caches = self.keep_turn_state and keepable(cache)
        keys = sample_keys(params.seed, torch.tensor([s[0] for s in streams]),
                           torch.tensor([s[1] for s in streams])).to(dev)
        offs = torch.tensor(offsets, dtype=torch.long, device=dev)
        vocab_hash = mix32(torch.arange(logits.shape[-1], device=dev))
        gen: list[list[int]] = [[] for _ in range(B)]
        lps: list[list[float]] = [[] for _ in range(B)]
        reason: list[str | None] = [None] * B
        run = [0] * B
        alive = list(range(B))
        rows = torch.arange(B, device=dev)
        pos = attn.sum(-1)
        log_t = math.log(params.repetition_threshold)
        for t in range(max(max_new)):
            z = process_logits(logits, params.temperature, params.top_k, params.top_p)
            tok, lp = sample(z, gumbel_noise(keys[rows], offs[rows] + t, vocab_hash))
            keep = []
            for j, (r, x, y) in enumerate(zip(alive, tok.tolist(), lp.tolist(), strict=True)):
                gen[r].append(x)
                lps[r].append(y)
                run[r] = run[r] + 1 if y > log_t else 0
                if x == self.eos_id:
                    reason[r] = "stop"
                elif any(len(s) and gen[r][-len(s):] == s for s in stop_sequences):
                    reason[r] = "tool"
                elif params.repetition_window > 0 and run[r] >= params.repetition_window:
                    reason[r] = "repetition"
                elif len(gen[r]) >= max_new[r]:
                    reason[r] = "length"
                else:
                    keep.append(j)
            if keep_caches:  # a finished row's cache holds its context and all but its last token
                for j, r in enumerate(alive):
                    if reason[r] is not None:
                        seen = list(contexts[r]) + gen[r][:-1]
                        self._kept[tuple(streams[r])] = Kept(seen, take_row(cache, j, len(seen)))
            if not keep:
                break
            if len(keep) < len(alive):
                k = torch.tensor(keep, device=dev)
                cache_rows(cache, lambda x, k=k: x[k])
                tok, attn, pos, rows = tok[k], attn[k], pos[k], rows[k]
                alive = [alive[j] for j in keep]
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
            out = self._forward(tok[:, None], attn, pos[:, None], cache)
            logits, pos = out.logits[:, -1], pos + 1
        return [(gen[r], lps[r], reason[r],
                 self.tokenizer.decode(gen[r][:-1] if reason[r] == "stop" else gen[r]))
                for r in range(B)]

    def _left_padded(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token rows left-padded so every sequence ends at the same column, and their attention
        mask (1 on real tokens), on the engine's device."""
        width = max(len(q) for q in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for i, q in enumerate(seqs):
            ids[i, width - len(q):] = torch.tensor(q)
            attn[i, width - len(q):] = 1
        return ids.to(self.device), attn.to(self.device)

    def forget_turns(self, streams=None) -> None:
        """Drop the kept caches of these episodes' streams (all when None): their episodes ended."""
        if streams is None:
            self._kept.clear()
        for s in streams or ():
            self._kept.pop(tuple(s), None)

    def _forward(self, ids: torch.Tensor, attn: torch.Tensor, pos: torch.Tensor, cache):
        """One cached forward, last position's logits only. For hybrid models the softmax
        layers' mask is built here: transformers (5.x) sizes a cached step's causal mask from
        layer 0's KV length, which for MiniMax is a lightning layer holding none, so with left
        padding a decode step would attend to the wrong positions. Asking for the mask at the
        first softmax layer gives the right offsets."""
        if self.full_layer is None:
            return self.model(input_ids=ids, attention_mask=attn, position_ids=pos, past_key_values=cache,
                              use_cache=True, logits_to_keep=1)
        if bool(attn.all()) and (cache is None or ids.shape[1] == 1):
            # no padding, and no cached tokens before several new ones: plain causal attention
            return self.model(input_ids=ids, position_ids=pos, past_key_values=cache, use_cache=True,
                              logits_to_keep=1)
        from transformers.masking_utils import create_causal_mask

        embeds = self.model.get_input_embeddings()(ids)
        try:
            full = create_causal_mask(config=self.model.config, inputs_embeds=embeds, attention_mask=attn,
                                      past_key_values=cache, position_ids=pos, layer_idx=self.full_layer)
        except TypeError as e:  # older transformers: no layer_idx
            raise RuntimeError("left-padded batches of a hybrid model need transformers' "
                               "create_causal_mask(layer_idx=...) (transformers >= 5.23)") from e
        # lightning layers zero the padding's q, k, v in a prefill; a decode token is never padding
        linear = attn[:, -ids.shape[1]:] if ids.shape[1] > 1 else None
        return self.model(inputs_embeds=embeds, attention_mask={"full_attention": full, "linear_attention": linear},
                          position_ids=pos, past_key_values=cache, use_cache=True, logits_to_keep=1)


def cache_rows(cache, fn) -> None:
    """Apply a batch-dim map (repeat, select) to every tensor of a transformers cache. Written out
    because `MiniMaxCache.batch_repeat_interleave` indexes past its lightning-state list when the
    last layer is a softmax layer (transformers 5.x); this touches only what the cache holds."""
    map_cache(cache, fn, fn)
