"""Find the last `\\boxed{...}` (or `\\fbox{...}`) in a text, with nested braces."""

from __future__ import annotations

OPENERS = ("\\boxed{", "\\fbox{")


def last_boxed(text: str) -> str | None:
    """Content of the last complete boxed group, or None (unclosed or absent)."""
    start = max(text.rfind(o) for o in OPENERS)
    while start >= 0:
        opener = next(o for o in OPENERS if text.startswith(o, start))
        i, depth = start + len(opener), 1
        while i < len(text):
            ch = text[i]
            if ch == "\\" and i + 1 < len(text):  # escaped brace \{ \} does not count
                i += 2
                continue
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    return text[start + len(opener):i]
            i += 1
        # unclosed: try an earlier one
        start = max(text.rfind(o, 0, start) for o in OPENERS)
    return None


def complete_open_box(prompt: str, completion: str) -> str:
    """The text to search: a prompt that ends inside `\\boxed{` lends its opener to the completion."""
    tail = prompt.rstrip()
    for o in OPENERS:
        if tail.endswith(o):
            return o + completion
    return completion
