"""Data mixing by weights over steps (M1's curriculum: reasoning first, then mixed)."""

import json
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st
from omegaconf import OmegaConf

from cispo.config import Config, MixPoint
from cispo.data_mix import MixError, allocate, build_mixed_stream, weights_at

CURRICULUM = [MixPoint(0, {"math": 1.0}), MixPoint(100, {"math": 1.0}),
              MixPoint(200, {"math": 0.5, "chat": 0.5})]


def test_weights_follow_the_curriculum():
    assert weights_at(CURRICULUM, 0) == {"math": 1.0}
    assert weights_at(CURRICULUM, 99) == {"math": 1.0}
    assert weights_at(CURRICULUM, 150) == pytest.approx({"math": 0.75, "chat": 0.25})
    assert weights_at(CURRICULUM, 10_000) == {"math": 0.5, "chat": 0.5}
    assert weights_at([MixPoint(5, {"a": 3, "b": 1})], 0) == {"a": 0.75, "b": 0.25}


@given(st.dictionaries(st.sampled_from("abcdef"), st.floats(0.01, 100), min_size=1),
       st.integers(0, 500))
def test_allocate_sums_to_n_and_stays_within_one_of_exact(weights, n):
    total = sum(weights.values())
    got = allocate({k: w / total for k, w in weights.items()}, n)
    assert sum(got.values()) == n
    assert all(abs(got[k] - n * w / total) < 1 for k, w in weights.items())


def test_bad_schedules_are_clear():
    with pytest.raises(MixError, match="empty"):
        weights_at([], 0)
    with pytest.raises(MixError, match="sum to 0"):
        weights_at([MixPoint(0, {"a": 0.0})], 0)
    with pytest.raises(MixError, match=">= 0"):
        weights_at([MixPoint(3, {"a": -1.0, "b": 2.0})], 0)


def test_mixed_stream_from_two_files(tmp_path):
    from cispo.models.tokenizer import build_char_tokenizer

    for name in ("math", "chat"):
        with open(tmp_path / f"{name}.jsonl", "w") as f:
            for i in range(7):
                f.write(json.dumps({"prompt": f"{i}+{i}=", "reference": str(2 * i),
                                    "data_source": name}) + "\n")
    cfg = OmegaConf.structured(Config)
    cfg.data_mix.sources = {"math": str(tmp_path / "math.jsonl"), "chat": str(tmp_path / "chat.jsonl")}
    cfg.data_mix.schedule = [OmegaConf.structured(p) for p in CURRICULUM]
    stream, skipped = build_mixed_stream(cfg, build_char_tokenizer())
    assert skipped == 0
    first = stream.next_batch(8, step=0)
    assert Counter(q.data_source for q in first) == {"math": 8}
    late = stream.next_batch(8, step=300)
    assert Counter(q.data_source for q in late) == {"math": 4, "chat": 4}
    # 8 + 4 of math's 7 prompts, 4 of chat's: epochs drawn so far
    assert stream.metrics() == pytest.approx({"data/mix_chat": 0.5, "data/mix_math": 0.5,
                                              "data/epoch_chat": 4 / 7, "data/epoch_math": 12 / 7})
    state = stream.state()
    again, _ = build_mixed_stream(cfg, build_char_tokenizer())
    again.load_state(state)
    assert [q.text for q in again.next_batch(6, 150)] == [q.text for q in stream.next_batch(6, 150)]


def test_schedule_naming_an_undefined_source_fails_at_start(tmp_path):
    from cispo.data_mix import MixedStream

    with pytest.raises(MixError, match=r"sources \['chat'\] that data_mix.sources does not define"):
        MixedStream({"math": None}, CURRICULUM)
