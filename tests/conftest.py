"""Shared fixtures: a tiny random hybrid MiniMax on disk and one local Ray for the session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> str:
    from omegaconf import OmegaConf

    from cispo.config import ModelConfig
    from cispo.models.build import prepare

    return prepare(OmegaConf.structured(ModelConfig), tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def ray_local():
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # one Ray for the whole session, sized for the largest test (2 learner ranks + engines); a
    # test must not shut it down: a later ray.remote would start a default Ray of this
    # machine's 2 CPUs, where that test's actors wait for CPUs forever
    # "sandbox_test": slots for the scorer-actor tests (tests/test_scorers.py), which place
    # sandbox.placement=actors scorers on this one node under that resource name
    ray.init(num_cpus=4, resources={"sandbox_test": 4}, include_dashboard=False,
             configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def pytest_collection_modifyitems(config, items):
    """GPU tests skip cleanly on machines without CUDA (they run on the lent GPU machine)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
