"""The status_* variables of one host, checked: what `inv status` reads there and its thresholds.

Each threshold is `status_<metric>_warning` / `_critical`; null takes the host's healthcheck_*
value when it has the healthcheck role (so a limit is set once), else the runbook's default
(opskit/core/defaults/status.yml). Pure: nothing here touches a host.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opskit.app import spec as app_spec
from opskit.backup.schedule import allowed_age
from opskit.backup.spec import config_for
from opskit.certs import spec as certs_spec
from opskit.checks.levels import Pair
from opskit.checks.thresholds import checked_pair, number
from opskit.core.cron import max_gap
from opskit.core.errors import ConfigError
from opskit.core.inventory import Host

UNGRADABLE = (
    "health",
    "latency",
    "cpu",
    "memory",
    "disk",
    "db_connections",
    "pm2",
    "pm2_restarts",
    "cert",
    "backup_age",
    "healthcheck",
    "release",
    "reboot",
)
# healthcheck_checks name -> the status metrics it stands for (for status_ungraded: null).
_CHECK_METRICS = {
    "http": ("health", "latency"),
    "database": ("db_connections",),
    "disk": ("disk",),
    "memory": ("memory",),
    "cpu": ("cpu",),
    "pm2": ("pm2", "pm2_restarts"),
}


@dataclass(frozen=True)
class BackupSettings:
    database: str
    local_dir: str
    schedule: str
    warning_hours: float | None
    critical_hours: float | None


@dataclass(frozen=True)
class Settings:
    """What to read on one host and how to judge it (from its variables; pure)."""

    samples: int
    timeout: float
    cpu_seconds: float
    health_url: str  # "" = no health endpoint on this host
    health_keyword: str
    latency: Pair
    cpu: Pair
    memory: Pair
    disk: Pair
    disk_paths: tuple[str, ...]
    db: Pair | None  # None: no postgresql role
    pm2_user: str  # "" = no app role
    pm2_apps: tuple[str, ...]
    pm2_restarts: Pair
    app: app_spec.AppLayout | None
    cert_specs: tuple[certs_spec.CertSpec, ...] | None  # None: no certbot role
    cert_days: tuple[int, int]  # warning, critical (days left below)
    backup: BackupSettings | None
    healthcheck: Pair | None  # minutes; None: no healthcheck role
    ungraded: frozenset[str] = frozenset()
    node_bin: str = ""  # the app's node directory (app_node_source); "" = no app role


def _pair(
    v: Mapping[str, Any],
    name: str,
    *,
    fallback: str | None,
    default: tuple[float, float],
    percent: bool = False,
    suffix: str = "",
) -> Pair:
    """status_<name>_warning<suffix> / _critical<suffix>; null: the `fallback`_warning<suffix> /
    _critical<suffix> variable when the host has it, else `default`.

    >>> _pair({"status_cpu_warning": None, "status_cpu_critical": 95}, "cpu",
    ...       fallback=None, default=(70, 90), percent=True)
    Pair(warning=70.0, critical=95.0)
    """
    values, keys = [], []
    for i, level in enumerate(("warning", "critical")):
        key = f"status_{name}_{level}{suffix}"
        value = v.get(key)
        if value is None and fallback is not None and f"{fallback}_{level}{suffix}" in v:
            key = f"{fallback}_{level}{suffix}"
            value = v[key]
        if value is None:
            value = default[i]
        values.append(number(key, value, hi=100 if percent else None))
        keys.append(key)
    return checked_pair(keys[0], values[0], keys[1], values[1])


def _health_url(v: Mapping[str, Any], roles: Sequence[str]) -> str:
    url = v.get("status_health_url")
    key = "status_health_url"
    if url is None and "healthcheck" in roles:
        url = v.get("healthcheck_health_url")
        key = "healthcheck_health_url"
    if url is None and "app_port" in v:
        return f"http://127.0.0.1:{v['app_port']}{v.get('app_health_path', '/health')}"
    if url is None:
        return ""
    if not isinstance(url, str) or (url and not url.startswith(("http://", "https://"))):
        raise ConfigError(f"{key}: expected an http(s) URL, got {url!r}")
    return url


def _ungraded(v: Mapping[str, Any], roles: Sequence[str]) -> frozenset[str]:
    raw = v.get("status_ungraded")
    if raw is None:
        checks = v.get("healthcheck_checks") if "healthcheck" in roles else None
        if not isinstance(checks, list):
            return frozenset()
        return frozenset(m for c, ms in _CHECK_METRICS.items() if c not in checks for m in ms)
    if not isinstance(raw, list) or any(m not in UNGRADABLE for m in raw):
        raise ConfigError(
            f"status_ungraded: a list of {', '.join(UNGRADABLE)} (or null), got {raw!r}"
        )
    return frozenset(raw)


def _hours(td: dt.timedelta | None) -> float | None:
    return None if td is None else td.total_seconds() / 3600


def _backup_settings(host: Host) -> BackupSettings:
    v = host.vars
    cfg = config_for(host)
    gap = max_gap(cfg.schedule)
    warning = v.get("status_backup_warning_hours")
    critical = v.get("status_backup_critical_hours")
    w = _hours(allowed_age(cfg)) if warning is None else None
    c = _hours(2 * gap + cfg.grace) if critical is None and gap is not None else None
    if warning is not None:
        w = number("status_backup_warning_hours", warning)
    if critical is not None:
        c = number("status_backup_critical_hours", critical)
    if w is not None and c is not None:
        checked_pair("status_backup_warning_hours", w, "status_backup_critical_hours", c)
    local_dir = v.get("backup_local_dir", "/var/backups/postgresql")
    if not isinstance(local_dir, str) or not local_dir.startswith("/"):
        raise ConfigError(f"backup_local_dir: expected an absolute path, got {local_dir!r}")
    return BackupSettings(cfg.database, local_dir, cfg.schedule, w, c)


def _healthcheck_pair(v: Mapping[str, Any]) -> Pair:
    gap = max_gap(str(v.get("healthcheck_schedule", "*/5 * * * *")))
    minutes = gap.total_seconds() / 60 if gap is not None else 5.0
    w, c = v.get("status_healthcheck_warning_minutes"), v.get("status_healthcheck_critical_minutes")
    return checked_pair(
        "status_healthcheck_warning_minutes",
        3 * minutes if w is None else number("status_healthcheck_warning_minutes", w),
        "status_healthcheck_critical_minutes",
        12 * minutes if c is None else number("status_healthcheck_critical_minutes", c),
    )


def settings_for(host: Host, *, samples: int | None = None) -> Settings:
    """The checked settings of one host; ConfigError names the host and the key."""
    try:
        return _settings(host, samples)
    except ConfigError as exc:
        text = str(exc)
        raise ConfigError(
            text if text.startswith(f"{host.name}: ") else f"{host.name}: {text}"
        ) from None


def _settings(host: Host, samples: int | None) -> Settings:
    v, roles = host.vars, host.roles
    n = v.get("status_samples", 5) if samples is None else samples
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 50:
        key = "--samples" if samples is not None else "status_samples"
        raise ConfigError(f"{key}: expected a whole number 1-50, got {n!r}")
    timeout = number("status_timeout", v.get("status_timeout", 5), lo=0.1, hi=300)
    cpu_seconds = number(
        "status_cpu_sample_seconds", v.get("status_cpu_sample_seconds", 1), lo=0.1, hi=10
    )
    hc = "healthcheck" in roles
    keyword = v.get("status_health_keyword")
    if keyword is None:
        keyword = v.get("healthcheck_health_keyword", "healthy") if hc else "healthy"
    if not isinstance(keyword, str):
        raise ConfigError(f"status_health_keyword: expected text, got {keyword!r}")
    paths = v.get("status_disk_paths")
    paths_key = "status_disk_paths"
    if paths is None and hc:
        paths, paths_key = v.get("healthcheck_disk_paths"), "healthcheck_disk_paths"
    if paths is None:
        paths = ["/"]
    if (
        not isinstance(paths, list)
        or not paths
        or not all(isinstance(p, str) and p.startswith("/") for p in paths)
    ):
        raise ConfigError(f"{paths_key}: a list of absolute paths, got {paths!r}")

    def fb(name: str) -> str | None:
        return f"healthcheck_{name}" if hc else None

    db = None
    if "postgresql" in roles:
        db = _pair(v, "db_connections", fallback=None, default=(80, 95), percent=True)
    app = app_spec.AppLayout.from_vars(v) if "app" in roles else None
    cert_specs = certs_spec.declared_certificates(v) if "certbot" in roles else None
    return Settings(
        samples=n,
        timeout=timeout,
        cpu_seconds=cpu_seconds,
        health_url=_health_url(v, roles),
        health_keyword=keyword,
        latency=_pair(
            v,
            "latency",
            fallback="healthcheck_response_time" if hc else None,
            default=(500, 2000),
            suffix="_ms",
        ),
        cpu=_pair(v, "cpu", fallback=fb("cpu"), default=(70, 90), percent=True),
        memory=_pair(v, "memory", fallback=fb("memory"), default=(70, 90), percent=True),
        disk=_pair(v, "disk", fallback=fb("disk"), default=(70, 90), percent=True),
        disk_paths=tuple(paths),
        db=db,
        pm2_user=app.user if app else "",
        pm2_apps=(app.name,) if app else (),
        pm2_restarts=_pair(v, "pm2_restarts", fallback=fb("pm2_restarts"), default=(1, 5)),
        app=app,
        cert_specs=cert_specs,
        cert_days=certs_spec.thresholds(v) if cert_specs is not None else (30, 7),
        backup=_backup_settings(host) if "backup" in roles else None,
        healthcheck=_healthcheck_pair(v) if hc else None,
        ungraded=_ungraded(v, roles),
        node_bin=app_spec.node_bin_dir(v) if app else "",
    )


def check_hosts(hosts: Sequence[Host], *, samples: int | None = None) -> dict[str, Settings]:
    """Settings of every host, all checked before anything runs (ConfigError on the first bad)."""
    if samples is not None and (isinstance(samples, bool) or not 1 <= samples <= 50):
        raise ConfigError(f"--samples: expected a whole number 1-50, got {samples!r}")
    return {h.name: settings_for(h, samples=samples) for h in hosts}
