"""Token sampling that does not depend on how samples are batched.

Each sample draws its randomness from a counter-based hash of (seed, prompt index, sample index,
decode step, vocabulary id), not from a shared torch generator: the same sample gets the same
noise whether it is decoded alone, in a group that shares one prefill, or in a batch of 256, on
CPU or GPU. A token is drawn with the Gumbel-max trick, argmax(z + g) with g = −log(−log u),
which samples exactly from softmax(z).

`process_logits` is the distribution the engine samples from (temperature, then top-k, then
top-p, as transformers orders them); the returned log-probs are of that distribution.
"""

from __future__ import annotations

import torch

M32 = 0xFFFFFFFF
MIX_MUL = 0x45D9F3B  # < 2^31: the product of a 32-bit value and it fits in int64 without overflow


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xorshift-multiply rounds) of int64 tensors holding values < 2^32."""
    x = ((x ^ (x >> 16)) * MIX_MUL) & M32
    x = ((x ^ (x >> 16)) * MIX_MUL) & M32
    return x ^ (x >> 16)


def sample_keys(seed: int, prompt_index: torch.Tensor, sample_index: torch.Tensor) -> torch.Tensor:
    """One 32-bit key per sample, from the step's seed and the sample's place in its group."""
    s = mix32(torch.tensor([seed & M32, (seed >> 32) & M32], dtype=torch.long))
    k = mix32(s[0] ^ mix32((prompt_index.long() + 0x3C6EF372) & M32))
    k = mix32(k ^ s[1] ^ mix32((sample_index.long() + 0x1B873593) & M32))
    return k


STEP_SALT = 0x5BD1E995


def gumbel_noise(keys: torch.Tensor, step: int | torch.Tensor, vocab_hash: torch.Tensor) -> torch.Tensor:
    """[B, V] Gumbel(0, 1) noise for decode step `step` (an int, or each row's step as a [B]
    tensor: multi-turn rows sit at different steps); `vocab_hash` = mix32(arange(V))."""
    k = mix32(keys ^ mix32((torch.as_tensor(step, device=keys.device) + STEP_SALT) & M32))
    u = mix32(k[:, None] ^ vocab_hash[None, :]).double()
    u = (u + 0.5) / 2.0**32  # in (0, 1), never 0 or 1
    return -torch.log(-torch.log(u))


def process_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """float32 logits of the sampling distribution: /temperature, top-k, top-p (−inf outside)."""
    z = logits.float()
    if temperature != 1.0:
        z = z / temperature
    if top_k and top_k < z.shape[-1]:
        kth = torch.topk(z, top_k, dim=-1).values[..., -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p < 1.0:
        srt, idx = torch.sort(z, dim=-1, descending=True)
        cum = torch.softmax(srt, dim=-1).cumsum(-1)
        drop = cum - torch.softmax(srt, dim=-1) >= top_p  # mass before this token already ≥ top_p
        drop[..., 0] = False  # always keep the most likely token
        z = z.masked_fill(torch.zeros_like(drop).scatter(-1, idx, drop), float("-inf"))
    return z


def sample(z: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(token [B], its log-prob under softmax(z) [B])."""
    tok = torch.argmax(z.double() + noise, dim=-1)
    lp = torch.log_softmax(z, dim=-1).gather(-1, tok[:, None]).squeeze(-1)
    return tok, lp
