"""`inv hosts.trust`: fetch host keys, show fingerprints, record them in known_hosts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import paramiko

from opskit.core.errors import ConnectError
from opskit.core.inventory import Host, SshSettings
from opskit.core.remote import fingerprint, known_hosts_name, scan_host_key


@dataclass(frozen=True)
class KeyCheck:
    host: str
    name: str  # as recorded in known_hosts
    key: paramiko.PKey
    state: str  # "trusted" (already recorded), "new", "changed"
    recorded: str = ""  # fingerprint on file when changed

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key)


def check_host_key(host: Host, ssh: SshSettings) -> KeyCheck:
    try:
        key = scan_host_key(host.address, host.port, ssh.connect_timeout)
    except (OSError, paramiko.SSHException, EOFError) as exc:
        raise ConnectError(
            f"{host.name} ({host.address}:{host.port}): unreachable ({exc})"
        ) from None
    name = known_hosts_name(host.address, host.port)
    keys = paramiko.HostKeys()
    if ssh.known_hosts.exists():
        keys.load(str(ssh.known_hosts))
    recorded = keys.lookup(name) or {}
    if key.get_name() in recorded:
        if recorded[key.get_name()] == key:
            return KeyCheck(host.name, name, key, "trusted")
        return KeyCheck(host.name, name, key, "changed", fingerprint(recorded[key.get_name()]))
    return KeyCheck(host.name, name, key, "new")


def record(check: KeyCheck, known_hosts: Path) -> None:
    """Append (new) or replace (changed) the host's key line, atomically."""
    lines = known_hosts.read_text().splitlines() if known_hosts.exists() else []
    keep = [
        line
        for line in lines
        if not (
            check.state == "changed"
            and line.split(" ", 2)[:2] == [check.name, check.key.get_name()]
        )
    ]
    keep.append(f"{check.name} {check.key.get_name()} {check.key.get_base64()}")
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    tmp = known_hosts.with_name(known_hosts.name + ".opskit-new")
    tmp.write_text("\n".join(keep) + "\n")
    tmp.chmod(0o644)
    tmp.replace(known_hosts)
