"""The staged window advances on synthetic length/perplexity statistics, and only then."""

import math
import random

import pytest
from omegaconf import OmegaConf

from cispo.config import ScheduleConfig
from cispo.schedule import (
    ScheduleError,
    WindowSchedule,
    generation_stats,
    p99,
    perplexity,
    relative_change,
)

WINDOWS = [40960, 49152, 57344, 65536, 73728, 81920]


def schedule(**kw) -> WindowSchedule:
    cfg = OmegaConf.structured(ScheduleConfig(**{"windows": WINDOWS,
                                                 "eps_high": [0.28, 0.28, 0.26, 0.24, 0.22, 0.2],
                                                 "grad_clip": [1.0, 1.0, 0.8, 0.6, 0.5, 0.4],
                                                 "min_steps_per_stage": 5, "ppl_window": 3, **kw}))
    return WindowSchedule(cfg, default_eps_high=0.28, default_grad_clip=1.0)


def synthetic_step(rng: random.Random, window: int, t: int) -> dict[str, float]:
    """Responses grow towards the window over ~30 steps; perplexity decays to a plateau."""
    near = min(1.0, 0.5 + t / 30)
    lengths = [min(window, int(window * near * rng.uniform(0.6, 1.0))) for _ in range(256)]
    ppl = 1.3 + 0.7 * math.exp(-t / 6)
    return generation_stats(lengths, [-math.log(ppl) * n for n in lengths])


def test_statistics_helpers():
    assert p99(list(range(1, 101))) == 99.0
    assert p99([7]) == 7.0
    assert perplexity(-2 * math.log(1.5), 2) == pytest.approx(1.5)
    assert relative_change([1.0, 1.0], 2) == math.inf  # not enough history yet
    assert relative_change([2.0, 2.0, 1.0, 1.0], 2) == pytest.approx(0.5)


def test_window_advances_through_every_stage_on_synthetic_statistics():
    s, rng = schedule(), random.Random(0)
    assert s.current().window == 40960
    seen, t, steps = [], 0, 0
    while steps < 1000 and not s.last_stage:
        change = s.update(synthetic_step(rng, s.current().window, t))
        t, steps = (0, steps + 1) if change else (t + 1, steps + 1)
        if change:
            seen.append(change)
            assert "p99 length" in change.reason and "perplexity change" in change.reason
    assert [c.window for c in seen] == WINDOWS[1:]
    assert [c.eps_high for c in seen] == [0.28, 0.26, 0.24, 0.22, 0.2]
    assert [c.grad_clip for c in seen] == [1.0, 0.8, 0.6, 0.5, 0.4]
    m = s.metrics()
    assert m["schedule/stage"] == 5.0 and m["schedule/window"] == 81920.0
    assert s.update(synthetic_step(rng, 81920, 100)) is None  # the last stage is final


def test_no_advance_while_lengths_are_short_or_perplexity_moves():
    s = schedule()
    short = generation_stats([1000] * 100, [-0.2 * 1000] * 100)  # flat ppl, far from the window
    for _ in range(50):
        assert s.update(short) is None
    assert "p99 length" in s.ready()[1]
    s = schedule()
    for k in range(50):  # lengths at the window, perplexity still falling 5% a step
        lp = -math.log(3.0 * 0.95**k)
        assert s.update(generation_stats([40960] * 10, [lp * 40960] * 10)) is None
    assert "perplexity still moving" in s.ready()[1]


def test_min_steps_per_stage_holds_even_when_settled():
    s = schedule(min_steps_per_stage=12)
    settled = generation_stats([40000] * 10, [-0.1 * 40000] * 10)
    changes = [s.update(settled) for _ in range(12)]
    assert changes[:-1] == [None] * 11 and changes[-1].window == 49152


def test_state_round_trip_resumes_the_same_decisions():
    a, rng = schedule(), random.Random(1)
    stats = [synthetic_step(rng, 40960, t) for t in range(40)]
    for st in stats[:17]:
        a.update(st)
    b = schedule()
    b.load_state_dict(a.state_dict())
    assert [a.update(st) for st in stats[17:]] == [b.update(st) for st in stats[17:]]


def test_off_without_windows_and_bad_configs_are_clear():
    off = WindowSchedule(OmegaConf.structured(ScheduleConfig), 0.28, 1.0)
    assert not off.enabled and off.update({"p99_length": 1, "perplexity": 1}) is None
    assert off.metrics() == {}
    with pytest.raises(ScheduleError, match="must increase"):
        schedule(windows=[49152, 40960], eps_high=[], grad_clip=[])
    with pytest.raises(ScheduleError, match="schedule.eps_high has 2 values for 6 windows"):
        schedule(eps_high=[0.2, 0.1])


def test_m1_80k_config_schedule_is_valid():
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    conf = Path(__file__).resolve().parent.parent / "conf"
    with initialize_config_dir(str(conf), version_base=None):
        cfg = compose("config", overrides=["+exp=m1_80k"])
    s = WindowSchedule(cfg.schedule, cfg.algorithm.eps_high, cfg.learner.grad_clip)
    assert s.current().window == 40960 and cfg.schedule.windows[-1] == cfg.rollout.max_new_tokens


def test_docs_launch_examples_run(monkeypatch, capsys):
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(root)
    blocks = re.findall(r"```python\n(.*?)```", (root / "docs" / "launch.md").read_text(), flags=re.S)
    assert blocks
    for code in blocks:
        exec(compile(code, "docs/launch.md", "exec"), {})
    assert capsys.readouterr().out.split("\n")[:3] == ["40960", "3 49152 0.24 0.6", "49152.0"]


def test_stats_from_rollout_samples():
    from cispo.schedule import stats_from_samples
    from rollout.types import Sample

    samples = [Sample(0, [1], [5] * n, [-0.5] * n, "stop") for n in (10, 30)]
    st = stats_from_samples(samples)
    assert st["p99_length"] == 30.0 and st["perplexity"] == pytest.approx(math.exp(0.5))
