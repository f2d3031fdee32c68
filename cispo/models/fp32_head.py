"""The M1 FP32 LM head: a drop-in for a causal LM's `lm_head` that computes in IEEE FP32.

`apply_fp32_head(model)` swaps `model.lm_head` (an `nn.Linear`) for `FP32LMHead`, which keeps its
weight in float32 (the rest of the model stays in its own dtype, e.g. bf16) and computes the
head's forward and backward in FP32 with TF32 off.

Called as HF calls it, `head(hidden)`, it returns float32 logits (generation, small batches).
Called with tokens, `head(hidden, tokens=..., temperature=..., with_entropy=...)`, it returns the
tokens' log-probs (and entropies) through the chunked op, never holding [T, V] logits. Going
through the module's own call matters under ZeRO-3: DeepSpeed gathers a module's partitioned
parameters only around that module's forward (and its backward), so the learner must call the
head, not read `head.weight` itself.
"""

from __future__ import annotations

import torch
from torch import nn

from cispo.ops.chunked_logprobs import linear_token_logprobs
from cispo.ops.fp32_matmul import fp32_linear
from cispo.ops.fused_head import fused_token_logprobs

# How the chunked log-prob path computes its products (learner.head_precision):
#   split_bf16  the fused Triton kernels, FP32-accurate from bf16 tensor-core products (default;
#               cispo.ops.fused_head; on CPU it is the ieee path)
#   ieee        torch ops, every product in IEEE FP32, TF32 off: the reference (M1's FP32 head)
#   3xtf32      torch ops, each FP32 product from three TF32 products
HEAD_PRECISIONS = ("split_bf16", "ieee", "3xtf32")


class FP32LMHead(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().to(torch.float32), requires_grad=weight.requires_grad)
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(torch.float32))
        self.out_features, self.in_features = self.weight.shape
        self.precision = "split_bf16"  # of the chunked log-prob path: one of HEAD_PRECISIONS
        # tokens per chunk of the log-prob op (parallel.head_chunk_tokens; the torch paths' tile,
        # the fused path's backward chunk); None: its default
        self.chunk_tokens: int | None = None

    def forward(self, hidden: torch.Tensor, tokens: torch.Tensor | None = None,
                temperature: float = 1.0, with_entropy: bool = False, chunk_tokens: int | None = None):
        if tokens is None:
            return fp32_linear(hidden, self.weight, self.bias)
        if self.bias is not None:
            raise ValueError("chunked log-probs support heads without bias (every MiniMax/Llama-"
                             "style LM head); call head(hidden) for full logits instead")
        if self.precision == "split_bf16":
            return fused_token_logprobs(hidden, self.weight, tokens, temperature, with_entropy=with_entropy,
                                        chunk_tokens=chunk_tokens or self.chunk_tokens)
        return linear_token_logprobs(hidden, self.weight, tokens, temperature,
                                     with_entropy=with_entropy, chunk_tokens=chunk_tokens or self.chunk_tokens,
                                     precision=self.precision)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, fp32, "
                f"log-probs {self.precision}")


def apply_fp32_head(model: nn.Module) -> nn.Module:
    """Replace `model.lm_head` with an FP32LMHead holding the same weights; returns the model.

    Refuses tied embeddings: an FP32 copy of the head would silently untie it from the (bf16)
    input embedding, changing the model. Call it after loading and before `deepspeed.initialize`;
    note that DeepSpeed's bf16 mode casts every parameter, this one too, to bf16 (the head then
    still computes in FP32 from bf16-rounded weights, and the FP32 master copy lives in the
    optimizer).
    """
    head = model.get_output_embeddings()
    if isinstance(head, FP32LMHead):
        return model
    if not isinstance(head, nn.Linear):
        raise TypeError(f"expected model.lm_head to be nn.Linear, got {type(head).__name__}")
    if getattr(model.config, "tie_word_embeddings", False):
        raise ValueError("apply_fp32_head: this model ties lm_head to the input embedding; an FP32 "
                         "head would untie them. Use a checkpoint with tie_word_embeddings=False.")
    new = FP32LMHead(head.weight, head.bias).to(head.weight.device)
    model.set_output_embeddings(new)
    return model


def _scoring_forward(self, *args, targets: torch.Tensor | None = None, temperature: float = 1.0,
                     with_entropy: bool = False, **kwargs):
    """The causal LM's own forward, or with `targets` the (log π, entropy or None) of each target
    token: the base model's hidden states through the head module's chunked path (FP32 head) or
    through full logits (any other head, e.g. one tied to the input embedding)."""
    if targets is None:
        return type(self).forward(self, *args, **kwargs)
    hidden = self.get_decoder()(*args, **kwargs).last_hidden_state
    head = self.get_output_embeddings()
    if isinstance(head, FP32LMHead):
        return head(hidden, tokens=targets, temperature=temperature, with_entropy=with_entropy)
    from cispo.ops.logprobs import token_entropy, token_logprobs

    logits = head(hidden)  # the module's call: ZeRO-3 gathers its weight around it
    lp = token_logprobs(logits, targets, temperature)
    return lp, (token_entropy(logits, temperature) if with_entropy else None)


def enable_token_scoring(model: nn.Module) -> nn.Module:
    """Let `model(..., targets=t)` return the targets' log-probs (and entropies) without [T, V]
    logits; without `targets` the model behaves as before. Returns the model.

    Why through `model(...)` and not `model.model(...)` then `model.lm_head(...)` from the
    learner: under DeepSpeed ZeRO-3 only the engine's own forward (`engine(...)`, which calls
    `model(...)`) runs `optimizer.clear_backward_seen_flag()`, which advances ZeRO-3's
    `micro_step_id` after each backward. Stage 3 *copies* a reduced gradient into its partition
    while `micro_step_id == 0` and adds only after that, so calling sub-modules directly leaves
    it at 0 and every micro-batch's gradient overwrites the previous one: only the last
    micro-batch counted. With 1 rank (3 micro-batches) and 2 ranks (2 each) that gave different
    gradients (the embedding differed most: only the last micro-batch's tokens had rows). The
    engine's forward also registers the backward prologue on the outputs. So the learner calls
    the engine, and the model's forward does the scoring.
    """
    import types

    model.forward = types.MethodType(_scoring_forward, model)
    return model
