"""The Debian archive this machine's apt already uses, read from its sources files.

The sandbox image is debootstrapped from a Debian archive; rather than naming one in code, the
image build takes the one the machine is configured with (a site mirror, a proxy, a snapshot):
`/etc/apt/sources.list` and `/etc/apt/sources.list.d/*.list` (one-line format,
`deb [options] URI suite components...`) and `/etc/apt/sources.list.d/*.sources` (deb822
stanzas: `Types:`, `URIs:`, `Suites:`, `Components:`, `Enabled:`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SCHEMES = ("http://", "https://", "file:/")  # what debootstrap can fetch from (not cdrom:, ...)


@dataclass(frozen=True)
class AptSource:
    type: str  # deb | deb-src
    uri: str
    suite: str
    components: tuple[str, ...]
    origin: str  # the file it came from


def _one_line(text: str, origin: str) -> list[AptSource]:
    out = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split(None, 1)
        if len(fields) < 2:
            continue
        typ, rest = fields[0], fields[1].strip()
        if rest.startswith("["):  # options: `deb [arch=amd64 signed-by=...] URI ...`
            rest = rest.partition("]")[2]
        parts = rest.split()
        # a CD's URI (`cdrom:[Debian GNU/Linux 12]/`) has spaces in it and is no archive to fetch
        if typ in ("deb", "deb-src") and len(parts) >= 2 and not parts[0].startswith("cdrom:"):
            out.append(AptSource(typ, parts[0], parts[1], tuple(parts[2:]), origin))
    return out


def _deb822(text: str, origin: str) -> list[AptSource]:
    stanzas: list[dict[str, str]] = [{}]
    key = None
    for raw in text.splitlines():
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if stanzas[-1]:
                stanzas.append({})
            key = None
            continue
        if raw[0] in " \t" and key:  # a continuation line
            stanzas[-1][key] += " " + raw.strip()
            continue
        key, sep, value = raw.partition(":")
        if not sep:
            key = None
            continue
        key = key.strip().lower()
        stanzas[-1][key] = value.strip()
    out = []
    for st in stanzas:
        if st.get("enabled", "yes").lower() == "no":
            continue
        for typ in st.get("types", "").split():
            for uri in st.get("uris", "").split():
                for suite in st.get("suites", "").split():
                    out.append(AptSource(typ, uri, suite, tuple(st.get("components", "").split()),
                                         origin))
    return out


def read_sources(apt_dir: str | Path = "/etc/apt") -> list[AptSource]:
    """Every enabled source, in apt's order (sources.list first, then sources.list.d by name)."""
    apt_dir = Path(apt_dir)
    files = [apt_dir / "sources.list"]
    d = apt_dir / "sources.list.d"
    if d.is_dir():
        files += sorted(p for p in d.iterdir() if p.suffix in (".list", ".sources"))
    out: list[AptSource] = []
    for f in files:
        try:
            text = f.read_text()
        except (OSError, UnicodeDecodeError):
            continue
        out += (_deb822 if f.suffix == ".sources" else _one_line)(text, str(f))
    return out


def debian_mirror(suite: str, apt_dir: str | Path = "/etc/apt") -> AptSource | None:
    """The source to debootstrap `suite` from: a binary (`deb`) source with the `main`
    component that carries `suite` itself, else one whose path is a Debian archive (`.../debian`)
    carrying some release (a suite without `-security`/`-updates`/`-backports`: those are
    partial archives). None when the machine has no such source (not Debian, say)."""
    usable = [s for s in read_sources(apt_dir)
              if s.type == "deb" and "main" in s.components and s.uri.startswith(SCHEMES)]
    for s in usable:
        if s.suite == suite:
            return s
    for s in usable:
        if "-" not in s.suite and s.uri.rstrip("/").rsplit("/", 1)[-1] == "debian":
            return s
    return None
