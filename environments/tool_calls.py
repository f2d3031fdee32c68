"""The tool-call format and its parser.

A model calls a tool by writing a JSON function call between tags:

    <tool_call>{"name": "calc", "arguments": {"expression": "37*48"}}</tool_call>

The rollout stops decoding a turn at `</tool_call>` (or EOS), the environment parses the turn's
text with `parse_tool_calls` and answers each call between `<tool_response>` tags.

Short form: a body that is not a JSON object, `<tool_call>37*48</tool_call>`, calls the
environment's default tool (`Environment.default_tool`, e.g. calc's `calc`) with the body as its
one argument, as code-action formats do; an environment without a default tool reports it as
malformed. Malformed calls (bad JSON, no name, arguments not an object, an unclosed tag) are
`ToolCallError`s: the environment answers with the error text and counts it in `info["errors"]`
(the model can learn from it); the episode goes on.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

OPEN, CLOSE = "<tool_call>", "</tool_call>"
RESPONSE_OPEN, RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
_CALL = re.compile(re.escape(OPEN) + r"(.*?)" + re.escape(CLOSE), re.DOTALL)


@dataclass
class ToolCall:
    name: str
    arguments: dict = field(default_factory=dict)


class ToolCallError(ValueError):
    """A malformed tool call; the message says what is wrong, for the model to read."""


def parse_tool_calls(text: str, default_tool: str | None = None,
                     default_argument: str | None = None) -> list[ToolCall | ToolCallError]:
    """Every call in `text`, in order: a `ToolCall`, or a `ToolCallError` in its place (the
    parser never raises). A tag without its partner is an error too."""
    out: list[ToolCall | ToolCallError] = []
    end = 0
    for m in _CALL.finditer(text):
        out.append(_parse_body(m.group(1).strip(), default_tool, default_argument))
        end = m.end()
    rest = _CALL.sub("", text)
    if OPEN in text[end:]:
        out.append(ToolCallError(f"unclosed {OPEN}: end the call with {CLOSE}"))
    elif CLOSE in rest:
        out.append(ToolCallError(f"{CLOSE} without {OPEN}"))
    return out


def _parse_body(body: str, default_tool: str | None, default_argument: str | None) -> ToolCall | ToolCallError:
    if body.startswith("{"):
        try:
            obj = json.loads(body)
        except json.JSONDecodeError as e:
            return ToolCallError(f"tool call is not valid JSON ({e.msg} at char {e.pos})")
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
            return ToolCallError('tool call needs {"name": "<tool>", "arguments": {...}}')
        args = obj.get("arguments", {})
        if isinstance(args, str):  # some models write the arguments as a JSON string
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                return ToolCallError(f"arguments of {obj['name']!r} must be a JSON object")
        if not isinstance(args, dict):
            return ToolCallError(f"arguments of {obj['name']!r} must be a JSON object")
        return ToolCall(obj["name"], args)
    if default_tool is None:
        return ToolCallError('tool call is not JSON: write {"name": "<tool>", "arguments": {...}}')
    return ToolCall(default_tool, {default_argument or "input": body})  # "" : the tool decides


def format_response(text: str) -> str:
    """An observation as the model sees it."""
    return f"{RESPONSE_OPEN}{text}{RESPONSE_CLOSE}"
