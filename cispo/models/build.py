"""Where every process gets its model: one directory loadable with `from_pretrained`.

`prepare(cfg, out_dir)` returns that directory: for `model.name=tiny` it builds a random hybrid
MiniMax and the offline tokenizer and saves both there; otherwise it returns the HF id / path
unchanged. Learner and generation workers then load the same way, so the tiny model exercises the
exact code path a real checkpoint takes.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def tiny_minimax_config(t: Any, vocab_size: int, pad_id: int, bos_id: int, eos_id: int):
    from transformers import MiniMaxConfig

    layer_types = ["full_attention" if (i + 1) % t.softmax_every == 0 else "linear_attention"
                   for i in range(t.num_layers)]
    head_dim = t.hidden_size // t.num_heads
    return MiniMaxConfig(
        vocab_size=vocab_size, hidden_size=t.hidden_size, intermediate_size=t.expert_ffn,
        num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads,
        num_key_value_heads=t.num_kv_heads, head_dim=head_dim,
        num_local_experts=t.num_experts, num_experts_per_tok=t.experts_per_token,
        layer_types=layer_types, block_size=t.block_size,
        max_position_embeddings=t.max_positions,
        rope_parameters={"rope_type": "default", "rope_theta": t.rope_theta},
        pad_token_id=pad_id, bos_token_id=bos_id, eos_token_id=eos_id,
        tie_word_embeddings=False,
    )


def prepare(cfg: Any, out_dir: str | Path) -> str:
    """The model directory (or hub id) every process loads with `load_model`/`load_tokenizer`."""
    if cfg.name != "tiny":
        return cfg.name
    from cispo.models.tokenizer import TOOL_ALPHABET, build_char_tokenizer

    out = Path(out_dir)
    if (out / "config.json").exists():
        return str(out)  # resuming: keep the same initial weights
    tok = build_char_tokenizer(TOOL_ALPHABET if getattr(cfg.tiny, "tool_tokens", False) else None)
    config = tiny_minimax_config(cfg.tiny, len(tok), tok.pad_token_id, tok.bos_token_id,
                                 tok.eos_token_id)
    # the same shape, seed, dtype and library versions give the same weights: build once per
    # machine (a 0.25B model takes seconds to initialise and write), then link/copy
    on_gpu = _init_on_gpu(config)
    cached = _tiny_cache_dir(config, cfg, on_gpu)
    if cached is not None and cached.exists():  # made by rename: complete when it exists
        _link_tree(cached, out)
        return str(out)
    target = cached if cached is not None else out
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    if on_gpu:  # in a child process: the driver keeps no CUDA context of its own
        import multiprocessing

        proc = multiprocessing.get_context("spawn").Process(
            target=build_random_model, args=(config, cfg.tiny.init_seed, cfg.dtype, str(tmp), "cuda"))
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            raise RuntimeError(f"building the random model on the GPU failed (exit {proc.exitcode})")
    else:
        build_random_model(config, cfg.tiny.init_seed, cfg.dtype, str(tmp), "cpu")
    tok.save_pretrained(tmp)
    if target.exists():  # another run built it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(target)
    if cached is not None:
        _link_tree(cached, out)
    return str(out)


def build_random_model(config, seed: int, dtype: str, out: str, device: str) -> None:
    """A random MiniMax of `config` saved to `out` in `dtype` (stored in the run's dtype: every
    process loads it in that dtype anyway, half the bytes for bf16)."""
    from transformers import MiniMaxForCausalLM

    with torch.random.fork_rng(devices=[0] if device == "cuda" else []):
        torch.manual_seed(seed)
        with torch.device(device):
            model = MiniMaxForCausalLM(config)
    model.to(DTYPES[dtype]).to("cpu").save_pretrained(out)


def _init_on_gpu(config, threshold: float = 5e8) -> bool:
    """Initialise on a GPU when there is one and the model is large: ~2B normal draws take
    tens of seconds on a CPU, well under one on a GPU (the spawn costs a few seconds)."""
    if not torch.cuda.is_available():
        return False
    from transformers import MiniMaxForCausalLM

    with torch.device("meta"):
        n = sum(p.numel() for p in MiniMaxForCausalLM(config).parameters())
    return n > threshold


def _tiny_cache_dir(config, cfg: Any, on_gpu: bool = False) -> Path | None:
    """Where built tiny models are kept across runs: $CISPO_CACHE (default ~/.cache/cispo)
    /tiny-models/<hash of config, seed, dtype, torch and transformers versions>; None when
    CISPO_CACHE=off."""
    import hashlib
    import json

    import transformers

    root = os.environ.get("CISPO_CACHE", str(Path.home() / ".cache" / "cispo"))
    if root == "off":
        return None
    key = json.dumps([config.to_dict(), cfg.tiny.init_seed, cfg.dtype, torch.__version__,
                      transformers.__version__, bool(getattr(cfg.tiny, "tool_tokens", False))] + (["cuda"] if on_gpu else []), sort_keys=True, default=str)
    return Path(root) / "tiny-models" / hashlib.sha256(key.encode()).hexdigest()[:16]


def _link_tree(src: Path, dst: Path) -> None:
    """Hard links of src's files in dst (a copy where links cannot be made)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if (dst / f.name).exists():
            continue
        try:
            os.link(f, dst / f.name)
        except OSError:
            shutil.copy2(f, dst / f.name)


def load_model(path: str, dtype: str = "float32", trust_remote_code: bool = False, *,
               fp32_head: bool = False, rotary_dim: int | None = None):
    """The model every process uses (learner ranks and engines alike, so they compute the same
    function): M1's partial RoPE when `rotary_dim` is set, an FP32 LM head when asked (and the
    head is not tied), and for MiniMax models fla's lightning kernel on CUDA, or on CPU transformers'
    loop run once per packed sequence."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code)
    if rotary_dim:
        from cispo.models.rope import apply_m1_partial_rope

        apply_m1_partial_rope(model, rotary_dim)
    if fp32_head and not getattr(model.config, "tie_word_embeddings", False):
        from cispo.models.fp32_head import apply_fp32_head

        apply_fp32_head(model)
    if model.config.model_type == "minimax":
        if torch.cuda.is_available():
            from cispo.models.fla_autotune import pin_fla_autotune
            from cispo.models.lightning import patch_lightning_attention

            patch_lightning_attention(model)  # CPU passes keep transformers' loop inside
            pin_fla_autotune()  # a cold start compiles a few dozen kernels, not ~150
        else:  # packed rows on CPU: transformers' loop once per sequence
            from cispo.models.segmented import patch_segmented_lightning

            patch_segmented_lightning(model)
    return model


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:  # many causal LMs ship without one; generation needs it
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok
