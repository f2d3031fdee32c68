"""Pull a program or a patch out of a model's completion (pure string functions)."""

from __future__ import annotations

import re


def code_blocks(text: str) -> list[tuple[str, str]]:
    """[(language tag, body), ...] of the closed fenced blocks, in order.

    One pass over the lines (a regex with a lazy `.*?` is quadratic on many unclosed fences).
    As in CommonMark, a closing fence is a bare ``` line; "```python" inside a block is content.
    """
    blocks: list[tuple[str, str]] = []
    lang: str | None = None
    body: list[str] = []
    for line in text.splitlines(keepends=True):
        s = line.strip()
        if lang is None:
            if s.startswith("```"):
                lang, body = s[3:].strip().split(" ")[0].lower(), []
        elif s == "```":
            blocks.append((lang, "".join(body)))
            lang = None
        else:
            body.append(line)
    return blocks


def last_code_block(text: str, languages: tuple[str, ...] = ("python", "py", "python3", "")
                    ) -> str | None:
    """The last fenced block whose tag is one of `languages` ("" = untagged), else None."""
    for lang, body in reversed(code_blocks(text)):
        if lang in languages:
            return body
    return None


def unified_diff(text: str) -> str | None:
    """The patch in a completion: the last ```diff/```patch block, else the text from the first
    `diff --git` / `--- a/` line on (for bare diffs). None if there is no diff."""
    for lang, body in reversed(code_blocks(text)):
        if lang in ("diff", "patch") or body.lstrip().startswith(("diff --git", "--- ")):
            return _terminated(body)
    m = re.search(r"^(diff --git |--- (?:a/|/dev/null))", text, re.MULTILINE)
    if m:
        return _terminated(text[m.start():])
    return None


def _terminated(patch: str) -> str:
    return patch if patch.endswith("\n") else patch + "\n"  # `patch`/`git apply` need the newline
