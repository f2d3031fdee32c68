"""Sequence packing and token-budget micro-batching for the learner.

Padding a micro-batch of RL responses to its longest row wastes most of the compute when lengths
spread from tens to tens of thousands of tokens. Instead, sequences are packed back to back into
one row ([1, T], no padding between them) and micro-batches are cut by a token budget:

    plan = plan_micro_batches([len(s) for s in seqs], token_budget=16384)   # [[3, 0], [1, 2], ...]
    p = pack([seqs[i] for i in plan[0]])
    p.input_ids, p.position_ids, p.cu_seqlens     # model inputs; positions restart at 0 per sequence
    lp = token_logprobs_of(model, p.input_ids, p.targets)          # [1, T], any per-position score
    rows = p.unpack(lp)                                            # [n, max_len - 1], collate's layout

Attention must not cross a boundary. transformers' softmax attention (sdpa and eager) does this
by itself when it gets `position_ids` that restart at 0 and no `attention_mask`
(`masking_utils.find_packed_sequence_indices` builds a block-diagonal causal mask). Lightning
layers need `cu_seqlens` (fla's varlen kernel on GPU; see `cispo.models.lightning` and
`cispo.models.segmented` for the CPU path). `PackedBatch.model_kwargs()` gives both.

Layout (the convention of `cispo.learner.collate`): the score at packed position t is that of
token t+1 given tokens ≤ t; `targets[t]` is token t+1 of the same sequence and `valid[t]` says
whether it exists (False at each sequence's last token and on trailing padding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [1, T] long
    position_ids: torch.Tensor  # [1, T] long, 0..len-1 per sequence (padding: continues counting)
    cu_seqlens: torch.Tensor  # [n + 1] int32 boundaries (trailing padding not included)
    targets: torch.Tensor  # [1, T] long: the next token of the same sequence, else 0
    valid: torch.Tensor  # [1, T] bool: targets[t] is a real next token
    seq_index: torch.Tensor  # [1, T] long: which sequence position t belongs to, -1 for padding
    lengths: list[int]

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[1])

    def model_kwargs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments for a transformers forward of the packed row: no attention mask and
        no cache (only then do the softmax layers detect packing from `position_ids`), and
        `cu_seq_lens_q/k` + max lengths (HF's flash-attention convention) for kernels that take
        boundaries directly."""
        cu = self.cu_seqlens
        if self.num_tokens > int(cu[-1]):  # trailing padding is one more segment of its own
            cu = torch.cat([cu, cu.new_tensor([self.num_tokens])])
        longest = int((cu[1:] - cu[:-1]).max())
        return {"input_ids": self.input_ids, "position_ids": self.position_ids,
                "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest,
                "use_cache": False}

    def unpack(self, values: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """[1, T] per-position values → [n, max_len - 1] with row i column j the value scoring
        token j+1 of sequence i (`collate`'s layout); positions beyond a sequence hold `fill`.
        Differentiable (an index gather)."""
        if values.shape[:2] != self.input_ids.shape:
            raise ValueError(f"values {tuple(values.shape)} do not match the packed row "
                             f"{tuple(self.input_ids.shape)}")
        n = len(self.lengths)
        width = max(self.lengths) - 1
        starts = self.cu_seqlens[:-1].to(torch.long)
        cols = torch.arange(width)
        src = starts[:, None] + cols[None, :]  # [n, width] packed position of (i, j)
        inside = cols[None, :] < torch.tensor(self.lengths)[:, None] - 1
        src = torch.where(inside, src, torch.zeros_like(src)).to(values.device)
        out = values[0][src.reshape(-1)].reshape(n, width, *values.shape[2:])
        keep = inside.to(values.device).reshape(n, width, *([1] * (values.dim() - 2)))
        return torch.where(keep, out, torch.full_like(out, fill))


def pack(seqs: list[list[int]], pad_to: int | None = None, pad_id: int = 0) -> PackedBatch:
    """Sequences (each ≥ 1 token) back to back in one row, optionally right-padded to `pad_to`
    tokens (padding forms its own trailing segment that no score reads)."""
    if not seqs:
        raise ValueError("pack: no sequences")
    lengths = [len(s) for s in seqs]
    if min(lengths) < 1:
        raise ValueError("pack: empty sequence")
    total = sum(lengths)
    width = total if pad_to is None else pad_to
    if width < total:
        raise ValueError(f"pack: {total} tokens do not fit pad_to={pad_to}")
    ids = torch.full((1, width), pad_id, dtype=torch.long)
    pos = torch.zeros((1, width), dtype=torch.long)
    targets = torch.zeros((1, width), dtype=torch.long)
    valid = torch.zeros((1, width), dtype=torch.bool)
    seq_index = torch.full((1, width), -1, dtype=torch.long)
    a = 0
    for i, s in enumerate(seqs):
        n = len(s)
        t = torch.as_tensor(s, dtype=torch.long)
        ids[0, a:a + n] = t
        pos[0, a:a + n] = torch.arange(n)
        targets[0, a:a + n - 1] = t[1:]
        valid[0, a:a + n - 1] = True
        seq_index[0, a:a + n] = i
        a += n
    if width > total:
        pos[0, total:] = torch.arange(width - total)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return PackedBatch(ids, pos, cu, targets, valid, seq_index, lengths)


def plan_micro_batches(lengths: list[int], token_budget: int) -> list[list[int]]:
    """Indices of the sequences grouped into micro-batches of at most `token_budget` tokens each:
    first-fit over the sequences sorted longest first (deterministic: ties keep input order).
    A sequence longer than the budget is an error, not silently split or dropped."""
    if token_budget < 1:
        raise ValueError(f"token_budget must be ≥ 1, got {token_budget}")
    too_long = [n for n in lengths if n > token_budget]
    if too_long:
        raise ValueError(f"a sequence of {max(too_long)} tokens exceeds the micro-batch token budget "
                         f"{token_budget} (parallel.micro_batch_tokens); raise the budget to at least the "
                         "longest prompt + response")
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        for b in range(len(bins)):
            if lengths[i] <= room[b]:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(token_budget - lengths[i])
    return bins
