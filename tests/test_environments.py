"""Multi-turn environments (issue 17): the tool-call parser, the registry, the calc environment
as plain Python, episodes on the real tiny model (teacher forcing of whole trajectories, the
loss mask, environments that raise, hang or flood), and the loss's zero gradient on
environment tokens (float64, against the formula written out)."""

from __future__ import annotations

import time
from functools import partial

import pytest
import torch

from environments.calc import Calc, evaluate
from environments.registry import (
    ENVIRONMENTS,
    ToolEnvironment,
    ToolError,
    environment,
    get_environment,
    load_modules,
    make_environment,
)
from environments.tool_calls import ToolCall, ToolCallError, parse_tool_calls

# ---------------------------------------------------------------- the tool-call format


def test_parser_json_short_and_malformed_calls():
    calls = parse_tool_calls('x <tool_call>{"name": "calc", "arguments": {"expression": "2*3"}}'
                             '</tool_call> y <tool_call>7*8</tool_call>', "calc", "expression")
    assert calls == [ToolCall("calc", {"expression": "2*3"}), ToolCall("calc", {"expression": "7*8"})]
    assert parse_tool_calls('<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>') == \
        [ToolCall("f", {"a": 1})]  # arguments written as a JSON string
    bad = {'<tool_call>{"name": "calc", </tool_call>': "not valid JSON",
           '<tool_call>{"arguments": {}}</tool_call>': '"name"',
           '<tool_call>{"name": "calc", "arguments": [1]}</tool_call>': "JSON object",
           "<tool_call>7*8</tool_call>": "not JSON",  # no default tool
           "<tool_call>7*8": "unclosed", "56}</tool_call>": "without <tool_call>"}
    for text, why in bad.items():
        [err] = parse_tool_calls(text)
        assert isinstance(err, ToolCallError) and why in str(err), (text, err)
    assert parse_tool_calls("no call here \\boxed{3}") == []


def test_calc_environment_as_plain_python():
    env = Calc()
    assert env.reset({"prompt": "123456789*987654321=\\boxed{", "reference": "x"}) == ""
    obs, done, info = env.step("<tool_call>123456789*987654321</tool_call>")
    assert obs == "<tool_response>121932631112635269</tool_response>" and not done  # exact
    assert info == {"tool_calls": 1, "errors": 0}
    obs, done, info = env.step("<tool_call></tool_call>")  # empty: the question's expression
    assert obs == "<tool_response>121932631112635269</tool_response>"
    obs, done, info = env.step('<tool_call>{"name": "calc", "arguments": {"expression": "7//0"}}</tool_call>'
                               '<tool_call>{"name": "sh", "arguments": {}}</tool_call><tool_call>{oops</tool_call>')
    assert info == {"tool_calls": 3, "errors": 3} and not done
    assert "division by zero" in obs and "unknown tool 'sh'" in obs and "not valid JSON" in obs
    assert env.step("121932631112635269}") == ("", True, {"tool_calls": 0, "errors": 0})  # the answer
    for expr in ("__import__('os')", "2**3", "9" * 40 + "*" + "9" * 40, "x" * 65):
        with pytest.raises(ToolError):
            evaluate(expr)
    assert Calc(empty_call=False).step("<tool_call></tool_call>")[2]["errors"] == 1


def test_registry_user_module_and_unknown_name(tmp_path):
    f = tmp_path / "my_env.py"
    f.write_text("from environments.registry import environment\n"
                 "@environment('count_i17')\n"
                 "class Count:\n"
                 "    def __init__(self, limit=2):\n        self.limit, self.n = limit, 0\n"
                 "    def reset(self, task):\n        return 'go'\n"
                 "    def step(self, text):\n        self.n += 1\n"
                 "        return str(self.n), self.n >= self.limit, {}\n")
    load_modules([str(f)])
    env = make_environment("count_i17", {"limit": 3})
    assert env.reset({}) == "go" and env.step("a") == ("1", False, {}) and env.step("b")[1] is False
    assert env.step("c") == ("3", True, {})
    with pytest.raises(KeyError, match="registered: .*calc"):
        get_environment("nope")
    with pytest.raises(TypeError, match="lacks"):
        environment("broken_i17")(type("Broken", (), {}))
    del ENVIRONMENTS["count_i17"]


# ---------------------------------------------------------------- episodes on the tiny model


@pytest.fixture(scope="module")
def tool_model(tmp_path_factory):
    from omegaconf import OmegaConf

    from cispo.config import ModelConfig
    from cispo.models.build import prepare

    cfg = OmegaConf.structured(ModelConfig)
    cfg.tiny.tool_tokens = True
    return prepare(cfg, tmp_path_factory.mktemp("tool_model"))


@pytest.fixture(scope="module")
def engine(tool_model):
    from rollout.engines.hf import HFEngine

    return HFEngine(tool_model)


class Narrator(ToolEnvironment):
    """Answers every turn (never done): every episode has environment tokens between turns."""

    def step(self, text):
        return "<tool_response>12</tool_response>", False, {"tool_calls": 1, "errors": 0}


class Faulty(ToolEnvironment):
    """Fails as its task says; "ok" episodes end after one turn."""

    def reset(self, task):
        self.mode = task["mode"]
        if self.mode == "reset_raises":
            raise RuntimeError("no repo")
        return ""

    def step(self, text):
        if self.mode == "raise":
            raise ValueError("tool crashed")
        if self.mode == "hang":
            time.sleep(30)
        if self.mode == "flood":
            return "9" * 5000, False, {}
        if self.mode == "bad_type":
            return None
        return "", True, {}


def _episodes(engine, tasks, env_cls, G=2, **limits):
    from rollout.episodes import EpisodeLimits, run_episodes
    from rollout.types import SamplingParams

    tok = engine.tokenizer
    prompts = [tok.encode(t.get("prompt", "3*4=\\boxed{"), add_special_tokens=False) for t in tasks]
    params = SamplingParams(max_new_tokens=4, temperature=1.0, seed=3)
    return run_episodes(prompts, tasks, G, 0, env_cls, tok, partial(engine.decode_turns, params=params),
                        EpisodeLimits(**{"max_turns": 3, "max_total_tokens": 40, **limits}), 4,
                        forget=engine.forget_turns)


def test_turns_continue_from_the_kept_cache_as_a_whole_prefill_would(engine):
    """Each turn after the first forwards only the last sampled token and the observation into
    the episode's kept cache; tokens and log-probs equal prefilling the whole context each turn."""
    tasks = [{"prompt": "3*4=\\boxed{"}, {"prompt": "123*45=\\boxed{"}]
    obs = engine.tokenizer.encode("<tool_response>12</tool_response>", add_special_tokens=False)
    engine.keep_turn_state = False
    try:
        whole = _episodes(engine, tasks, Narrator, G=3)
    finally:
        engine.keep_turn_state = True
    before = dict(engine.turn_stats)
    kept = _episodes(engine, tasks, Narrator, G=3)
    stats = {k: engine.turn_stats[k] - before[k] for k in before}
    assert [s.response_ids for s in kept] == [s.response_ids for s in whole]
    for a, b in zip(kept, whole, strict=True):
        # float32 both ways; the two differ only in summation order (a cache of one row against
        # a left-padded batch), ~1e-7 relative per op over a few layers
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5)
    # turn 1 prefills the 6 prompts; turns 2 and 3 continue all 6 from their kept caches, each
    # forwarding the previous turn's last token and the observation
    assert stats["prefilled_rows"] == 6 and stats["reused_rows"] == 12
    assert stats["reused_tokens"] == 12 * (1 + len(obs))
    assert stats["prefilled_tokens"] == 3 * sum(len(s.prompt_ids) for s in kept[::3])
    assert engine._kept == {}  # every episode ended: its cache was dropped


def test_a_context_that_does_not_extend_the_kept_one_is_prefilled_whole(engine):
    from rollout.types import SamplingParams

    params = SamplingParams(max_new_tokens=3, temperature=1.0, seed=5)
    ctx = engine.tokenizer.encode("7*8=\\boxed{", add_special_tokens=False)
    [(toks, _, _, _)] = engine.decode_turns([ctx], [(90, 0)], [0], [3], [], params=params)
    assert (90, 0) in engine._kept and engine._kept[(90, 0)].tokens == ctx + toks[:-1]
    before = dict(engine.turn_stats)
    other = engine.tokenizer.encode("9*9=\\boxed{1", add_special_tokens=False)  # edited history
    [(again, _, _, _)] = engine.decode_turns([other], [(90, 0)], [3], [3], [], params=params)
    assert engine.turn_stats["reused_rows"] == before["reused_rows"]
    assert engine.turn_stats["prefilled_tokens"] == before["prefilled_tokens"] + len(other)
    engine.load_state_dict(dict(engine.model.state_dict()))  # new weights: nothing kept survives
    assert engine._kept == {}


def test_episode_logprobs_equal_teacher_forcing_and_mask_covers_model_tokens(engine, tool_model):
    from cispo.models.build import load_model
    from cispo.ops.logprobs import token_logprobs

    samples = _episodes(engine, [{"prompt": "3*4=\\boxed{"}, {"prompt": "12*5=\\boxed{"}], Narrator, G=3)
    obs = engine.tokenizer.encode("<tool_response>12</tool_response>", add_special_tokens=False)
    model = load_model(tool_model).eval()
    assert len(samples) == 6 and [s.prompt_index for s in samples] == [0, 0, 0, 1, 1, 1]
    for s in samples:
        assert s.finish_reason == "turns" and s.env["turns"] == 3
        m = s.response_mask
        assert len(m) == len(s.response_ids) == len(s.logprobs)
        # turn, observation, turn, observation, turn: the observations' tokens are exactly the 0s
        env_runs = [s.response_ids[i:i + len(obs)] for i in range(len(m)) if m[i] == 0 and (i == 0 or m[i - 1] == 1)]
        assert env_runs == [obs, obs] and m.count(0) == 2 * len(obs)
        assert all(lp == 0.0 for lp, k in zip(s.logprobs, m, strict=True) if k == 0)
        ids = torch.tensor([s.prompt_ids + s.response_ids])
        with torch.no_grad():
            lp = token_logprobs(model(ids).logits[0, :-1], ids[0, 1:])[len(s.prompt_ids) - 1:]
        keep = torch.tensor(m, dtype=torch.bool)
        # the engine decoded each turn from a left-padded batch; the learner sees one sequence
        assert torch.allclose(lp[keep], torch.tensor(s.logprobs)[keep], atol=1e-4), (lp, s.logprobs)


def test_episode_noise_does_not_depend_on_the_batch(engine):
    """An episode's tokens are the same decoded alone or beside others (per-sample streams)."""
    both = _episodes(engine, [{"prompt": "3*4=\\boxed{"}, {"prompt": "5*5=\\boxed{"}], Narrator, G=2)
    alone = _episodes(engine, [{"prompt": "3*4=\\boxed{"}], Narrator, G=2)
    assert [s.response_ids for s in both[:2]] == [s.response_ids for s in alone]


def test_failing_environments_end_only_their_episode(engine):
    modes = ["ok", "raise", "hang", "flood", "bad_type", "reset_raises", "ok"]
    t0 = time.monotonic()
    samples = _episodes(engine, [{"mode": m} for m in modes], Faulty, G=1, step_timeout_s=1.0,
                        max_observation_tokens=64)
    took = time.monotonic() - t0
    got = {m: s for m, s in zip(modes, samples, strict=True)}
    assert took < 10, took  # the hung step cost its 1 s limit, not 30 s
    assert samples[0].finish_reason == samples[-1].finish_reason == "stop"
    assert samples[0].env["error"] is None and samples[0].env["errors"] == 0
    for mode, why in (("raise", "ValueError: tool crashed"), ("hang", "took over 1 s"),
                      ("flood", "over env.max_observation_tokens=64"), ("bad_type", "must return"),
                      ("reset_raises", "reset raised RuntimeError")):
        s = got[mode]
        assert s.finish_reason == "env_error" and why in s.env["error"], (mode, s.env["error"])
        assert s.env["errors"] == 1


def test_episode_limits(engine):
    s = _episodes(engine, [{}], Narrator, G=1, max_turns=2)[0]
    assert s.finish_reason == "turns" and s.env["turns"] == 2
    s = _episodes(engine, [{}], Narrator, G=1, max_total_tokens=6)[0]
    assert s.finish_reason == "length" and len(s.response_ids) <= 6 and s.env["turns"] == 1
    s = _episodes(engine, [{}], Narrator, G=1, max_turns=50, max_total_tokens=10_000, episode_timeout_s=0.3)[0]
    assert s.finish_reason == "timeout" and s.env["seconds"] < 5


def test_episode_metrics_and_reward_item():
    from rollout.episodes import episode_metrics, reward_item
    from rollout.types import Sample

    env = {"turns": 2, "tool_calls": 1, "errors": 0, "seconds": 0.5, "error": None,
           "last_text": "56}", "reward_inputs": {}}
    s = [Sample(0, [1], [5, 6], [0.0, 0.0], "stop", response_mask=[1, 0], env=env),
         Sample(0, [1], [5], [0.0], "env_error", response_mask=[1],
                env={**env, "turns": 1, "tool_calls": 0, "errors": 1, "seconds": 1.5, "error": "x"})]
    m = episode_metrics(s)
    assert m == {"env/turns_mean": 1.5, "env/tool_calls_mean": 0.5, "env/errors": 1.0,
                 "env/failed_episodes": 1.0, "env/episode_s": 1.0, "env/episode_s_max": 1.5}
    assert episode_metrics([Sample(0, [1], [2], [0.0], "stop")]) == {}
    item = reward_item(s[0], {"completion": "ignored", "metadata": {"id": 3}})
    assert item["completion"] == "56}" and item["metadata"] == {"id": 3, "env_turns": 2,
                                                                "env_tool_calls": 1, "env_errors": 0}


# ---------------------------------------------------------------- training on trajectories


def test_collate_masks_exactly_the_model_tokens():
    from cispo.learner import TrainItem, collate

    # prompt [1, 2]; response: model 3 4 | env 9 9 9 | model 5 6
    it = TrainItem([1, 2], [3, 4, 9, 9, 9, 5, 6], [-.1, -.2, 0, 0, 0, -.3, -.4], 1.0,
                   loss_mask=[1, 1, 0, 0, 0, 1, 1])
    plain = TrainItem([1, 2, 3], [4], [-.5], -1.0)
    b = collate([it, plain], pad_id=0, old_logprobs=[[-.1, -.2, -.3, -.4], [-.5]])
    # logits at position t score token t+1: response token j sits at 2 + j, scored at 1 + j
    assert b["mask"][0].tolist() == [0, 1, 1, 0, 0, 0, 1, 1]
    assert b["mask"][1].tolist() == [0, 0, 1, 0, 0, 0, 0, 0]
    assert torch.allclose(b["old_logprobs"][0], torch.tensor([0, -.1, -.2, 0, 0, 0, -.3, -.4]))
    full = collate([it], pad_id=0, old_logprobs=[it.rollout_logprobs])  # the rollout's, per position
    assert torch.equal(full["old_logprobs"][0], b["old_logprobs"][0])
    assert it.trained_tokens == 4 and plain.trained_tokens == 1


@pytest.mark.parametrize("loss", ["cispo", "dapo", "grpo"])
def test_environment_tokens_get_exactly_zero_gradient(loss):
    """float64: the loss over a trajectory equals the loss over its model tokens alone, written
    out by hand, and the gradient at every environment position is exactly 0."""
    from cispo.loss import policy_loss

    g = torch.Generator().manual_seed(0)
    N, T = 3, 9
    lp = (-torch.rand(N, T, generator=g, dtype=torch.float64) * 3).requires_grad_()
    old = lp.detach() + 0.3 * torch.randn(N, T, generator=g, dtype=torch.float64)
    adv = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    mask = torch.ones(N, T, dtype=torch.float64)
    mask[0, 2:5] = 0  # environment tokens
    mask[1, 6:] = 0
    mask[2, 0:1] = 0
    kw = {"eps_low": 0.2, "eps_high": 0.28}
    out, _ = policy_loss(loss, lp, old, adv, mask, **kw)
    out.backward()
    assert (lp.grad[mask == 0] == 0).all() and (lp.grad[mask == 1] != 0).any()
    r = torch.exp(lp.detach() - old)
    A = adv[:, None].expand(N, T)
    if loss == "cispo":
        per = -r.clamp(1 - 0.2, 1 + 0.28) * A * lp.detach()
    else:
        per = -torch.minimum(r * A, r.clamp(1 - 0.2, 1 + 0.28) * A)
    keep = mask > 0
    if loss == "grpo":
        want = sum(per[i][keep[i]].mean() for i in range(N)) / N
    else:
        want = per[keep].sum() / keep.sum()
    assert torch.allclose(out.detach(), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["llama", "qwen3_moe"])
def test_kept_caches_of_plain_transformers_models(kind, tmp_path):
    """A model with a plain DynamicCache (softmax layers only) keeps its episodes' caches too."""
    from test_engine_graph import tiny_transformers_model

    from rollout.engines.hf import HFEngine
    from rollout.types import SamplingParams

    engine = HFEngine(tiny_transformers_model(kind, tmp_path / kind))
    params = SamplingParams(max_new_tokens=5, temperature=1.0, seed=2)
    tok = engine.tokenizer
    ctxs = [tok.encode("12*3=", add_special_tokens=False), tok.encode("7+", add_special_tokens=False)]
    obs = tok.encode(" ok: ", add_special_tokens=False)

    def two_turns(keep: bool):
        engine.keep_turn_state = keep
        first = engine.decode_turns(ctxs, [(0, 0), (1, 0)], [0, 0], [5, 3], [], params=params)
        nxt = [c + t + obs for c, (t, *_) in zip(ctxs, first, strict=True)]
        second = engine.decode_turns(nxt, [(0, 0), (1, 0)], [5, 3], [4, 6], [], params=params)
        engine.forget_turns()
        return first, second

    _, whole = two_turns(False)
    reused = engine.turn_stats["reused_rows"]
    _, kept = two_turns(True)
    assert engine.turn_stats["reused_rows"] == reused + 2
    for (ta, la, ra, _), (tb, lb, rb, _) in zip(kept, whole, strict=True):
        assert ta == tb and ra == rb
        torch.testing.assert_close(torch.tensor(la), torch.tensor(lb), atol=1e-5, rtol=0)
