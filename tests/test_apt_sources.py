"""The sandbox image's Debian archive comes from the machine's apt sources (one-line and deb822
files), an explicit setting overriding it; the repository names no archive host (issue 14).
The sources here are made up, with host-less file: URIs (apt and debootstrap take those too)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from sandboxes.apt_sources import debian_mirror, read_sources
from sandboxes.image import MIRROR_ENV, SUITE, mirror

ROOT = Path(__file__).resolve().parent.parent
SITE = "file:///srv/apt/debian"


def _apt(tmp_path: Path, sources_list: str = "", **files: str) -> Path:
    d = tmp_path / "apt"
    (d / "sources.list.d").mkdir(parents=True)
    (d / "sources.list").write_text(sources_list)
    for name, text in files.items():
        (d / "sources.list.d" / name.replace("_", ".")).write_text(text)
    return d


def test_one_line_format(tmp_path):
    apt = _apt(tmp_path, f"""\
# a comment, then a CD and sources that cannot be debootstrapped from
deb cdrom:[Debian GNU/Linux 12]/ {SUITE} main
deb-src {SITE} {SUITE} main
deb file:///srv/security/debian-security {SUITE}-security main
deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] {SITE} {SUITE} main contrib  # trailing
""")
    src = debian_mirror(SUITE, apt)
    assert (src.uri, src.suite, src.components) == (SITE, SUITE, ("main", "contrib"))
    assert src.origin.endswith("sources.list")
    assert [s.type for s in read_sources(apt)] == ["deb-src", "deb", "deb"]  # cdrom: not a URI


def test_deb822_format(tmp_path):
    apt = _apt(tmp_path, sources_list="", debian_sources=f"""\
Types: deb
URIs: file:///srv/off/debian
Suites: {SUITE}
Components: main
Enabled: no

Types: deb deb-src
# a comment inside a stanza
URIs: {SITE}
Suites: {SUITE} {SUITE}-updates
Components: main
 non-free-firmware
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: file:///srv/security/debian-security
Suites: {SUITE}-security
Components: main
""")
    src = debian_mirror(SUITE, apt)
    assert (src.uri, src.suite) == (SITE, SUITE)
    assert src.components == ("main", "non-free-firmware")  # the continuation line
    assert src.origin.endswith("debian.sources")
    assert not any("off.example" in s.uri for s in read_sources(apt))  # Enabled: no


def test_sources_list_comes_before_the_directory_and_the_suite_match_wins(tmp_path):
    apt = _apt(tmp_path, "deb file:///srv/first/debian trixie main\n",
               a_list=f"deb {SITE} {SUITE} main\n")
    assert debian_mirror(SUITE, apt).uri == SITE  # the exact suite beats an earlier other release
    apt2 = _apt(tmp_path / "2", "deb file:///srv/first/debian trixie main\n",
                a_list="deb file:///srv/second/debian trixie main\n")
    # no source carries the suite: the first Debian archive carrying a release serves it too
    assert debian_mirror(SUITE, apt2).uri == "file:///srv/first/debian"


def test_a_machine_without_a_debian_archive_gets_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    apt = _apt(tmp_path, "deb file:///srv/archive/ubuntu noble main universe\n"
                         "deb file:///srv/archive/ubuntu noble-security main\n")
    assert debian_mirror(SUITE, apt) is None
    with pytest.raises(LookupError, match=f"--mirror URL or {MIRROR_ENV}=URL"):
        mirror(apt_dir=str(apt))
    assert debian_mirror(SUITE, tmp_path / "no-such-dir") is None


def test_explicit_settings_override_the_apt_sources(tmp_path, monkeypatch):
    apt = _apt(tmp_path, f"deb {SITE} {SUITE} main\n")
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    assert mirror(apt_dir=str(apt)) == (SITE, str(apt / "sources.list"))
    monkeypatch.setenv(MIRROR_ENV, "file:///srv/env/debian")
    assert mirror(apt_dir=str(apt)) == ("file:///srv/env/debian", MIRROR_ENV)
    assert mirror("file:///srv/debian", apt_dir=str(apt)) == ("file:///srv/debian", "--mirror")


def test_this_machine_is_read_without_error():
    sources = read_sources()  # whatever this machine has: parsed, never raised on
    assert all(s.type in ("deb", "deb-src") for s in sources)


# Hosts a tracked file may name in a URL: placeholders and the local machine only.
PLACEHOLDER = re.compile(r"^(\{[^}]*\}|localhost|127\.0\.0\.1|([\w-]+\.)*(invalid|example|test)"
                         r"|example\.(com|org|net)|<[^>]*>)$")


def test_the_repository_names_no_host():
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split("\0")
    named = []
    for name in filter(None, files):
        try:
            text = (ROOT / name).read_text()
        except (UnicodeDecodeError, OSError):
            continue
        for m in re.finditer(r"\b(?:https?|ftp|rsync)://([^/\s\"'`)>\]]+)", text):
            host = m.group(1).split("@")[-1].rsplit(":", 1)[0] if "{" not in m.group(1) \
                else m.group(1)
            if not PLACEHOLDER.match(host):
                named.append(f"{name}: {m.group(0)}")
    assert not named, named
