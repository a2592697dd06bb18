"""Sentry issue alert rules as code: the runbook's rules, and the plan (pure) that makes the
project's rules match what the inventory declares.

Only rules whose name starts with `healthcheck_sentry_rule_prefix` (`opskit: `) are opskit's;
sync never touches any other rule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opskit.core.errors import ConfigError
from opskit.core.secrets import Secret
from opskit.monitoring.plan import Action, whole_number

FIRST_SEEN = "sentry.rules.conditions.first_seen_event.FirstSeenEventCondition"
EVENT_FREQUENCY = "sentry.rules.conditions.event_frequency.EventFrequencyCondition"
NOTIFY_EMAIL = "sentry.mail.actions.NotifyEmailAction"
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


@dataclass(frozen=True)
class SentrySettings:
    api_url: str
    token: Secret
    org: str
    project: str
    prefix: str
    rules: tuple[Mapping[str, Any], ...]
    environment: str = "production"


def default_rules(v: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The runbook's Sentry issue alert rules: a new issue; more than N events in M minutes."""
    threshold = whole_number(v, "healthcheck_sentry_event_threshold", 1, 10**9)
    interval = str(v["healthcheck_sentry_event_interval"])
    if interval not in ("1m", "5m", "15m", "1h", "1d", "1w", "30d"):
        raise ConfigError(
            "healthcheck_sentry_event_interval: one of 1m, 5m, 15m, 1h, 1d, 1w, 30d; "
            f"got {interval!r}"
        )
    frequency = whole_number(v, "healthcheck_sentry_action_interval_minutes", 5, 43200)
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


def normalize_rule(rule: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a rule opskit compares, with Sentry's defaults filled in."""
    out = {k: rule.get(k) for k in RULE_KEYS}
    out["filterMatch"] = out["filterMatch"] or "all"
    out["filters"] = out["filters"] or []
    out["conditions"] = out["conditions"] or []
    out["actions"] = out["actions"] or []
    return out


def plan_rules(settings: SentrySettings, existing: Sequence[Mapping[str, Any]]) -> list[Action]:
    """Create, update or delete opskit's rules (named with the prefix); never touch others."""
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
