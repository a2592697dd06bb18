"""The lab's stand-in services: the outside world the lab hosts may talk to, and what they received.

Lab hosts have no route out of this machine (no forwarding, no NAT). Whatever a role needs from
outside (a Debian mirror, S3, an ACME CA, Slack, UptimeRobot, Sentry, a syslog receiver) is
played by a *stand-in service*: a process on this machine that listens on the bridge address
(``lab.gateway``, reachable from the hosts) or on loopback (reachable from the operator side
only), never on a wildcard address. The programs are the modules of ``opskit.lab.standins`` (and
Debian's pebble); this registry says how the lab runs each one, and sits above them: the
stand-ins import nothing of the lab.

``opskit.lab.lifecycle.up`` starts every service in ``SERVICES`` once the bridge exists;
``opskit.lab.lifecycle.down`` stops them (how: ``opskit.lab.services``).

Adding a service (S3 via moto, ACME via pebble, ...)::

    def _pebble_argv(spec: LabSpec) -> list[str]:
        return ["/usr/bin/pebble", "-config", str(spec.state_dir / "services" / "pebble.json")]

    SERVICES = (..., LabService("pebble", 14000, _pebble_argv,
                                env_builder=lambda spec: {"PEBBLE_VA_ALWAYS_VALID": "1"}))

A builder must be cheap and must not start anything itself; a config file it needs can be written
by ``prepare`` (called before the process starts). Use ``sys.executable`` for Python services so
they run from the same venv. Names must be unique (they name files); ports too.
"""

from __future__ import annotations

import json
import os
import secrets as pysecrets
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from opskit.core.secrets import read_secrets_file
from opskit.lab import apt
from opskit.lab.spec import LabError, LabSpec, gateway_ip
from opskit.lab.standins import aptproxy, pebble
from opskit.lab.standins.syslog import ensure_pki


@dataclass(frozen=True)
class LabService:
    """One stand-in service: how to start it and where it listens."""

    name: str
    port: int
    argv_builder: Callable[[LabSpec], list[str]]
    bind: Literal["gateway", "loopback"] = "gateway"
    env_builder: Callable[[LabSpec], Mapping[str, str]] | None = None
    prepare: Callable[[LabSpec], None] | None = None
    ready_timeout: float = 20.0
    started: Callable[[LabSpec], None] | None = None  # once it listens (e.g. fetch its CA)

    def address(self, spec: LabSpec) -> str:
        """The address the service listens on: the bridge's (gateway) or 127.0.0.1."""
        if self.bind == "loopback":
            return "127.0.0.1"
        return gateway_ip(spec)

    def argv(self, spec: LabSpec) -> list[str]:
        """The command line that runs the service in the foreground."""
        return self.argv_builder(spec)

    def env(self, spec: LabSpec) -> dict[str, str]:
        """Extra environment variables for the service (on top of the operator's)."""
        return dict(self.env_builder(spec)) if self.env_builder else {}


def _apt_proxy_argv(spec: LabSpec) -> list[str]:
    return [
        sys.executable,
        "-m",
        "opskit.lab.standins.aptproxy",
        "--listen",
        APT_PROXY.address(spec),
        "--port",
        str(APT_PROXY.port),
        "--allow",
        *apt.machine_mirror_hosts(),
        "--cache",
        str(apt_cache_dir(spec)),
        "--stats",
        str(apt_cache_stats(spec)),
    ]


def apt_cache_dir(spec: LabSpec) -> Path:
    """Where the apt proxy keeps the package files it fetched (beside the base images)."""
    return spec.cache_dir / "apt"


def apt_cache_stats(spec: LabSpec) -> Path:
    """The apt proxy's hits and misses since it started (JSON)."""
    return spec.state_dir / "services" / "aptproxy-stats.json"


def describe_apt_cache(stats: Mapping[str, int] | None, kept: int, where: Path) -> str:
    """One line for `inv lab.status` about the apt proxy's package cache.

    >>> describe_apt_cache({"hits": 3, "misses": 1, "hit_bytes": 3 << 20, "miss_bytes": 1 << 19},
    ...                    40, Path("/c/apt"))
    'apt cache: 3 hits (3.0 MiB not downloaded), 1 miss (0.5 MiB fetched); 40 packages in /c/apt'
    >>> describe_apt_cache(None, 0, Path("/c/apt"))
    'apt cache: no package fetched since the proxy started; 0 packages in /c/apt'
    """
    tail = f"{kept} packages in {where}"
    if not stats:
        return f"apt cache: no package fetched since the proxy started; {tail}"
    hits, misses = stats.get("hits", 0), stats.get("misses", 0)
    return (
        f"apt cache: {hits} hit{'s' * (hits != 1)} "
        f"({stats.get('hit_bytes', 0) / 2**20:.1f} MiB not downloaded), "
        f"{misses} miss{'es' * (misses != 1)} ({stats.get('miss_bytes', 0) / 2**20:.1f} MiB "
        f"fetched); {tail}"
    )


def apt_cache_line(spec: LabSpec) -> str:
    """describe_apt_cache for this lab's proxy and the shared cache directory."""
    where = apt_cache_dir(spec)
    kept = sum(1 for _ in where.rglob("*.deb")) if where.is_dir() else 0
    return describe_apt_cache(read_apt_cache_stats(spec), kept, where)


def read_apt_cache_stats(spec: LabSpec) -> dict[str, int] | None:
    """The apt proxy's counts (None: no package went through it since it started)."""
    try:
        data = json.loads(apt_cache_stats(spec).read_text())
    except (OSError, ValueError):
        return None
    return {k: int(v) for k, v in data.items()} if isinstance(data, dict) else None


# Debian's mirrors, for the hosts' apt: http://<gateway>:3142 (apt-cacher-ng's port, the usual one).
APT_PROXY = LabService(
    "aptproxy",
    aptproxy.PORT,
    _apt_proxy_argv,
    prepare=lambda spec: apt_cache_stats(spec).unlink(missing_ok=True),
)


def _inbox_argv(kind: str) -> Callable[[LabSpec], list[str]]:
    def argv(spec: LabSpec) -> list[str]:
        service = find_service(kind)
        return [
            sys.executable,
            "-m",
            "opskit.lab.standins.inbox",
            "--kind",
            kind,
            "--listen",
            service.address(spec),
            "--port",
            str(service.port),
            "--dir",
            str(inbox_dir(spec, kind)),
        ]

    return argv


def _prepare_secrets(spec: LabSpec) -> None:
    """`prepare` of the stand-ins that check credentials: the lab's secrets file exists."""
    ensure_lab_secrets(spec)


# Slack's incoming webhooks: http://<gateway>:8025/services/T…/B…/<token>
SLACK = LabService("slack", 8025, _inbox_argv("slack"), prepare=_prepare_secrets)
# UptimeRobot heartbeat URLs: http://<gateway>:8026/<token>
HEARTBEAT = LabService("heartbeat", 8026, _inbox_argv("heartbeat"))


SENTRY_PORT = 8028  # the Sentry stand-in (API and event ingestion)


def _monitoring_argv(name: str) -> Callable[[LabSpec], list[str]]:
    """UptimeRobot API v3, Sentry and the TLS syslog receivers (opskit.lab.standins.<module>)."""

    def argv(spec: LabSpec) -> list[str]:
        service = find_service(name)
        args = [sys.executable, "-m", f"opskit.lab.standins.{name.split('-')[0]}"]
        args += ["--listen", service.address(spec), "--port", str(service.port)]
        args += ["--dir", str(inbox_dir(spec, name))]
        if name.startswith("syslog"):
            pki = inbox_dir(spec, name) / "pki"
            return [*args, "--cert", str(pki / "server.pem"), "--key", str(pki / "server.key")]
        args += ["--secrets", str(lab_secrets_path(spec))]
        if name == "uptimerobot":
            args += ["--heartbeat-base", service_url(spec, "heartbeat")]
        return args

    return argv


def _prepare_syslog(name: str, ca_name: str) -> Callable[[LabSpec], None]:
    def prepare(spec: LabSpec) -> None:
        ensure_pki(inbox_dir(spec, name) / "pki", ca_name=ca_name, address=gateway_ip(spec))

    return prepare


# UptimeRobot's API v3: http://<gateway>:8027/v3 (Bearer UPTIMEROBOT_API_KEY)
UPTIMEROBOT = LabService(
    "uptimerobot", 8027, _monitoring_argv("uptimerobot"), prepare=_prepare_secrets
)
# Sentry's web API (/api/0/, Bearer SENTRY_AUTH_TOKEN) and ingestion (SENTRY_DSN) on one port.
SENTRY = LabService("sentry", SENTRY_PORT, _monitoring_argv("sentry"), prepare=_prepare_secrets)
# Papertrail: syslog over TLS (certificate from the lab CA, <dir>/pki/ca.pem), and a receiver
# whose certificate comes from a CA the hosts do not trust (they must send it nothing).
SYSLOG = LabService(
    "syslog", 6514, _monitoring_argv("syslog"), prepare=_prepare_syslog("syslog", "opskit lab CA")
)
SYSLOG_WRONGCERT = LabService(
    "syslog-wrongcert",
    6515,
    _monitoring_argv("syslog-wrongcert"),
    prepare=_prepare_syslog("syslog-wrongcert", "untrusted CA"),
)


def _alerting_argv(name: str) -> Callable[[LabSpec], list[str]]:
    """PagerDuty's Events API v2 and the SMTP server (opskit.lab.standins.<name>)."""

    def argv(spec: LabSpec) -> list[str]:
        service = find_service(name)
        args = [sys.executable, "-m", f"opskit.lab.standins.{name}"]
        args += ["--listen", service.address(spec), "--port", str(service.port)]
        args += ["--dir", str(inbox_dir(spec, name))]
        if name == "pagerduty":
            args += ["--secrets", str(lab_secrets_path(spec))]
        return args

    return argv


# PagerDuty's Events API v2: http://<gateway>:8031/v2/enqueue (routing key PAGERDUTY_ROUTING_KEY)
PAGERDUTY = LabService("pagerduty", 8031, _alerting_argv("pagerduty"), prepare=_prepare_secrets)
# An SMTP server (aiosmtpd) for the health check's alert e-mail: <gateway>:2525, no TLS, no auth.
SMTP = LabService("smtp", 2525, _alerting_argv("smtp"))


def _s3_argv(spec: LabSpec) -> list[str]:
    service = find_service("s3")
    return [
        sys.executable,
        "-m",
        "opskit.lab.standins.s3",
        "--listen",
        service.address(spec),
        "--port",
        str(service.port),
    ]


# S3 (moto's server, state in memory): http://<gateway>:5000, path-style; backups go here.
def _prepare_s3(spec: LabSpec) -> None:
    ensure_lab_secrets(spec)  # the lab's S3 keys (and the other lab secrets) exist


S3 = LabService("s3", 5000, _s3_argv, prepare=_prepare_s3, ready_timeout=60.0)


# ACME (Debian's pebble, opskit.lab.standins.pebble): https://<gateway>:14000/dir, its HTTPS
# certificate from <state_dir>/services/pebble/pki/ca.pem (the hosts' certbot_acme_ca_file).
def _pebble_dir(spec: LabSpec) -> Path:
    return spec.state_dir / "services" / "pebble"


def _pebble_argv(spec: LabSpec) -> list[str]:
    return [pebble.PEBBLE, "-config", str(_pebble_dir(spec) / "pebble.json")]


def _prepare_pebble(spec: LabSpec) -> None:
    try:
        pebble.prepare(_pebble_dir(spec), gateway_ip(spec))
    except pebble.PebbleError as exc:
        raise LabError(str(exc)) from exc


def _pebble_env(spec: LabSpec) -> Mapping[str, str]:
    return pebble.ENV  # PEBBLE_VA_ALWAYS_VALID=1 (no DNS in the lab), no sleeps, no bad nonces


def _pebble_started(spec: LabSpec) -> None:
    try:
        pebble.save_roots(_pebble_dir(spec), gateway_ip(spec))  # roots.pem: audit_tls_ca_file
    except pebble.PebbleError as exc:
        raise LabError(str(exc)) from exc


PEBBLE = LabService(
    "pebble",
    14000,
    _pebble_argv,
    env_builder=_pebble_env,
    prepare=_prepare_pebble,
    started=_pebble_started,
)

# Started in this order by `up`, stopped in reverse order by `down`.
SERVICES: tuple[LabService, ...] = (
    APT_PROXY,
    SLACK,
    HEARTBEAT,
    UPTIMEROBOT,
    SENTRY,
    SYSLOG,
    SYSLOG_WRONGCERT,
    PAGERDUTY,
    SMTP,
    S3,
    PEBBLE,
)


# --- lab secrets ---------------------------------------------------------------------------
# The lab inventory's `{secret: NAME}` values live in <state_dir>/secrets.env (mode 0600), written
# by `lab.up` (the stand-ins' `prepare`) with lab-only values: a fresh clone works without any
# real credential. Existing values are kept; missing names are added.


def lab_secrets_path(spec: LabSpec) -> Path:
    """The lab's secrets file (`secrets.file` of the lab inventory points here)."""
    return spec.state_dir / "secrets.env"


def _lab_secret_builders() -> dict[str, Callable[[LabSpec, str], str]]:
    """NAME -> how to make its lab-only value from the spec and a fresh random token."""
    return {
        "SLACK_WEBHOOK_URL": lambda spec, t: (
            f"{service_url(spec, 'slack')}/services/T0LAB0000/B0LAB0000/{t[:24]}"
        ),
        # The health check's alert rules (the inventory's `alerts`): two more Slack channels
        # and PagerDuty's Events API v2 (a 32-character integration key).
        "SLACK_ENGINEERING_WEBHOOK_URL": lambda spec, t: (
            f"{service_url(spec, 'slack')}/services/T0LAB0000/B0ENGALERT/{t[:24]}"
        ),
        "SLACK_DEVOPS_WEBHOOK_URL": lambda spec, t: (
            f"{service_url(spec, 'slack')}/services/T0LAB0000/B0DEVOPS/{t[:24]}"
        ),
        "PAGERDUTY_ROUTING_KEY": lambda spec, t: t[:32],
        "UPTIMEROBOT_API_KEY": lambda spec, t: f"u0000000-{t}",
        "SENTRY_AUTH_TOKEN": lambda spec, t: f"sntryu_{t}",
        "SENTRY_DSN": lambda spec, t: f"http://{t[:32]}@{gateway_ip(spec)}:{SENTRY_PORT}/1",
        # S3 (moto accepts any keys) and the app's PostgreSQL password (roles backup, postgresql)
        "BACKUP_S3_ACCESS_KEY_ID": lambda spec, t: f"LAB{t[:17].upper()}",
        "BACKUP_S3_SECRET_ACCESS_KEY": lambda spec, t: t,
        "POSTGRES_APP_PASSWORD": lambda spec, t: t[:24],
        "APP_ADMIN_TOKEN": lambda spec, t: t,  # the sample app's admin endpoints
    }


def ensure_lab_secrets(spec: LabSpec) -> dict[str, str]:
    """Make <state_dir>/secrets.env hold a lab-only value for every known secret; return them all.

    Values already in the file are kept (so hosts configured with them stay right); the file is
    written atomically with mode 0600 only when a name was missing.
    """
    path = lab_secrets_path(spec)
    values = read_secrets_file(path) if path.exists() else {}
    missing = {
        name: build(spec, pysecrets.token_hex(20))
        for name, build in _lab_secret_builders().items()
        if name not in values
    }
    if missing:
        values.update(missing)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("# Lab-only secrets written by `inv lab.up`; never real credentials.\n")
            f.writelines(f"{k}={v}\n" for k, v in sorted(values.items()))
        os.replace(tmp, path)
    return values


def inbox_dir(spec: LabSpec, name: str) -> Path:
    """Where the stand-in `name` keeps what it received (inbox.jsonl)."""
    return spec.state_dir / "services" / name


def read_inbox(spec: LabSpec, name: str) -> list[dict[str, Any]]:
    """Everything the stand-in `name` received, oldest first."""
    path = inbox_dir(spec, name) / "inbox.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def describe_item(name: str, item: Mapping[str, Any]) -> str:
    """One line for a received item, as `inv lab.inbox` shows it."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(item.get("time", 0))))
    if name == "slack":
        payload = item.get("payload", {})
        text = payload.get("text") or json.dumps(payload)[:200]
        channel = str(item.get("webhook", "")).rsplit("/", 1)[-1]
        return f"{when} [{channel}] from {item.get('from')}: {text}"
    if name == "heartbeat":
        return f"{when} {item.get('method')} /{item.get('token')} from {item.get('from')}"
    if name == "uptimerobot":
        m = item.get("monitor", {})
        target = m.get("url", "") + (f":{m['port']}" if m.get("port") else "")
        fields = f" ({', '.join(item['fields'])})" if item.get("fields") else ""
        tags = ",".join(m.get("tags", [])) or "no tags"
        return (
            f"{when} {item.get('action')} monitor {m.get('id')} {m.get('friendlyName')!r} "
            f"{m.get('type')} {target} [{tags}]{fields}"
        )
    if name == "sentry":
        kind = item.get("kind")
        if kind == "event":
            return (
                f"{when} event {item.get('level')} {item.get('message')!r} "
                f"env={item.get('environment')} release={item.get('release')} "
                f"from {item.get('from')}"
            )
        if kind == "rule":
            return f"{when} alert rule {item.get('action')}: {item.get('name')!r}"
        if kind == "deploy":
            return f"{when} deploy of release {item.get('version')} to {item.get('environment')}"
        return f"{when} {kind} {item.get('version')}"
    if name == "pagerduty":
        source = f" {item.get('severity')} from {item.get('source')}" if item.get("source") else ""
        dropped = " (dropped: no open alert)" if item.get("dropped") else ""
        return (
            f"{when} {item.get('event_action')} {item.get('dedup_key')}{source}: "
            f"{item.get('summary') or ''}{dropped}"
        )
    if name == "smtp":
        to = ", ".join(item.get("rcpt_tos") or [])
        return f"{when} mail from {item.get('from')} to {to}: {item.get('subject')}"
    if name.startswith("syslog"):
        where = f"(from {item.get('from')})"
        return f"{when} {item.get('host')} {item.get('app')}: {item.get('msg')} {where}"
    return f"{when} {json.dumps(item, sort_keys=True)[:300]}"


def inbox_counts(name: str, items: list[dict[str, Any]]) -> dict[str, int]:
    """What a stand-in received, counted by where it went: Slack by webhook (its B… part),
    PagerDuty by event action, SMTP by recipient; {} for the others.

    >>> inbox_counts("slack", [{"webhook": "/services/T1/B0DEVOPS"}, {"webhook": "/services/T1/B2"},
    ...                        {"webhook": "/services/T1/B0DEVOPS"}])
    {'B0DEVOPS': 2, 'B2': 1}
    >>> inbox_counts("pagerduty", [{"event_action": "trigger"}, {"event_action": "resolve"}])
    {'resolve': 1, 'trigger': 1}
    """
    keys: list[str] = []
    for item in items:
        if name == "slack":
            keys.append(str(item.get("webhook", "")).rsplit("/", 1)[-1])
        elif name == "pagerduty":
            keys.append(str(item.get("event_action")))
        elif name == "smtp":
            keys += [str(t) for t in item.get("rcpt_tos") or []]
    return {k: keys.count(k) for k in sorted(set(keys))}


def service_url(spec: LabSpec, name: str) -> str:
    """The base URL of an HTTP stand-in as the lab hosts reach it."""
    service = find_service(name)
    return f"http://{service.address(spec)}:{service.port}"


def find_service(name: str) -> LabService:
    """Return the registered service called `name` (KeyError if there is none)."""
    for service in SERVICES:
        if service.name == name:
            return service
    raise KeyError(name)
