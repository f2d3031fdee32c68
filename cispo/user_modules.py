"""Users' own Python files, imported by path so that their decorators register what they define
(`@register_loss`, `@register_advantage` from `algorithm.modules`; `@reward` from
`reward.modules`).

A file gets a module name derived from its resolved path, so importing it twice in one process
is a no-op, and a process that imports the same file under the same name can unpickle
references to its functions. `read` / `load_source` carry a file's text to processes that may
run on other machines (the learner's Ray actors), where the path need not exist.

A leaf: imports nothing of this project.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path


def module_name(path: str | Path, prefix: str) -> str:
    p = Path(path).expanduser().resolve()
    stem = "".join(c if c.isalnum() else "_" for c in p.stem)
    return f"{prefix}_{stem}_{hashlib.sha1(str(p).encode()).hexdigest()[:8]}"  # no dot: no parent package


def load_file(path: str | Path, prefix: str, key: str) -> str:
    """Import the .py file at `path` (once per process); returns its module name. `key` names the
    config key that listed it, for the error message."""
    return load_source(*read([str(path)], prefix, key)[0])


def read(paths: list[str], prefix: str, key: str) -> list[tuple[str, str, str]]:
    """(module name, source, path) of each file, to import elsewhere with `load_source`."""
    out = []
    for path in paths:
        p = Path(path).expanduser().resolve()
        if not p.is_file():
            raise FileNotFoundError(f"{key}: {str(path)!r} not found (resolved to {p}); {key} "
                                    "takes paths to .py files")
        out.append((module_name(p, prefix), p.read_text(), str(p)))
    return out


def load_source(name: str, source: str, path: str) -> str:
    """Import `source` as module `name` (once per process: a second call is a no-op)."""
    if name in sys.modules:
        return name
    spec = importlib.util.spec_from_loader(name, loader=None, origin=path)
    module = importlib.util.module_from_spec(spec)
    module.__file__ = path
    sys.modules[name] = module
    try:
        exec(compile(source, path, "exec"), module.__dict__)
    except BaseException:
        del sys.modules[name]
        raise
    return name
