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


@pytest.mark.parametrize("name", ["loss.md", "data.md", "metrics.md"])
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
