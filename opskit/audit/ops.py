"""`inv audit`: security checks of the fleet from outside (the operator's machine) and inside
(one read-only remote command per host), each problem a finding with severity and fix.

Outside, for hosts with the nginx role: dot-files (`/.env`, `/.git/HEAD`, `/.git/config`) and
other paths that must not be served, directory listings, the `Server:` header, HSTS on HTTPS,
the HTTP to HTTPS redirect, and the certificate (chain, names, dates) for every name the
inventory gives the host. Inside, on every host: failed SSH logins by source address and
fail2ban's bans, every authorized_keys file against the keys the inventory allows, listening
sockets against the ones the host's roles explain, sshd's effective settings and nginx's
directory listings. Variables: opskit/defaults/audit.yml.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import inspect
import ipaddress
import json
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

from opskit.audit import http as audit_http
from opskit.core.errors import ConfigError
from opskit.core.result import HostResult

# --- severities, findings, exit codes ----------------------------------------------------


class Severity(IntEnum):
    """How bad a finding is. `info` never changes the exit code."""

    INFO = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @property
    def label(self) -> str:
        return self.name.lower()


class AuditExit(IntEnum):
    """Exit codes of `inv audit` (the scheme of `inv certs.status`)."""

    OK = 0  # nothing above info
    HOST_FAILED = 1  # a host (or a site of it) could not be read; nothing high or critical
    USAGE = 2  # bad arguments or inventory; nothing was read
    WARNING = 4  # the worst finding is low or medium
    CRITICAL = 5  # a high or critical finding


@dataclass(frozen=True)
class Finding:
    check: str
    severity: Severity
    title: str
    detail: str
    fix: str

    def to_dict(self) -> dict[str, str]:
        return {
            "check": self.check,
            "severity": self.severity.label,
            "title": self.title,
            "detail": self.detail,
            "fix": self.fix,
        }


def worst_label(findings: Iterable[Finding]) -> str:
    """ "ok" when nothing is above info, else the worst severity's name.

    >>> worst_label([]), worst_label([Finding("x", Severity.INFO, "", "", "")])
    ('ok', 'ok')
    >>> low, high = Finding("x", Severity.LOW, "", "", ""), Finding("y", Severity.HIGH, "", "", "")
    >>> worst_label([low, high])
    'high'
    """
    worst = max((f.severity for f in findings), default=Severity.INFO)
    return "ok" if worst is Severity.INFO else worst.label


def exit_code(findings: Iterable[Finding], host_failed: bool) -> AuditExit:
    """5 for a high/critical finding, else 1 when a host failed, else 4 for low/medium, else 0.

    >>> exit_code([Finding("x", Severity.MEDIUM, "", "", "")], True)
    <AuditExit.HOST_FAILED: 1>
    """
    worst = max((f.severity for f in findings), default=Severity.INFO)
    if worst >= Severity.HIGH:
        return AuditExit.CRITICAL
    if host_failed:
        return AuditExit.HOST_FAILED
    if worst >= Severity.LOW:
        return AuditExit.WARNING
    return AuditExit.OK


# --- settings: the audit_* variables of a host ----------------------------------------------

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


def expected_ports(
    v: Mapping[str, Any], roles: Sequence[str], port: int | None = None
) -> tuple[PortRule, ...]:
    """The sockets a host's roles explain (audit_ports replaces them; audit_ports_extra adds).

    >>> [str(r) for r in expected_ports({"ssh_port": 22, "app_port": 3000}, ["app", "nginx"])]
    ['tcp/22', 'tcp/3000@loopback', 'tcp/80', 'tcp/443']
    >>> [str(r) for r in expected_ports({"postgresql_listen_addresses": "localhost"},
    ...                                  ["postgresql"])]
    ['tcp/22', 'tcp/5432@loopback']
    """
    explicit = v.get("audit_ports")
    extra = [parse_port_rule(x, "audit_ports_extra") for x in _list(v, "audit_ports_extra")]
    if explicit is not None:
        if not isinstance(explicit, list):
            raise ConfigError("audit_ports: expected a list like [tcp/22, tcp/443] or null")
        return tuple(parse_port_rule(x, "audit_ports") for x in explicit) + tuple(extra)
    rules = [PortRule("tcp", int(v.get("ssh_port", 22) or 22), why="sshd (ssh_port)")]
    if port is not None and port != rules[0].port:
        rules.append(PortRule("tcp", port, why="sshd (the host's port in the inventory)"))
    if "app" in roles:
        rules.append(PortRule("tcp", int(v.get("app_port", 3000)), True, "the app (app_port)"))
    if "nginx" in roles:
        rules += [PortRule("tcp", 80, why="nginx"), PortRule("tcp", 443, why="nginx")]
    if "postgresql" in roles:
        listen = str(v.get("postgresql_listen_addresses", "localhost")).strip()
        local = all(a.strip() in ("localhost", "127.0.0.1", "::1") for a in listen.split(","))
        why = f"postgresql (postgresql_listen_addresses: {listen})"
        rules.append(PortRule("tcp", 5432, local, why))
    return tuple(rules) + tuple(extra)


def _list(v: Mapping[str, Any], key: str) -> list[Any]:
    value = v.get(key) or []
    if not isinstance(value, list):
        raise ConfigError(f"{key}: expected a list, got {value!r}")
    return value


def _number(v: Mapping[str, Any], key: str, default: float, *, minimum: float = 0) -> float:
    value = v.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise ConfigError(f"{key}: expected a number >= {minimum:g}, got {value!r}")
    return float(value)


def _paths(v: Mapping[str, Any], key: str) -> tuple[str, ...]:
    out = []
    for p in _list(v, key):
        if not isinstance(p, str) or not re.fullmatch(r"/[!-~]*", p):
            raise ConfigError(f"{key}: {p!r}: expected a URL path starting with /")
        out.append(p)
    return tuple(out)


@dataclass(frozen=True)
class Settings:
    """What `inv audit` checks on one host, from its variables (validated)."""

    since_hours: float
    failed_login_threshold: int
    allowed_keys: Mapping[tuple[str, str], str]  # (type, blob) -> where it is allowed
    ports: tuple[PortRule, ...]
    hsts_min_age: int
    hsts_include_subdomains: bool
    tls_ca_file: str | None
    extra_paths: tuple[str, ...]
    listing_paths: tuple[str, ...]
    http_timeout: float
    warning_days: int = 30
    critical_days: int = 7


def host_settings(
    host: Any,
    inventory: Any,
    *,
    since_hours: float | None = None,
    identity_key: tuple[str, str, str] | None = None,
) -> Settings:
    """Validate a host's audit_* variables (ConfigError names the key)."""
    from opskit.certs import ops as certs

    v = host.vars
    hours = since_hours if since_hours is not None else v.get("audit_since_hours", 24)
    if isinstance(hours, bool) or not isinstance(hours, int | float) or not 0 < hours <= 24 * 90:
        raise ConfigError(f"audit_since_hours: expected hours between 0 and 2160, got {hours!r}")
    allowed: dict[tuple[str, str], str] = {}
    for key in ("base_deploy_authorized_keys", "audit_allowed_keys"):
        for i, line in enumerate(_list(v, key)):
            parsed = parse_key_line(str(line))
            if parsed is None:
                raise ConfigError(f"{key}[{i}]: not an OpenSSH public key line")
            allowed.setdefault((parsed.type, parsed.blob), key)
    if identity_key is not None:
        allowed.setdefault(identity_key[:2], f"ssh.identity ({identity_key[2]})")
    ca = str(v.get("audit_tls_ca_file") or "")
    if ca:
        path = Path(ca).expanduser()
        path = path if path.is_absolute() else Path(inventory.path).parent / path
        if not path.is_file():
            raise ConfigError(f"audit_tls_ca_file: {path}: no such file")
        ca = str(path)
    hsts_sub = v.get("audit_hsts_include_subdomains", False)
    if not isinstance(hsts_sub, bool):
        raise ConfigError(
            f"audit_hsts_include_subdomains: expected true or false, got {hsts_sub!r}"
        )
    warning, critical = certs.thresholds(v)
    return Settings(
        since_hours=float(hours),
        failed_login_threshold=int(_number(v, "audit_failed_login_threshold", 10, minimum=1)),
        allowed_keys=allowed,
        ports=expected_ports(v, host.roles, host.port),
        hsts_min_age=int(_number(v, "audit_hsts_min_age", 15552000)),
        hsts_include_subdomains=hsts_sub,
        tls_ca_file=ca or None,
        extra_paths=_paths(v, "audit_extra_paths"),
        listing_paths=_paths(v, "audit_listing_paths"),
        http_timeout=_number(v, "audit_http_timeout", 5, minimum=0.1),
        warning_days=warning,
        critical_days=critical,
    )


def identity_public_key(identity: Path | None) -> tuple[str, str, str] | None:
    """(type, blob, where) of the public half of the inventory's ssh.identity, or None."""
    if identity is None:
        return None
    pub = identity.with_name(identity.name + ".pub")
    try:
        parsed = parse_key_line(pub.read_text())
        if parsed is not None:
            return parsed.type, parsed.blob, str(pub)
    except OSError:
        pass
    try:  # no .pub next to it: derive it (an encrypted key cannot be read: then none)
        import paramiko

        key = paramiko.PKey.from_path(str(identity))
        return key.get_name(), key.get_base64(), str(identity)
    except Exception:  # paramiko raises many kinds; a key we cannot read allows nothing
        return None


# --- authorized_keys ---------------------------------------------------------------------

_KEY_TYPES = re.compile(
    r"^(ssh-(rsa|dss|ed25519)|ecdsa-sha2-nistp(256|384|521)|sk-(ssh-ed25519|ecdsa-sha2-nistp256)"
    r"@openssh\.com|ssh-(rsa|ed25519)-cert-v01@openssh\.com)$"
)


@dataclass(frozen=True)
class PublicKey:
    type: str
    blob: str
    comment: str

    @property
    def fingerprint(self) -> str:
        """OpenSSH's SHA256 fingerprint (what `ssh-keygen -lf` prints)."""
        digest = hashlib.sha256(base64.b64decode(self.blob)).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def parse_key_line(line: str) -> PublicKey | None:
    """A key of an authorized_keys line (options before it allowed), or None.

    Options may hold quoted spaces (`command="a b"`), so the key type is looked for among the
    fields rather than at a fixed place.

    >>> k = parse_key_line('command="echo hi there",no-pty ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA'
    ...     'x8WE2Ia0WLUzfu2x6QBSHDwJ3VLuBOd+nOG9ahiQwN me@laptop')
    >>> k.type, k.comment
    ('ssh-ed25519', 'me@laptop')
    >>> parse_key_line("# a comment") is None, parse_key_line("ssh-rsa notbase64!") is None
    (True, True)
    """
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    fields = text.split()
    for i, f in enumerate(fields[:-1]):
        if _KEY_TYPES.match(f):
            blob = fields[i + 1]
            try:
                raw = base64.b64decode(blob, validate=True)
            except ValueError:
                return None
            if len(raw) < 4 or not raw[4:].startswith(f.encode()[:7]):
                return None  # the blob names its own type first
            return PublicKey(f, blob, " ".join(fields[i + 2 :]))
    return None


@dataclass(frozen=True)
class KeyFile:
    path: str
    owner: str
    mode: int
    text: str


def judge_keys(files: Sequence[KeyFile], s: Settings, host: str) -> list[Finding]:
    """A finding per key no inventory setting allows, and per line that is not a key (pure)."""
    out = []
    for f in files:
        root = f.path.startswith("/root/")
        for n, line in enumerate(f.text.splitlines(), 1):
            if not line.strip() or line.strip().startswith("#"):
                continue
            key = parse_key_line(line)
            if key is None:
                out.append(
                    Finding(
                        "authorized-keys",
                        Severity.LOW,
                        f"unreadable line in {f.path}",
                        f"line {n} is not an OpenSSH public key (sshd ignores it)",
                        f"remove line {n} from {f.path} on {host}",
                    )
                )
                continue
            if (key.type, key.blob) in s.allowed_keys:
                continue
            comment = f", comment {key.comment!r}" if key.comment else ""
            where = "base_deploy_authorized_keys (the deploy user's keys)"
            if root:
                where = "audit_allowed_keys"
            out.append(
                Finding(
                    "authorized-keys",
                    Severity.CRITICAL if root else Severity.HIGH,
                    f"unknown key in {f.path}",
                    f"{key.type} {key.fingerprint}{comment} (line {n}, file owner {f.owner}) "
                    "is not in base_deploy_authorized_keys, audit_allowed_keys or the "
                    "inventory's ssh.identity: whoever holds it can log in"
                    + (" as root" if root else ""),
                    f"if nobody can vouch for it, remove line {n} from {f.path} on {host} "
                    f"(grep -n {key.blob[-16:]} {f.path}) and look at who logged in with it "
                    f"(journalctl -t sshd | grep '{key.fingerprint}'); if it is expected, add "
                    f"it to {where} in the inventory",
                )
            )
    return out


# --- listening sockets --------------------------------------------------------------------


@dataclass(frozen=True)
class Socket:
    proto: str
    address: str
    port: int
    process: str

    @property
    def loopback(self) -> bool:
        a = self.address.split("%", 1)[0]
        try:
            ip = ipaddress.ip_address(a)
        except ValueError:
            return a == "localhost"
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            return ip.ipv4_mapped.is_loopback
        return ip.is_loopback


def parse_ss(text: str) -> list[Socket]:
    """Parse `ss -Hltnup` (listening TCP, bound UDP, with processes).

    >>> s = parse_ss('tcp LISTEN 0 511 [::]:80 [::]:* users:(("nginx",pid=47,fd=6))\\n'
    ...              'udp UNCONN 0 0 127.0.0.53%lo:53 0.0.0.0:* users:(("systemd-resolve",pid=1))')
    >>> [(x.proto, x.address, x.port, x.process, x.loopback) for x in s]
    [('tcp', '::', 80, 'nginx', False), ('udp', '127.0.0.53%lo', 53, 'systemd-resolve', True)]
    """
    out = []
    for line in text.splitlines():
        f = line.split()
        if len(f) < 5 or f[0] not in ("tcp", "udp"):
            continue
        local = f[4]
        addr, _, port = local.rpartition(":")
        if not port.isdigit():
            continue
        addr = addr.strip("[]")
        procs = re.findall(r'\("([^"]*)",pid', line)
        out.append(
            Socket(f[0], "0.0.0.0" if addr == "*" else addr, int(port), procs[0] if procs else "?")
        )
    return out


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


# --- failed SSH logins (this function and reduce_journal also run on the host) ------------


def sshd_event(line: str) -> tuple[str, str, str, str, float] | None:
    """Classify a `journalctl -o short-unix` line of sshd: (kind, source, port, user, time).

    Kinds: "failed" (one failed attempt: password, key, ...), "invalid" (no such user),
    "closed" (closed before authentication by a user who tried), "maxauth", "denied" (user not
    allowed), "accepted". Anything else is None.

    >>> sshd_event("1795400000.5 web1 sshd[7]: Invalid user bob from 10.0.0.9 port 4022")
    ('invalid', '10.0.0.9', '4022', 'bob', 1795400000.5)
    >>> sshd_event("1795400000.5 web1 sshd[7]: Failed password for invalid user x from "
    ...            "203.0.113.5 port 22 ssh2")[:4]
    ('failed', '203.0.113.5', '22', 'x')
    >>> sshd_event("1795400000 web1 sshd[7]: Connection closed by authenticating user root "
    ...            "10.0.0.9 port 51 [preauth]")[:4]
    ('closed', '10.0.0.9', '51', 'root')
    >>> sshd_event("1795400000 web1 sshd[7]: Connection closed by 10.0.0.9 port 51 [preauth]")
    """
    m = re.match(r"^(\d+(?:\.\d+)?) \S+ [^:\s]+: (.*)$", line.rstrip("\n"))
    if not m:
        return None
    when, msg = float(m.group(1)), m.group(2)
    msg = re.sub(r"^(error|fatal): ", "", msg)
    rest = r"(?P<user>.*?) from (?P<ip>\S+) port (?P<port>\d+)"
    patterns = (
        ("failed", r"^Failed (?!none )\S+ for (?:invalid user )?" + rest),
        ("invalid", r"^Invalid user " + rest),
        ("maxauth", r"^maximum authentication attempts exceeded for (?:invalid user )?" + rest),
        (
            "closed",
            r"^(?:Connection (?:closed|reset) by|Disconnect(?:ed from|ing)) "
            r"(?:authenticating|invalid) user (?P<user>.*?) (?P<ip>\S+) port (?P<port>\d+)",
        ),
        ("denied", r"^User (?P<user>\S+) from (?P<ip>\S+) not allowed because()(?P<port>)"),
        ("accepted", r"^Accepted \S+ for " + rest),
    )
    for kind, pattern in patterns:
        hit = re.match(pattern, msg)
        if hit:
            return kind, hit.group("ip"), hit.group("port"), hit.group("user"), when
    return None


def reduce_journal(lines: Any) -> dict[str, dict[str, Any]]:
    """Failed logins per source address from sshd's journal lines.

    A connection (source address and port) counts its "Failed ..." attempts, and at least one
    when it ended unauthenticated after naming a user (invalid user, closed by an
    authenticating user, too many attempts): sshd logs one attempt in several lines.

    >>> r = reduce_journal(["1 h sshd[1]: Invalid user a from 10.0.0.9 port 1",
    ...     "2 h sshd[1]: Connection closed by invalid user a 10.0.0.9 port 1 [preauth]",
    ...     "3 h sshd[2]: Failed password for root from 10.0.0.9 port 2 ssh2",
    ...     "4 h sshd[2]: Failed password for root from 10.0.0.9 port 2 ssh2",
    ...     "5 h sshd[3]: Accepted publickey for deploy from 10.0.0.1 port 3 ssh2: ED25519 x"])
    >>> r["10.0.0.9"]["failures"], r["10.0.0.9"]["users"], r["10.0.0.1"]["failures"]
    (3, ['a', 'root'], 0)
    """
    conns: dict[tuple[str, str], dict[str, Any]] = {}
    for line in lines:
        ev = sshd_event(line)
        if ev is None:
            continue
        kind, ip, port, user, when = ev
        c = conns.setdefault(
            (ip, port or f"?{len(conns)}"),
            {
                "failed": 0,
                "tried": False,
                "accepted": False,
                "users": set(),
                "first": when,
                "last": when,
            },
        )
        c["last"] = max(c["last"], when)
        c["first"] = min(c["first"], when)
        if kind == "accepted":
            c["accepted"] = True
            continue
        c["users"].add(user)
        if kind == "failed":
            c["failed"] += 1
        else:
            c["tried"] = True
    out: dict[str, dict[str, Any]] = {}
    for (ip, _), c in conns.items():
        s = out.setdefault(
            ip,
            {"failures": 0, "accepted": 0, "users": set(), "first": c["first"], "last": c["last"]},
        )
        if c["accepted"]:
            s["accepted"] += 1
            s["failures"] += c["failed"]
        else:
            s["failures"] += max(c["failed"], 1 if c["tried"] else 0)
        if c["failed"] or c["tried"]:
            s["users"] |= c["users"]
        s["first"], s["last"] = min(s["first"], c["first"]), max(s["last"], c["last"])
    for s in out.values():
        s["users"] = sorted(s["users"])[:10]
    return out


@dataclass(frozen=True)
class Source:
    """Failed SSH logins from one address in the window."""

    address: str
    failures: int
    accepted: int = 0
    users: tuple[str, ...] = ()
    first: float = 0.0
    last: float = 0.0


@dataclass(frozen=True)
class Bans:
    """fail2ban's sshd jail: running or not, banned now, bans since it started, bans in window."""

    running: bool
    current: tuple[str, ...] = ()
    total: int = 0
    failed_now: int = 0
    in_window: tuple[str, ...] = ()
    error: str = ""
    # Bans in the window whose action failed: (action, address, why); nothing was blocked.
    failed_actions: tuple[tuple[str, str, str], ...] = ()


def parse_fail2ban(rc: int, text: str, err: str = "") -> Bans:
    """Parse `fail2ban-client status sshd`.

    >>> b = parse_fail2ban(0, "|  |- Currently failed:\\t2\\n   |- Currently banned:\\t1\\n"
    ...     "   |- Total banned:\\t3\\n   `- Banned IP list:\\t10.0.0.9 10.0.0.8\\n")
    >>> b.running, b.current, b.total, b.failed_now
    (True, ('10.0.0.9', '10.0.0.8'), 3, 2)
    """
    if rc != 0:
        why = (err or text).strip().splitlines()
        return Bans(False, error=why[-1] if why else f"exit {rc}")

    def value(label: str) -> str:
        m = re.search(rf"{label}:\s*(.*)$", text, re.M)
        return m.group(1).strip() if m else ""

    return Bans(
        True,
        tuple(value("Banned IP list").split()),
        int(value("Total banned") or 0),
        int(value("Currently failed") or 0),
    )


def judge_logins(
    sources: Sequence[Source], bans: Bans, s: Settings, host: str, ignored: Sequence[str] = ()
) -> list[Finding]:
    """Sources at or above the threshold, and whether fail2ban dealt with them (pure)."""
    out = []
    hours = f"{s.since_hours:g} h"
    if not bans.running:
        out.append(
            Finding(
                "fail2ban",
                Severity.HIGH,
                "fail2ban does not guard sshd",
                f"`fail2ban-client status sshd`: {bans.error or 'not running'}; nothing bans "
                "addresses that keep guessing",
                f"run `inv provision --hosts {host} --roles base` (fail2ban with its sshd jail)",
            )
        )
    if bans.failed_actions:
        actions = sorted({a for a, _, _ in bans.failed_actions})
        ips = sorted({ip for _, ip, _ in bans.failed_actions})
        why = sorted({w for _, _, w in bans.failed_actions})
        missing = "command not found" in why
        out.append(
            Finding(
                "fail2ban",
                Severity.HIGH,
                "fail2ban's bans block nothing",
                f"{len(bans.failed_actions)} ban(s) in the last {hours} failed to run the action "
                f"{', '.join(actions)} ({', '.join(why)}) for {', '.join(ips[:5])}: fail2ban "
                "lists them as banned, but they can keep trying",
                (
                    f"install the firewall the action needs on {host} (apt-get install "
                    "iptables, or nftables with banaction = nftables-multiport in the jail), "
                    "then `fail2ban-client reload`"
                    if missing
                    else f"see /var/log/fail2ban.log on {host} for the action's error"
                ),
            )
        )
    banned = set(bans.current) | set(bans.in_window)
    for src in sorted(sources, key=lambda x: -x.failures):
        if src.failures < s.failed_login_threshold:
            continue
        users = ", ".join(src.users) or "-"
        what = f"{src.failures} failed SSH logins from {src.address} in the last {hours}"
        detail = (
            f"users tried: {users}; threshold audit_failed_login_threshold="
            f"{s.failed_login_threshold}"
        )
        if src.accepted:
            out.append(
                Finding(
                    "failed-logins",
                    Severity.MEDIUM,
                    f"{what}, then {src.accepted} successful login(s)",
                    f"{detail}; a login succeeded from the same address after the failures",
                    f"check who logged in (journalctl -t sshd | grep 'Accepted.*{src.address}') "
                    "and that the key used is one you know",
                )
            )
        elif src.address in banned:
            now = "banned now" if src.address in bans.current else "was banned"
            out.append(
                Finding(
                    "failed-logins",
                    Severity.INFO,
                    what,
                    f"{detail}; fail2ban {now}",
                    "nothing to do: fail2ban blocks it",
                )
            )
        elif src.address in ignored or src.address.startswith("127."):
            out.append(
                Finding(
                    "failed-logins",
                    Severity.INFO,
                    what,
                    f"{detail}; the address is in fail2ban's ignoreip",
                    "check the local job or person that keeps failing",
                )
            )
        else:
            out.append(
                Finding(
                    "failed-logins",
                    Severity.MEDIUM,
                    f"{what}, not banned",
                    f"{detail}; fail2ban did not ban it (findtime/maxretry too loose, or the "
                    "jail does not see these lines)",
                    f"ban it now: `fail2ban-client set sshd banip {src.address}` on {host}; "
                    "check base_fail2ban_maxretry / base_fail2ban_findtime",
                )
            )
    return out


# --- sshd and nginx settings --------------------------------------------------------------


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


# --- the one remote command --------------------------------------------------------------

_REMOTE_MAIN = r"""
def _sh(argv, timeout=60):
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        return p.returncode, p.stdout, p.stderr
    except FileNotFoundError:
        return 127, "", argv[0] + ": not found"
    except subprocess.TimeoutExpired:
        return 124, "", argv[0] + ": timed out"


def _journal(seconds):
    argv = ["journalctl", "-q", "--no-pager", "-o", "short-unix", "--since",
            "-%ds" % seconds, "-t", "sshd", "-t", "sshd-session"]
    try:
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             errors="replace")
    except FileNotFoundError:
        return {"error": "journalctl: not found", "sources": {}, "lines": 0}
    count = [0]

    def lines():
        for line in p.stdout:
            count[0] += 1
            yield line

    sources = reduce_journal(lines())
    err = p.stderr.read()
    rc = p.wait()
    error = (err.strip() or "journalctl: exit %d" % rc) if rc else ""
    return {"error": error, "sources": sources, "lines": count[0]}


def _bans_in_window(seconds):
    # sshd bans in fail2ban's log within the window, and bans whose action failed.
    cutoff = (datetime.datetime.now() - datetime.timedelta(seconds=seconds)).strftime(
        "%Y-%m-%d %H:%M:%S")
    bans, failed, missing = [], [], False
    for path in ("/var/log/fail2ban.log.1", "/var/log/fail2ban.log"):
        try:
            with open(path, errors="replace") as f:
                for line in f:
                    if line[:19] < cutoff:
                        continue
                    m = re.search(r"\[sshd\] Ban (\S+)", line)
                    if m:
                        bans.append(m.group(1))
                    if "returned 127" in line:
                        missing = True  # fail2ban logs the exit code before the failure
                    m = re.search(r"Failed to execute ban jail 'sshd' action '([^']+)'"
                                  r".*'ip': '([^']+)'", line)
                    if m:
                        why = "command not found" if missing else "script error"
                        failed.append([m.group(1), m.group(2), why])
                        missing = False
        except OSError:
            pass
    return sorted(set(bans)), failed


def _key_files(sshd_conf):
    patterns = [".ssh/authorized_keys", ".ssh/authorized_keys2"]
    for line in sshd_conf.splitlines():
        if line.lower().startswith("authorizedkeysfile "):
            patterns = line.split()[1:]
    seen, out = set(), []
    for pw in pwd.getpwall():
        home = pw.pw_dir or "/"
        for pat in patterns:
            if pat.lower() == "none":
                continue
            p = pat.replace("%%", "\0").replace("%h", home).replace("%u", pw.pw_name)
            p = p.replace("%U", str(pw.pw_uid)).replace("\0", "%")
            if not p.startswith("/"):
                p = os.path.join(home, p)
            if p in seen or not os.path.isfile(p):
                continue
            seen.add(p)
            st = os.stat(p)
            try:
                owner = pwd.getpwuid(st.st_uid).pw_name
            except KeyError:
                owner = str(st.st_uid)
            with open(p, errors="replace") as f:
                text = f.read(262144)
            out.append({"path": p, "owner": owner, "mode": st.st_mode & 0o7777, "text": text})
    return out


def _nginx():
    rc, out, err = _sh(["nginx", "-T"])
    if rc == 127:
        return None
    keep = []
    n = 0
    for line in out.splitlines():
        if line.startswith("# configuration file "):
            keep.append(line)
            n = 0
            continue
        n += 1
        if re.match(r"^\s*(autoindex|server_tokens)\s", line):
            keep.append("%d:%s" % (n, line))
    return keep


def main():
    seconds = CONFIG["seconds"]
    rc, f2b, f2b_err = _sh(["fail2ban-client", "status", "sshd"])
    in_window, ban_errors = _bans_in_window(seconds)
    _, sshd, _ = _sh(["sshd", "-T"])
    ss_rc, ss, ss_err = _sh(["ss", "-Hltnup"])
    print(json.dumps({
        "time": time.time(),
        "journal": _journal(seconds),
        "fail2ban": {"rc": rc, "out": f2b, "err": f2b_err, "in_window": in_window,
                     "ban_errors": ban_errors},
        "sshd": sshd,
        "keys": _key_files(sshd),
        "ss": ss if ss_rc == 0 else "",
        "ss_error": ss_err.strip() if ss_rc else "",
        "nginx": _nginx(),
    }))


main()
"""


def collect_script(since_hours: float) -> str:
    """The one remote command: a read-only python3 program (stdlib only) printing JSON.

    The journal is reduced on the host by the same functions the tests check here
    (`sshd_event`, `reduce_journal`, their source sent along), so only counts cross the wire.
    """
    program = "\n".join(
        [
            "from __future__ import annotations",
            "import datetime, json, os, pwd, re, subprocess, sys, time",
            f"CONFIG = {json.dumps({'seconds': int(since_hours * 3600)})}",
            inspect.getsource(sshd_event),
            inspect.getsource(reduce_journal),
            _REMOTE_MAIN,
        ]
    )
    return (
        "command -v python3 >/dev/null || { echo 'python3 is missing on this host' >&2; exit 3; }\n"
        f"exec python3 - <<'OPSKIT_AUDIT_PY'\n{program}\nOPSKIT_AUDIT_PY\n"
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
    """Turn collect_script's JSON into an Inside."""
    data = json.loads(out)
    journal = data["journal"]
    sources = tuple(
        Source(ip, int(x["failures"]), int(x["accepted"]), tuple(x["users"]), x["first"], x["last"])
        for ip, x in journal["sources"].items()
        if x["failures"] or x["accepted"]
    )
    f2b = data["fail2ban"]
    bans = parse_fail2ban(f2b["rc"], f2b["out"], f2b["err"])
    bans = Bans(
        bans.running,
        bans.current,
        bans.total,
        bans.failed_now,
        tuple(f2b.get("in_window") or ()),
        bans.error,
        tuple((str(a), str(ip), str(why)) for a, ip, why in f2b.get("ban_errors") or ()),
    )
    keys = tuple(KeyFile(k["path"], k["owner"], int(k["mode"]), k["text"]) for k in data["keys"])
    nginx = data.get("nginx")
    return Inside(
        sources,
        journal.get("error") or "",
        bans,
        keys,
        tuple(parse_ss(data["ss"])),
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
    out += judge_keys(inside.keys, s, host)
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


INSIDE_CHECKS = ("failed-logins", "fail2ban", "authorized-keys", "ports", "sshd-config")


# --- outside: HTTP and TLS -----------------------------------------------------------------

_ENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.]*)\s*=")


def env_keys(body: bytes) -> list[str] | None:
    """The variable names of a body that looks like a .env file (KEY=VALUE lines), else None.

    Only names: values are secrets and never leave this function.

    >>> env_keys(b"# app\\nDB_URL=postgres://x\\nexport SECRET_KEY='s'\\n")
    ['DB_URL', 'SECRET_KEY']
    >>> env_keys(b"<!doctype html><html>...</html>") is None
    True
    """
    text = body.decode("utf-8", errors="replace")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    names = [m.group(1) for ln in lines if (m := _ENV_LINE.match(ln))]
    if not names or len(names) * 2 < len(lines):
        return None
    return names


def looks_served(path: str, body: bytes) -> str | None:
    """Why a 200 body for a dot-file path is the real file (None: it is something else, like
    an app's page for unknown paths).

    >>> looks_served("/.git/HEAD", b"ref: refs/heads/main\\n")
    'a git HEAD (ref: refs/heads/main)'
    >>> looks_served("/.git/config", b"<html>not found</html>") is None
    True
    """
    text = body.decode("utf-8", errors="replace")
    if path.endswith("/.git/HEAD"):
        m = re.match(r"^(ref: refs/\S+|[0-9a-f]{40})\s*$", text)
        return f"a git HEAD ({m.group(1)})" if m else None
    if path.endswith("/.git/config"):
        return "a git config ([core] section)" if re.search(r"^\s*\[core\]", text, re.M) else None
    if path.endswith(".env"):
        names = env_keys(body)
        if names is None:
            return None
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        return f"{len(names)} KEY=VALUE line(s): {shown} (values not shown)"
    return None


@dataclass(frozen=True)
class Hsts:
    max_age: int | None
    include_subdomains: bool
    preload: bool


def parse_hsts(value: str | None) -> Hsts | None:
    """Parse a Strict-Transport-Security header (None when absent).

    >>> parse_hsts("max-age=31536000; includeSubDomains")
    Hsts(max_age=31536000, include_subdomains=True, preload=False)
    >>> parse_hsts('max-age="600"').max_age, parse_hsts("preload").max_age
    (600, None)
    """
    if value is None:
        return None
    max_age = None
    sub = preload = False
    for part in value.split(",")[0].split(";"):
        k, _, v = part.strip().partition("=")
        k = k.strip().lower()
        v = v.strip().strip('"')
        if k == "max-age" and v.isdigit():
            max_age = int(v)
        elif k == "includesubdomains":
            sub = True
        elif k == "preload":
            preload = True
    return Hsts(max_age, sub, preload)


def judge_hsts(value: str | None, url: str, s: Settings, host: str) -> list[Finding]:
    """HSTS present, max-age at least audit_hsts_min_age, includeSubDomains if asked (pure).

    >>> st = Settings(24, 10, {}, (), 15552000, False, None, (), (), 5)
    >>> [f.severity.label for f in judge_hsts(None, "https://a/", st, "h")]
    ['high']
    >>> [f.title for f in judge_hsts("max-age=600", "https://a/", st, "h")]
    ['HSTS max-age too short on https://a/', 'HSTS without includeSubDomains on https://a/']
    """
    fix = (
        f"set nginx_hsts (e.g. max-age=31536000) and run `inv provision --hosts {host} --roles "
        "nginx`"
    )
    h = parse_hsts(value)
    if h is None:
        return [
            Finding(
                "hsts",
                Severity.HIGH,
                f"no HSTS header on {url}",
                "no Strict-Transport-Security header: a browser can be talked into "
                "plain HTTP (SSL stripping)",
                fix,
            )
        ]
    out = []
    if h.max_age is None or h.max_age == 0:
        out.append(
            Finding(
                "hsts",
                Severity.HIGH,
                f"HSTS header without effect on {url}",
                f"Strict-Transport-Security: {value} (max-age missing or 0)",
                fix,
            )
        )
    elif h.max_age < s.hsts_min_age:
        out.append(
            Finding(
                "hsts",
                Severity.MEDIUM,
                f"HSTS max-age too short on {url}",
                f"max-age={h.max_age} s ({h.max_age / 86400:.0f} days), below "
                f"audit_hsts_min_age={s.hsts_min_age} ({s.hsts_min_age / 86400:.0f} "
                "days)",
                fix,
            )
        )
    if not h.include_subdomains:
        out.append(
            Finding(
                "hsts",
                Severity.LOW if s.hsts_include_subdomains else Severity.INFO,
                f"HSTS without includeSubDomains on {url}",
                f"Strict-Transport-Security: {value}",
                "add '; includeSubDomains' to nginx_hsts once every subdomain is served over HTTPS"
                if s.hsts_include_subdomains
                else "fine unless subdomains must be HTTPS-only too (then set "
                "audit_hsts_include_subdomains and add '; includeSubDomains' to nginx_hsts)",
            )
        )
    return out


def judge_server_header(resp: audit_http.Response, host: str) -> list[Finding]:
    """A `Server:` header with a version, and `X-Powered-By` (pure).

    >>> r = audit_http.Response("http://a/", 200, {"server": "nginx/1.22.1"})
    >>> [f.title for f in judge_server_header(r, "h")]
    ['server version leaked on http://a/']
    """
    out = []
    server = resp.header("server") or ""
    if re.search(r"\d+\.\d+", server):
        out.append(
            Finding(
                "server-header",
                Severity.LOW,
                f"server version leaked on {resp.url}",
                f"Server: {server} tells attackers which exploits to try",
                f"`server_tokens off;` in nginx (opskit's site has it): run `inv provision --hosts "
                f"{host} --roles nginx`",
            )
        )
    powered = resp.header("x-powered-by")
    if powered:
        out.append(
            Finding(
                "server-header",
                Severity.LOW,
                f"X-Powered-By header on {resp.url}",
                f"X-Powered-By: {powered}",
                "turn it off in the app (Express: app.disable('x-powered-by')) or drop it in nginx "
                "(proxy_hide_header X-Powered-By)",
            )
        )
    return out


def is_listing(body: bytes) -> bool:
    """Whether a body is a directory listing (nginx autoindex, Apache, Python's http.server).

    >>> is_listing(b"<html><head><title>Index of /files/</title>"), is_listing(b"<h1>Hi</h1>")
    (True, False)
    """
    text = body[:4096].decode("utf-8", errors="replace")
    return bool(re.search(r"<title>\s*(Index of|Directory listing for) /", text, re.I))


@dataclass(frozen=True)
class Site:
    """One name to probe on a host: over HTTP or HTTPS; `tls_name` is served over HTTPS too
    (its port 80 must redirect)."""

    scheme: str
    name: str
    tls_name: bool = False


def sites_of(host: Any) -> tuple[Site, ...]:
    """Names a host's nginx answers to: its address and nginx_server_names over HTTP (minus the
    certificate names), and every certificate name over HTTPS (redirected on HTTP)."""
    from opskit.certs import ops as certs

    v = host.vars
    tls_names = (
        [d for c in certs.declared_certificates(v) for d in c.domains]
        if ("certbot" in host.roles)
        else []
    )
    http = [host.address] + [
        n
        for n in (v.get("nginx_server_names") or [])
        if n not in tls_names and re.fullmatch(r"[A-Za-z0-9.-]+", n)
    ]
    out = [Site("http", n) for n in dict.fromkeys(http)]
    out += [Site("http", n, True) for n in tls_names]
    out += [Site("https", n) for n in tls_names]
    return tuple(out)


@dataclass
class Outside:
    findings: list[Finding] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    requests: int = 0
    checks: set[str] = field(default_factory=set)
    seconds: float = 0.0


def probe_site(
    address: str,
    site: Site,
    s: Settings,
    host: str,
    *,
    get: Callable[..., audit_http.Response] = audit_http.get,
    verify: Callable[..., audit_http.TlsVerdict] = audit_http.verify_tls,
    now: dt.datetime | None = None,
) -> Outside:
    """Every outside check of one site of a host (HTTP requests from this machine)."""
    res = Outside()
    kw = {"scheme": site.scheme, "timeout": s.http_timeout}

    def fetch(path: str) -> audit_http.Response:
        res.requests += 1
        return get(address, site.name, path, **kw)

    root = fetch("/")
    if root.error:
        res.errors.append(f"{root.url} (at {address}): {root.error}")
        return res
    if site.tls_name:
        res.checks.add("https-redirect")
        loc = root.header("location") or ""
        if root.status not in (301, 302, 307, 308) or not loc.startswith(f"https://{site.name}"):
            res.findings.append(
                Finding(
                    "https-redirect",
                    Severity.MEDIUM,
                    f"{root.url} is not redirected to HTTPS",
                    f"HTTP {root.status}"
                    + (f", Location: {loc}" if loc else "")
                    + "; logins and cookies may travel in clear text",
                    f"run `inv provision --hosts {host} --roles nginx,certbot` (the TLS site "
                    "redirects port 80 for its names)",
                )
            )
        return res  # everything else of this name is checked over HTTPS
    res.checks |= {"exposed-files", "directory-listing", "server-header"}
    res.findings += judge_server_header(root, host)
    if site.scheme == "https":
        res.checks |= {"hsts", "certificate"}
        res.findings += judge_hsts(root.header("strict-transport-security"), root.url, s, host)
        res.findings += judge_certificate(
            address, site.name, root.peer_der, s, host, verify=verify, now=now
        )
    # An app may answer 200 with the same page for any unknown path: remember that page, so
    # that only a different answer counts as "served".
    baseline = fetch(f"/opskit-audit-{secrets.token_hex(6)}")
    soft = baseline.body if baseline.status == 200 else None
    for path in ("/.env", "/.git/HEAD", "/.git/config"):
        r = fetch(path)
        what = looks_served(path, r.body) if r.status in (200, 206) else None
        if what:
            res.findings.append(
                Finding(
                    "exposed-files",
                    Severity.CRITICAL,
                    f"{path} is served on {r.url}",
                    f"HTTP {r.status}, {r.length} bytes: {what}",
                    f"run `inv provision --hosts {host} --roles nginx` (opskit's site answers 404 "
                    "for every dot-file), find what serves it (`nginx -T | grep -n "
                    "'location\\|root\\|alias'`) and remove the file from the web root"
                    + (
                        "; rotate every secret it holds: it was public"
                        if path == "/.env"
                        else "; the repository's history may hold secrets: rotate them"
                    ),
                )
            )
    for path in s.extra_paths:
        r = fetch(path)
        if r.status in (200, 206) and r.length and r.body != soft and not is_listing(r.body):
            res.findings.append(
                Finding(
                    "exposed-files",
                    Severity.HIGH,
                    f"{path} is served on {r.url}",
                    f"HTTP {r.status}, {r.length} bytes, Content-Type "
                    f"{r.header('content-type') or '-'} (an unknown path gets "
                    f"{'HTTP ' + str(baseline.status) if baseline.status else 'no answer'})",
                    f"remove it or deny it in nginx on {host}; if it is meant to be public, drop "
                    "it from audit_extra_paths",
                )
            )
    for path in s.listing_paths:
        r = fetch(path)
        if r.status == 200 and is_listing(r.body):
            res.findings.append(
                Finding(
                    "directory-listing",
                    Severity.MEDIUM,
                    f"directory listing on {r.url}",
                    f"HTTP 200 with an 'Index of {path}' page: every file there can be found",
                    f"remove `autoindex on` from nginx on {host} (`nginx -T | grep -n autoindex`); "
                    f"`inv provision --hosts {host} --roles nginx` restores opskit's files",
                )
            )
    return res


def judge_certificate(
    address: str,
    name: str,
    der: bytes | None,
    s: Settings,
    host: str,
    *,
    verify: Callable[..., audit_http.TlsVerdict] = audit_http.verify_tls,
    now: dt.datetime | None = None,
) -> list[Finding]:
    """Chain, names and dates of the certificate served for `name` (a verifying handshake),
    and its days left against certbot_warning_days / certbot_critical_days."""
    import ssl

    from opskit.certs import ops as certs

    verdict = verify(address, name, ca_file=s.tls_ca_file, timeout=s.http_timeout)
    anchor = (
        f"the CAs in {s.tls_ca_file} (audit_tls_ca_file)"
        if s.tls_ca_file
        else ("this machine's CAs")
    )
    renew = f"run `inv certs.renew --hosts {host}` (or `inv provision --hosts {host}`)"
    out = []
    info = certs.parse_certificate(ssl.DER_cert_to_PEM_cert(der).encode()) if der else None
    brief = f"{info.brief()}, issuer {info.issuer!r}, names {', '.join(info.names)}" if info else ""
    if verdict.connect_error:
        return [
            Finding(
                "certificate",
                Severity.HIGH,
                f"no TLS handshake for {name}",
                f"{address}:443 with SNI {name}: {verdict.connect_error}",
                renew,
            )
        ]
    if not verdict.ok:
        if verdict.code == 10:
            sev, title = Severity.CRITICAL, f"certificate for {name} has expired"
        elif verdict.code == 62:
            sev, title = Severity.HIGH, f"certificate served for {name} does not name it"
        else:
            sev, title = Severity.HIGH, f"certificate for {name} is not trusted"
        fix = renew
        if verdict.code in (2, 19, 20, 21):
            fix = f"{renew}; if the CA is private (the lab's pebble), name it in audit_tls_ca_file"
        out.append(
            Finding(
                "certificate",
                sev,
                title,
                f"{verdict.message} (checked against {anchor}); served: {brief}",
                fix,
            )
        )
    if info is not None:
        days = info.days_left(now or dt.datetime.now(dt.UTC))
        if 0 <= days < s.critical_days:
            out.append(
                Finding(
                    "certificate",
                    Severity.HIGH,
                    f"certificate for {name} expires in {days} day(s)",
                    brief,
                    renew,
                )
            )
        elif 0 <= days < s.warning_days:
            out.append(
                Finding(
                    "certificate",
                    Severity.MEDIUM,
                    f"certificate for {name} expires in {days} days",
                    brief,
                    renew,
                )
            )
    return out


def probe_host(host: Any, s: Settings, *, now: dt.datetime | None = None) -> Outside:
    """Every outside check of one host with the nginx role."""
    total = Outside()
    started = time.monotonic()
    for site in sites_of(host):
        r = probe_site(host.address, site, s, host.name, now=now)
        total.findings += r.findings
        total.errors += r.errors
        total.requests += r.requests
        total.checks |= r.checks
    total.findings = collapse(total.findings)
    total.seconds = time.monotonic() - started
    return total


def collapse(findings: Sequence[Finding]) -> list[Finding]:
    """One finding for problems that are the same on several names of a host (one certificate
    served for two names, one HSTS header on every site); the others are named in its detail.

    >>> a, b = (Finding("hsts", Severity.INFO, f"on {x}", "max-age=1", "fix") for x in "ab")
    >>> [f.detail for f in collapse([a, b])]
    ['max-age=1 (the same on: on b)']
    """
    groups: dict[tuple[str, Severity, str, str], list[Finding]] = {}
    for f in findings:
        groups.setdefault((f.check, f.severity, f.detail, f.fix), []).append(f)
    out = []
    for same in groups.values():
        first = same[0]
        if len(same) == 1:
            out.append(first)
            continue
        others = "; ".join(f.title for f in same[1:])
        out.append(
            Finding(
                first.check,
                first.severity,
                first.title,
                f"{first.detail} (the same on: {others})",
                first.fix,
            )
        )
    return out


# --- the report ----------------------------------------------------------------------------


@dataclass(frozen=True)
class HostAudit:
    host: str
    address: str
    error: str | None = None
    unreachable: bool = False
    checks: tuple[str, ...] = ()
    findings: tuple[Finding, ...] = ()
    sources: tuple[Source, ...] = ()
    bans: Bans = Bans(False)
    commands: int = 0
    requests: int = 0
    seconds: float = 0.0

    @property
    def failed_logins(self) -> dict[str, Any]:
        by = {
            x.address: x.failures
            for x in sorted(self.sources, key=lambda x: -x.failures)
            if x.failures
        }
        return {"total": sum(by.values()), "by_source": by}

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "address": self.address,
            "error": self.error,
            "unreachable": self.unreachable,
            "checks": list(self.checks),
            "findings": [f.to_dict() for f in self.findings],
            "failed_logins": {
                **self.failed_logins,
                "users": {x.address: list(x.users) for x in self.sources if x.failures},
            },
            "bans": {
                "current": list(self.bans.current),
                "total": self.bans.total,
                "in_window": list(self.bans.in_window),
                "running": self.bans.running,
                "failed_actions": [
                    {"action": a, "address": ip, "why": why}
                    for a, ip, why in self.bans.failed_actions
                ],
            },
            "worst": worst_label(self.findings),
            "remote_commands": self.commands,
            "http_requests": self.requests,
            "seconds": round(self.seconds, 2),
        }


@dataclass(frozen=True)
class AuditReport:
    generated_at: dt.datetime
    since_hours: float
    hosts: tuple[HostAudit, ...]

    @property
    def findings(self) -> list[Finding]:
        return [f for h in self.hosts for f in h.findings]

    @property
    def worst(self) -> str:
        return worst_label(self.findings)

    @property
    def exit_code(self) -> AuditExit:
        return exit_code(self.findings, any(h.error for h in self.hosts))

    def to_dict(self) -> dict[str, Any]:
        return {
            "generated_at": self.generated_at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
            "since_hours": self.since_hours,
            "worst": self.worst,
            "exit_code": int(self.exit_code),
            "hosts": [h.to_dict() for h in self.hosts],
        }


def sort_findings(findings: Iterable[Finding]) -> tuple[Finding, ...]:
    """Worst first; then by check and title, so that runs compare line by line."""
    return tuple(sorted(findings, key=lambda f: (-f.severity, f.check, f.title)))


class Reader:
    """Audits hosts over connections someone else opened: `run` uses it on its own, `inv
    report.*` beside other readers on the same connection. Made: every host's audit_*
    settings checked (ConfigError, nothing read). `start` begins the HTTP(S) probes of the web
    hosts from this machine in `pool`; `read` is the one remote command of a host."""

    def __init__(
        self,
        inventory: Any,
        hosts: Sequence[Any],
        *,
        since_hours: float | None = None,
        now: dt.datetime | None = None,
    ) -> None:
        identity = identity_public_key(inventory.ssh.identity)
        self.hosts = list(hosts)
        self.since_hours = since_hours
        self.now = now
        self.settings = {
            h.name: host_settings(h, inventory, since_hours=since_hours, identity_key=identity)
            for h in hosts
        }
        self.inside: dict[str, Inside] = {}
        self.outside: dict[str, Future[Outside]] = {}

    def start(self, pool: ThreadPoolExecutor) -> None:
        for h in self.hosts:
            if "nginx" in h.roles:
                self.outside[h.name] = pool.submit(
                    probe_host, h, self.settings[h.name], now=self.now
                )

    def read(self, remote: Any) -> None:
        s = self.settings[remote.name]
        out = remote.run(collect_script(s.since_hours), what="audit: read the host", timeout=300)
        self.inside[remote.name] = parse_inside(out.stdout)

    def host_audit(self, r: HostResult) -> HostAudit:
        """The audit of the host of `r` (the runner's result of the read); waits for its
        probes from outside."""
        h = next(h for h in self.hosts if h.name == r.host)
        s = self.settings[h.name]
        findings: list[Finding] = []
        checks: list[str] = []
        errors = [r.error] if r.error else []
        inside = self.inside.get(h.name)
        if inside is not None:
            ignore = [str(x) for x in (h.vars.get("base_fail2ban_ignoreip") or [])]
            findings += judge_inside(inside, s, h.name, ignore)
            checks += list(INSIDE_CHECKS)
            if inside.nginx is not None:
                checks.append("nginx-config")
        probe = self.outside[h.name].result() if h.name in self.outside else None
        if probe is not None:
            findings += probe.findings
            checks += sorted(probe.checks)
            errors += [f"outside: {e}" for e in probe.errors]
        return HostAudit(
            h.name,
            h.address,
            "\n".join(errors) or None,
            r.unreachable,
            tuple(dict.fromkeys(checks)),
            sort_findings(findings),
            inside.sources if inside else (),
            inside.bans if inside else Bans(False),
            r.commands,
            probe.requests if probe else 0,
            max(r.seconds, probe.seconds if probe else 0.0),
        )

    def report(self, audits: Sequence[HostAudit]) -> AuditReport:
        hours = (
            self.since_hours
            if self.since_hours is not None
            else max((s.since_hours for s in self.settings.values()), default=24.0)
        )
        return AuditReport(self.now or dt.datetime.now(dt.UTC), hours, tuple(audits))


def run(
    inventory: Any,
    hosts: Sequence[Any],
    *,
    workers: int = 8,
    since_hours: float | None = None,
    sudo_password: Any = None,
    now: dt.datetime | None = None,
    on_result: Callable[[HostAudit], None] | None = None,
) -> AuditReport:
    """Audit `hosts`: one remote command each (in parallel, bounded) and, for hosts with the
    nginx role, HTTP(S) probes from this machine at the same time. A host that cannot be
    reached never stops the others. ConfigError for bad audit_* variables (nothing read)."""
    from opskit.core.runner import run_on_hosts

    reader = Reader(inventory, hosts, since_hours=since_hours, now=now)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="audit-http") as pool:
        reader.start(pool)

        def work(remote: Any, ctx: Any) -> list[Any]:
            reader.read(remote)
            return []

        results = run_on_hosts(inventory, hosts, work, workers=workers, sudo_password=sudo_password)
        audits = []
        for r in results:
            audit = reader.host_audit(r)
            audits.append(audit)
            if on_result is not None:
                on_result(audit)
    return reader.report(audits)


# --- output --------------------------------------------------------------------------------

_COLOURS = {
    Severity.CRITICAL: "1;31",
    Severity.HIGH: "31",
    Severity.MEDIUM: "33",
    Severity.LOW: "36",
    Severity.INFO: "2",
}


def format_host(h: HostAudit, *, colour: bool = False) -> str:
    """One host's findings as a person reads them: worst first, each with detail and fix."""

    def paint(sev: Severity, text: str) -> str:
        return f"\x1b[{_COLOURS[sev]}m{text}\x1b[0m" if colour else text

    counts = {sev: sum(1 for f in h.findings if f.severity is sev) for sev in Severity}
    shown = ", ".join(f"{n} {sev.label}" for sev, n in sorted(counts.items(), reverse=True) if n)
    label = "UNREACHABLE" if h.unreachable else worst_label(h.findings).upper()
    lines = [
        f"[{h.host}] {label}  {h.address}  {len(h.findings)} finding(s)"
        + (f": {shown}" if shown else "")
        + f"  ({h.commands} remote command(s), {h.requests} HTTP request(s), {h.seconds:.1f} s)"
    ]
    for e in (h.error or "").splitlines():
        lines.append(f"  ! {e}")
    for f in h.findings:
        lines.append(f"  {paint(f.severity, f'{f.severity.label:<8}')}  {f.check:<17} {f.title}")
        lines.append(f"  {'':8}  {'':17} {f.detail}")
        lines.append(f"  {'':8}  {'':17} fix: {f.fix}")
    if not h.unreachable and h.checks:
        fl = h.failed_logins
        by = ", ".join(
            f"{ip} {n}" + (" (banned)" if ip in h.bans.current else "")
            for ip, n in list(fl["by_source"].items())[:5]
        )
        more = " ..." if len(fl["by_source"]) > 5 else ""
        bans = (
            f"fail2ban: {len(h.bans.current)} banned now, {h.bans.total} since it started"
            if h.bans.running
            else "fail2ban: not running"
        )
        lines.append(
            f"  failed SSH logins: {fl['total']}{' (' + by + more + ')' if by else ''}; {bans}"
        )
    return "\n".join(lines) + "\n"


def format_report(report: AuditReport, *, colour: bool = False, hosts: bool = True) -> str:
    """Every host (unless hosts=False: the summary only), then the summary line."""
    text = "".join(format_host(h, colour=colour) for h in report.hosts) if hosts else ""
    counts = {sev: sum(1 for f in report.findings if f.severity is sev) for sev in Severity}
    failed = sum(1 for h in report.hosts if h.error)
    return text + (
        f"{len(report.hosts)} host(s), last {report.since_hours:g} h: worst {report.worst}; "
        + ", ".join(f"{counts[sev]} {sev.label}" for sev in reversed(Severity))
        + f"; {failed} host(s) not fully read (exit {int(report.exit_code)})\n"
    )


def report_json(report: AuditReport) -> str:
    return json.dumps(report.to_dict(), indent=2) + "\n"
