"""The transformers engine: `model.generate` with sampling, for any causal LM (CPU or GPU)."""

from __future__ import annotations

import torch

from cispo.models.build import load_model, load_tokenizer
from rollout.engines import register_engine
from rollout.types import Sample, SamplingParams


@register_engine("hf")
class HFEngine:
    def __init__(self, model_path: str, dtype: str = "float32", device: str = "cpu",
                 trust_remote_code: bool = False, model_options: dict | None = None):
        self.device = torch.device(device)
        self.tokenizer = load_tokenizer(model_path, trust_remote_code)
        # model_options (fp32_head, rotary_dim): the learner's, so both compute the same model
        self.model = load_model(model_path, dtype, trust_remote_code,
                                **(model_options or {})).to(self.device).eval()
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.model.load_state_dict(state_dict, strict=False)
        # A tied LM head appears under one name only; anything else missing is a real mismatch.
        tied = {"lm_head.weight"} if self.model.config.tie_word_embeddings else set()
        if set(missing) - tied or unexpected:
            raise RuntimeError(f"weight sync mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], group_size: int, params: SamplingParams,
                 first_index: int = 0) -> list[Sample]:
        from transformers import GenerationConfig, StoppingCriteriaList

        from rollout.repetition import RepetitionStop

        rows = [p for p in prompts for _ in range(group_size)]
        width = max(len(p) for p in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for i, p in enumerate(rows):  # left padding: every prompt ends at the same column
            ids[i, width - len(p):] = torch.tensor(p)
            attn[i, width - len(p):] = 1
        gen = GenerationConfig(
            do_sample=True, max_new_tokens=params.max_new_tokens, temperature=params.temperature,
            top_p=params.top_p, top_k=params.top_k or None, pad_token_id=self.pad_id,
            eos_token_id=self.eos_id, output_scores=True, return_dict_in_generate=True,
        )
        rep = RepetitionStop(params.repetition_window, params.repetition_threshold)
        stops = StoppingCriteriaList([rep] if params.repetition_window > 0 else [])
        torch.manual_seed(params.seed)
        out = self.model.generate(input_ids=ids.to(self.device), attention_mask=attn.to(self.device),
                                  generation_config=gen, stopping_criteria=stops)
        new = out.sequences[:, width:].cpu()
        # scores: the processed logits each token was sampled from (temperature, top-k/p applied)
        steps = torch.stack(out.scores, dim=1).float().cpu()  # [B, T, V]
        lp = torch.log_softmax(steps, dim=-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
        samples = []
        for i, p in enumerate(rows):
            toks = new[i].tolist()
            n_rep = rep.stopped_at[i] - width if i in rep.stopped_at else None
            if self.eos_id in toks[:n_rep]:  # an EOS on the stopping token still counts as EOS
                n, reason = toks.index(self.eos_id) + 1, "stop"
            elif n_rep is not None:
                n, reason = n_rep, "repetition"
            else:
                n, reason = len(toks), "length"
            samples.append(Sample(first_index + i // group_size, list(p), toks[:n],
                                  lp[i, :n].tolist(), reason))
        return samples
