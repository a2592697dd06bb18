"""Monitoring from the laptop: UptimeRobot monitors and Sentry alert rules as code, Sentry
releases for deploys, and the hosts' health checks on demand.

`inv monitoring.sync` reads what the inventory declares (the `healthcheck_*` variables of the
hosts with the healthcheck role), reads what the services have, and plans (pure) which monitors
and rules to create, update or delete; `--apply` carries the plan out.

What opskit manages, and nothing else:
* UptimeRobot: monitors tagged `healthcheck_uptimerobot_tag` (default `opskit`); opskit tags every
  monitor it creates. A monitor without the tag is never updated or deleted, even when it has the
  name of a declared one (that is a conflict: reported, nothing created in its place).
* Sentry: issue alert rules whose name starts with `healthcheck_sentry_rule_prefix` (`opskit: `).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import requests

from opskit.clients.sentry import SentryClient
from opskit.clients.uptimerobot import UptimeRobotClient
from opskit.core.errors import ConfigError
from opskit.core.inventory import Host, Inventory
from opskit.core.secrets import Secret

log = logging.getLogger(__name__)

ROLE = "healthcheck"
SCRIPT = "/usr/local/bin/opskit-healthcheck"  # roles/healthcheck
STATUS_FILE = "/var/lib/opskit/healthcheck/status.json"
MONITOR_TYPES = ("HTTP", "KEYWORD", "PORT", "HEARTBEAT", "PING")
KEYWORD_TYPES = ("ALERT_EXISTS", "ALERT_NOT_EXISTS")
FIRST_SEEN = "sentry.rules.conditions.first_seen_event.FirstSeenEventCondition"
EVENT_FREQUENCY = "sentry.rules.conditions.event_frequency.EventFrequencyCondition"
NOTIFY_EMAIL = "sentry.mail.actions.NotifyEmailAction"
PAST = {"create": "created", "update": "updated", "replace": "replaced", "delete": "deleted"}
RULE_KEYS = (
    "name",
    "frequency",
    "actionMatch",
    "filterMatch",
    "conditions",
    "actions",
    "filters",
    "environment",
)


# --- what the inventory declares -------------------------------------------------------------


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


@dataclass(frozen=True)
class SentrySettings:
    api_url: str
    token: Secret
    org: str
    project: str
    prefix: str
    rules: tuple[Mapping[str, Any], ...]
    environment: str = "production"


@dataclass(frozen=True)
class Declared:
    uptimerobot: UptimeRobotSettings | None
    sentry: SentrySettings | None


def _int(v: Mapping[str, Any], key: str, lo: int, hi: int) -> int:
    value = v[key]
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{key}: expected a whole number {lo}-{hi}, got {value!r}")
    return value


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
    interval = _int(v, "healthcheck_uptimerobot_interval", 30, 86400)
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
            interval=_int(v, "healthcheck_uptimerobot_heartbeat_interval", 30, 2678400),
            grace_period=_int(v, "healthcheck_uptimerobot_heartbeat_grace", 0, 86400),
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


def default_rules(v: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The runbook's Sentry issue alert rules: a new issue; more than N events in M minutes."""
    threshold = _int(v, "healthcheck_sentry_event_threshold", 1, 10**9)
    interval = str(v["healthcheck_sentry_event_interval"])
    if interval not in ("1m", "5m", "15m", "1h", "1d", "1w", "30d"):
        raise ConfigError(
            "healthcheck_sentry_event_interval: one of 1m, 5m, 15m, 1h, 1d, 1w, 30d; "
            f"got {interval!r}"
        )
    frequency = _int(v, "healthcheck_sentry_action_interval_minutes", 5, 43200)
    action = {"id": NOTIFY_EMAIL, "targetType": "IssueOwners", "fallthroughType": "ActiveMembers"}
    return [
        {
            "name": "new issue",
            "frequency": frequency,
            "actionMatch": "any",
            "filterMatch": "all",
            "conditions": [{"id": FIRST_SEEN}],
            "filters": [],
            "actions": [action],
        },
        {
            "name": f"more than {threshold} events in {interval}",
            "frequency": frequency,
            "actionMatch": "all",
            "filterMatch": "all",
            "conditions": [
                {
                    "id": EVENT_FREQUENCY,
                    "value": threshold,
                    "interval": interval,
                    "comparisonType": "count",
                }
            ],
            "filters": [],
            "actions": [action],
        },
    ]


def _same(found: dict[str, tuple[Any, str]], key: str, value: Any, host: str) -> None:
    if key in found and found[key][0] != value:
        raise ConfigError(
            f"{key}: hosts {found[key][1]} and {host} disagree; set it once for all the hosts "
            "with the healthcheck role (top-level or group vars)"
        )
    found.setdefault(key, (value, host))


def declared(inventory: Inventory, hosts: Sequence[Host] | None = None) -> Declared:
    """What the inventory declares for UptimeRobot and Sentry (hosts with the healthcheck role)."""
    hosts = [h for h in (hosts or inventory.hosts) if ROLE in h.roles]
    settings: dict[str, tuple[Any, str]] = {}
    monitors: dict[str, tuple[MonitorSpec, str]] = {}
    rules: dict[str, tuple[Mapping[str, Any], str]] = {}
    for h in hosts:
        v = h.vars
        keys = ["api_url", "api_key", "tag", "alert_contacts"]
        for k in keys:
            _same(
                settings, f"healthcheck_uptimerobot_{k}", v[f"healthcheck_uptimerobot_{k}"], h.name
            )
        for k in ("api_url", "auth_token", "org", "project", "rule_prefix"):
            _same(settings, f"healthcheck_sentry_{k}", v[f"healthcheck_sentry_{k}"], h.name)
        raw = v["healthcheck_uptimerobot_monitors"]
        specs = default_monitors(v) if raw is None else parse_monitors(raw, v)
        for m in specs:
            if m.name in monitors and monitors[m.name][0] != m:
                raise ConfigError(
                    f"monitor {m.name!r}: hosts {monitors[m.name][1]} and {h.name} declare it "
                    "differently"
                )
            monitors.setdefault(m.name, (m, h.name))
        raw_rules = v["healthcheck_sentry_rules"]
        if raw_rules is None:
            host_rules = default_rules(v)
        elif isinstance(raw_rules, list) and all(isinstance(r, dict) for r in raw_rules):
            host_rules = [dict(r) for r in raw_rules]
        else:
            raise ConfigError("healthcheck_sentry_rules: a list of rule bodies (or null)")
        for r in host_rules:
            name = f"{v['healthcheck_sentry_rule_prefix']}{r.get('name', '')}"
            r = normalize_rule({**r, "name": name})
            if name in rules and rules[name][0] != r:
                raise ConfigError(
                    f"Sentry rule {name!r}: hosts {rules[name][1]} and {h.name} differ"
                )
            rules.setdefault(name, (r, h.name))
        if "app_sentry_environment" in v:
            _same(settings, "app_sentry_environment", v["app_sentry_environment"], h.name)

    def get(key: str, default: Any = "") -> Any:
        return settings[key][0] if key in settings else default

    uptime = None
    key = get("healthcheck_uptimerobot_api_key")
    if key:
        if not isinstance(key, Secret):
            raise ConfigError(
                "healthcheck_uptimerobot_api_key must be a secret reference {secret: NAME}"
            )
        contacts = get("healthcheck_uptimerobot_alert_contacts", [])
        if not isinstance(contacts, list) or not all(isinstance(c, str) for c in contacts):
            raise ConfigError("healthcheck_uptimerobot_alert_contacts: a list of contact names")
        tag = str(get("healthcheck_uptimerobot_tag"))
        if not tag.strip():
            raise ConfigError("healthcheck_uptimerobot_tag: must not be empty (it marks ours)")
        uptime = UptimeRobotSettings(
            str(get("healthcheck_uptimerobot_api_url")),
            key,
            tag,
            tuple(contacts),
            tuple(m for m, _ in monitors.values()),
        )
    sentry = None
    token = get("healthcheck_sentry_auth_token")
    if token:
        if not isinstance(token, Secret):
            raise ConfigError(
                "healthcheck_sentry_auth_token must be a secret reference {secret: NAME}"
            )
        org, project = str(get("healthcheck_sentry_org")), str(get("healthcheck_sentry_project"))
        if not org or not project:
            raise ConfigError(
                "healthcheck_sentry_org and healthcheck_sentry_project are required "
                "with healthcheck_sentry_auth_token"
            )
        prefix = str(get("healthcheck_sentry_rule_prefix"))
        if not prefix.strip():
            raise ConfigError("healthcheck_sentry_rule_prefix: must not be empty (it marks ours)")
        sentry = SentrySettings(
            str(get("healthcheck_sentry_api_url")),
            token,
            org,
            project,
            prefix,
            tuple(r for r, _ in rules.values()),
            str(get("app_sentry_environment", "production")),
        )
    return Declared(uptime, sentry)


# --- plan (pure) -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    """One step of a sync: create, update, replace, delete, ok or conflict."""

    service: str  # "uptimerobot" | "sentry"
    kind: str
    what: str  # "monitor 'shop homepage'"
    detail: str = ""
    ident: str | None = None  # the service's id of the existing object
    body: Mapping[str, Any] | None = field(default=None, repr=False)

    @property
    def changes(self) -> bool:
        return self.kind in ("create", "update", "replace", "delete")


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


def normalize_rule(rule: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a rule opskit compares, with Sentry's defaults filled in."""
    out = {k: rule.get(k) for k in RULE_KEYS}
    out["filterMatch"] = out["filterMatch"] or "all"
    out["filters"] = out["filters"] or []
    out["conditions"] = out["conditions"] or []
    out["actions"] = out["actions"] or []
    return out


def plan_rules(settings: SentrySettings, existing: Sequence[Mapping[str, Any]]) -> list[Action]:
    ours: dict[str, list[Mapping[str, Any]]] = {}
    for r in existing:
        name = str(r.get("name", ""))
        if name.startswith(settings.prefix):
            ours.setdefault(name, []).append(r)
    actions = []
    for want in settings.rules:
        name = str(want["name"])
        what = f"alert rule {name!r}"
        found = ours.pop(name, [])
        for extra in found[1:]:
            actions.append(Action("sentry", "delete", what, "duplicate", str(extra["id"])))
        body = {k: v for k, v in want.items() if not (k == "environment" and v is None)}
        if not found:
            actions.append(Action("sentry", "create", what, "", body=body))
            continue
        have = normalize_rule(found[0])
        diff = [k for k in RULE_KEYS if have.get(k) != want.get(k)]
        if diff:
            actions.append(
                Action(
                    "sentry",
                    "update",
                    what,
                    "changed: " + ", ".join(diff),
                    str(found[0]["id"]),
                    body,
                )
            )
        else:
            actions.append(Action("sentry", "ok", what, "", str(found[0]["id"])))
    for name, found in sorted(ours.items()):
        for r in found:
            actions.append(
                Action(
                    "sentry", "delete", f"alert rule {name!r}", "no longer declared", str(r["id"])
                )
            )
    return actions


# --- sync: read, plan, apply -------------------------------------------------------------------


@dataclass
class SyncResult:
    actions: list[Action]
    applied: bool
    notes: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)  # what was changed, in order

    @property
    def conflicts(self) -> list[Action]:
        return [a for a in self.actions if a.kind == "conflict"]

    @property
    def pending(self) -> list[Action]:
        return [a for a in self.actions if a.changes]


def resolve_contacts(names: Sequence[str], contacts: Sequence[Mapping[str, Any]]) -> list[str]:
    by_name = {str(c.get("friendlyName")): str(c.get("id")) for c in contacts}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ConfigError(
            f"healthcheck_uptimerobot_alert_contacts: {', '.join(map(repr, missing))} not found "
            f"in UptimeRobot (its alert contacts: {', '.join(sorted(by_name)) or 'none'})"
        )
    return [by_name[n] for n in names]


def sync(
    decl: Declared,
    *,
    apply: bool = False,
    session: requests.Session | None = None,
    retry: Mapping[str, Any] | None = None,
) -> SyncResult:
    """Read both services, plan, and (with `apply`) carry out the plan; ApiError on failure."""
    retry = dict(retry or {})
    result = SyncResult([], apply)
    up_client = sentry_client = None
    if decl.uptimerobot is None:
        result.notes.append("UptimeRobot: no healthcheck_uptimerobot_api_key; skipped")
    else:
        s = decl.uptimerobot
        up_client = UptimeRobotClient(s.api_key, base_url=s.api_url, session=session, **retry)
        ids = resolve_contacts(s.contacts, up_client.alert_contacts())
        result.actions += plan_monitors(s, up_client.monitors(), ids)
    if decl.sentry is None:
        result.notes.append("Sentry: no healthcheck_sentry_auth_token; skipped")
    else:
        t = decl.sentry
        sentry_client = SentryClient(
            t.token, t.org, t.project, base_url=t.api_url, session=session, **retry
        )
        result.actions += plan_rules(t, sentry_client.rules())
    if not apply:
        return result
    for a in result.pending:
        if a.service == "uptimerobot" and up_client is not None:
            if a.kind in ("delete", "replace") and a.ident:
                up_client.delete_monitor(int(a.ident))
            if a.kind in ("create", "replace"):
                created = up_client.create_monitor(dict(a.body or {}))
                a_detail = f" (id {created.get('id')})"
                if created.get("type") == "HEARTBEAT" and created.get("url"):
                    result.notes.append(
                        f"{a.what}: heartbeat URL {created['url']} (give it to the backups, "
                        "e.g. as {secret: BACKUP_HEARTBEAT_URL})"
                    )
            elif a.kind == "update" and a.ident:
                up_client.update_monitor(int(a.ident), dict(a.body or {}))
                a_detail = ""
            else:
                a_detail = ""
        elif a.service == "sentry" and sentry_client is not None:
            a_detail = ""
            if a.kind == "create":
                a_detail = f" (id {sentry_client.create_rule(dict(a.body or {})).get('id')})"
            elif a.kind == "update" and a.ident:
                sentry_client.update_rule(a.ident, dict(a.body or {}))
            elif a.kind == "delete" and a.ident:
                sentry_client.delete_rule(a.ident)
        else:  # pragma: no cover
            continue
        result.done.append(f"[{a.service}] {PAST[a.kind]} {a.what}{a_detail}")
    return result


def format_sync(result: SyncResult, *, verbose: bool = False) -> str:
    """What a person reads: one line per action (unchanged ones with verbose), then totals."""
    lines = []
    for a in result.actions:
        if a.kind == "ok" and not verbose:
            continue
        label = "CONFLICT" if a.kind == "conflict" else a.kind
        detail = f"  {a.detail}" if a.detail else ""
        lines.append(f"[{a.service}] {label:<8} {a.what}{detail}")
    lines += [f"note: {n}" for n in result.notes]
    counts = {
        k: sum(1 for a in result.actions if a.kind == k)
        for k in ("create", "update", "replace", "delete", "ok", "conflict")
    }
    verb = "done" if result.applied else "planned (apply with --apply)"
    if not result.pending:
        verb = "nothing to change"
    total = ", ".join(f"{n} {k}" for k, n in counts.items() if n) or "nothing declared"
    lines.append(f"monitoring: {total}; {verb}")
    return "\n".join(lines) + "\n"


def sync_json(result: SyncResult) -> str:
    actions = [{k: v for k, v in asdict(a).items() if k != "body"} for a in result.actions]
    return (
        json.dumps(
            {
                "applied": result.applied,
                "actions": actions,
                "done": result.done,
                "notes": result.notes,
            },
            indent=2,
        )
        + "\n"
    )


# --- Sentry releases for deploys ---------------------------------------------------------------


@dataclass(frozen=True)
class SentryRelease:
    version: str
    created: bool  # False: the release existed (a redeploy or a rollback)
    environment: str
    deploy_id: str

    def describe(self) -> str:
        new = "created" if self.created else "exists"
        return (
            f"Sentry release {self.version} ({new}), deploy {self.deploy_id} to {self.environment}"
        )


def sentry_release(
    inventory: Inventory,
    version: str,
    *,
    hosts: Sequence[Host] | None = None,
    environment: str | None = None,
    ref: str | None = None,
    url: str | None = None,
    started: datetime | None = None,
    session: requests.Session | None = None,
) -> SentryRelease | None:
    """Create the Sentry release `version` and a deploy of it (None when Sentry is not set up).

    `inv deploy` calls this after the release is live on the hosts; `version` is what the app
    reports as SENTRY_RELEASE (the commit), `environment` defaults to app_sentry_environment.
    Raises ApiError when Sentry refuses or cannot be reached (never with the token in it).
    """
    decl = declared(inventory, hosts)
    s = decl.sentry
    if s is None:
        return None
    if not version or "/" in version or "\n" in version:
        raise ConfigError(f"Sentry release: invalid version {version!r}")
    client = SentryClient(s.token, s.org, s.project, base_url=s.api_url, session=session)
    created, _ = client.create_release(version, ref=ref, url=url)
    env = environment or s.environment
    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    begun = (
        started.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        if started
        else None
    )
    deploy = client.create_deploy(version, env, started=begun, finished=now)
    return SentryRelease(version, created, env, str(deploy.get("id", "")))


# --- health checks on demand -------------------------------------------------------------------


def check_script(alert: bool) -> str:
    """Run the host's health check now (as cron would) and print its JSON status."""
    flags = "--json" if alert else "--json --no-alert"
    return (
        "if [ ! -x /usr/local/bin/opskit-healthcheck ]; then "
        "echo 'opskit-healthcheck is not installed (provision the healthcheck role)' >&2; "
        "exit 4; fi\n"
        f"/usr/local/bin/opskit-healthcheck {flags}"
    )


def parse_status(output: str) -> dict[str, Any]:
    """The JSON the health check printed (or its status file held)."""
    start = output.find("{")
    if start < 0:
        raise ValueError("no JSON in the health check's output")
    data = json.loads(output[start:])
    if not isinstance(data, dict) or "results" not in data:
        raise ValueError("not a health check status")
    return data


def format_status(host: str, status: Mapping[str, Any]) -> str:
    lines = [
        f"[{host}] {str(status.get('level', '?')).upper()}  checked {status.get('checked_at')}"
    ]
    for r in status.get("results", []):
        lines.append(f"[{host}]   {r['level'].upper():<8} {r['name']:<10} {r['summary']}")
    alert = status.get("alert") or {}
    if alert.get("sent"):
        lines.append(f"[{host}]   slack: sent {alert['sent']}")
    if alert.get("error"):
        lines.append(f"[{host}]   slack: NOT sent: {alert['error']}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class HostHealth:
    host: str
    status: Mapping[str, Any] | None
    error: str | None = None


def health_hosts(
    inventory: Inventory, hosts: Sequence[Host], *, run: bool, alert: bool = True, workers: int = 8
) -> list[HostHealth]:
    """Each host's health: its last status file (`run=False`), or a check run now (as cron does;
    `alert=False`: nothing sent, no state kept). Hosts without the healthcheck role are left out."""
    from opskit.core.runner import RunContext, run_on_hosts

    chosen = [h for h in hosts if ROLE in h.roles]
    found: dict[str, Mapping[str, Any]] = {}
    script = check_script(alert) if run else f"cat {STATUS_FILE}"

    def work(remote: Any, ctx: RunContext) -> list[Any]:
        res = remote.run(script, ok_codes=(0, 1, 2, 3), what="opskit-healthcheck")
        if not res.stdout.strip():
            raise ConfigError(f"no health status on {remote.name} yet: {res.stderr.strip()}")
        found[remote.name] = parse_status(res.stdout)
        return []

    results = run_on_hosts(inventory, chosen, work, workers=workers)
    return [HostHealth(r.host, found.get(r.host), r.error) for r in results]
