"""The `format` reward: a small additive bonus for the expected tag structure.

With the default options a completion earns `bonus` when it is

    <think> ...reasoning... </think> ...answer with \\boxed{...}...

each tag exactly once, in order, with non-empty text inside and an answer after the last tag.
Use it next to a correctness reward: `reward.sources.math={math: 1.0, format: 0.1}` (then
`bonus=1.0` and the weight sets the size), never alone. A prompt that already opens a tag (ends
with `<think>`) lends it to the completion. Plain string search, linear in the length.
"""

from __future__ import annotations

from rewards.boxed import last_boxed
from rewards.registry import reward


def well_formed(text: str, tags: list[str] | tuple[str, ...], require_boxed: bool) -> bool:
    pos = 0
    for tag in tags:
        open_t, close_t = f"<{tag}>", f"</{tag}>"
        if text.count(open_t) != 1 or text.count(close_t) != 1:
            return False
        i = text.find(open_t, pos)
        j = text.find(close_t, i + len(open_t)) if i >= 0 else -1
        if i < 0 or j < 0 or not text[i + len(open_t):j].strip():
            return False
        if text[pos:i].strip() and pos > 0:  # nothing between consecutive sections
            return False
        pos = j + len(close_t)
    answer = text[pos:]
    if not answer.strip():
        return False
    return not require_boxed or last_boxed(answer) is not None


@reward("format", isolation="thread")
def format_reward(completion: str, prompt: str = "", tags: list[str] | tuple[str, ...] = ("think",),
                  require_boxed: bool = True, bonus: float = 1.0) -> float:
    text = completion
    stripped = (prompt or "").rstrip()
    if tags and stripped.endswith(f"<{tags[0]}>"):
        text = f"<{tags[0]}>" + completion
    return bonus if well_formed(text, list(tags), require_boxed) else 0.0
