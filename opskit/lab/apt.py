"""Apt sources: this machine's Debian mirror, which the base image is built from and which the
lab's apt proxy (opskit.lab.standins.aptproxy) lets the hosts reach.

Both formats of sources.list(5) are read: one-line ``sources.list`` / ``*.list`` and deb822
``*.sources`` (https://manpages.debian.org/bookworm/apt/sources.list.5.en.html). Lab hosts send
their plain-http apt traffic to the proxy on the bridge (``Acquire::http::Proxy``, apt.conf(5):
https://manpages.debian.org/bookworm/apt/apt.conf.5.en.html).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from opskit.lab.spec import LabError
from opskit.lab.standins import aptproxy

# The Debian release of the lab hosts (Debian 12).
SUITE = "bookworm"
# apt.conf snippet (in the image and in every host's overlay) naming the lab's apt proxy.
APT_PROXY_CONF = "etc/apt/apt.conf.d/01opskit-lab-proxy"


@dataclass(frozen=True)
class AptSource:
    """One apt source entry (a deb822 stanza or a sources.list line)."""

    types: tuple[str, ...]
    uris: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...]


def parse_deb822_sources(text: str) -> list[AptSource]:
    """Parse a deb822 ``*.sources`` file; stanzas with ``Enabled: no`` are left out.

    >>> src = parse_deb822_sources("Types: deb\\nURIs: http://deb.debian.org/debian\\n"
    ...                            "Suites: bookworm bookworm-updates\\nComponents: main\\n")
    >>> src[0].uris, src[0].suites
    (('http://deb.debian.org/debian',), ('bookworm', 'bookworm-updates'))
    """
    sources: list[AptSource] = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        current = ""
        for line in stanza.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line[0] in " \t" and current:
                fields[current] += " " + line.strip()
                continue
            key, sep, value = line.partition(":")
            if not sep:
                continue
            current = key.strip().lower()
            fields[current] = value.strip()
        if not fields or fields.get("enabled", "yes").lower() == "no":
            continue
        sources.append(
            AptSource(
                types=tuple(fields.get("types", "").split()),
                uris=tuple(fields.get("uris", "").split()),
                suites=tuple(fields.get("suites", "").split()),
                components=tuple(fields.get("components", "").split()),
            )
        )
    return sources


def parse_sources_list(text: str) -> list[AptSource]:
    """Parse one-line-style ``sources.list`` text (``deb [opts] URI suite component...``).

    >>> parse_sources_list("deb [arch=amd64] http://ftp.de.debian.org/debian bookworm main\\n")
    [AptSource(types=('deb',), uris=('http://ftp.de.debian.org/debian',), \
suites=('bookworm',), components=('main',))]
    """
    sources: list[AptSource] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        line = re.sub(r"\[[^\]]*\]", " ", line)  # options such as [arch=amd64 signed-by=...]
        words = line.split()
        if len(words) < 3 or words[0] not in ("deb", "deb-src"):
            continue
        sources.append(AptSource((words[0],), (words[1],), (words[2],), tuple(words[3:])))
    return sources


def pick_mirror(sources: Sequence[AptSource], suite: str = SUITE) -> str:
    """The first ``deb`` URI that serves `suite` (what debootstrap should use).

    >>> pick_mirror(parse_sources_list("deb http://m.example/debian bookworm main"))
    'http://m.example/debian'
    """
    for source in sources:
        if "deb" in source.types and suite in source.suites:
            for uri in source.uris:
                if urlsplit(uri).scheme in ("http", "https"):
                    return uri
    raise LabError(
        f"no apt source for {suite!r} found in /etc/apt/sources.list or "
        f"/etc/apt/sources.list.d/*.sources: the lab builds its base image from this machine's "
        f"own Debian mirror; add one, e.g. a 'deb http://<mirror>/debian {suite} main' line"
    )


def mirror_hosts(sources: Sequence[AptSource]) -> tuple[str, ...]:
    """Host names (``host`` or ``host:port``) of the plain-http URIs, in first-seen order.

    >>> mirror_hosts(parse_sources_list("deb http://a.example/d bookworm main\\n"
    ...                                 "deb http://b.example:8080/d bookworm main"))
    ('a.example', 'b.example:8080')
    """
    hosts: list[str] = []
    for source in sources:
        for uri in source.uris:
            parts = urlsplit(uri)
            if parts.scheme != "http" or not parts.hostname:
                continue
            host = parts.hostname if parts.port in (None, 80) else f"{parts.hostname}:{parts.port}"
            if host not in hosts:
                hosts.append(host)
    return tuple(hosts)


def apt_proxy_conf(gateway: str, port: int = aptproxy.PORT) -> str:
    """apt.conf snippet sending the host's plain-http apt traffic to the lab's apt proxy."""
    return (
        "// Written by opskit.lab.apt: lab hosts reach Debian mirrors only through this proxy.\n"
        f'Acquire::http::Proxy "http://{gateway}:{port}";\n'
    )


# --------------------------------------------------------------------------------------------
# This machine's sources


def read_machine_apt_sources(apt_dir: Path = Path("/etc/apt")) -> list[AptSource]:
    """This machine's apt sources: sources.list, sources.list.d/*.list and *.sources."""
    sources: list[AptSource] = []
    for path in machine_source_files(apt_dir):
        text = path.read_text(encoding="utf-8", errors="replace")
        if path.suffix == ".sources":
            sources += parse_deb822_sources(text)
        else:
            sources += parse_sources_list(text)
    return sources


def machine_mirror_hosts() -> tuple[str, ...]:
    """Host names of this machine's plain-http apt mirrors (what the apt proxy may reach)."""
    hosts = mirror_hosts(read_machine_apt_sources())
    if not hosts:
        raise LabError(
            "this machine's apt sources name no http:// mirror; the lab's apt proxy forwards "
            "plain http only: add an http mirror to /etc/apt/sources.list.d/"
        )
    return hosts


def machine_source_files(apt_dir: Path) -> list[Path]:
    """The apt source files under `apt_dir`: sources.list, sources.list.d/*.list and *.sources."""
    files = [apt_dir / "sources.list"] if (apt_dir / "sources.list").is_file() else []
    listing = apt_dir / "sources.list.d"
    if listing.is_dir():
        files += sorted(p for p in listing.iterdir() if p.suffix in (".list", ".sources"))
    return files
