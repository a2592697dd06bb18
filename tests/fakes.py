"""Test doubles: LocalRemote runs the engine's real shell scripts with bash on this machine."""

from __future__ import annotations

import subprocess
from collections.abc import Collection
from dataclasses import dataclass, field

from opskit.core.errors import RemoteCommandError
from opskit.core.inventory import Host
from opskit.core.remote import Result


def make_host(name: str = "h1", **vars: object) -> Host:
    return Host(name, "127.0.0.1", 22, "root", ("g",), ("base",), dict(vars))


@dataclass
class LocalRemote:
    """Satisfies the part of opskit.core.remote.Remote the engine uses; runs scripts locally."""

    host: Host = field(default_factory=make_host)
    commands: int = 0
    scripts: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.host.name

    def run(
        self,
        script: str,
        *,
        sudo: bool = True,
        ok_codes: Collection[int] = (0,),
        what: str | None = None,
        timeout: float | None = None,
    ) -> Result:
        self.commands += 1
        self.scripts.append(script)
        p = subprocess.run(["bash", "-s"], input=script, capture_output=True, text=True, timeout=60)
        result = Result(what or "script", p.returncode, p.stdout, p.stderr)
        if p.returncode not in ok_codes:
            raise RemoteCommandError(self.name, result.command, p.returncode, p.stderr)
        return result
