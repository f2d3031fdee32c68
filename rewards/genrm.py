"""The `genrm` reward: a generative reward model (an LLM judge) served by a Ray actor.

MiniMax-M1's two modes (report §4.2, general tasks):

- `mode="consistency"` (tasks with a ground truth): the judge grades how consistent the
  response is with the reference answer on a five-grade scale; grade g in 1..5 scores
  (g - 1) / 4 in [0, 1].
- `mode="pairwise"` (tasks without one): the judge compares the response with a reference
  answer and says better / tie / worse → 1 / 0 / -1.

The judge is any checkpoint the rollout engines load (`model`, `engine`: "hf" here, vLLM in
production), in one Ray actor: started by the manager's setup when Ray is already up, else on
the first call (train.py builds the manager before it starts Ray; the judge must not start a
one-CPU Ray of its own first). Its verdict is parsed robustly
(`parse_grade`, `parse_pairwise`: the last explicit verdict wins, in the forms judges actually
write); an output with no verdict is skipped (`on_unparsed="skip"`, counted as
`reward/genrm/unparsed`) or scored `unparsed_score` (`on_unparsed="score"`). Configure with
`reward.options.genrm={model: PATH, mode: consistency, max_new_tokens: 256, ...}`.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from rewards.registry import reward

MODES = ("consistency", "pairwise")

CONSISTENCY_PROMPT = """You are grading a response against a reference answer.

[Question]
{prompt}

[Reference answer]
{reference}

[Response]
{completion}

How consistent is the response's final answer with the reference answer? Grade it on a
five-point scale: 5 = fully consistent (same answer), 4 = consistent with minor differences,
3 = partly consistent, 2 = mostly inconsistent, 1 = inconsistent or no answer.
End with a line "Grade: N" where N is 1, 2, 3, 4 or 5.
"""

PAIRWISE_PROMPT = """You are comparing a response with a reference answer to the same request.

[Request]
{prompt}

[Reference answer]
{reference}

[Response]
{completion}

Is the response better than, as good as, or worse than the reference answer (helpfulness,
correctness, clarity)? End with a line "Verdict: 1" if the response is better, "Verdict: 0"
if they are equally good, or "Verdict: -1" if the response is worse.
"""

_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5}
_GRADE = re.compile(
    r"(?:grade|score|rating)\s*(?:\*\*)?\s*[:=]?\s*(?:\*\*)?\s*\[*\s*"
    r"([1-5]|one|two|three|four|five)(?:\s*(?:/|out of)\s*5)?\s*\]*(?![\d.])", re.IGNORECASE)
_BRACKETED = re.compile(r"\[\[\s*([1-5])\s*\]\]")
_VERDICT = re.compile(r"verdict\s*(?:\*\*)?\s*[:=]?\s*(?:\*\*)?\s*\[*\s*([+-]?\s*[01])(?![\d.])\s*\]*",
                      re.IGNORECASE)
_VERDICT_WORD = re.compile(r"verdict\s*(?:\*\*)?\s*[:=]?\s*(?:\*\*)?\s*(better|tie|equal|same|worse)",
                           re.IGNORECASE)
_WORD_VALUE = {"better": 1, "tie": 0, "equal": 0, "same": 0, "worse": -1}
MAX_JUDGE_OUTPUT = 20_000  # characters searched for a verdict (the tail, where it is asked for)


def parse_grade(text: str) -> int | None:
    """The judge's five-grade verdict: the last "Grade: 4", "score = 4/5", "**Grade:** four",
    "[[4]]"; or the whole output being one digit 1-5. None if there is none."""
    tail = text[-MAX_JUDGE_OUTPUT:]
    found = [(m.start(), m.group(1)) for m in _GRADE.finditer(tail)]
    found += [(m.start(), m.group(1)) for m in _BRACKETED.finditer(tail)]
    if found:
        tok = max(found)[1].lower()
        return _WORDS.get(tok) or int(tok)
    bare = tail.strip().strip(".*")
    return int(bare) if re.fullmatch(r"[1-5]", bare) else None


def parse_pairwise(text: str) -> int | None:
    """The judge's pairwise verdict: the last "Verdict: 1/0/-1" (or better/tie/worse); or the
    whole output being one of 1, 0, -1. None if there is none."""
    tail = text[-MAX_JUDGE_OUTPUT:]
    found = [(m.start(), int(m.group(1).replace(" ", ""))) for m in _VERDICT.finditer(tail)]
    found += [(m.start(), _WORD_VALUE[m.group(1).lower()]) for m in _VERDICT_WORD.finditer(tail)]
    if found:
        return max(found)[1]
    bare = tail.strip().strip(".*").replace(" ", "")
    return int(bare) if bare in ("1", "+1", "0", "-1") else None


def judge_prompt(mode: str, prompt: str, completion: str, reference: Any) -> str:
    if mode not in MODES:
        raise ValueError(f"reward.options.genrm.mode={mode!r}: use one of {MODES}")
    template = CONSISTENCY_PROMPT if mode == "consistency" else PAIRWISE_PROMPT
    return template.format(prompt=prompt, completion=completion, reference=reference)


def verdict_score(mode: str, judge_output: str) -> float | None:
    """The score a judge output gives, or None when it holds no verdict."""
    if mode == "consistency":
        g = parse_grade(judge_output)
        return None if g is None else (g - 1) / 4
    v = parse_pairwise(judge_output)
    return None if v is None else float(v)


# --- the judge actor -------------------------------------------------------------------------

class Judge:
    """Wraps one rollout engine; `ray.remote(Judge)` is the actor the manager starts."""

    def __init__(self, model: str, engine: str = "hf", dtype: str = "float32",
                 max_new_tokens: int = 256, temperature: float = 0.0,
                 max_prompt_tokens: int | None = None, trust_remote_code: bool = False,
                 seed: int = 0):
        import torch

        from rollout.engines import make_engine

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.engine = make_engine(engine, model, dtype, device, trust_remote_code)
        self.tok = self.engine.tokenizer
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.max_prompt_tokens, self.seed = max_prompt_tokens, seed

    def generate(self, prompts: list[str]) -> list[str]:
        from rollout.types import SamplingParams

        ids = [self.tok(p, add_special_tokens=True)["input_ids"] for p in prompts]
        if self.max_prompt_tokens:  # keep the end: that is where the verdict is asked for
            ids = [x[-self.max_prompt_tokens:] for x in ids]
        # temperature 0 (greedy) is what a judge wants; the HF engine samples, so a tiny
        # temperature approximates it there
        params = SamplingParams(self.max_new_tokens, max(self.temperature, 1e-5), seed=self.seed)
        self.seed += 1
        samples = self.engine.generate(ids, 1, params)
        return [self.tok.decode(s.response_ids, skip_special_tokens=True) for s in samples]


_actor = None
_options: dict[str, Any] = {}
_lock = threading.Lock()
_counts = {"judged": 0, "unparsed": 0}
ACTOR_OPTIONS = ("model", "engine", "dtype", "max_new_tokens", "temperature", "max_prompt_tokens",
                 "trust_remote_code", "seed")


def setup(options: dict, sandbox_cfg: Any = None) -> None:
    """Check the options; start the judge actor now if Ray is up, else on the first call (so a
    manager built before the training loop starts Ray does not start a Ray of its own)."""
    import ray

    if "model" not in options:
        raise ValueError("reward genrm needs reward.options.genrm.model: a judge checkpoint path "
                         "or hub id that the rollout engine can load")
    with _lock:
        _options.clear()
        _options.update(options)
    if ray.is_initialized():
        _ensure_actor()


def _ensure_actor():
    global _actor
    import ray

    with _lock:
        if _actor is None:
            if not _options:
                raise RuntimeError("the genrm judge is not configured: use it through the "
                                   "RewardManager (or call rewards.genrm.setup({'model': ...}))")
            if not ray.is_initialized():
                # ray.init installs signal handlers: main thread only; reward calls run in
                # threads, so whoever runs the manager starts Ray (train.py does; the CLI does)
                raise RuntimeError("the genrm judge needs Ray: call ray.init() before scoring")
            kw = {k: _options[k] for k in ACTOR_OPTIONS if k in _options}
            cls = ray.remote(num_cpus=_options.get("num_cpus", 1),
                             num_gpus=_options.get("num_gpus", 0))(Judge)
            _actor = cls.remote(**kw)
        return _actor


def teardown() -> None:
    global _actor
    import ray

    with _lock:
        if _actor is not None:
            ray.kill(_actor)
            _actor = None
        _options.clear()


def stats() -> dict[str, float]:
    return {"reward/genrm/judged_total": float(_counts["judged"]),
            "reward/genrm/unparsed_total": float(_counts["unparsed"])}


@reward("genrm", batched=True, isolation="thread", setup=setup, teardown=teardown, stats=stats)
def genrm_reward(completion: list[str], reference: list[Any], prompt: list[str],
                 mode: str = "consistency", on_unparsed: str = "skip",
                 unparsed_score: float = 0.0, **_: Any) -> list[dict[str, float] | None]:
    import ray

    if on_unparsed not in ("skip", "score"):
        raise ValueError(f"reward.options.genrm.on_unparsed={on_unparsed!r}: use skip or score")
    actor = _ensure_actor()
    prompts = [judge_prompt(mode, p or "", c, r)
               for c, r, p in zip(completion, reference, prompt, strict=True)]
    outputs = ray.get(actor.generate.remote(prompts))
    results: list[dict[str, float] | None] = []
    for out in outputs:
        s = verdict_score(mode, out)
        _counts["judged"] += 1
        if s is None:
            _counts["unparsed"] += 1
            results.append(None if on_unparsed == "skip" else
                           {"score": unparsed_score, "unparsed": 1.0})
        else:
            results.append({"score": s, "unparsed": 0.0})
    return results
