"""Several prompt sources mixed by weights that change over steps (`data_mix.*`).

M1's curriculum goes from reasoning-only data to a mix with general data. Here a schedule of
points `(step, {source: weight})` gives each step's weights (piecewise linear between points,
constant outside them); `allocate` turns them into whole prompts per source for a batch, and
`MixedStream` draws that many from each source's own resumable `PromptStream`.

    weights_at([MixPoint(0, {"math": 1}), MixPoint(100, {"math": 1, "chat": 1})], 50)
    -> {"math": 0.75, "chat": 0.25}
"""

from __future__ import annotations

import math
from typing import Any

from cispo import data


class MixError(ValueError):
    """A data_mix config that cannot work; the message says what to change."""


def weights_at(schedule: list[Any], step: int) -> dict[str, float]:
    """Normalised weights at `step`: interpolate the two points around it (by their normalised
    weights), hold the first point's before it and the last point's after it."""
    if not schedule:
        raise MixError("data_mix.schedule is empty: give at least one point {step, weights}")
    points = sorted(schedule, key=lambda p: p.step)
    norm = [_normalise(p.weights, p.step) for p in points]
    if step <= points[0].step:
        return norm[0]
    for i in range(len(points) - 1):
        a, b, wa, wb = points[i], points[i + 1], norm[i], norm[i + 1]
        if a.step <= step < b.step:
            t = (step - a.step) / (b.step - a.step)
            names = sorted(set(wa) | set(wb))
            out = {n: (1 - t) * wa.get(n, 0.0) + t * wb.get(n, 0.0) for n in names}
            return {n: w for n, w in out.items() if w > 0}
    return norm[-1]


def _normalise(weights: dict[str, float], step: int) -> dict[str, float]:
    if any(w < 0 for w in weights.values()):
        raise MixError(f"data_mix.schedule point at step {step}: weights must be >= 0, got {dict(weights)}")
    total = sum(weights.values())
    if total <= 0:
        raise MixError(f"data_mix.schedule point at step {step}: weights sum to 0")
    return {n: w / total for n, w in weights.items() if w > 0}


def allocate(weights: dict[str, float], n: int) -> dict[str, int]:
    """Split n prompts by weights: floors first, then the largest remainders (ties by name)."""
    exact = {k: w * n for k, w in weights.items()}
    out = {k: math.floor(v) for k, v in exact.items()}
    left = n - sum(out.values())
    for k in sorted(exact, key=lambda k: (-(exact[k] - out[k]), k))[:left]:
        out[k] += 1
    return out


class MixedStream:
    """`next_batch(n, step)`: prompts from each source in proportion to the step's weights."""

    def __init__(self, streams: dict[str, data.PromptStream], schedule: list[Any]):
        unknown = sorted({n for p in schedule for n in p.weights} - set(streams))
        if unknown:
            raise MixError(f"data_mix.schedule names sources {unknown} that data_mix.sources "
                           f"does not define (defined: {sorted(streams)})")
        weights_at(schedule, 0)  # normalises (so validates) every point now, not mid-run
        self.streams, self.schedule = streams, schedule
        self.last_counts: dict[str, int] = {}

    def next_batch(self, n: int, step: int) -> list[data.Prompt]:
        self.last_counts = allocate(weights_at(self.schedule, step), n)
        return [q for name, k in sorted(self.last_counts.items()) if k
                for q in self.streams[name].next_batch(k)]

    def metrics(self) -> dict[str, float]:
        """`data/mix_<source>`: the share of the last batch drawn from each source;
        `data/epoch_<source>`: epochs of that source's prompts drawn so far."""
        total = sum(self.last_counts.values()) or 1
        return {**{f"data/mix_{name}": k / total for name, k in sorted(self.last_counts.items())},
                **{f"data/epoch_{name}": s.metrics()["data/epoch"] for name, s in sorted(self.streams.items())}}

    def state(self) -> dict:
        return {name: s.state() for name, s in self.streams.items()}

    def load_state(self, state: dict) -> None:
        for name, s in self.streams.items():
            s.load_state(state[name])


def build_mixed_stream(cfg: Any, tokenizer) -> tuple[MixedStream, int]:
    """The MixedStream for `cfg.data_mix` (each source loaded and validated with the other
    `data.*` keys) and the number of rows skipped over all sources."""
    from omegaconf import OmegaConf

    streams, skipped = {}, 0
    for k, (name, src) in enumerate(sorted(cfg.data_mix.sources.items())):
        dcfg = OmegaConf.merge(cfg.data, {"source": src})
        try:
            prompts, bad = data.validate(data.load_rows(dcfg), dcfg, tokenizer)
        except data.DataError as e:
            raise data.DataError(f"data_mix source {name!r}: {e}") from None
        skipped += sum(bad.values())
        streams[name] = data.PromptStream(prompts, cfg.data.shuffle, cfg.data.seed + k)
    return MixedStream(streams, list(cfg.data_mix.schedule)), skipped
