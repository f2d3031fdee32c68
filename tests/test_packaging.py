"""The installed environment is consistent: `pip check` is clean, and the sandbox image's LaTeX
parser uses the same ANTLR runtime as the venv (issue 14: every fresh `make` printed a pip
dependency ERROR when the image's math-verify pulled ANTLR 4.13.2 next to hydra's 4.9)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from sandboxes.image import PIP_PACKAGES

ROOT = Path(__file__).resolve().parent.parent
ANTLR = "antlr4-python3-runtime"


def test_pip_check_is_clean_in_the_venv():
    r = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def _math_verify(requirements) -> Requirement:
    [req] = [r for r in map(Requirement, requirements) if r.name == "math-verify"]
    return req


def _antlr_pins(dist: str, extras: set[str]) -> list[Requirement]:
    """`dist`'s requirements on the ANTLR runtime, with these extras chosen."""
    out = []
    for r in map(Requirement, metadata.requires(dist) or []):
        if canonicalize_name(r.name) != ANTLR:
            continue
        if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in extras):
            out.append(r)
    return out


def test_the_image_and_the_venv_share_one_antlr_runtime_that_hydra_accepts():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    host, image = _math_verify(deps), _math_verify(PIP_PACKAGES)
    extras = {canonicalize_name(e) for e in host.extras}
    assert extras == {canonicalize_name(e) for e in image.extras} == {"antlr4-9-3"}
    # what that extra makes the parser require, with its own extra passed down
    parser = [r for r in map(Requirement, metadata.requires("math-verify"))
              if r.name == "latex2sympy2_extended" and r.marker and r.marker.evaluate({"extra": "antlr4-9-3"})]
    [parser_req] = parser
    pins = _antlr_pins("latex2sympy2_extended", {canonicalize_name(e) for e in parser_req.extras})
    installed = metadata.version(ANTLR)
    assert pins and all(installed in p.specifier for p in pins), (pins, installed)
    for dist in ("hydra-core", "omegaconf"):  # they refuse ANTLR 4.13.2, math-verify's default
        for p in _antlr_pins(dist, set()):
            assert installed in p.specifier and "4.13.2" not in p.specifier, (dist, p)
