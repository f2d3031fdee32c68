"""GenRM plumbing with the real tiny model in a real Ray actor. The tiny random model judges at
random (and its tokenizer knows digits only), so this checks the path, not the judgements:
prompts reach the judge, every output is parsed into a valid score or a counted skip."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace as NS

import pytest

from rewards.manager import RewardManager


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from omegaconf import OmegaConf

    from cispo.config import ModelConfig
    from cispo.models.build import prepare

    return prepare(OmegaConf.structured(ModelConfig), tmp_path_factory.mktemp("judge"))


def cfg(model: str, mode: str, on_unparsed: str) -> NS:
    opts = {"model": model, "mode": mode, "on_unparsed": on_unparsed, "max_new_tokens": 6,
            "max_prompt_tokens": 64, "temperature": 1.0, "timeout_s": 120}
    return NS(sources={"chat": "genrm"}, default="genrm", modules=[], options={"genrm": opts},
              timeout_s=30.0, error_score=0.0, max_concurrency=2, num_workers=1,
              worker_memory_mb=0, length_penalty=NS(enabled=False))


ITEMS = [{"completion": c, "reference": "42", "prompt": "What is 6*7?", "data_source": "chat",
          "metadata": {}} for c in ("42", "It is 41.", "\\boxed{42}", "")]


def test_judge_starts_on_first_call_when_the_manager_is_built_before_ray(tiny_model):
    """train.py builds the RewardManager before it starts Ray: the judge must not start a Ray
    of its own then (it would have too few CPUs for the run), only on its first call."""
    import ray

    from rewards import genrm

    if ray.is_initialized():  # other tests started Ray in this process: check in a fresh one
        name = "test_judge_starts_on_first_call_when_the_manager_is_built_before_ray"
        p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            f"{__file__}::{name}"], capture_output=True, text=True, timeout=600)
        assert p.returncode == 0 and "1 passed" in p.stdout, p.stdout[-3000:]
        return
    try:
        with RewardManager(cfg(tiny_model, "pairwise", "skip")) as mgr:
            assert genrm._actor is None and not ray.is_initialized()
            ray.init(num_cpus=1, include_dashboard=False, configure_logging=False)  # train.py's turn
            scores, m = mgr.score(ITEMS[:2])
            assert genrm._actor is not None
    finally:  # the session's `ray_local` (conftest) starts the Ray the later tests size for
        ray.shutdown()
    assert len(scores) == 2 and m["reward/genrm/errors"] == 0.0


@pytest.mark.parametrize("mode,valid", [("consistency", {0.0, 0.25, 0.5, 0.75, 1.0}),
                                        ("pairwise", {-1.0, 0.0, 1.0})])
def test_judge_actor_scores_or_skips_every_sample(tiny_model, ray_local, mode, valid):
    with RewardManager(cfg(tiny_model, mode, "skip")) as mgr:
        scores, m = mgr.score(ITEMS)
    assert len(scores) == len(ITEMS)
    assert all(s is None or s in valid for s in scores), scores
    assert m["reward/genrm/errors"] == 0.0 and m["reward/genrm/timeouts"] == 0.0
    assert m["reward/genrm/skips"] == sum(s is None for s in scores)
    assert m["reward/genrm/judged_total"] >= len(ITEMS)


def test_unparsed_verdicts_can_score_instead_of_skip(tiny_model, ray_local):
    from rewards import genrm

    with RewardManager(cfg(tiny_model, "consistency", "score")) as mgr:
        outputs = __import__("ray").get(genrm._actor.generate.remote(["Grade: "] * 3))
        scores, m = mgr.score(ITEMS)
    assert len(outputs) == 3 and all(isinstance(o, str) for o in outputs)
    assert None not in scores and m["reward/genrm/skips"] == 0.0
