"""MoE routing replay: the learner routes each token to the experts the rollout engine used.

A sparse-MoE policy can pick different experts for the same token in the engine and in the
learner (other kernels, other batch, bf16 ties), and a different expert is a different function:
the train/rollout log-prob gap grows and RL on MoE models destabilises. Replay records, during
generation, the top-k expert indices of every token at every MoE layer (`RoutingRecorder`, on
the HF engine), and in the learner's forward replaces each router's top-k choice by the recorded
one (`apply_routing_replay` + `replay`). The mixing weights are still computed from the current
router logits (softmax over all experts, gathered at the recorded experts, renormalised as the
router does), so the router keeps its gradient.

Routers are found by type: transformers' `MiniMaxTopKRouter` (MiniMax / M1), whose forward
returns (router_logits, top-k weights, top-k indices). Off by default (`rollout.routing_replay`):
the engine records only when it is on, and the learner replays only what a sample carries.

Layout: a sample's routing is an int16 tensor [positions, moe_layers, k] for the positions of
prompt + response except the last token (the last token is never fed back, and no scored
log-prob depends on its routing).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


def routers(model: nn.Module) -> list[nn.Module]:
    """The model's MoE routers in layer order."""
    from transformers.models.minimax.modeling_minimax import MiniMaxTopKRouter

    return [m for m in model.modules() if isinstance(m, MiniMaxTopKRouter)]


class RoutingRecorder:
    """Records the experts chosen in every forward of a cached generation (prefill, then one
    token per decode step). The engine tells it the rows: `start` before the prefill, `select`
    when finished rows leave the batch; `finish` assembles each sample's routing."""

    def __init__(self, model: nn.Module):
        self.routers = routers(model)
        if not self.routers:
            raise ValueError("routing replay: the model has no MiniMax MoE router (MiniMaxTopKRouter)")
        self._calls: list[torch.Tensor] = []  # this forward's indices, one per router
        self._handles = [r.register_forward_hook(self._hook) for r in self.routers]

    def _hook(self, module, args, output) -> None:
        self._calls.append(output[2].detach().to(torch.int16))

    def _take(self) -> torch.Tensor:
        """The forward just finished: [tokens, layers, k]."""
        out = torch.stack(self._calls, dim=1)
        self._calls = []
        return out

    def start(self, prompt_lens: list[int], group_size: int, width: int) -> None:
        self.prompt_lens, self.G, self.width = prompt_lens, group_size, width
        self._prefill: torch.Tensor | None = None
        self._steps: list[tuple[torch.Tensor, torch.Tensor]] = []  # (rows alive, [rows, L, k])
        self._alive = torch.arange(len(prompt_lens) * group_size)
        self._calls = []

    def after_forward(self) -> None:
        """Called by the engine after each model call."""
        got = self._take()
        if self._prefill is None:
            self._prefill = got.view(len(self.prompt_lens), self.width, *got.shape[1:]).cpu()
        else:
            self._steps.append((self._alive.clone(), got.cpu()))

    def select(self, keep: torch.Tensor) -> None:
        self._alive = self._alive[keep.cpu()]

    def finish(self, lengths: list[int]) -> list[torch.Tensor]:
        """Each sample's routing: [prompt_len + n - 1, layers, k] (n = response length)."""
        out = []
        where = [dict(zip(rows.tolist(), range(len(rows)), strict=True)) for rows, _ in self._steps]
        for r, n in enumerate(lengths):
            p = r // self.G
            parts = [self._prefill[p, self.width - self.prompt_lens[p]:]]
            # decode step f fed response token f (f = 0 .. n-2)
            parts += [self._steps[f][1][where[f][r]][None] for f in range(n - 1)]
            out.append(torch.cat(parts))
        return out

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def apply_routing_replay(model: nn.Module) -> int:
    """Let every router of `model` follow recorded indices inside `replay(...)`; returns how
    many routers were patched. Outside `replay` the routers behave as before."""
    patched = routers(model)
    for r in patched:
        r._replay_indices = None
        r.forward = _replaying_forward.__get__(r)
    return len(patched)


def _replaying_forward(self, hidden_states: torch.Tensor):
    forced = self._replay_indices
    if forced is None:
        return type(self).forward(self, hidden_states)
    hidden_states = hidden_states.reshape(-1, self.hidden_dim)
    router_logits = nn.functional.linear(hidden_states, self.weight)
    probs = torch.softmax(router_logits.float(), dim=-1)
    indices = forced.to(device=probs.device, dtype=torch.long)
    if indices.shape != (probs.shape[0], self.top_k):
        raise ValueError(f"routing replay: {tuple(indices.shape)} recorded indices for "
                         f"{probs.shape[0]} tokens x top-{self.top_k}")
    top = probs.gather(-1, indices)
    return router_logits, top / top.sum(dim=-1, keepdim=True), indices


def pad_routing(routings: list[torch.Tensor | None], width: int, top_k: int, layers: int) -> torch.Tensor:
    """[B, width, layers, k] for a right-padded batch: each row's recorded routing, and experts
    0..k-1 at positions nothing was recorded for (padding, the last token: nothing scored
    depends on them)."""
    out = torch.arange(top_k, dtype=torch.int16).expand(len(routings), width, layers, top_k).clone()
    for i, r in enumerate(routings):
        if r is not None:
            out[i, :r.shape[0]] = r
    return out


@contextmanager
def replay(model: nn.Module, routing: torch.Tensor | None):
    """Inside: the model's routers use `routing` ([B, T, layers, k] for a [B, T] forward)."""
    if routing is None:
        yield
        return
    rs = routers(model)
    for r in rs:
        if not hasattr(r, "_replay_indices"):
            apply_routing_replay(model)
            break
    if routing.shape[2] != len(rs):
        raise ValueError(f"routing replay: {routing.shape[2]} recorded MoE layers, model has {len(rs)}")
    try:
        for i, r in enumerate(rs):
            r._replay_indices = routing[:, :, i].reshape(-1, routing.shape[-1])
        yield
    finally:
        for r in rs:
            r._replay_indices = None
