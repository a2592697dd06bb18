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


def _same_value(have: Any, want: Any) -> bool:
    """`have` (what Sentry answers) says what `want` (what opskit declares) says: objects are
    compared on the declared keys only (Sentry adds a "name" label to every condition and action,
    and a "uuid" to actions), lists item by item, numbers also when Sentry answers a string."""
    if isinstance(want, Mapping):
        return isinstance(have, Mapping) and all(
            _same_value(have.get(k), v) for k, v in want.items()
        )
    if isinstance(want, list):
        return (
            isinstance(have, list)
            and len(have) == len(want)
            and all(_same_value(h, w) for h, w in zip(have, want, strict=True))
        )
    if have == want:
        return True
    scalar = (int, float, str)
    return (
        isinstance(want, scalar)
        and isinstance(have, scalar)
        and not isinstance(want, bool)
        and not isinstance(have, bool)
        and str(have) == str(want)
    )


def rule_differences(have: Mapping[str, Any], want: Mapping[str, Any]) -> list[str]:
    """The declared keys of `want` on which the existing rule `have` differs.

    >>> want = {"name": "n", "frequency": 30, "conditions": [{"id": "c"}], "environment": None}
    >>> have = {"id": "7", "name": "n", "frequency": 30, "environment": None,
    ...         "conditions": [{"id": "c", "name": "A new issue is created"}], "owner": None}
    >>> rule_differences(have, want)
    []
    >>> rule_differences({**have, "frequency": 60}, want)
    ['frequency']
    """
    have = normalize_rule(have)
    return [k for k in RULE_KEYS if k in want and not _same_value(have.get(k), want[k])]


def is_duplicate(have: Mapping[str, Any], want: Mapping[str, Any]) -> bool:
    """Sentry would refuse `want` as an exact duplicate of `have`: everything but the name is the
    same (Sentry's DuplicateRuleEvaluator, src/sentry/api/endpoints/project_rules.py)."""
    return rule_differences(have, {k: v for k, v in want.items() if k != "name"}) == []


def plan_rules(settings: SentrySettings, existing: Sequence[Mapping[str, Any]]) -> list[Action]:
    """Create, update or delete opskit's rules (named with the prefix); never touch others.

    A declared rule that is missing but identical (all but its name) to an existing rule is not
    created: Sentry would refuse it as an exact duplicate. One of opskit's own undeclared rules
    is renamed to it; anyone else's rule is adopted as it is (left untouched)."""
    ours: dict[str, list[Mapping[str, Any]]] = {}
    theirs: list[Mapping[str, Any]] = []
    for r in existing:
        name = str(r.get("name", ""))
        if name.startswith(settings.prefix):
            ours.setdefault(name, []).append(r)
        else:
            theirs.append(r)
    actions = []
    missing: list[tuple[str, dict[str, Any]]] = []
    for want in settings.rules:
        name = str(want["name"])
        what = f"alert rule {name!r}"
        found = ours.pop(name, [])
        for extra in found[1:]:
            actions.append(Action("sentry", "delete", what, "duplicate", str(extra["id"])))
        body = {k: v for k, v in want.items() if not (k == "environment" and v is None)}
        if not found:
            missing.append((what, body))
            continue
        diff = rule_differences(found[0], body)
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
    for what, body in missing:
        mine = [(n, r) for n, rs in sorted(ours.items()) for r in rs if is_duplicate(r, body)]
        other = next((r for r in theirs if is_duplicate(r, body)), None)
        if mine:
            old_name, old = mine[0]
            ours[old_name].remove(old)
            detail = f"renamed from {old_name!r} (identical)"
            actions.append(Action("sentry", "update", what, detail, str(old["id"]), body))
        elif other is not None:
            detail = f"adopted: identical to rule {other.get('name')!r} (id {other.get('id')})"
            actions.append(Action("sentry", "ok", what, detail, str(other.get("id"))))
        else:
            actions.append(Action("sentry", "create", what, "", body=body))
    for name, found in sorted(ours.items()):
        for r in found:
            actions.append(
                Action(
                    "sentry", "delete", f"alert rule {name!r}", "no longer declared", str(r["id"])
                )
            )
    return actions
