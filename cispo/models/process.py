"""Set-up shared by every Ray actor that holds a model: threads and quiet library chatter."""

from __future__ import annotations


def actor_env(threads: int) -> dict[str, str]:
    """`runtime_env` variables for model-holding actors (applied before any import runs)."""
    return {"OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore::FutureWarning",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}


def setup_actor(threads: int) -> None:
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.set_num_threads(threads)
