"""Read a unified diff and decide what of it a model is allowed to apply (pure functions).

Rules (SWE scoring against reward hacking):
- a path that is absolute, has a `..` component, or goes into `.git` rejects the whole patch;
- a patch that creates a symlink is rejected (it could point out of the repository);
- edits to test infrastructure are discarded and reported: test files (the instance's test
  files and anything that looks like a test), `conftest.py`, pytest configuration, and files
  Python runs at start-up (`sitecustomize.py`, `usercustomize.py`, `*.pth`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

PYTEST_CONFIG = {"pytest.ini", ".pytest.ini", "tox.ini", "setup.cfg", "pyproject.toml"}
STARTUP_FILES = {"conftest.py", "sitecustomize.py", "usercustomize.py"}
TEST_DIRS = {"test", "tests", "testing"}
SYMLINK_MODE = "120000"


@dataclass
class FileDiff:
    paths: list[str]  # every path the block names (old, new, rename/copy source and target)
    text: str
    symlink: bool = False


@dataclass
class Vetted:
    kept: str  # the patch to apply (test-infrastructure edits removed)
    kept_paths: list[str] = field(default_factory=list)
    discarded: list[str] = field(default_factory=list)
    error: str | None = None  # set: the whole patch is rejected


def _unquote(p: str) -> str:
    p = p.strip()
    if len(p) >= 2 and p[0] == p[-1] == '"':  # git C-quotes unusual names
        p = p[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape")
        p = p.encode("latin-1", "replace").decode("utf-8", "replace")
    return p


def _strip_prefix(p: str) -> str | None:
    p = _unquote(p.split("\t")[0])
    if p == "/dev/null":
        return None
    return p[2:] if p[:2] in ("a/", "b/") else p


def split_patch(patch: str) -> list[FileDiff]:
    """One FileDiff per file block (`diff --git` headers, or bare `---`/`+++` pairs)."""
    lines = patch.splitlines(keepends=True)
    git_style = any(line.startswith("diff --git ") for line in lines)
    blocks: list[list[str]] = []
    for i, line in enumerate(lines):
        starts = (line.startswith("diff --git ") if git_style else
                  line.startswith("--- ") and i + 1 < len(lines)
                  and lines[i + 1].startswith("+++ "))
        if starts or not blocks:
            blocks.append([])
        blocks[-1].append(line)
    out = []
    for block in blocks:
        paths: list[str] = []
        symlink = False
        for line in block:
            if line.startswith("diff --git "):
                m = re.match(r'diff --git (\S+|"[^"]*") (\S+|"[^"]*")\s*$', line)
                if m:
                    paths += [p for p in map(_strip_prefix, m.groups()) if p]
            elif line.startswith(("--- ", "+++ ")):
                p = _strip_prefix(line[4:].rstrip("\n"))
                if p:
                    paths.append(p)
            elif line.startswith(("rename from ", "rename to ", "copy from ", "copy to ")):
                paths.append(_unquote(line.split(" ", 2)[2].rstrip("\n")))
            elif re.match(r"(new file mode|new mode|old mode) " + SYMLINK_MODE, line):
                symlink = symlink or not line.startswith("old mode")
            elif line.startswith("@@"):
                break  # hunks follow; headers are done
        if paths or symlink:
            out.append(FileDiff(list(dict.fromkeys(paths)), "".join(block), symlink))
        elif "".join(block).strip():
            out.append(FileDiff([], "".join(block)))  # preamble text: kept, names nothing
    return out


def unsafe_path(path: str) -> str | None:
    """Why `path` may not be touched, or None."""
    if not path or "\x00" in path:
        return "empty path"
    if path.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", path):
        return "absolute path"
    parts = PurePosixPath(path.replace("\\", "/")).parts
    if ".." in parts:
        return "path leaves the repository"
    if ".git" in parts:
        return "path inside .git"
    return None


def is_test_infra(path: str, test_files: set[str]) -> bool:
    p = PurePosixPath(path)
    name = p.name
    return (path in test_files or name in STARTUP_FILES or name in PYTEST_CONFIG
            or name.endswith(".pth") or bool(TEST_DIRS & set(p.parts[:-1]))
            or (name.startswith("test_") and name.endswith(".py")) or name.endswith("_test.py"))


def patch_paths(patch: str) -> list[str]:
    return [p for fd in split_patch(patch) for p in fd.paths]


def vet_patch(patch: str, test_files: set[str]) -> Vetted:
    """Split a model patch into what may be applied and what is discarded, or reject it."""
    kept, kept_paths, discarded = [], [], []
    for fd in split_patch(patch):
        for p in fd.paths:
            why = unsafe_path(p)
            if why:
                return Vetted("", error=f"patch rejected: {why}: {p!r}")
        if fd.symlink:
            return Vetted("", error=f"patch rejected: creates a symlink: {fd.paths}")
        if any(is_test_infra(p, test_files) for p in fd.paths):
            discarded += fd.paths
        else:
            kept.append(fd.text)
            kept_paths += fd.paths
    return Vetted("".join(kept), kept_paths, list(dict.fromkeys(discarded)))
