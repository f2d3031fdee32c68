"""The environment registry: `@environment("name")` makes a class selectable as `env.name=name`.

    from environments.registry import environment, ToolEnvironment

    @environment("echo")
    class Echo(ToolEnvironment):
        def reset(self, task):            # task: the data row (prompt, reference, columns...)
            return ""                     # extra context after the prompt ("" = none)
        def tools(self):
            return {"echo": lambda text: text}

The class is built as `cls(**env.options)` once per episode (never reused), so an episode owns
what it opens (a container) and `close()` releases it. Users' files are listed in `env.modules`
and imported in every generation worker, as reward files are. The decorator returns the class
unchanged: `Echo().reset(...)` / `.step(...)` run in a plain test.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from cispo import user_modules
from environments.tool_calls import ToolCall, ToolCallError, format_response, parse_tool_calls

BUILTIN_MODULES = ("environments.calc", "environments.swe")
USER_MODULE_PREFIX = "cispo_user_environments"
ENVIRONMENTS: dict[str, type] = {}
_builtins_loaded = False


def environment(name: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        old = ENVIRONMENTS.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"environment {name!r} is already registered by "
                             f"{old.__module__}.{old.__qualname__}")
        missing = [m for m in ("reset", "step") if not callable(getattr(cls, m, None))]
        if missing:
            raise TypeError(f"environment {name!r} lacks {missing}: an environment has "
                            "reset(task) -> observation and step(action_text) -> (observation, done, info)")
        ENVIRONMENTS[name] = cls
        return cls

    return deco


def load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        for mod in BUILTIN_MODULES:
            importlib.import_module(mod)
        _builtins_loaded = True


def load_modules(modules: list) -> None:
    """Import users' environment files: paths, or (module name, source, path) from `read_modules`."""
    for m in modules:
        if isinstance(m, str):
            user_modules.load_file(m, USER_MODULE_PREFIX, "env.modules")
        else:
            user_modules.load_source(*m)


def read_modules(paths: list[str]) -> list[tuple[str, str, str]]:
    """The files' text, to import in processes where the paths may not exist (Ray workers)."""
    return user_modules.read(list(paths), USER_MODULE_PREFIX, "env.modules")


def get_environment(name: str) -> type:
    load_builtins()
    if name not in ENVIRONMENTS:
        raise KeyError(f"unknown environment {name!r}; registered: {sorted(ENVIRONMENTS)} (an "
                       "environment of your own goes in a file listed in env.modules)")
    return ENVIRONMENTS[name]


def make_environment(name: str, options: dict | None = None) -> Any:
    return get_environment(name)(**(options or {}))


class ToolError(Exception):
    """Raised by a tool for a bad request the model made (the message is its answer)."""


class ToolEnvironment:
    """A base for tool-using environments: `step` parses the turn's tool calls
    (environments.tool_calls), runs each through `tools()` and answers with their results. A
    turn without a call goes to `answer(text)` (default: the episode ends, the text is the
    final answer). Tool errors and malformed calls are answered and counted, not raised."""

    default_tool: str | None = None  # the short form <tool_call>body</tool_call> calls this tool
    default_argument: str | None = None  # ... with the body as this argument
    max_calls_per_turn: int = 4  # calls after these are answered with an error

    def reset(self, task: dict) -> str:
        self.task = task
        return ""

    def tools(self) -> dict[str, Callable[..., str]]:
        return {}

    def answer(self, text: str) -> tuple[str, bool]:
        return "", True

    def step(self, action_text: str) -> tuple[str, bool, dict]:
        calls = parse_tool_calls(action_text, self.default_tool, self.default_argument)
        if not calls:
            obs, done = self.answer(action_text)
            return obs, done, {"tool_calls": 0, "errors": 0}
        tools, out, errors, done = self.tools(), [], 0, False
        for k, call in enumerate(calls):
            if k >= self.max_calls_per_turn:
                text, ok = f"error: at most {self.max_calls_per_turn} tool calls per turn", False
            else:
                text, ok = self._run(tools, call)
            errors += not ok
            out.append(format_response(text))
            done = done or getattr(self, "done", False)
        return "".join(out), done, {"tool_calls": len(calls), "errors": errors}

    def _run(self, tools: dict, call: ToolCall | ToolCallError) -> tuple[str, bool]:
        if isinstance(call, ToolCallError):
            return f"error: {call}", False
        fn = tools.get(call.name)
        if fn is None:
            return f"error: unknown tool {call.name!r}; tools: {', '.join(sorted(tools))}", False
        try:
            return str(fn(**call.arguments)), True
        except ToolError as e:
            return f"error: {e}", False
        except TypeError as e:  # wrong or missing arguments
            return f"error: bad arguments for {call.name}: {e}", False

    def reward_inputs(self) -> dict:
        """Keys merged into the reward call (e.g. `completion`: what to score); {} = the last
        turn's text is the completion."""
        return {}

    def close(self) -> None:
        """Release what the episode opened; called once when it ends, however it ended."""
