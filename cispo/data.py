"""Prompts: load an HF `datasets` dataset, validate rows, and hand out batches in a resumable order.

Sources (`data.source`): "arithmetic" (built in), a local .jsonl/.json/.parquet file, or a hub
dataset name. A row needs a non-empty string prompt and a reference (column names from config);
rows that fail are skipped, counted per reason, and logged — never fatal, never silent.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class DataError(ValueError):
    """The dataset cannot be used at all (missing file, no usable row)."""


@dataclass
class Prompt:
    """One validated row: what the rollout needs plus what the reward needs."""

    text: str
    token_ids: list[int]
    reference: Any
    data_source: str
    row: dict = field(default_factory=dict)  # every other column, passed to the reward as metadata


def load_rows(cfg: Any):
    """The raw `datasets.Dataset` named by `data.source`."""
    import datasets

    src = cfg.source
    if src == "arithmetic":
        from cispo import arithmetic

        return arithmetic.dataset(cfg.arithmetic_rows, cfg.arithmetic_max_operand, cfg.seed)
    path = Path(src)
    kinds = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
    if path.suffix in kinds:
        if not path.exists():
            raise DataError(f"data.source={src!r}: no such file")
        return datasets.load_dataset(kinds[path.suffix], data_files=str(path), split="train")
    return datasets.load_dataset(src, split=cfg.split)


def validate(ds, cfg: Any, tokenizer) -> tuple[list[Prompt], Counter]:
    """Rows → Prompts; returns (kept, Counter of skip reasons)."""
    kept: list[Prompt] = []
    skipped: Counter = Counter()
    for i, row in enumerate(ds):
        text, reason = prompt_text(row, cfg)
        if reason is None:
            ids, reason = tokenize_checked(text, row, cfg, tokenizer)
        if reason:
            skipped[reason] += 1
            if sum(skipped.values()) <= 5:
                log.warning("skipping data row %d: %s", i, reason)
            continue
        source = row.get(cfg.data_source_key) or cfg.default_data_source
        extra = {k: v for k, v in row.items() if k not in (cfg.prompt_key, cfg.reference_key)}
        kept.append(Prompt(text, ids, row[cfg.reference_key], str(source), extra))
    if skipped:
        log.warning("skipped %d of %d data rows: %s", sum(skipped.values()), len(ds), dict(skipped))
    if not kept:
        raise DataError(f"data.source={cfg.source!r}: no usable rows ({dict(skipped)}); "
                         f"rows need '{cfg.prompt_key}' and '{cfg.reference_key}'")
    return kept, skipped


def prompt_text(row: dict, cfg: Any) -> tuple[Any, str | None]:
    """The row's prompt (its prompt_key column, or data.prompt_template filled from the row),
    or a skip reason."""
    if not cfg.prompt_template:
        return row.get(cfg.prompt_key), None
    try:
        return cfg.prompt_template.format(**row), None
    except (KeyError, IndexError) as e:
        return None, f"prompt_template names a missing field {e}"


def tokenize_checked(text: Any, row: dict, cfg: Any, tokenizer) -> tuple[list[int], str | None]:
    """The prompt's token ids (BOS first, if the tokenizer has one), or why the row is unusable."""
    if not isinstance(text, str) or not text.strip():
        return [], f"missing or empty '{cfg.prompt_key}'"
    if row.get(cfg.reference_key) is None:
        return [], f"missing '{cfg.reference_key}'"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id] + ids
    if len(ids) > cfg.max_prompt_tokens:
        return [], f"prompt longer than data.max_prompt_tokens={cfg.max_prompt_tokens}"
    return ids, None


class PromptStream:
    """Endless batches over the prompts, reshuffled each epoch; `state()` resumes exactly."""

    def __init__(self, prompts: list[Prompt], shuffle: bool = True, seed: int = 0):
        self.prompts, self.shuffle, self.seed = prompts, shuffle, seed
        self.epoch, self.pos = 0, 0
        self._order = self._make_order()

    def _make_order(self) -> list[int]:
        order = list(range(len(self.prompts)))
        if self.shuffle:
            random.Random(self.seed + self.epoch).shuffle(order)
        return order

    def next_batch(self, n: int, step: int | None = None) -> list[Prompt]:
        """The next n prompts (`step` is unused here: a MixedStream weighs sources by it)."""
        out = []
        while len(out) < n:
            if self.pos == len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._make_order()
            out.append(self.prompts[self._order[self.pos]])
            self.pos += 1
        return out

    def metrics(self) -> dict[str, float]:
        """`data/epoch`: epochs of the prompts drawn so far (1.5 = half-way through the second)."""
        return {"data/epoch": self.epoch + self.pos / len(self._order)}

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order = self._make_order()
