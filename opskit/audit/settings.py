"""The audit_* variables of a host (defaults: opskit/core/defaults/audit.yml), validated into
the Settings the checks of `inv audit` read: ConfigError names the key, before anything is read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opskit.audit.keys import parse_key_line
from opskit.audit.ports import PortRule, parse_port_rule
from opskit.certs.spec import thresholds
from opskit.core.errors import ConfigError
from opskit.core.inventory import Host, Inventory


def expected_ports(
    v: Mapping[str, Any], roles: Sequence[str], port: int | None = None
) -> tuple[PortRule, ...]:
    """The sockets a host's roles explain (audit_ports replaces them; audit_ports_extra adds).

    >>> [str(r) for r in expected_ports({"ssh_port": 22, "app_port": 3000}, ["app", "nginx"])]
    ['tcp/22', 'tcp/3000@loopback', 'tcp/3001@loopback', 'tcp/80', 'tcp/443']
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
        # A deploy's new release proves itself here before it takes traffic.
        candidate = int(v.get("app_candidate_port", 3001))
        rules.append(PortRule("tcp", candidate, True, "a deploy's candidate (app_candidate_port)"))
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
    host: Host,
    inventory: Inventory,
    *,
    since_hours: float | None = None,
    identity_key: tuple[str, str, str] | None = None,
) -> Settings:
    """Validate a host's audit_* variables (ConfigError names the key)."""
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
    warning, critical = thresholds(v)
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
