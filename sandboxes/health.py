"""Is this machine ready to run sandboxes? The pre-flight check runs `check` on every node that
will score (cispo.preflight), and so can a person on a node:

    python -m sandboxes.health [--image NAME] [--backend docker|process]

prints one JSON object ({"ok", "docker", "image", "run", "problems"}) and exits 1 if not ok.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from sandboxes.image import BASE_PACKAGES, DEFAULT_IMAGE, PIP_PACKAGES, _spec, image_spec_label


def check(image: str = DEFAULT_IMAGE, backend: str = "docker") -> dict:
    """The engine answers, `image` is there (and current, for the default image), and one
    hardened container runs a program in it. Never raises: problems are listed."""
    out: dict = {"ok": False, "backend": backend, "docker": None, "image": None, "run": None,
                 "problems": []}
    if backend == "process":  # nothing to check but that it runs; no isolation (said loudly)
        out["run"] = _run_once(image, backend, out["problems"])
        out["ok"] = not out["problems"]
        return out
    from sandboxes.engine import DockerUnavailable, connect

    try:
        client = connect(timeout_s=10)
    except DockerUnavailable as e:
        out["problems"].append(str(e).splitlines()[0])
        return out
    out["docker"] = client.version().get("Version", "?")
    label = image_spec_label(client, image)
    if label is None:
        try:  # an image made elsewhere (no cispo.spec label) is fine if it exists
            client.images.get(image)
            out["image"] = "present"
        except Exception:
            out["image"] = "missing"
            out["problems"].append(
                f"sandbox image {image} is not on this node: `docker load -i cispo-sandbox.tar` "
                "(made once with `docker save`) or `python -m sandboxes.image build` here "
                "(docs/launch.md, the sandbox image)")
            return out
    elif image == DEFAULT_IMAGE and label != _spec(BASE_PACKAGES, PIP_PACKAGES):
        out["image"] = "outdated"
        out["problems"].append(f"sandbox image {image} was built by another recipe (spec {label}): "
                               "rebuild it (`python -m sandboxes.image build --force`) and load it "
                               "on every sandbox node")
    else:
        out["image"] = "current" if image == DEFAULT_IMAGE else "present"
    out["run"] = _run_once(image, backend, out["problems"])
    out["ok"] = not out["problems"]
    return out


def _run_once(image: str, backend: str, problems: list[str]) -> str | None:
    """One program through the same path code rewards use; its warm pool is removed after."""
    from sandboxes import run

    t0 = time.monotonic()
    try:
        res = run.run_code("print(6 * 7)", timeout_s=60, image=image, backend=backend)
    except Exception as e:
        problems.append(f"a sandbox run failed: {type(e).__name__}: {e}")
        return None
    finally:
        run.shutdown()
    if res.returncode != 0 or res.stdout.strip() != "42":
        problems.append(f"a sandbox run printed {res.stdout[:80]!r} (exit {res.returncode}, "
                        f"stderr {res.stderr[-200:]!r}); expected 42")
        return None
    return f"ok in {time.monotonic() - t0:.1f} s"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sandboxes.health", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default=DEFAULT_IMAGE)
    ap.add_argument("--backend", default="docker", choices=["docker", "process"])
    args = ap.parse_args(argv)
    res = check(args.image, args.backend)
    print(json.dumps(res))
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
