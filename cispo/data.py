"""Prompts: load an HF `datasets` dataset, validate rows, and hand out batches in a resumable order.

Sources (`data.source`): "arithmetic" (built in), "calc" (the calc environment's remainders), a local .jsonl/.json/.parquet file, or a hub
dataset name. A row needs a non-empty string prompt and a reference (column names from config);
rows that fail are skipped, counted per reason, and logged with where they are (`file:line` of a
JSON Lines file, 1-based; `row N` elsewhere) — never fatal, never silent. A line that is not
JSON at all is such a row too: JSON files are read here, line by line, not by pyarrow, whose
error on one bad line names neither the file nor the line.
"""

from __future__ import annotations

import json
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


class Rows(list):
    """Rows read from a JSON file: a list of dicts that knows where each came from, and the
    lines that were not rows at all (not JSON, or not an object)."""

    def __init__(self, rows: list, where: list[str], bad: list[tuple[str, str]]):
        super().__init__(rows)
        self.where = where  # "file:line" of each row
        self.bad = bad  # (where, why) of each line that is not a row


def read_json_rows(path: Path) -> Rows:
    """A .jsonl file (one object per line; blank lines are not rows), or a .json file holding a
    list of objects or JSON Lines."""
    text = path.read_text()
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(items, list):
            raise DataError(f"{path}: a .json data file holds a list of objects or JSON Lines")
        ok = [i for i, item in enumerate(items, 1) if isinstance(item, dict)]
        return Rows([items[i - 1] for i in ok], [f"{path} item {i}" for i in ok],
                    [(f"{path} item {i}", "not a JSON object") for i, item in enumerate(items, 1)
                     if not isinstance(item, dict)])
    rows, where, bad = [], [], []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            bad.append((f"{path}:{n}", f"not JSON ({e.msg}, column {e.colno})"))
            continue
        if not isinstance(row, dict):
            bad.append((f"{path}:{n}", f"not a JSON object (a {type(row).__name__})"))
            continue
        rows.append(row)
        where.append(f"{path}:{n}")
    return Rows(rows, where, bad)


def load_rows(cfg: Any):
    """The rows named by `data.source`: a `datasets.Dataset` (built-in task, parquet, hub) or,
    for JSON files, `Rows`."""
    import datasets

    src = cfg.source
    if src == "calc":  # the calc environment's tasks (environments.calc): arithmetic_rows of them
        from environments import calc

        return calc.dataset(cfg.arithmetic_rows, cfg.seed)
    if src == "arithmetic":
        from cispo import arithmetic

        return arithmetic.dataset(cfg.arithmetic_rows, cfg.arithmetic_max_operand, cfg.seed)
    path = Path(src)
    kinds = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
    if path.suffix in kinds:
        if not path.exists():
            raise DataError(f"data.source={src!r}: no such file")
        if kinds[path.suffix] == "json":
            return read_json_rows(path)
        return datasets.load_dataset(kinds[path.suffix], data_files=str(path), split="train")
    return datasets.load_dataset(src, split=cfg.split)


def validate(ds, cfg: Any, tokenizer) -> tuple[list[Prompt], Counter]:
    """Rows → Prompts; returns (kept, Counter of skip reasons). Every skipped row is named by
    where it is (the first few one by one, all of them in the closing summary)."""
    kept: list[Prompt] = []
    skipped: Counter = Counter()
    where = getattr(ds, "where", None)
    bad: dict[str, list[str]] = {}  # reason -> locations
    for loc, reason in getattr(ds, "bad", []):
        bad.setdefault(reason.split(" (")[0], []).append(loc)
        skipped[reason.split(" (")[0]] += 1
        _warn_row(sum(skipped.values()), loc, reason)
    for i, row in enumerate(ds):
        text, reason = prompt_text(row, cfg)
        if reason is None:
            ids, reason = tokenize_checked(text, row, cfg, tokenizer)
        if reason:
            loc = where[i] if where else f"{cfg.source} row {i + 1}"
            skipped[reason] += 1
            bad.setdefault(reason, []).append(loc)
            _warn_row(sum(skipped.values()), loc, reason)
            continue
        source = row.get(cfg.data_source_key) or cfg.default_data_source
        extra = {k: v for k, v in row.items() if k not in (cfg.prompt_key, cfg.reference_key)}
        kept.append(Prompt(text, ids, row[cfg.reference_key], str(source), extra))
    if skipped:
        total = len(ds) + len(getattr(ds, "bad", []))
        log.warning("skipped %d of %d data rows: %s", sum(skipped.values()), total,
                    "; ".join(f"{reason}: {_locations(locs)}" for reason, locs in bad.items()))
    if not kept:
        raise DataError(f"data.source={cfg.source!r}: no usable rows ({dict(skipped)}); "
                        f"rows need '{cfg.prompt_key}' and '{cfg.reference_key}'"
                        + (f"; e.g. {next(iter(bad.values()))[0]}" if bad else ""))
    return kept, skipped


SHOWN_ROWS = 5  # skipped rows logged one by one; the rest only in the summary


def _warn_row(n: int, loc: str, reason: str) -> None:
    if n <= SHOWN_ROWS:
        log.warning("skipping data row %s: %s", loc, reason)


def _locations(locs: list[str]) -> str:
    """'d.jsonl:3, 7-9, 12' (one file's line numbers as runs) or the locations as they are."""
    head = locs[0].rpartition(":")[0]
    nums = [loc.rpartition(":")[2] for loc in locs]
    if not head or any(loc.rpartition(":")[0] != head for loc in locs) or not all(x.isdigit() for x in nums):
        return ", ".join(locs)
    runs: list[list[int]] = []
    for n in map(int, nums):
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return f"{head}:" + ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)


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
    """Endless batches over the prompts, reshuffled each epoch; `state()` resumes exactly.

    `retire(prompts)` (ScaleRL's no-positive-resampling): those prompts are left out of every
    later epoch's order (the current epoch keeps its order). If every prompt is retired, the
    next epoch uses them all again, with a warning, rather than stop the run.
    """

    def __init__(self, prompts: list[Prompt], shuffle: bool = True, seed: int = 0):
        self.prompts, self.shuffle, self.seed = prompts, shuffle, seed
        self.epoch, self.pos = 0, 0
        self.retired: list[int] = []  # prompt indices, in the order they were retired
        self._in_order = 0  # how many of them the current epoch's order leaves out
        self._index = {id(q): i for i, q in enumerate(prompts)}
        self._order = self._make_order()

    def _make_order(self) -> list[int]:
        gone = set(self.retired[:self._in_order])
        order = [i for i in range(len(self.prompts)) if i not in gone]
        if not order:
            log.warning("data: every prompt is retired (pass rate over data.retire_pass_rate); "
                        "epoch %d uses them all again", self.epoch)
            order = list(range(len(self.prompts)))
        if self.shuffle:
            random.Random(self.seed + self.epoch).shuffle(order)
        return order

    def next_batch(self, n: int, step: int | None = None) -> list[Prompt]:
        """The next n prompts (`step` is unused here: a MixedStream weighs sources by it)."""
        out = []
        while len(out) < n:
            if self.pos == len(self._order):
                self.epoch, self.pos, self._in_order = self.epoch + 1, 0, len(self.retired)
                self._order = self._make_order()
            out.append(self.prompts[self._order[self.pos]])
            self.pos += 1
        return out

    def retire(self, prompts: list[Prompt]) -> int:
        """Leave these prompts (objects this stream handed out) out of later epochs; returns how
        many were newly retired."""
        done = set(self.retired)
        new = [i for q in prompts if (i := self._index.get(id(q))) is not None and i not in done]
        new = list(dict.fromkeys(new))
        self.retired += new
        return len(new)

    def metrics(self) -> dict[str, float]:
        """`data/epoch`: epochs of the prompts drawn so far (1.5 = half-way through the second);
        `data/retired`: prompts retired so far (no-positive-resampling)."""
        return {"data/epoch": self.epoch + self.pos / len(self._order),
                "data/retired": float(len(self.retired))}

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "retired": list(self.retired),
                "retired_in_order": self._in_order}

    def load_state(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self.retired = list(state.get("retired", []))
        self._in_order = state.get("retired_in_order", 0)
        self._order = self._make_order()


def solved_prompts(batch: list[Prompt], samples: list, scores: list, pass_score: float,
                   pass_rate: float) -> list[Prompt]:
    """The prompts of `batch` whose scored samples reached `pass_score` at a rate >= `pass_rate`
    (samples carry `prompt_index` into batch; a skipped sample, score None, does not count)."""
    passed: dict[int, list[bool]] = {}
    for s, x in zip(samples, scores, strict=True):
        if x is not None:
            passed.setdefault(s.prompt_index, []).append(float(x) >= pass_score)
    return [batch[i] for i, ok in sorted(passed.items()) if ok and sum(ok) / len(ok) >= pass_rate]
