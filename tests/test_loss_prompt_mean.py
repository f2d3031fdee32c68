"""Prompt-level loss averaging (ScaleRL, `normalization="prompt"`) against the formula by hand,
in float64: L = (1/P) Σ_g (1/T_g) Σ_{i∈g} Σ_t ℓ_it, T_g = the unmasked tokens of prompt g."""

import math

import pytest
import torch

from cispo.learner import TrainItem, collate, prompt_token_totals
from cispo.loss import aggregate, policy_loss

D = torch.float64
# 5 responses to 3 prompts (0, 0, 1, 2, 2) with 2, 3, 1, 4 and 0 tokens
MASK = [[1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]]
PROMPT = [0, 0, 1, 2, 2]
LP = [[-0.5, -1.0, -2.0, -0.1], [-0.3, -0.7, -1.1, -0.2], [-2.5, -0.4, -0.9, -1.3],
      [-0.8, -0.6, -0.2, -1.7], [-0.5, -0.5, -0.5, -0.5]]
OLD = [[-0.9, -1.0, -2.0, -0.1], [-0.3, -0.2, -1.5, -0.2], [-4.0, -0.4, -0.9, -1.3],
       [-0.8, -0.9, -0.1, -2.5], [-0.5, -0.5, -0.5, -0.5]]
ADV = [1.5, -0.5, 2.0, -1.0, 0.7]


def hand_reference(token_term):
    """(loss, d loss / d logprob) from the per-token term and its derivative, written out."""
    T = {g: sum(sum(MASK[i]) for i in range(5) if PROMPT[i] == g) for g in set(PROMPT)}
    P = sum(1 for g in T if T[g] > 0)  # prompts with tokens: 3
    loss, grad = 0.0, [[0.0] * 4 for _ in range(5)]
    for i in range(5):
        for t in range(4):
            if MASK[i][t]:
                r = math.exp(LP[i][t] - OLD[i][t])
                value, d = token_term(r, ADV[i], LP[i][t])
                loss += value / (P * T[PROMPT[i]])
                grad[i][t] = d / (P * T[PROMPT[i]])
    return loss, grad


def cispo_term(eps_low, eps_high):
    def term(r, a, lp):  # −sg(clip(r))·Â·log π: derivative −clip(r)·Â, clipped or not
        w = min(max(r, 1 - eps_low), 1 + eps_high)
        return -w * a * lp, -w * a
    return term


def ppo_term(eps_low, eps_high):
    def term(r, a, lp):  # −min(r·Â, clip(r)·Â): derivative −r·Â where the unclipped term is the min
        c = min(max(r, 1 - eps_low), 1 + eps_high)
        if r * a <= c * a:
            return -r * a, -r * a
        return -c * a, 0.0
    return term


@pytest.mark.parametrize("name,term,kw", [
    ("cispo", cispo_term(1.0, 0.28), {"eps_low": 1.0, "eps_high": 0.28}),
    ("cispo", cispo_term(0.2, 0.28), {"eps_low": 0.2, "eps_high": 0.28}),
    ("dapo", ppo_term(0.2, 0.28), {}),
    ("ppo_clip", ppo_term(0.2, 0.2), {"dual_clip": None}),
])
def test_prompt_mean_matches_the_formula(name, term, kw):
    lp = torch.tensor(LP, dtype=D, requires_grad=True)
    loss, _ = policy_loss(name, lp, torch.tensor(OLD, dtype=D), torch.tensor(ADV, dtype=D),
                          torch.tensor(MASK, dtype=D), normalization="prompt",
                          prompt_index=torch.tensor(PROMPT), **kw)
    loss.backward()
    ref_loss, ref_grad = hand_reference(term)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-12)
    assert torch.allclose(lp.grad, torch.tensor(ref_grad, dtype=D), rtol=1e-12, atol=1e-15)


def test_hand_worked_example_every_prompt_weighs_the_same():
    """Prompt 0: one 1-token answer; prompt 1: two answers, 3 tokens. On-policy CISPO, Â = 1:
    the lone token gets −1/2, each of prompt 1's three tokens −1/6 (token-level: −1/4 each)."""
    lp = torch.zeros(3, 2, dtype=D, requires_grad=True)
    mask = torch.tensor([[1, 0], [1, 1], [1, 0]], dtype=D)
    loss, _ = policy_loss("cispo", lp, lp.detach(), torch.ones(3, dtype=D), mask,
                          normalization="prompt", prompt_index=torch.tensor([7, 3, 3]))
    loss.backward()
    expected = torch.tensor([[-1 / 2, 0], [-1 / 6, -1 / 6], [-1 / 6, 0]], dtype=D)
    assert torch.allclose(lp.grad, expected, rtol=1e-12, atol=0)


def test_parts_with_the_batch_totals_add_up_to_the_whole():
    """A micro-batch / rank passes prompt_tokens and prompt_count of the whole batch (what the
    learner computes with `prompt_token_totals`); the parts' losses and gradients sum to the whole."""
    per_token = torch.tensor(LP, dtype=D) * torch.tensor(ADV, dtype=D)[:, None]
    mask = torch.tensor(MASK, dtype=D)
    whole = aggregate(per_token, mask, "prompt", prompt_index=torch.tensor(PROMPT))
    items = [TrainItem([1], [5] * int(sum(m)), [0.0] * int(sum(m)), 0.0, prompt_index=g)
             for m, g in zip(MASK, PROMPT, strict=True)]
    totals = prompt_token_totals(items)
    assert totals == {0: 5.0, 1: 1.0, 2: 4.0}
    T = torch.tensor([totals[g] for g in PROMPT], dtype=D)
    parts = sum(aggregate(per_token[s], mask[s], "prompt", prompt_tokens=T[s], prompt_count=3.0)
                for s in (slice(0, 1), slice(1, 4), slice(4, 5)))  # prompt 0 split across parts
    assert parts.item() == pytest.approx(whole.item(), rel=1e-12)
    assert collate(items[:2], 0, None, [T[0].item(), T[1].item()])["prompt_tokens"].tolist() == [5.0, 5.0]


def test_prompt_mean_needs_the_prompts_and_grpo_keeps_its_own():
    lp = torch.zeros(2, 2, dtype=D)
    with pytest.raises(ValueError, match="prompt_index"):
        policy_loss("cispo", lp, lp, torch.ones(2, dtype=D), torch.ones(2, 2, dtype=D), normalization="prompt")
    with pytest.raises(ValueError, match="per sample"):
        policy_loss("grpo", lp, lp, torch.ones(2, dtype=D), torch.ones(2, 2, dtype=D), normalization="prompt",
                    prompt_index=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="not supported"):
        aggregate(lp, torch.ones(2, 2, dtype=D), "prompts")


def test_equal_prompts_of_equal_length_give_the_token_mean():
    """One prompt, all answers: prompt mean == token mean (a sanity identity)."""
    per_token = torch.tensor(LP, dtype=D)
    mask = torch.tensor(MASK, dtype=D)
    a = aggregate(per_token, mask, "prompt", prompt_index=torch.zeros(5, dtype=torch.long))
    assert a.item() == pytest.approx(aggregate(per_token, mask, "token").item(), rel=1e-12)


def test_grpo_with_prompt_averaging_is_refused_before_start():
    from omegaconf import OmegaConf

    from cispo.config import Config
    from cispo.config_check import value_problems

    cfg = OmegaConf.structured(Config)
    cfg.algorithm.loss, cfg.algorithm.normalization = "grpo", "prompt"
    assert any("grpo normalises per sample" in m for m in value_problems(cfg))
    cfg.algorithm.loss = "cispo"
    assert value_problems(cfg) == []
