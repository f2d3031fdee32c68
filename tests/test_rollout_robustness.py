"""Repetition early stop and generation-worker crashes."""

import os

import pytest
import ray
import torch
from omegaconf import OmegaConf

from cispo.config import RolloutConfig
from cispo.models.build import load_tokenizer
from rollout.engines.hf import HFEngine
from rollout.repetition import trailing_confident_run
from rollout.types import SamplingParams


def _prompt(path):
    tok = load_tokenizer(path)
    return [tok.bos_token_id] + tok("1+2=\\boxed{", add_special_tokens=False).input_ids


def test_repetition_stop_low_vs_high_entropy(tiny_model_path):
    engine = HFEngine(tiny_model_path)
    params = SamplingParams(max_new_tokens=24, seed=0, repetition_window=5, repetition_threshold=0.99)
    cfg = engine.model.config
    # a head whose logits ignore the input: all-zero (uniform, p = 1/V, far below 0.99), or a
    # large bias on one token (that token with p ≈ 1 at every step: the low-entropy policy)
    head = torch.nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
    engine.model.lm_head = head
    high = engine.generate([_prompt(tiny_model_path)], 8, params)
    # EOS is one of the V tokens, so some responses stop; none is cut for repetition
    assert all(s.finish_reason in ("length", "stop") for s in high)
    assert any(len(s.response_ids) == 24 for s in high)
    with torch.no_grad():
        head.bias[7] = 50.0
    low = engine.generate([_prompt(tiny_model_path)], 8, params)
    for s in low:
        assert s.finish_reason == "repetition", s
        assert s.response_ids == [7] * 5 and trailing_confident_run(s.logprobs, 0.99) == 5


def test_trailing_confident_run():
    import math

    lp = [math.log(0.5), math.log(0.995), math.log(0.999), math.log(0.991)]
    assert trailing_confident_run(lp, 0.99) == 3
    assert trailing_confident_run(lp + [math.log(0.9)], 0.99) == 0


@pytest.mark.parametrize("engine", ["hf", "graph"])
def test_killed_worker_still_yields_the_complete_batch(ray_local, tiny_model_path, engine):
    """A worker crash between steps, then os._exit inside a worker in the middle of a step."""
    import sys

    from ray import cloudpickle

    from cispo.models.build import load_model
    from rollout.manager import RolloutManager

    cfg = OmegaConf.structured(RolloutConfig(engine=engine, num_workers=2, group_size=2, max_new_tokens=4,
                                             num_cpus_per_worker=1, max_restarts=2))
    mgr = RolloutManager(cfg, tiny_model_path)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the crash hook runs in a worker
    try:
        sd = {k: v + 0.01 for k, v in load_model(tiny_model_path).state_dict().items()}
        mgr.sync_weights(ray.put(sd))  # workers now hold v1, not the checkpoint on disk
        prompts = [_prompt(tiny_model_path)] * 4
        expected = mgr.generate(prompts, seed=3)
        # crash; Ray restarts it with stale weights. os._exit inside a call we wait on: ray.kill
        # is asynchronous, and the old process may still serve the next generate before it dies
        with pytest.raises((ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)):
            ray.get(mgr.workers[0].__ray_call__.remote(lambda worker: os._exit(1)))
        got = mgr.generate(prompts, seed=3)
        assert mgr.restarts >= 1
        assert [(s.prompt_index, s.response_ids) for s in got] == \
            [(s.prompt_index, s.response_ids) for s in expected]
        assert [s.logprobs for s in got] == [s.logprobs for s in expected]
        restarts = mgr.restarts
        ray.get(mgr.workers[1].__ray_call__.remote(_exit_on_third_forward))
        got = mgr.generate(prompts, seed=3)  # worker 1 exits mid-decode of its 2 prompts
        assert mgr.restarts == restarts + 1
        assert [s.prompt_index for s in got] == [0, 0, 1, 1, 2, 2, 3, 3]  # none lost or doubled
        assert [(s.response_ids, s.logprobs, s.finish_reason) for s in got] == \
            [(s.response_ids, s.logprobs, s.finish_reason) for s in expected]
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        mgr.shutdown()


def _exit_on_third_forward(worker_self) -> None:
    """Runs inside a generation worker: the engine's third model call (hf: prefill, then the
    second decode step; graph: its third decode step) ends the process with os._exit, as an
    OOM-killed or crashing process would."""
    import os

    calls = [0]

    def hook(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 3:
            os._exit(1)

    engine = worker_self.engine
    if hasattr(engine, "static"):  # the graph engine runs its own step, not the module's forward
        step = engine.static.decode

        def decode(*args, **kwargs):
            hook()
            return step(*args, **kwargs)

        engine.static.decode = decode
    else:
        engine.model.register_forward_hook(hook)
