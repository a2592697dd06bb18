"""What the inventory declares for UptimeRobot and Sentry: read from the `healthcheck_*`
variables of the hosts with the healthcheck role; hosts that declare the same setting, monitor
or rule must agree on it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opskit.core.errors import ConfigError
from opskit.core.inventory import Host, Inventory
from opskit.core.secrets import Secret
from opskit.monitoring.monitors import (
    MonitorSpec,
    UptimeRobotSettings,
    default_monitors,
    parse_monitors,
)
from opskit.monitoring.rules import SentrySettings, default_rules, normalize_rule
from opskit.monitoring.spec import ROLE


@dataclass(frozen=True)
class Declared:
    uptimerobot: UptimeRobotSettings | None
    sentry: SentrySettings | None


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
