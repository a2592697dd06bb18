"""What a report is made of: its kinds, its settings (the `report_*` variables) and the gathered
data (`ReportData`, the `.json` file that every view and rendering starts from)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opskit.core.errors import ConfigError, OpsError
from opskit.core.inventory import Host
from opskit.core.secrets import Secret

KINDS: Mapping[str, dt.timedelta] = {
    "daily": dt.timedelta(hours=24),
    "weekly": dt.timedelta(days=7),
}


class ReportError(OpsError):
    """The report could not be written or sent."""


# --- settings ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """The `report_*` variables (opskit/core/defaults/report.yml), read from the first host."""

    out_dir: Path
    slack_webhook: Secret | None
    link_base: str
    max_items: int
    audit: bool
    failed_logins_warning: int
    error_rate_warning: float
    error_rate_critical: float


def settings_for(hosts: Sequence[Host], out: str | None = None) -> Settings:
    """Fleet-wide report settings from the first selected host's variables (set them under the
    inventory's top-level `vars`); ConfigError on a bad value."""
    if not hosts:
        raise ConfigError("no hosts selected")
    v = hosts[0].vars

    def number(key: str, lo: float) -> float:
        value = v.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < lo:
            raise ConfigError(f"{key}: expected a number >= {lo}, got {value!r}")
        return float(value)

    webhook = v.get("report_slack_webhook_url") or v.get("healthcheck_slack_webhook_url") or None
    if webhook is not None and not isinstance(webhook, Secret):
        raise ConfigError(
            "report_slack_webhook_url: give the webhook as {secret: NAME}, never as plain text"
        )
    if not isinstance(v.get("report_dir"), str) or not v.get("report_dir"):
        raise ConfigError(f"report_dir: expected a directory, got {v.get('report_dir')!r}")
    return Settings(
        out_dir=Path(out or v["report_dir"]),
        slack_webhook=webhook,
        link_base=str(v.get("report_link_base") or ""),
        max_items=int(number("report_max_items", 1)),
        audit=bool(v.get("report_audit", True)),
        failed_logins_warning=int(number("report_failed_logins_warning", 0)),
        error_rate_warning=number("report_error_rate_warning", 0),
        error_rate_critical=number("report_error_rate_critical", 0),
    )


# --- the gathered data -------------------------------------------------------------------------


@dataclass
class ReportData:
    """Everything a report shows; `to_dict()` is the `.json` file and what is rendered."""

    kind: str
    generated_at: dt.datetime
    since: dt.datetime
    until: dt.datetime
    inventory: str
    hosts: list[str]
    status: dict[str, Any] | None = None
    audit: dict[str, Any] | None = None
    certs: dict[str, Any] | None = None
    backups: list[dict[str, Any]] = field(default_factory=list)
    releases: list[dict[str, Any]] = field(default_factory=list)
    history: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)
    previous: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    incidents: dict[str, Any] | None = None  # weekly: opskit.report.incidents

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "generated_at": iso_time(self.generated_at),
            "since": iso_time(self.since),
            "until": iso_time(self.until),
            "inventory": self.inventory,
            "hosts": list(self.hosts),
            "status": self.status,
            "audit": self.audit,
            "certs": self.certs,
            "backups": self.backups,
            "releases": self.releases,
            "history": self.history,
            "errors": dict(self.errors),
            "unreadable": sorted(set(self.unreadable)),
            "previous": self.previous,
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
            "settings": self.settings,
            "incidents": self.incidents,
        }


def iso_time(t: dt.datetime) -> str:
    """A time as the report's JSON writes it: UTC, seconds, a trailing Z.

    >>> iso_time(dt.datetime(2026, 1, 2, 4, 4, 5, 123, tzinfo=dt.timezone(dt.timedelta(hours=1))))
    '2026-01-02T03:04:05Z'
    """
    return t.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_time(text: Any) -> dt.datetime | None:
    """An ISO-8601 time (a trailing Z allowed) as an aware UTC datetime, or None.

    >>> parse_time("2026-01-02T03:04:05Z").isoformat()
    '2026-01-02T03:04:05+00:00'
    >>> parse_time("yesterday") is None
    True
    """
    if not isinstance(text, str) or not text:
        return None
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)
