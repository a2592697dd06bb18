"""Listening sockets of `inv audit`: the rules of what a host is expected to listen on
(`tcp/22`, `tcp/3000@loopback`), and the judgement of what it does listen on (read by the host
program opskit/hostside/audit_probe.py)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from opskit.audit.findings import Finding
from opskit.checks.levels import Severity
from opskit.core.errors import ConfigError
from opskit.hostside.audit_probe import SocketData

_PORT_RULE = re.compile(r"^(tcp|udp)/(\d{1,5})(@loopback)?$")
# Ports of databases and caches: listening on a public address when nothing expects it is
# worse than an unknown port.
DB_PORTS = {
    5432: "PostgreSQL",
    3306: "MySQL",
    6379: "Redis",
    27017: "MongoDB",
    9200: "Elasticsearch",
    11211: "memcached",
    5984: "CouchDB",
    9042: "Cassandra",
}


@dataclass(frozen=True)
class PortRule:
    """A listening socket a host is expected to have: protocol, port, loopback only or not."""

    proto: str
    port: int
    loopback: bool = False
    why: str = ""

    def __str__(self) -> str:
        return f"{self.proto}/{self.port}{'@loopback' if self.loopback else ''}"


def parse_port_rule(text: Any, key: str) -> PortRule:
    """Read `tcp/22`, `udp/68` or `tcp/3000@loopback`.

    >>> parse_port_rule("tcp/3000@loopback", "audit_ports")
    PortRule(proto='tcp', port=3000, loopback=True, why='audit_ports')
    """
    m = _PORT_RULE.match(str(text))
    if not m or not 0 < int(m.group(2)) < 65536:
        raise ConfigError(
            f"{key}: {text!r}: expected proto/port, e.g. tcp/22, udp/68, tcp/3000@loopback"
        )
    return PortRule(m.group(1), int(m.group(2)), bool(m.group(3)), key)


@dataclass(frozen=True)
class Socket:
    """A listening TCP or bound UDP socket of a host (from `ss -Hltnup`)."""

    proto: str
    address: str
    port: int
    process: str

    @property
    def loopback(self) -> bool:
        """Reachable from the host only (127.0.0.0/8, ::1, IPv4-mapped loopback).

        >>> Socket("tcp", "::ffff:127.0.0.1", 1, "x").loopback, Socket("tcp", "::", 1, "x").loopback
        (True, False)
        """
        a = self.address.split("%", 1)[0]
        try:
            ip = ipaddress.ip_address(a)
        except ValueError:
            return a == "localhost"
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            return ip.ipv4_mapped.is_loopback
        return ip.is_loopback


def sockets_of(records: Iterable[SocketData]) -> tuple[Socket, ...]:
    """The host program's socket records (audit_probe.parse_ss) as Sockets.

    >>> from opskit.hostside.audit_probe import parse_ss
    >>> [(s.port, s.loopback) for s in sockets_of(parse_ss(
    ...     'tcp LISTEN 0 511 [::]:80 [::]:* users:(("nginx",pid=47,fd=6))\\n'
    ...     'udp UNCONN 0 0 127.0.0.53%lo:53 0.0.0.0:* users:(("systemd-resolve",pid=1))'))]
    [(80, False), (53, True)]
    """
    return tuple(Socket(r["proto"], r["address"], int(r["port"]), r["process"]) for r in records)


def judge_ports(sockets: Sequence[Socket], rules: Sequence[PortRule], host: str) -> list[Finding]:
    """Sockets the rules do not explain, and loopback-only services open to the network (pure)."""
    out: list[Finding] = []
    seen: set[tuple[str, int, bool]] = set()
    for sock in sockets:
        scope = (sock.proto, sock.port, sock.loopback)
        if scope in seen:
            continue  # the IPv4 and IPv6 sockets of one service: one finding
        seen.add(scope)
        rule = next((r for r in rules if (r.proto, r.port) == (sock.proto, sock.port)), None)
        where = f"{sock.proto} {sock.address}:{sock.port} ({sock.process})"
        if rule is not None and (sock.loopback or not rule.loopback):
            continue
        if rule is not None:
            out.append(
                Finding(
                    "ports",
                    Severity.HIGH,
                    f"{sock.proto}/{sock.port} listens on a public address",
                    f"{where}; expected on loopback only ({rule.why}): it can be reached "
                    "without going through nginx or the firewall",
                    f"make {sock.process} listen on 127.0.0.1 (e.g. `inv provision --hosts "
                    f"{host}`), or allow it with audit_ports_extra: [{sock.proto}/{sock.port}]",
                )
            )
        elif sock.loopback:
            out.append(
                Finding(
                    "ports",
                    Severity.LOW,
                    f"unexpected local service {sock.proto}/{sock.port}",
                    f"{where}; none of the host's roles runs it (reachable from the host only)",
                    f"stop and disable it if it is not needed (`systemctl disable --now ...` on "
                    f"{host}), or allow it with audit_ports_extra: "
                    f"[{sock.proto}/{sock.port}@loopback]",
                )
            )
        else:
            db = DB_PORTS.get(sock.port) if sock.proto == "tcp" else None
            out.append(
                Finding(
                    "ports",
                    Severity.HIGH if db else Severity.MEDIUM,
                    f"unexpected {'database ' if db else ''}port {sock.proto}/{sock.port} open "
                    "to the network",
                    f"{where}; none of the host's roles explains it"
                    + (f" ({db} should listen on loopback or a private network)" if db else ""),
                    f"stop it or bind it to 127.0.0.1 on {host}; if it is meant to be open, add "
                    f"{sock.proto}/{sock.port} to audit_ports_extra for {host}",
                )
            )
    return out
