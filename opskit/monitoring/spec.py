"""What roles/healthcheck and the monitoring tasks agree on (no operations): the role's name,
where it installs the health check, the Slack webhook and the alert targets' secrets, the cron
entry, and the inventory's `alerts` compiled into the check's config (compile_alerts).

The health check's own paths (config, status and state files), exit codes, check names and
JSON keys are constants of the host program, opskit.hostside.healthcheck.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from opskit.core.errors import ConfigError
from opskit.core.secrets import Secret
from opskit.hostside.healthcheck import (
    METRIC_KINDS,
    METRICS,
    PAGERDUTY_URL,
    TARGET_KINDS,
    MetricConfig,
    RuleConfig,
    TargetConfig,
)

ROLE = "healthcheck"
SCRIPT = "/usr/local/bin/opskit-healthcheck"  # opskit/hostside/healthcheck.py, verbatim
WEBHOOK_FILE = "/etc/opskit/healthcheck-slack-webhook"  # the Slack webhook URL, root 0600
CRON_NAME = "opskit-healthcheck"  # /etc/cron.d/opskit-healthcheck
LOG_TAG = "opskit-healthcheck"  # syslog tag of cron's runs (`logger -t`)
TARGETS_FILE = "/etc/opskit/healthcheck-targets.json"  # the alert targets' secrets, root 0600

# --- the inventory's `alerts` (roles/healthcheck's healthcheck_alerts), checked and compiled ---

_WHEN = re.compile(r"\s*([a-z][a-z0-9_]*)\s*(>=|<=|==|!=|>|<)\s*(-?\d+(?:\.\d+)?)\s*")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration_seconds(value: int | str) -> int:
    """Seconds of a duration the schema accepted (`type: duration`).

    >>> [duration_seconds(d) for d in ("1h30m", "2m", 90, "0")]
    [5400, 120, 90, 0]
    """
    if isinstance(value, int) or value.isdigit():
        return int(value)
    return sum(int(n) * _UNITS[u] for n, u in re.findall(r"(\d+)([smhdw])", value))


@dataclass(frozen=True)
class Alerts:
    """The alert rules of one host, as the health check's config holds them, and the secrets
    of their targets (for the root-only targets file)."""

    metrics: dict[str, MetricConfig]
    rules: list[RuleConfig]
    targets: dict[str, TargetConfig]
    secrets: dict[str, dict[str, Secret | str]]


def _target(name: str, raw: Mapping[str, Any]) -> tuple[TargetConfig, dict[str, Secret | str]]:
    at = f"alerts.targets.{name}"
    kinds = [k for k in TARGET_KINDS if k in raw]
    if len(kinds) != 1:
        raise ConfigError(f"{at}: give exactly one of slack, pagerduty or email")
    kind = kinds[0]
    allowed = {
        "slack": {"slack"},
        "pagerduty": {"pagerduty", "url"},
        "email": {"email", "smtp_host", "smtp_port", "from", "starttls", "username", "password"},
    }[kind]
    extra = sorted(set(raw) - allowed)
    if extra:
        raise ConfigError(f"{at}.{extra[0]}: not a setting of a {kind} target")
    if kind == "slack":
        return {"kind": "slack"}, {"url": raw["slack"]}
    if kind == "pagerduty":
        target: TargetConfig = {"kind": "pagerduty", "url": str(raw.get("url") or PAGERDUTY_URL)}
        return target, {"routing_key": raw["pagerduty"]}
    for key in ("smtp_host", "from"):
        if not raw.get(key):
            raise ConfigError(f"{at}.{key}: required for an email target")
    if raw.get("password") and not raw.get("username"):
        raise ConfigError(f"{at}.password: needs a username")
    target = {
        "kind": "email",
        "smtp_host": str(raw["smtp_host"]),
        "smtp_port": int(raw.get("smtp_port") or 25),
        "starttls": bool(raw.get("starttls", False)),
        "sender": str(raw["from"]),
        "to": [str(t) for t in raw["email"]],
    }
    if raw.get("username"):
        target["username"] = str(raw["username"])
    return target, ({"password": raw["password"]} if raw.get("password") else {})


def _metric(name: str, raw: Mapping[str, Any]) -> MetricConfig:
    at = f"alerts.metrics.{name}"
    if name in METRICS:
        raise ConfigError(f"{at}: a built-in metric has this name; choose another")
    kinds = [k for k in METRIC_KINDS if k in raw]
    if len(kinds) != 1:
        raise ConfigError(f"{at}: give exactly one of sql, http_json or command")
    kind = kinds[0]
    allowed = {"sql": {"sql", "database"}, "http_json": {"http_json", "field"}}.get(kind, {kind})
    extra = sorted(set(raw) - allowed)
    if extra:
        raise ConfigError(f"{at}.{extra[0]}: not a setting of a {kind} metric")
    if not str(raw[kind]).strip():
        raise ConfigError(f"{at}.{kind}: empty")
    if kind == "sql":
        metric: MetricConfig = {"kind": "sql", "query": str(raw["sql"])}
        if raw.get("database"):
            metric["database"] = str(raw["database"])
        return metric
    if kind == "http_json":
        return {
            "kind": "http_json",
            "url": str(raw["http_json"]),
            "field": str(raw.get("field", "")),
        }
    return {"kind": "command", "command": str(raw["command"])}


def compile_alerts(raw: Mapping[str, Any] | None, measurable: Callable[[str, str], bool]) -> Alerts:
    """The alert rules this host runs (those whose metric it can measure: `measurable(metric,
    kind)`, kind "builtin" or a custom metric's kind); ConfigError naming `alerts.<key>` for an
    unknown metric or target, a bad condition, a name given twice.

    >>> a = compile_alerts({"targets": {"ops": {"slack": "https://hooks.example/x"}},
    ...     "rules": [{"name": "API down", "when": "http_down >= 1", "for": "1m",
    ...                "severity": "critical", "notify": ["ops"]}]}, lambda m, k: True)
    >>> a.rules[0]["op"], a.rules[0]["value"], a.rules[0]["for_seconds"], a.targets
    ('>=', 1.0, 60, {'ops': {'kind': 'slack'}})
    >>> compile_alerts({"rules": [{"name": "x", "when": "eror_rate > 5", "severity": "high",
    ...     "notify": ["ops"]}]}, lambda m, k: True)
    Traceback (most recent call last):
    ...
    opskit.core.errors.ConfigError: alerts.rules[0].when: unknown metric 'eror_rate' (did you ...
    """
    raw = raw or {}
    targets: dict[str, TargetConfig] = {}
    secrets: dict[str, dict[str, Secret | str]] = {}
    for name, traw in (raw.get("targets") or {}).items():
        targets[name], secrets[name] = _target(name, traw)
    metrics = {name: _metric(name, m) for name, m in (raw.get("metrics") or {}).items()}
    rules: list[RuleConfig] = []
    seen: set[str] = set()
    for i, r in enumerate(raw.get("rules") or []):
        at = f"alerts.rules[{i}]"
        name = str(r["name"]).strip()
        if name in seen:
            raise ConfigError(f"{at}.name: {name!r} is the name of an earlier rule")
        seen.add(name)
        m = _WHEN.fullmatch(str(r["when"]))
        if not m:
            raise ConfigError(
                f"{at}.when: {r['when']!r} is not METRIC OP NUMBER (OP: > >= < <= == !=)"
            )
        metric, op, number = m.group(1), m.group(2), float(m.group(3))
        if metric not in METRICS and metric not in metrics:
            close = difflib.get_close_matches(metric, [*METRICS, *metrics], n=1)
            hint = f"did you mean {close[0]!r}?; " if close else ""
            raise ConfigError(
                f"{at}.when: unknown metric {metric!r} ({hint}built in: "
                f"{', '.join(sorted(METRICS))}; custom: {', '.join(sorted(metrics)) or 'none'})"
            )
        for j, t in enumerate(r["notify"]):
            if t not in targets:
                known = ", ".join(sorted(targets)) or "none (alerts.targets is empty)"
                raise ConfigError(f"{at}.notify[{j}]: unknown target {t!r} (known: {known})")
        kind = metrics[metric]["kind"] if metric in metrics else "builtin"
        if not measurable(metric, kind):
            continue
        rule: RuleConfig = {
            "name": name,
            "metric": metric,
            "op": op,
            "value": number,
            "for_seconds": duration_seconds(r.get("for", 0)),
            "severity": str(r["severity"]),
            "notify": [str(t) for t in r["notify"]],
        }
        if r.get("description"):
            rule["description"] = str(r["description"])
        rules.append(rule)
    used = {m for r in rules for m in [r["metric"]]}
    return Alerts({k: v for k, v in metrics.items() if k in used}, rules, targets, secrets)
