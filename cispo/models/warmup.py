"""Run the learner's passes once on a few dummy tokens while the actors start, not in step 0.

The first pass through a shape family compiles and autotunes Triton kernels (fla's lightning
kernels, and any other Triton op on the path): tens of seconds on a fresh machine. Done here, in
the learner actor before DeepSpeed takes the model, it overlaps with the engines' own start-up
(they warm up their generation path the same way) instead of adding to step 0. The model is
used as loaded (not yet partitioned), one no-grad pass (π_old / agreement) and one
forward+backward, both with the layout the learner will use (packed or padded); gradients are
dropped afterwards, weights are not touched.
"""

from __future__ import annotations

import time

import torch


def fits_for_warm_up(model: torch.nn.Module, device: torch.device, fraction: float = 0.1) -> bool:
    """Whether the whole model may sit on the GPU for the warm-up: weights + gradients under
    `fraction` of the device's memory (a ZeRO-3 model too big for one GPU is never moved)."""
    if device.type != "cuda":
        return False
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return 2 * nbytes <= fraction * torch.cuda.get_device_properties(device).total_memory


def warm_up_learner(model: torch.nn.Module, device: torch.device, packed: bool, pad_id: int,
                    temperature: float, tokens: int = 96) -> float:
    """Seconds spent; the model is left on `device` with no gradients."""
    t0 = time.perf_counter()
    model.to(device)
    vocab = model.get_input_embeddings().weight.shape[0]
    lengths = [tokens // 3 * 2, tokens - tokens // 3 * 2]  # two sequences: a boundary inside
    seqs = [[(7 * i + j) % vocab for j in range(n)] for i, n in enumerate(lengths)]
    seqs = [[t if t != pad_id else (t + 1) % vocab for t in s] for s in seqs]
    if packed:
        from cispo.packing import pack

        p = pack(seqs, pad_id=pad_id)
        kwargs = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in p.model_kwargs().items()}
        targets = p.targets.to(device)
    else:
        width = max(lengths)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s)
            attn[i, :len(s)] = 1
        ids = ids.to(device)
        kwargs = {"input_ids": ids, "attention_mask": attn.to(device)}
        targets = torch.cat([ids[:, 1:], ids[:, :1]], dim=1)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(**kwargs, targets=targets, temperature=temperature, with_entropy=True)
    model.train()
    lp, _ = model(**kwargs, targets=targets, temperature=temperature, with_entropy=True)
    lp.float().sum().backward()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0
