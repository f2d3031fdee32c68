"""Build the sandbox image offline: debootstrap a Debian root filesystem → `docker import`.

    python -m sandboxes.image build [--name cispo-sandbox:bookworm-1] [--packages extra,debs]
                                   [--mirror URL]
    python -m sandboxes.image status

No container registry is needed (or reachable on many clusters' CPU nodes): the image is made
from Debian packages plus the Python packages the in-sandbox scorers need, installed into the
root filesystem with the host's pip (same Python minor as bookworm's python3: 3.11). Idempotent:
an image whose `cispo.spec` label matches the requested spec is left alone.

The Debian archive is the one this machine's apt uses (`sandboxes.apt_sources`: its
sources.list files, one-line or deb822), so a site mirror or proxy is used without configuring
anything; `--mirror URL` or the CISPO_DEBIAN_MIRROR environment variable names another.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_IMAGE = "cispo-sandbox:bookworm-1"
SUITE = "bookworm"
# Full python3 (not python3-minimal): math-verify/sympy need the standard library's full set.
BASE_PACKAGES = ("python3", "python3-pytest", "git", "patch", "ca-certificates")
# Scorers that run inside the sandbox (pure-Python wheels; pinned for reproducible verdicts).
# The antlr4_9_3 extra: the LaTeX parser on the same ANTLR runtime as the host's venv (where
# hydra/omegaconf need 4.9.*), so both sandbox backends parse alike, and pip's post-install check
# (which compares this --target install with the host environment) finds no conflict.
PIP_PACKAGES = ("math-verify[antlr4_9_3]==0.9.0",)
SANDBOX_UID = 10001  # the unprivileged user sandboxed code runs as
BUILD_SPEC_VERSION = 1  # bump when the build recipe below changes


def _spec(packages: tuple[str, ...], pip_packages: tuple[str, ...]) -> str:
    blob = json.dumps([BUILD_SPEC_VERSION, SUITE, sorted(packages), sorted(pip_packages)])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


MIRROR_ENV = "CISPO_DEBIAN_MIRROR"  # a Debian archive URL; overrides the machine's apt sources


def mirror(explicit: str | None = None, apt_dir: str = "/etc/apt") -> tuple[str, str]:
    """(the Debian archive to debootstrap SUITE from, where that choice came from): `explicit`,
    else $CISPO_DEBIAN_MIRROR, else the archive this machine's apt sources use."""
    from sandboxes.apt_sources import debian_mirror

    if explicit:
        return explicit, "--mirror"
    if os.environ.get(MIRROR_ENV, "").strip():
        return os.environ[MIRROR_ENV].strip(), MIRROR_ENV
    src = debian_mirror(SUITE, apt_dir)
    if src is None:
        raise LookupError(f"no Debian archive with '{SUITE} main' in {apt_dir}/sources.list or "
                          f"{apt_dir}/sources.list.d/: name one with --mirror URL or {MIRROR_ENV}=URL "
                          f"(the archive's root, as debootstrap takes it)")
    return src.uri, src.origin


def image_spec_label(client, name: str) -> str | None:
    import docker.errors

    try:
        img = client.images.get(name)
    except docker.errors.ImageNotFound:
        return None
    return (img.labels or {}).get("cispo.spec")


def _run(cmd: list[str], **kw) -> None:
    print("[sandboxes.image] $", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)


def _ensure_debootstrap() -> None:
    if shutil.which("debootstrap"):
        return
    if os.geteuid() != 0:
        sys.exit("debootstrap is missing and this is not root: `sudo apt-get install debootstrap`")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    _run(["apt-get", "update", "-qq"], env=env)
    _run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "debootstrap"], env=env)


def build(name: str = DEFAULT_IMAGE, extra_packages: tuple[str, ...] = (), force: bool = False,
          mirror_url: str | None = None) -> str:
    """Build (or find) the sandbox image; returns its name. `mirror_url`: the Debian archive
    (default: the machine's apt sources, `mirror`)."""
    from sandboxes.engine import connect

    client = connect()
    packages = BASE_PACKAGES + tuple(extra_packages)
    spec = _spec(packages, PIP_PACKAGES)
    if not force and image_spec_label(client, name) == spec:
        print(f"[sandboxes.image] {name} is up to date (spec {spec})")
        return name
    if os.geteuid() != 0:
        sys.exit("building the sandbox image needs root (debootstrap creates device nodes and "
                 "chowns files); run `sudo make image`, or name a prebuilt image with sandbox.image")
    try:
        archive, source = mirror(mirror_url)
    except LookupError as e:
        sys.exit(f"[sandboxes.image] {e}")
    print(f"[sandboxes.image] Debian archive {archive} (from {source})", flush=True)
    _ensure_debootstrap()
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="cispo-rootfs-") as tmp:
        root = Path(tmp) / "rootfs"
        _run(["debootstrap", "--variant=minbase", f"--include={','.join(packages)}",
              SUITE, str(root), archive])
        site = root / "usr/local/lib/python3.11/dist-packages"
        site.mkdir(parents=True, exist_ok=True)
        _run([sys.executable, "-m", "pip", "install", "-q", "--no-compile", "--target", str(site),
              *PIP_PACKAGES])
        # An unprivileged user for sandboxed code, and a clean apt cache (smaller image).
        with open(root / "etc/passwd", "a") as f:
            f.write(f"sandbox:x:{SANDBOX_UID}:{SANDBOX_UID}:sandbox:/tmp:/usr/sbin/nologin\n")
        with open(root / "etc/group", "a") as f:
            f.write(f"sandbox:x:{SANDBOX_UID}:\n")
        shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
        shutil.rmtree(root / "var/lib/apt/lists", ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(root), "--numeric-owner", "-c", "."],
                               stdout=subprocess.PIPE)
        _run(["docker", "import",
              "--change", f"LABEL cispo.spec={spec}",
              "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
              "--change", "ENV PYTHONDONTWRITEBYTECODE=1",
              "--change", 'CMD ["/bin/bash"]',
              "-", name], stdin=tar.stdout)
        if tar.wait() != 0:
            raise RuntimeError("tar of the root filesystem failed")
    print(f"[sandboxes.image] built {name} (spec {spec}) in {time.time() - t0:.0f} s")
    return name


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sandboxes.image", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the image if missing or out of date")
    b.add_argument("--name", default=DEFAULT_IMAGE)
    b.add_argument("--packages", default="", help="extra Debian packages, comma-separated")
    b.add_argument("--force", action="store_true", help="rebuild even if up to date")
    b.add_argument("--mirror", default=None,
                   help=f"Debian archive URL (default: ${MIRROR_ENV}, else this machine's apt sources)")
    s = sub.add_parser("status", help="print whether the image exists and is current")
    s.add_argument("--name", default=DEFAULT_IMAGE)
    args = ap.parse_args(argv)
    extra = tuple(p for p in getattr(args, "packages", "").split(",") if p)
    if args.cmd == "build":
        build(args.name, extra, force=args.force, mirror_url=args.mirror)
        return 0
    from sandboxes.engine import connect

    label = image_spec_label(connect(), args.name)
    current = label == _spec(BASE_PACKAGES, PIP_PACKAGES)
    print(json.dumps({"image": args.name, "present": label is not None, "current": current}))
    return 0 if current else 1


if __name__ == "__main__":
    sys.exit(main())
