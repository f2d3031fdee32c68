"""Registries refuse a name that is taken, engines implement the documented protocol, and engine
modules are discovered without make_engine naming them (issue 14, item 7)."""

import subprocess
import sys
from pathlib import Path

import pytest

import rollout.engines as engines
from cispo.advantages import ADVANTAGES, register_advantage
from cispo.loss import LOSSES, register_loss
from rewards.registry import reward

ROOT = Path(__file__).resolve().parent.parent


def test_every_registry_refuses_a_taken_name():
    with pytest.raises(ValueError, match="already registered"):
        register_loss("cispo")(lambda *a, **k: None)
    with pytest.raises(ValueError, match="already registered"):
        register_advantage("group_norm")(lambda *a, **k: None)
    from rewards.registry import get_spec

    get_spec("math")  # loads the built-in rewards
    with pytest.raises(ValueError, match="already registered"):
        reward("math")(lambda completion: 0.0)
    engines.discover()
    with pytest.raises(ValueError, match="rollout engine 'hf' is already registered"):
        engines.register_engine("hf")(type("Other", (), {m: lambda self: None for m in engines.PROTOCOL_METHODS}))
    assert LOSSES["cispo"].__name__ == "cispo_loss" and ADVANTAGES["group_norm"].__module__ == "cispo.advantages"
    assert engines.ENGINES["hf"].__name__ == "HFEngine"  # nothing was overwritten


def test_an_engine_without_the_protocol_is_refused():
    class Half:
        def generate(self, prompts, group_size, params, first_index=0):
            return []

    with pytest.raises(TypeError, match=r"lacks \['load_state_dict', 'check_complete', 'sleep', 'wake'\]"):
        engines.register_engine("half_engine_test")(Half)
    assert "half_engine_test" not in engines.ENGINES


def test_built_in_engines_implement_the_protocol(tiny_model_path):
    engines.discover()
    assert {"hf", "graph", "vllm"} <= set(engines.ENGINES)
    for cls in engines.ENGINES.values():
        assert all(callable(getattr(cls, m, None)) for m in engines.PROTOCOL_METHODS), cls
    eng = engines.make_engine("hf", tiny_model_path, "float32", "cpu")
    assert isinstance(eng, engines.Engine)
    eng.sleep()  # the hf engine holds no cache between calls: cheap no-ops
    eng.wake()


def test_engine_modules_are_discovered_and_vllm_stays_lazy():
    code = ("import sys, rollout.engines as e; e.discover(); "
            "print(sorted(e.ENGINES), 'vllm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    names, vllm_imported = out.stdout.rsplit(" ", 1)
    assert "'hf'" in names and "'vllm'" in names and vllm_imported.strip() == "False"


def test_a_new_engine_module_needs_no_edit_of_make_engine(tmp_path, monkeypatch):
    # a module beside hf.py and vllm_engine.py (here: in a second folder of the package's path)
    (tmp_path / "echo_engine_test.py").write_text(
        "from rollout.engines import register_engine\n"
        "@register_engine('echo_test')\n"
        "class Echo:\n"
        "    def __init__(self, *args, **kwargs): self.args = args\n"
        "    def generate(self, prompts, group_size, params, first_index=0): return []\n"
        "    def load_state_dict(self, state_dict, strict=True): pass\n"
        "    def check_complete(self, names): pass\n"
        "    def sleep(self): pass\n"
        "    def wake(self): pass\n")
    (tmp_path / "broken_engine_test.py").write_text("import a_module_that_does_not_exist\n")
    monkeypatch.setattr(engines, "__path__", [*engines.__path__, str(tmp_path)])
    monkeypatch.setattr(engines, "_discovered", False)
    monkeypatch.setattr(engines, "ENGINES", dict(engines.ENGINES))
    monkeypatch.setattr(engines, "_import_errors", {})
    try:
        assert engines.make_engine("echo_test", "/model").args == ("/model",)
        # a module that does not import takes only its own engines away, and says why
        with pytest.raises(KeyError, match="broken_engine_test did not import: ModuleNotFoundError"):
            engines.make_engine("not_an_engine")
    finally:
        for m in ("echo_engine_test", "broken_engine_test"):
            sys.modules.pop(f"rollout.engines.{m}", None)
