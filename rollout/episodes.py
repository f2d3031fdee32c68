"""Multi-turn episodes: decode a turn, let the environment answer, append, decode again.

`run_episodes` drives G episodes per prompt with any engine that can continue token contexts
(`decode(contexts, streams, offsets, max_new, stop_sequences)`, e.g. `HFEngine.decode_turns`,
which keeps each episode's cache between its turns and forwards only the new tokens):

  * each episode owns a fresh environment (`make_env()`), reset with its data row; the reset's
    observation is appended to the prompt (context the model reads, not trained);
  * a turn ends at the tool-call close tag, EOS, or the turn's token budget; its text goes to
    `env.step` in a thread of its own, so a slow tool holds back only its episode: the engine
    decodes the next turn of every episode whose answer is in while the others wait;
  * the observation's tokens are appended with loss mask 0 and log-prob 0 (context only); the
    model's tokens carry mask 1 and the log-prob they were sampled with;
  * the conversation stays token ids from start to end (never decoded and re-tokenised), so the
    learner trains on exactly the tokens the engine sampled;
  * limits per episode: `max_turns`, `max_total_tokens` (model + environment tokens after the
    prompt), `episode_timeout_s` (wall clock), `step_timeout_s` (one environment call),
    `max_observation_tokens` (one observation).
An environment that raises, hangs past `step_timeout_s`, returns the wrong types or floods its
observation ends its own episode with finish reason `env_error` (scored `env.error_reward` by the
trainer); every other episode of the batch goes on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field

from environments.tool_calls import CLOSE
from rollout.types import Sample


@dataclass
class EpisodeLimits:
    max_turns: int = 4
    max_total_tokens: int = 256
    episode_timeout_s: float = 60.0
    step_timeout_s: float = 10.0
    max_observation_tokens: int = 128


@dataclass
class _Episode:
    prompt_index: int
    sample_index: int
    task: dict
    prompt_ids: list[int]
    t0: float
    env: object = None
    response_ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    turns: int = 0
    tool_calls: int = 0
    errors: int = 0
    model_tokens: int = 0
    last_text: str = ""
    error: str | None = None
    finish: str | None = None
    future: Future | None = None
    deadline: float = 0.0
    kind: str = ""  # what `future` is: "reset" or "step"
    step_s: float = 10.0  # limit of one environment call
    closing: Future | None = None
    seconds: float = 0.0
    reward_inputs: dict = field(default_factory=dict)
    forgotten: bool = False  # the engine was told this episode ended


def in_thread(fn: Callable, *args) -> Future:
    """Run fn in a daemon thread of its own: a hung environment keeps its thread, not a pool slot
    another episode needs (a Python thread cannot be killed; its episode is ended instead)."""
    fut: Future = Future()

    def target() -> None:
        try:
            fut.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 (handed to the episode as its error)
            fut.set_exception(e)

    threading.Thread(target=target, daemon=True, name="cispo-env-step").start()
    return fut


def observation_ids(tokenizer, text: str) -> list[int]:
    """The observation's tokens as they follow a model turn. With a chat template, the turn is
    closed and the text sent as a `tool` message (the template's own tokens, then the assistant
    header again), taken as the difference between two renderings; without one (the tiny
    tokenizer), the plain text."""
    if not text:
        return []
    if getattr(tokenizer, "chat_template", None):
        base = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
        try:
            a = tokenizer.apply_chat_template(base, tokenize=False)
            b = tokenizer.apply_chat_template(base + [{"role": "tool", "content": text}],
                                              tokenize=False, add_generation_prompt=True)
            if b.startswith(a):
                return tokenizer.encode(b[len(a):], add_special_tokens=False)
        except Exception:  # noqa: BLE001 (a template without a tool role: plain text below)
            pass
    return tokenizer.encode(text, add_special_tokens=False)


def run_episodes(prompts: list[list[int]], tasks: list[dict], group_size: int, first_index: int,
                 make_env: Callable[[], object], tokenizer, decode: Callable,
                 limits: EpisodeLimits, max_new_tokens: int,
                 forget: Callable[[list[tuple[int, int]]], None] | None = None) -> list[Sample]:
    """G episodes per prompt, grouped by prompt in prompt order (as `Engine.generate` returns).
    `forget(streams)`, when given, is told which episodes ended, so an engine that keeps their
    caches between turns (`HFEngine.forget_turns`) frees them as soon as they are done."""
    stop = [tokenizer.encode(CLOSE, add_special_tokens=False)]
    now = time.monotonic()
    eps = [_Episode(first_index + i, g, tasks[i], list(p), now, step_s=limits.step_timeout_s)
           for i, p in enumerate(prompts) for g in range(group_size)]
    for ep in eps:
        _submit(ep, "reset", _reset, make_env, ep)
    while any(ep.finish is None for ep in eps):
        ready = [ep for ep in eps if ep.finish is None and ep.future is None]
        if ready:
            _decode_turn(ready, decode, stop, limits, max_new_tokens)
        _collect(eps, tokenizer, limits, block=not ready)
        if forget is not None:
            ended = [ep for ep in eps if ep.finish is not None and not ep.forgotten]
            for ep in ended:
                ep.forgotten = True
            if ended:
                forget([(ep.prompt_index, ep.sample_index) for ep in ended])
    closing = [ep.closing for ep in eps if ep.closing is not None]
    if closing:  # what the episodes opened is gone before their samples are
        wait(closing, timeout=limits.step_timeout_s)
    return [_sample(ep) for ep in eps]


def _reset(make_env: Callable, ep: _Episode) -> str:
    ep.env = env = make_env()
    try:
        return env.reset(dict(ep.task))
    finally:
        if ep.finish is not None and hasattr(env, "close"):  # it ended (timed out) meanwhile
            env.close()


def _submit(ep: _Episode, kind: str, fn: Callable, *args) -> None:
    ep.kind, ep.future, ep.deadline = kind, in_thread(fn, *args), time.monotonic() + ep.step_s


def _decode_turn(ready: list[_Episode], decode: Callable, stop: list[list[int]],
                 limits: EpisodeLimits, max_new_tokens: int) -> None:
    now, rows = time.monotonic(), []
    for ep in ready:
        left = limits.max_total_tokens - len(ep.response_ids)
        if ep.turns >= limits.max_turns:
            _end(ep, "turns")
        elif now - ep.t0 > limits.episode_timeout_s:
            _end(ep, "timeout")
        elif left <= 0:
            _end(ep, "length")
        else:
            rows.append((ep, min(left, max_new_tokens)))
    if not rows:
        return
    outs = decode([ep.prompt_ids + ep.response_ids for ep, _ in rows],
                  [(ep.prompt_index, ep.sample_index) for ep, _ in rows],
                  [ep.model_tokens for ep, _ in rows], [n for _, n in rows], stop)
    for (ep, _), (toks, lps, reason, text) in zip(rows, outs, strict=True):
        ep.response_ids += toks
        ep.mask += [1] * len(toks)
        ep.logprobs += lps
        ep.model_tokens += len(toks)
        ep.turns += 1
        ep.last_text = text
        if reason == "repetition":
            _end(ep, "repetition")
        elif reason == "length" and len(ep.response_ids) >= limits.max_total_tokens:
            _end(ep, "length")
        else:
            _submit(ep, "step", ep.env.step, text)


def _collect(eps: list[_Episode], tokenizer, limits: EpisodeLimits, block: bool) -> None:
    """Take in the environment answers that are done; end episodes whose call ran too long."""
    waiting = [ep for ep in eps if ep.finish is None and ep.future is not None]
    if not waiting:
        return
    if block:
        timeout = max(0.0, min(ep.deadline for ep in waiting) - time.monotonic())
        wait([ep.future for ep in waiting], timeout=timeout + 0.01, return_when=FIRST_COMPLETED)
    now = time.monotonic()
    for ep in waiting:
        fut = ep.future
        if not fut.done():
            if now > ep.deadline:
                _fail(ep, f"environment {ep.kind} took over {limits.step_timeout_s:g} s")
            continue
        ep.future = None
        try:
            result = fut.result()
            if ep.kind == "reset":
                obs, done, info = result, False, {}
                if not isinstance(obs, str):
                    raise TypeError(f"reset returned {type(obs).__name__}, not a str observation")
            else:
                obs, done, info = _check_step(result)
        except Exception as e:  # noqa: BLE001 (the environment's failure ends its episode only)
            _fail(ep, f"environment {ep.kind} raised {type(e).__name__}: {e}")
            continue
        ep.tool_calls += int(info.get("tool_calls", 0))
        ep.errors += int(info.get("errors", 0))
        ids = observation_ids(tokenizer, obs)
        if len(ids) > limits.max_observation_tokens:
            _fail(ep, f"observation of {len(ids)} tokens over env.max_observation_tokens="
                      f"{limits.max_observation_tokens}")
            continue
        if ep.kind == "reset":
            ep.prompt_ids += ids
        elif done:
            _end(ep, "stop")
        elif ep.turns >= limits.max_turns:  # no turn left to read the answer: not appended
            _end(ep, "turns")
        elif len(ep.response_ids) + len(ids) >= limits.max_total_tokens:
            _end(ep, "length")
        else:
            ep.response_ids += ids
            ep.mask += [0] * len(ids)
            ep.logprobs += [0.0] * len(ids)


def _check_step(result) -> tuple[str, bool, dict]:
    if not (isinstance(result, tuple) and len(result) == 3 and isinstance(result[0], str)
            and isinstance(result[2], dict)):
        raise TypeError("step must return (observation: str, done: bool, info: dict), got "
                        f"{type(result).__name__}")
    return result[0], bool(result[1]), result[2]


def _fail(ep: _Episode, why: str) -> None:
    ep.error = why
    ep.errors += 1
    _end(ep, "env_error")


def _end(ep: _Episode, reason: str) -> None:
    ep.finish = reason
    ep.future = None
    ep.seconds = time.monotonic() - ep.t0
    env, ep.env = ep.env, None
    ep.reward_inputs = {}
    if env is None:
        return
    if ep.error is None:
        try:
            ep.reward_inputs = dict(env.reward_inputs()) if hasattr(env, "reward_inputs") else {}
        except Exception as e:  # noqa: BLE001
            ep.error, ep.errors, ep.finish = f"reward_inputs raised {type(e).__name__}: {e}", ep.errors + 1, "env_error"
    if hasattr(env, "close"):
        ep.closing = in_thread(env.close)  # a container's removal must not hold up the batch


def _sample(ep: _Episode) -> Sample:
    return Sample(ep.prompt_index, ep.prompt_ids, ep.response_ids, ep.logprobs, ep.finish,
                  response_mask=ep.mask,
                  env={"turns": ep.turns, "tool_calls": ep.tool_calls, "errors": ep.errors,
                       "seconds": ep.seconds, "error": ep.error, "last_text": ep.last_text,
                       "reward_inputs": ep.reward_inputs})


def episode_metrics(samples: list[Sample]) -> dict[str, float]:
    """`env/` metrics of a step's episodes ({} for single-turn samples): means per episode of
    turns, tool calls and wall seconds; `env/errors` = malformed or failed tool calls plus
    episodes an environment ended, summed; `env/failed_episodes` = the latter."""
    eps = [s.env for s in samples if s.env is not None]
    if not eps:
        return {}
    n = len(eps)
    return {"env/turns_mean": sum(e["turns"] for e in eps) / n,
            "env/tool_calls_mean": sum(e["tool_calls"] for e in eps) / n,
            "env/errors": float(sum(e["errors"] for e in eps)),
            "env/failed_episodes": float(sum(e["error"] is not None for e in eps)),
            "env/episode_s": sum(e["seconds"] for e in eps) / n,
            "env/episode_s_max": max(e["seconds"] for e in eps)}


def reward_item(sample: Sample, item: dict) -> dict:
    """A reward call's keywords for an episode: the last model turn is the completion unless the
    environment said otherwise (`reward_inputs`, e.g. swe's submitted patch); the episode's
    counts become columns (`env_turns`, `env_tool_calls`, `env_errors`) a reward may name."""
    if sample.env is None:
        return item
    e = sample.env
    counts = {"env_turns": e["turns"], "env_tool_calls": e["tool_calls"], "env_errors": e["errors"]}
    return {**item, "completion": e["last_text"], **e["reward_inputs"],
            "metadata": {**(item.get("metadata") or {}), **counts}}
