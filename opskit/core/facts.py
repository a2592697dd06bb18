"""What a host is (its OS release), read inside the one probe command, remembered per host.

Roles adapt to the release they find (PostgreSQL 15 on Debian 12, 17 on Debian 13; paths that
follow from it), so a host's resources depend on its release before the host is probed. The
release is therefore remembered on the operator's machine per host (`FactsCache`, under the
opskit cache dir) and re-read in the same single probe command as everything else: while it is
what was remembered, nothing more is sent. A host seen for the first time is taken to be
Debian 12 until its probe says otherwise; only when that guess is wrong (or the release changed:
an upgrade) does the run cost one more probe. A release opskit does not support stops the host
before anything is changed on it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from opskit.core.errors import ConfigError

MARK = "@@opskit-facts"
# Prints the host's release between two marks; never fails (an unreadable file is no facts).
PROBE = (
    f"echo '{MARK}'; "
    "( . /etc/os-release 2>/dev/null; "
    'printf "id=%s\\nversion=%s\\ncodename=%s\\n" "$ID" "$VERSION_ID" "$VERSION_CODENAME" ); '
    f"echo '{MARK}-end'"
)
# Releases the roles are written and tested for: Debian 12 (bookworm) and 13 (trixie).
SUPPORTED = {("debian", "12"): "bookworm", ("debian", "13"): "trixie"}


class UnsupportedRelease(ConfigError):
    """The host runs a release the roles do not support; nothing was changed on it."""


@dataclass(frozen=True)
class Facts:
    os_id: str  # "debian"
    os_version: str  # "12"
    os_codename: str  # "bookworm"

    @property
    def label(self) -> str:
        return f"{self.os_id} {self.os_version} ({self.os_codename or '?'})"

    def as_vars(self) -> dict[str, Any]:
        """The facts as variables a role reads: os_id, os_version (int), os_codename."""
        version = int(self.os_version) if self.os_version.isdigit() else self.os_version
        return {"os_id": self.os_id, "os_version": version, "os_codename": self.os_codename}


# What a host never seen before is taken to be until its first probe says otherwise.
GUESS = Facts("debian", "12", "bookworm")


def parse(output: str) -> Facts | None:
    """The facts between the marks of PROBE's output (None when the marks are missing).

    >>> out = "@@opskit-facts\\nid=debian\\nversion=13\\ncodename=trixie\\n@@opskit-facts-end\\n"
    >>> parse(out)
    Facts(os_id='debian', os_version='13', os_codename='trixie')
    >>> parse("nothing here") is None
    True
    """
    m = re.search(rf"^{MARK}\n(.*?)^{MARK}-end$", output, re.M | re.S)
    if m is None:
        return None
    fields = dict(line.partition("=")[::2] for line in m.group(1).splitlines() if "=" in line)
    return Facts(fields.get("id", ""), fields.get("version", ""), fields.get("codename", ""))


def strip(output: str) -> str:
    """The probe output without the facts section."""
    return re.sub(rf"^{MARK}\n.*?^{MARK}-end\n?", "", output, count=1, flags=re.M | re.S)


def check_supported(host: str, facts: Facts) -> Facts:
    """`facts`, or UnsupportedRelease naming the host and its release.

    >>> check_supported("db9", Facts("debian", "11", "bullseye"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    opskit.core.facts.UnsupportedRelease: db9: debian 11 (bullseye) is not supported (...
    """
    if (facts.os_id, facts.os_version) not in SUPPORTED:
        supported = ", ".join(f"Debian {v} ({c})" for (_, v), c in SUPPORTED.items())
        raise UnsupportedRelease(
            f"{host}: {facts.label} is not supported (supported: {supported}); "
            "nothing was changed on this host"
        )
    return facts


class FactsCache:
    """The facts last read from each host, one JSON file per host (keyed by name and address)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, name: str, address: str, port: int) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{name}@{address}_{port}")
        return self.directory / f"{safe}.json"

    def get(self, name: str, address: str, port: int) -> Facts | None:
        try:
            data = json.loads(self._path(name, address, port).read_text())
            return Facts(str(data["os_id"]), str(data["os_version"]), str(data["os_codename"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(self, name: str, address: str, port: int, facts: Facts) -> None:
        path = self._path(name, address, port)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(facts), sort_keys=True) + "\n")
        tmp.replace(path)


def release_vars(facts: Facts | None) -> Mapping[str, Any]:
    """Variables for the roles: the facts, or empty when not known yet."""
    return facts.as_vars() if facts is not None else {}
