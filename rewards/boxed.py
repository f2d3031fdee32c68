"""Find the last `\\boxed{...}` (or `\\fbox{...}`) in a text, with nested braces.

Linear in the text length, even for a megabyte of unclosed openers: a scan that reaches an
opener already found unclosed cannot close either (everything after it never balances), so each
character is visited once.
"""

from __future__ import annotations

OPENERS = ("\\boxed{", "\\fbox{")


def last_boxed(text: str) -> str | None:
    """Content of the last complete boxed group, or None (unclosed or absent)."""
    limit = len(text)
    # next candidate position per opener; only the one just tried is searched again (a fresh
    # rfind of every opener per step would rescan the text: quadratic)
    pos = {o: text.rfind(o) for o in OPENERS}
    while True:
        opener = max(pos, key=pos.__getitem__)
        start = pos[opener]
        if start < 0:
            return None
        i, depth = start + len(opener), 1
        while i < limit:
            ch = text[i]
            if ch == "\\" and i + 1 < limit:  # escaped brace \{ \} does not count
                i += 2
                continue
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    return text[start + len(opener):i]
            i += 1
        limit = start  # unclosed: an earlier opener must close before this one to count
        pos[opener] = text.rfind(opener, 0, start)


def complete_open_box(prompt: str, completion: str) -> str:
    """The text to search: a prompt that ends inside `\\boxed{` lends its opener to the completion."""
    tail = prompt.rstrip()
    for o in OPENERS:
        if tail.endswith(o):
            return o + completion
    return completion
