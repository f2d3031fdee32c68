"""Docs stay true: their Python examples run, and every config key is documented."""

import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cispo.config import Config

DOCS = Path(__file__).resolve().parent.parent / "docs"
ROOT = DOCS.parent


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.parametrize("name", ["loss.md", "data.md", "metrics.md", "environments.md"])
def test_doc_examples_run(name, monkeypatch):
    monkeypatch.chdir(ROOT)
    blocks = python_blocks(DOCS / name)
    assert blocks
    for code in blocks:
        exec(compile(code, f"docs/{name}", "exec"), {})


def _keys(node: dict, prefix: str = ""):
    for k, v in node.items():
        if isinstance(v, dict) and k != "sources":  # reward.sources is a mapping value
            yield from _keys(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def test_every_config_key_is_documented():
    text = (DOCS / "configuration.md").read_text()
    schema = OmegaConf.to_container(OmegaConf.structured(Config), resolve=False)
    missing = [key for key in _keys(schema)
               if f"`{key}`" not in text
               and not (key.startswith("model.tiny.") and f"`{key.rsplit('.', 1)[1]}`" in text)]
    assert not missing, f"undocumented config keys: {missing}"


def test_docs_and_configs_point_only_inside_the_repository():
    """Users do not have the developers' ../shared folder: nothing may send them there."""
    files = [ROOT / "README.md", *DOCS.glob("*.md"), *(ROOT / "conf").rglob("*.yaml"),
             *(ROOT / "launch").rglob("*"), *(ROOT / "cispo").rglob("*.py"), *(ROOT / "rollout").rglob("*.py"),
             *(ROOT / "rewards").rglob("*.py"), *(ROOT / "sandboxes").rglob("*.py"),
             *(ROOT / "environments").rglob("*.py")]
    bad = [str(f.relative_to(ROOT)) for f in files
           if f.is_file() and re.search(r"shared[/]DESIGN|\bDESIGN\.md", f.read_text(errors="ignore"))]
    assert not bad, f"these point at the developers' DESIGN.md, not docs/design.md: {bad}"
    named = set(re.findall(r"\bdocs/([\w.-]+\.md)", (ROOT / "README.md").read_text()))
    assert "design.md" in named and all((DOCS / n).exists() for n in named), named


def test_readme_layout_names_files_where_they_are():
    """The README's layout block: every `name.py` / `name/` it lists under a package is there."""
    block = (ROOT / "README.md").read_text().split("## Layout", 1)[1].split("```")[1]
    package, checked = None, 0
    for line in block.splitlines():
        head = re.match(r"^(\w+)/\s", line)
        if head:
            package = head.group(1)
        if package not in ("cispo", "rollout"):
            continue
        text = line[len(head.group(0)):] if head else line
        for name in re.findall(r"\b([a-z_]+(?:\.py|/))", text):
            assert (ROOT / package / name.rstrip("/")).exists(), f"README says {package}/{name}"
            checked += 1
    assert checked > 20
