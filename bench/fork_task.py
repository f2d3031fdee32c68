"""The fork-token task of the ablation (bench/ablation.py --task fork, docs/ablation.md).

CISPO's argument (MiniMax-M1, section 3.1) is about rare "fork" tokens (However, Wait, ...): their
probability is low under the sampling policy, so the first update on a rewarded sample raises
their IS ratio r = π/π_old far above 1 + ε_high, and PPO-style clipping then gives them no
gradient in every later off-policy minibatch of the same rollout batch; CISPO clips the weight but
keeps the gradient. This task is built so that reward needs such a token:

- prompts "a+b=\\boxed{" (operands 0..4, 25 prompts), the tiny random MiniMax's tokenizer plus one
  marker token `<wait>`;
- the reward (bench/fork_reward.py) is 1 only for "<wait>" + the right sum + "}", else 0;
- the initial policy is the random tiny model after a short supervised warm start (`build_base`)
  on a base distribution in which the marker opens the answer with probability `marker_rate`
  (2%), and is then followed by the right sum, while an answer without it is a uniformly random
  digit. So the initial reward is about 2%, almost all of it from samples that start with the
  rare token, and the one way up is to make that token likely.

`train` is the RL loop of one run, in one process: the project's policy losses
(`cispo.loss.policy_loss`) and advantages (`cispo.advantages.compute_advantages`) on the tiny
MiniMax (transformers' `MiniMaxForCausalLM`, FP32 head), torch's AdamW with the learner's
hyper-parameters (betas 0.9/0.95, eps 1e-15, gradient clip 1.0), sampling at temperature 1, and
K minibatch updates per rollout batch (round 0 on-policy, round k on samples k updates old), as
`cispo.train` does with `algorithm.num_minibatches=K`. What it leaves out is the distribution
(Ray, DeepSpeed ZeRO-3, the engines, the sandboxed reward): their start-up alone (30-70 s a run
here) would not let 50+ runs fit in an hour on two cores. `python bench/ablation.py --task fork
--real-loop ARM SEED` runs the same task through `python -m cispo.train` for a cross-check.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch

MARKER = "<wait>"
MAX_OPERAND = 4  # sums 0..8: one digit, so "<wait>" + digit + "}" is 3 tokens
RESPONSE_TOKENS = 3


def prompts(max_operand: int = MAX_OPERAND) -> list[tuple[str, int]]:
    """(prompt text, sum) for every pair of operands."""
    return [(f"{a}+{b}=\\boxed{{", a + b) for a in range(max_operand + 1) for b in range(max_operand + 1)]


def tokenizer():
    from cispo.models.tokenizer import ALPHABET, build_char_tokenizer

    return build_char_tokenizer(ALPHABET + [MARKER])


def rows(n: int, seed: int = 0) -> list[dict]:
    """Dataset rows for the real loop (`data.source=<jsonl>`), data_source "fork"."""
    rng = random.Random(seed)
    ps = prompts()
    return [{"prompt": p, "reference": str(s), "data_source": "fork", "id": f"fork-{i}"}
            for i, (p, s) in enumerate(rng.choice(ps) for _ in range(n))]


def is_correct(completion: str, reference: str) -> bool:
    """The marker, the right sum, the closing brace: "<wait>3}" (anything after it is ignored)."""
    return completion.startswith(MARKER) and completion[len(MARKER):].split("}")[0] == reference \
        and "}" in completion[len(MARKER):]


# ---------------------------------------------------------------------------- the initial policy


def _encode(tok, text: str) -> list[int]:
    return [tok.bos_token_id] + tok(text, add_special_tokens=False).input_ids


def build_base(out_dir: Path, seed: int, marker_rate: float = 0.02, steps: int = 300,
               batch: int = 64, lr: float = 3e-3) -> dict:
    """The random tiny model (`model.tiny.init_seed=seed`) after a supervised warm start, saved
    with its tokenizer in `out_dir` (loadable by `model.name=out_dir`); reused if it is there.

    Each batch is half marker answers ("<wait>" sum "}" EOS), half plain ones (a random digit,
    "}", EOS). The first answer token's cross-entropy is weighted `marker_rate` on marker rows
    and 1 - marker_rate on plain ones, so its optimum is P(marker) = marker_rate, while the
    tokens after it learn from all rows: the rare token comes with a well-learned continuation.
    """
    from transformers import MiniMaxForCausalLM

    from cispo.config import TinyModelConfig
    from cispo.models.build import tiny_minimax_config

    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists():
        return base_stats(out_dir)
    torch.set_num_threads(1)  # two cores, shared: one thread is faster than two fighting
    tok = tokenizer()
    cfg = tiny_minimax_config(TinyModelConfig(), len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = MiniMaxForCausalLM(cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), eps=1e-15, weight_decay=0.0)
        rng = random.Random(10_000 + seed)
        ps, m_id = prompts(), tok.convert_tokens_to_ids(MARKER)
        for _ in range(steps):
            seqs, weights = [], []
            for i in range(batch):
                p, s = rng.choice(ps)
                marked = i % 2 == 0
                ans = ([m_id] + tok(str(s), add_special_tokens=False).input_ids if marked
                       else tok(str(rng.randint(0, 2 * MAX_OPERAND)), add_special_tokens=False).input_ids)
                ids = _encode(tok, p) + ans + tok("}", add_special_tokens=False).input_ids + [tok.eos_token_id]
                seqs.append(ids)
                # per target position: the first answer token calibrated, the rest weight 1
                first = len(_encode(tok, p)) - 1
                w = [0.0] * (len(ids) - 1)
                for t in range(first, len(ids) - 1):
                    w[t] = (marker_rate if marked else 1.0 - marker_rate) if t == first else 1.0
                weights.append(w)
            width = max(map(len, seqs))
            ids = torch.full((batch, width), tok.pad_token_id)
            wt = torch.zeros(batch, width - 1)
            for i, (s, w) in enumerate(zip(seqs, weights, strict=True)):
                ids[i, :len(s)] = torch.tensor(s)
                wt[i, :len(w)] = torch.tensor(w)
            logp = torch.log_softmax(model(input_ids=ids).logits[:, :-1].float(), -1)
            nll = -logp.gather(-1, ids[:, 1:, None])[..., 0]
            loss = (nll * wt).sum() / wt.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return base_stats(out_dir)


@torch.no_grad()
def base_stats(model_dir: Path) -> dict:
    """P(marker first) and P(right sum | marker) of the saved model, averaged over the prompts."""
    from cispo.models.build import load_model

    tok = tokenizer()
    model = load_model(str(model_dir), fp32_head=True).eval()
    ps, m_id = prompts(), tok.convert_tokens_to_ids(MARKER)
    ids = torch.tensor([_encode(tok, p) for p, _ in ps])
    p_m = torch.softmax(model(input_ids=ids).logits[:, -1].float(), -1)[:, m_id]
    with_m = torch.cat([ids, torch.full((len(ps), 1), m_id)], 1)
    probs = torch.softmax(model(input_ids=with_m).logits[:, -1].float(), -1)
    right = torch.tensor([tok.convert_tokens_to_ids(str(s)) for _, s in ps])
    p_right = probs.gather(1, right[:, None])[:, 0]
    return {"p_marker": float(p_m.mean()), "p_right_given_marker": float(p_right.mean())}


# ---------------------------------------------------------------------------- one RL run


@dataclass
class RunConfig:
    loss: str = "cispo"
    eps_low: float = 1.0
    eps_high: float = 0.28
    normalization: str = "token"
    steps: int = 50
    prompts_per_step: int = 16
    group_size: int = 16
    minibatches: int = 8  # optimizer steps per rollout batch (M1: up to 16)
    lr: float = 1e-3
    grad_clip: float = 1.0
    seed: int = 0
    threads: int = 1


def _sample(model, prompt_ids: torch.Tensor, gen: torch.Generator, eos: int, pad: int):
    """Up to RESPONSE_TOKENS tokens per row at temperature 1, stopping after EOS. Returns the
    response ids [N, R], their behaviour log-probs [N, R], the mask [N, R] and the first
    position's full distribution [N, V] (for the marker's exact probability)."""
    seqs = prompt_ids
    n = prompt_ids.shape[0]
    alive = torch.ones(n, dtype=torch.bool)
    resp, lps, mask, first = [], [], [], None
    for _ in range(RESPONSE_TOKENS):
        logp = torch.log_softmax(model(input_ids=seqs).logits[:, -1].float(), -1)
        if first is None:
            first = logp.exp()
        tok = torch.multinomial(logp.exp(), 1, generator=gen)[:, 0]
        tok = torch.where(alive, tok, torch.full_like(tok, pad))
        resp.append(tok)
        lps.append(logp.gather(1, tok[:, None])[:, 0])
        mask.append(alive.float())
        alive = alive & (tok != eos)
        seqs = torch.cat([seqs, tok[:, None]], 1)
    return torch.stack(resp, 1), torch.stack(lps, 1), torch.stack(mask, 1), first


def _token_logprobs(model, prompt_ids: torch.Tensor, resp: torch.Tensor) -> torch.Tensor:
    seqs = torch.cat([prompt_ids, resp], 1)
    logits = model(input_ids=seqs).logits[:, prompt_ids.shape[1] - 1:-1].float()
    return torch.log_softmax(logits, -1).gather(-1, resp[..., None])[..., 0]


def train(base_dir: Path, rc: RunConfig, log=None) -> list[dict]:
    """One RL run from the base model; returns one metrics dict per step. Deterministic for a
    given (base model, seed): the prompts and the sampling random numbers of step s depend on
    (seed, s) only, so every algorithm sees the same prompts and the same draws."""
    from cispo.advantages import compute_advantages
    from cispo.loss import policy_loss
    from cispo.models.build import load_model

    torch.set_num_threads(rc.threads)
    torch.manual_seed(rc.seed)
    tok = tokenizer()
    m_id, eos, pad = tok.convert_tokens_to_ids(MARKER), tok.eos_token_id, tok.pad_token_id
    model = load_model(str(base_dir), fp32_head=True)
    opt = torch.optim.AdamW(model.parameters(), lr=rc.lr, betas=(0.9, 0.95), eps=1e-15, weight_decay=0.0)
    ps = prompts()
    kwargs = {"eps_low": rc.eps_low, "eps_high": rc.eps_high, "normalization": rc.normalization}
    G, P, K = rc.group_size, rc.prompts_per_step, rc.minibatches
    out = []
    for step in range(rc.steps):
        rng = random.Random(rc.seed * 100_003 + step)
        batch = [rng.choice(ps) for _ in range(P)]
        prompt_ids = torch.tensor([_encode(tok, p) for p, _ in batch]).repeat_interleave(G, 0)
        gen = torch.Generator().manual_seed(rc.seed * 100_003 + step)
        model.eval()
        with torch.no_grad():
            resp, old, mask, first = _sample(model, prompt_ids, gen, eos, pad)
        texts = tok.batch_decode(resp, skip_special_tokens=True)
        refs = [str(s) for _, s in batch for _ in range(G)]
        rewards = torch.tensor([float(is_correct(t, r)) for t, r in zip(texts, refs, strict=True)])
        adv = compute_advantages("group_norm", rewards, G).float()
        # fork tokens that carry a learning signal (a group with mixed rewards: advantage != 0)
        is_m = (resp == m_id) & (mask > 0)
        signal = is_m & (adv[:, None] != 0)
        model.train()
        mb = P * G // K
        rounds = []
        for k in range(K):
            sl = slice(k * mb, (k + 1) * mb)
            lp = _token_logprobs(model, prompt_ids[sl], resp[sl])
            lp.retain_grad()
            loss, m = policy_loss(rc.loss, lp, old[sl], adv[sl], mask[sl], **kwargs)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), rc.grad_clip)
            opt.step()
            fork = signal[sl]
            # fork tokens (with a signal) that got no gradient this round: PPO-clip's dropped ones
            dropped = ((lp.grad == 0) & fork).sum().item()
            r = torch.exp(lp.detach() - old[sl])
            outside = (r < 1 - rc.eps_low) | (r > 1 + rc.eps_high)
            rounds.append({"clip_frac": m["is_weight/clip_frac"], "max": m["is_weight/max"],
                           "fork_tokens": float(fork.sum()), "fork_dropped": float(dropped),
                           "fork_clipped": float((outside & fork).sum()),
                           "fork_ratio": float(r[fork].mean()) if fork.any() else math.nan})
        ent = -(first * first.clamp_min(1e-30).log()).sum(-1)
        fork_tokens = sum(r["fork_tokens"] for r in rounds)
        row = {"step": step, "reward": float(rewards.mean()),
               "p_fork": float(first[::G, m_id].mean()),  # exact P(<wait> first), per prompt
               "fork_sampled": float(is_m[:, 0].float().mean()),
               "entropy_first": float(ent[::G].mean()),
               "clip_frac": sum(r["clip_frac"] for r in rounds) / K,
               "fork_tokens": fork_tokens,  # marker tokens with advantage != 0, over the K rounds
               "fork_dropped_frac": (sum(r["fork_dropped"] for r in rounds) / fork_tokens
                                     if fork_tokens else math.nan),
               "fork_clipped_frac": (sum(r["fork_clipped"] for r in rounds) / fork_tokens
                                     if fork_tokens else math.nan),
               "round_clip_frac": [r["clip_frac"] for r in rounds],
               "round_max": [r["max"] for r in rounds],
               "round_fork_ratio": [r["fork_ratio"] for r in rounds]}
        out.append(row)
        if log:
            log(row)
    return out
