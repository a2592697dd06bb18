"""The inside of `inv audit`: the one read-only remote command per host (the host program
opskit/hostside/audit_probe.py), what it read (Inside), and every judgement of it: failed
logins and fail2ban, authorized_keys, listening sockets, sshd's and nginx's settings."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from opskit.audit.findings import Finding
from opskit.audit.keys import KeyFile, judge_keys
from opskit.audit.logins import Bans, Source, bans_of, judge_logins, sources_of
from opskit.audit.ports import Socket, judge_ports, sockets_of
from opskit.audit.settings import Settings
from opskit.checks.levels import Severity
from opskit.hostside import audit_probe
from opskit.hostside.audit_probe import MARKER, NO_PYTHON, Config, ProbeOutput

PROBE_FILE = Path(audit_probe.__file__)
# The checks the inside makes on every host ("nginx-config" too where nginx runs).
INSIDE_CHECKS = ("failed-logins", "fail2ban", "authorized-keys", "ports", "sshd-config")


def judge_sshd(text: str, host: str) -> list[Finding]:
    """sshd's effective settings (`sshd -T`) that allow password guessing or root passwords.

    >>> [f.title for f in judge_sshd("passwordauthentication yes\\npermitrootlogin yes\\n", "h")]
    ['sshd accepts passwords', 'sshd lets root log in with a password']
    """
    conf: dict[str, str] = {}
    for line in text.splitlines():
        k, _, val = line.strip().partition(" ")
        conf.setdefault(k.lower(), val.strip())
    fix = f"run `inv provision --hosts {host} --roles base` (its sshd settings: keys only)"
    out = []
    if conf.get("passwordauthentication") == "yes":
        out.append(
            Finding(
                "sshd-config",
                Severity.HIGH,
                "sshd accepts passwords",
                "PasswordAuthentication yes: passwords can be guessed",
                fix,
            )
        )
    if conf.get("permitrootlogin") == "yes":
        out.append(
            Finding(
                "sshd-config",
                Severity.HIGH,
                "sshd lets root log in with a password",
                "PermitRootLogin yes",
                fix,
            )
        )
    if conf.get("permitemptypasswords") == "yes":
        out.append(
            Finding(
                "sshd-config",
                Severity.CRITICAL,
                "sshd accepts empty passwords",
                "PermitEmptyPasswords yes",
                fix,
            )
        )
    return out


def judge_nginx_dump(lines: Sequence[str], host: str) -> list[Finding]:
    """`autoindex on` in nginx's configuration (from the filtered `nginx -T`).

    >>> [f.detail for f in judge_nginx_dump(["# configuration file /etc/nginx/x.conf:",
    ...     "12:    autoindex on;"], "h")]
    ['autoindex on in /etc/nginx/x.conf, line 12: nginx lists directories without an index file']
    """
    out = []
    current = "?"
    for line in lines:
        m = re.match(r"^# configuration file (.*):$", line)
        if m:
            current = m.group(1)
            continue
        n, _, directive = line.partition(":")
        if re.match(r"^\s*autoindex\s+on\s*;", directive):
            out.append(
                Finding(
                    "directory-listing",
                    Severity.MEDIUM,
                    "nginx directory listing enabled",
                    f"autoindex on in {current}, line {n}: nginx lists directories without an "
                    "index file",
                    f"remove it from {current} on {host}; `inv provision --hosts {host} --roles "
                    "nginx` restores opskit's own files",
                )
            )
    return out


def collect_script(since_hours: float) -> str:
    """The one remote command: the host program opskit/hostside/audit_probe.py (read-only,
    stdlib only), its source read from the module file and sent in a heredoc, its config as
    argv[1]; it prints one JSON object (ProbeOutput). Exit 3 when the host has no python3."""
    source = PROBE_FILE.read_text()
    config: Config = {"seconds": int(since_hours * 3600)}
    missing = f"{{ echo 'python3 is missing on this host' >&2; exit {NO_PYTHON}; }}"
    return (
        f"command -v python3 >/dev/null || {missing}\n"
        f"exec python3 - {shlex.quote(json.dumps(config))} <<'{MARKER}'\n"
        f"{source.rstrip()}\n{MARKER}\n"
    )


@dataclass(frozen=True)
class Inside:
    """What the remote command read on one host."""

    sources: tuple[Source, ...]
    journal_error: str
    bans: Bans
    keys: tuple[KeyFile, ...]
    sockets: tuple[Socket, ...]
    ss_error: str
    sshd: str
    nginx: tuple[str, ...] | None


def parse_inside(out: str) -> Inside:
    """Turn the host program's JSON (ProbeOutput) into an Inside."""
    data: ProbeOutput = json.loads(out)
    nginx = data.get("nginx")
    return Inside(
        sources_of(data["journal"]),
        data["journal"].get("error") or "",
        bans_of(data["fail2ban"]),
        tuple(KeyFile(k["path"], k["owner"], int(k["mode"]), k["text"]) for k in data["keys"]),
        sockets_of(data["sockets"]),
        data.get("ss_error") or "",
        data["sshd"],
        tuple(nginx) if nginx is not None else None,
    )


def judge_inside(
    inside: Inside, s: Settings, host: str, ignoreip: Sequence[str] = ()
) -> list[Finding]:
    """Every inside check of one host (pure)."""
    out = judge_logins(inside.sources, inside.bans, s, host, ignoreip)
    if inside.journal_error:
        out.append(
            Finding(
                "failed-logins",
                Severity.LOW,
                "sshd's journal could not be read",
                inside.journal_error,
                f"check `journalctl -t sshd` on {host}",
            )
        )
    out += judge_keys(inside.keys, s.allowed_keys, host)
    if inside.ss_error:
        out.append(
            Finding(
                "ports",
                Severity.LOW,
                "listening sockets could not be read",
                inside.ss_error,
                f"install iproute2 on {host}",
            )
        )
    out += judge_ports(inside.sockets, s.ports, host)
    out += judge_sshd(inside.sshd, host)
    if inside.nginx is not None:
        out += judge_nginx_dump(inside.nginx, host)
    return out
