"""ScaleRL's no-positive-resampling (`data.retire_pass_rate`): prompts that the policy passes at a
high rate leave every later epoch; the stream still resumes exactly."""

import logging
from types import SimpleNamespace

import pytest

from cispo.data import Prompt, PromptStream, solved_prompts
from cispo.data_mix import MixedStream

PROMPTS = [Prompt(f"q{i}", [1, i], str(i), "math") for i in range(6)]


def sample(i: int) -> SimpleNamespace:
    return SimpleNamespace(prompt_index=i)


def test_solved_prompts_by_hand():
    batch = PROMPTS[:3]
    # prompt 0: 3 of 4 pass (0.75); prompt 1: 4 of 4; prompt 2: 1 of 2 scored (two skipped)
    samples = [sample(i) for i in (0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2)]
    scores = [1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, None, None, 0.0]
    assert solved_prompts(batch, samples, scores, 1.0, 0.9) == [PROMPTS[1]]
    assert solved_prompts(batch, samples, scores, 1.0, 0.75) == [PROMPTS[0], PROMPTS[1]]
    assert solved_prompts(batch, samples, scores, 1.0, 0.5) == batch
    assert solved_prompts(batch, samples, scores, 1.5, 0.1) == []  # nobody scores 1.5
    assert solved_prompts(batch, [sample(0)] * 2, [None, None], 1.0, 0.0) == []  # all skipped


def test_retired_prompts_leave_later_epochs_only():
    s = PromptStream(PROMPTS, shuffle=True, seed=3)
    first = s.next_batch(3)
    assert s.retire([first[0], first[0], PROMPTS[5]]) == 2  # twice in one call counts once
    assert s.retire([PROMPTS[5]]) == 0
    rest = s.next_batch(3)  # the current epoch keeps its order: the retired prompt can still come
    assert sorted(q.text for q in first + rest) == sorted(q.text for q in PROMPTS)
    later = s.next_batch(4 * 4)  # four more epochs of the 4 prompts left
    assert {q.text for q in later} == {q.text for q in PROMPTS} - {first[0].text, "q5"}
    assert s.metrics()["data/retired"] == 2.0
    assert s.metrics()["data/epoch"] == pytest.approx(5.0)


def test_state_resumes_exactly_with_retirements_in_the_middle_of_an_epoch():
    a = PromptStream(PROMPTS, shuffle=True, seed=0)
    a.next_batch(4)
    a.retire(PROMPTS[:2])
    a.next_batch(3)  # into epoch 1, whose order leaves PROMPTS[0:2] out
    a.retire([PROMPTS[4]])  # retired mid-epoch: epoch 1's order must not change on resume
    b = PromptStream(PROMPTS, shuffle=True, seed=0)
    b.load_state(a.state())
    assert [q.text for q in b.next_batch(12)] == [q.text for q in a.next_batch(12)]
    assert b.state() == a.state()
    # an old checkpoint's state (no retirement keys) still loads
    c = PromptStream(PROMPTS, shuffle=True, seed=0)
    c.load_state({"epoch": 0, "pos": 2})
    assert c.retired == [] and len(c.next_batch(4)) == 4


def test_every_prompt_retired_uses_them_all_again(caplog):
    s = PromptStream(PROMPTS[:2], shuffle=False)
    s.retire(s.next_batch(2))
    with caplog.at_level(logging.WARNING):
        assert [q.text for q in s.next_batch(2)] == ["q0", "q1"]
    assert "every prompt is retired" in caplog.text


def test_mixed_stream_retires_in_the_source_that_gave_the_prompt():
    a, b = PromptStream(PROMPTS[:3], shuffle=False), PromptStream(PROMPTS[3:], shuffle=False)
    mix = MixedStream({"a": a, "b": b}, [SimpleNamespace(step=0, weights={"a": 1, "b": 1})])
    batch = mix.next_batch(2, step=0)
    assert mix.retire(batch) == 2 and a.retired == [0] and b.retired == [0]
    assert mix.metrics()["data/retired"] == 2.0
    mix.load_state(mix.state())
    assert a.retired == [0]


def test_a_pass_rate_outside_0_1_is_refused_before_start():
    from omegaconf import OmegaConf

    from cispo.config import Config
    from cispo.config_check import value_problems

    cfg = OmegaConf.structured(Config)
    cfg.data.retire_pass_rate = 90
    [msg] = value_problems(cfg)
    assert "data.retire_pass_rate=90" in msg
    cfg.data.retire_pass_rate = 0.9
    assert value_problems(cfg) == []
