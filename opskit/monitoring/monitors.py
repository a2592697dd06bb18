"""UptimeRobot monitors as code: the monitors the inventory declares, and the plan (pure) that
makes UptimeRobot match them.

Only monitors tagged `healthcheck_uptimerobot_tag` (default `opskit`) are opskit's; it tags every
monitor it creates. A monitor without the tag is never updated or deleted, even when it has the
name of a declared one (that is a conflict: reported, nothing created in its place).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from opskit.core.errors import ConfigError
from opskit.core.secrets import Secret
from opskit.monitoring.plan import Action, whole_number

MONITOR_TYPES = ("HTTP", "KEYWORD", "PORT", "HEARTBEAT", "PING")
KEYWORD_TYPES = ("ALERT_EXISTS", "ALERT_NOT_EXISTS")


@dataclass(frozen=True)
class MonitorSpec:
    """One UptimeRobot monitor as declared."""

    name: str
    type: str
    url: str = ""  # URL (HTTP, KEYWORD), host (PORT, PING); none for HEARTBEAT
    interval: int = 300
    port: int | None = None
    keyword: str | None = None
    keyword_type: str | None = None  # ALERT_NOT_EXISTS: down when the keyword is missing
    grace_period: int | None = None  # HEARTBEAT

    def body(self, tag: str, contacts: Sequence[str]) -> dict[str, Any]:
        """The v3 request body that creates this monitor."""
        body: dict[str, Any] = {
            "friendlyName": self.name,
            "type": self.type,
            "interval": self.interval,
            "tagNames": [tag],
            "assignedAlertContacts": [
                {"alertContactId": c, "threshold": 0, "recurrence": 0} for c in contacts
            ],
        }
        if self.type != "HEARTBEAT":
            body["url"] = self.url
        if self.type == "KEYWORD":
            body["keywordType"] = self.keyword_type
            body["keywordValue"] = self.keyword
        if self.type == "PORT":
            body["port"] = self.port
        if self.type == "HEARTBEAT" and self.grace_period is not None:
            body["gracePeriod"] = self.grace_period
        return body


@dataclass(frozen=True)
class UptimeRobotSettings:
    api_url: str
    api_key: Secret
    tag: str
    contacts: tuple[str, ...]  # alert contact names
    monitors: tuple[MonitorSpec, ...]


def default_monitors(v: Mapping[str, Any]) -> list[MonitorSpec]:
    """The runbook's monitors for one app: homepage, API health (keyword), admin, port, and the
    heartbeat of the backups.

    >>> [m.name for m in default_monitors({
    ...     "healthcheck_public_url": "https://app.example.com", "healthcheck_monitor_prefix": "",
    ...     "app_name": "shop", "healthcheck_uptimerobot_interval": 300,
    ...     "healthcheck_uptimerobot_health_path": "/health",
    ...     "healthcheck_uptimerobot_admin_path": "/admin",
    ...     "healthcheck_uptimerobot_heartbeat_interval": 21600,
    ...     "healthcheck_uptimerobot_heartbeat_grace": 3600})]
    ['shop homepage', 'shop API health', 'shop admin', 'shop port 443', 'shop backups heartbeat']
    """
    public = str(v["healthcheck_public_url"] or "").rstrip("/")
    if not public:
        return []
    parts = urlsplit(public)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"healthcheck_public_url: expected an http(s) URL, got {public!r}")
    prefix = v["healthcheck_monitor_prefix"] or v.get("app_name") or parts.hostname
    interval = whole_number(v, "healthcheck_uptimerobot_interval", 30, 86400)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return [
        MonitorSpec(f"{prefix} homepage", "HTTP", f"{public}/", interval),
        MonitorSpec(
            f"{prefix} API health",
            "KEYWORD",
            f"{public}{v['healthcheck_uptimerobot_health_path']}",
            interval,
            keyword="healthy",
            keyword_type="ALERT_NOT_EXISTS",
        ),
        MonitorSpec(
            f"{prefix} admin",
            "HTTP",
            f"{public}{v['healthcheck_uptimerobot_admin_path']}",
            interval,
        ),
        MonitorSpec(f"{prefix} port {port}", "PORT", parts.hostname, interval, port=port),
        MonitorSpec(
            f"{prefix} backups heartbeat",
            "HEARTBEAT",
            interval=whole_number(v, "healthcheck_uptimerobot_heartbeat_interval", 30, 2678400),
            grace_period=whole_number(v, "healthcheck_uptimerobot_heartbeat_grace", 0, 86400),
        ),
    ]


def parse_monitors(raw: Any, v: Mapping[str, Any]) -> list[MonitorSpec]:
    """`healthcheck_uptimerobot_monitors` (a list of mappings) as MonitorSpecs; errors name it."""
    key = "healthcheck_uptimerobot_monitors"
    if not isinstance(raw, list):
        raise ConfigError(f"{key}: expected a list of monitors (or null for the defaults)")
    out = []
    allowed = {"name", "type", "url", "port", "keyword", "keyword_type", "interval", "grace_period"}
    for i, m in enumerate(raw):
        where = f"{key}[{i}]"
        if not isinstance(m, dict):
            raise ConfigError(f"{where}: expected a mapping")
        unknown = set(m) - allowed
        if unknown:
            raise ConfigError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
        name, kind = m.get("name"), str(m.get("type", "")).upper()
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{where}: missing 'name'")
        if kind not in MONITOR_TYPES:
            raise ConfigError(f"{where}: type must be one of {', '.join(MONITOR_TYPES)}")
        interval = m.get("interval", v["healthcheck_uptimerobot_interval"])
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 30:
            raise ConfigError(f"{where}: interval must be at least 30 seconds")
        url = str(m.get("url") or "")
        if kind in ("HTTP", "KEYWORD") and urlsplit(url).scheme not in ("http", "https"):
            raise ConfigError(f"{where}: url must be an http(s) URL")
        if kind in ("PORT", "PING") and (not url or "/" in url):
            raise ConfigError(f"{where}: url must be a host name for {kind} monitors")
        port = m.get("port")
        if kind == "PORT" and (not isinstance(port, int) or not 0 < port < 65536):
            raise ConfigError(f"{where}: port must be 1-65535")
        keyword, ktype = m.get("keyword"), m.get("keyword_type", "ALERT_NOT_EXISTS")
        if kind == "KEYWORD" and (not keyword or ktype not in KEYWORD_TYPES):
            raise ConfigError(f"{where}: keyword and keyword_type ({'/'.join(KEYWORD_TYPES)})")
        out.append(
            MonitorSpec(
                name.strip(),
                kind,
                "" if kind == "HEARTBEAT" else url,
                interval,
                port=port if kind == "PORT" else None,
                keyword=str(keyword) if kind == "KEYWORD" else None,
                keyword_type=ktype if kind == "KEYWORD" else None,
                grace_period=m.get("grace_period") if kind == "HEARTBEAT" else None,
            )
        )
    return out


def _monitor_fields(m: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The fields opskit compares, from a monitor (answer) or a request body."""
    out: dict[str, Any] = {"interval": m.get("interval")}
    if kind != "HEARTBEAT":
        out["url"] = m.get("url")
    if kind == "KEYWORD":
        out["keywordType"] = m.get("keywordType")
        out["keywordValue"] = m.get("keywordValue")
    if kind == "PORT":
        out["port"] = m.get("port")
    if kind == "HEARTBEAT":
        out["gracePeriod"] = m.get("gracePeriod", 0) or 0
    contacts = m.get("assignedAlertContacts") or []
    out["alertContacts"] = sorted(str(c.get("alertContactId")) for c in contacts)
    return out


def tag_names(monitor: Mapping[str, Any]) -> set[str]:
    tags = monitor.get("tags") or []
    return {str(t.get("name") if isinstance(t, dict) else t) for t in tags}


def plan_monitors(
    settings: UptimeRobotSettings, existing: Sequence[Mapping[str, Any]], contact_ids: Sequence[str]
) -> list[Action]:
    """Create, update, replace (type changed) or delete opskit's monitors; never touch others."""
    ours: dict[str, list[Mapping[str, Any]]] = {}
    theirs: dict[str, Mapping[str, Any]] = {}
    for m in existing:
        if settings.tag in tag_names(m):
            ours.setdefault(str(m.get("friendlyName")), []).append(m)
        else:
            theirs.setdefault(str(m.get("friendlyName")), m)
    actions = []
    for spec in settings.monitors:
        body = spec.body(settings.tag, contact_ids)
        what = f"monitor {spec.name!r}"
        target = spec.url + (f":{spec.port}" if spec.port else "") or "heartbeat"
        found = ours.pop(spec.name, [])
        for extra in found[1:]:  # duplicates of ours: keep one
            actions.append(Action("uptimerobot", "delete", what, "duplicate", str(extra["id"])))
        if not found:
            if spec.name in theirs:
                actions.append(
                    Action(
                        "uptimerobot",
                        "conflict",
                        what,
                        f"monitor {theirs[spec.name].get('id')} has this name but not the tag "
                        f"{settings.tag!r}: left alone, nothing created (rename it, or tag it "
                        f"{settings.tag!r} in UptimeRobot to let opskit manage it)",
                    )
                )
                continue
            actions.append(
                Action("uptimerobot", "create", what, f"{spec.type} {target}", body=body)
            )
            continue
        current = found[0]
        if current.get("type") != spec.type:
            actions.append(
                Action(
                    "uptimerobot",
                    "replace",
                    what,
                    f"type {current.get('type')} -> {spec.type} (delete, create)",
                    str(current["id"]),
                    body,
                )
            )
            continue
        want, have = _monitor_fields(body, spec.type), _monitor_fields(current, spec.type)
        diff = [f"{k} {have.get(k)!r} -> {want[k]!r}" for k in want if have.get(k) != want[k]]
        if diff:
            patch = {k: v for k, v in body.items() if k != "type"}
            actions.append(
                Action("uptimerobot", "update", what, ", ".join(diff), str(current["id"]), patch)
            )
        else:
            actions.append(
                Action("uptimerobot", "ok", what, f"{spec.type} {target}", str(current["id"]))
            )
    for name, found in sorted(ours.items()):
        for m in found:
            actions.append(
                Action(
                    "uptimerobot", "delete", f"monitor {name!r}", "no longer declared", str(m["id"])
                )
            )
    return actions
