"""The hosts' health checks on demand: `inv monitoring.check` runs opskit-healthcheck now (as
cron does), `inv monitoring.status` reads each host's last status file."""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from opskit.core.errors import ConfigError
from opskit.core.inventory import Host, Inventory
from opskit.core.remote import Remote
from opskit.core.result import Change
from opskit.core.runner import RunContext, run_on_hosts
from opskit.hostside.healthcheck import STATUS_FILE, ExitCode, Key
from opskit.monitoring.spec import ROLE, SCRIPT

NOT_INSTALLED = 4  # check_script's exit code when the role is not provisioned


def check_script(alert: bool) -> str:
    """Run the host's health check now (as cron would) and print its JSON status."""
    flags = "--json" if alert else "--json --no-alert"
    script = shlex.quote(SCRIPT)
    return (
        f"if [ ! -x {script} ]; then "
        "echo 'opskit-healthcheck is not installed (provision the healthcheck role)' >&2; "
        f"exit {NOT_INSTALLED}; fi\n"
        f"{script} {flags}"
    )


def parse_status(output: str) -> dict[str, Any]:
    """The JSON the health check printed (or its status file held).

    >>> parse_status('noise {"level": "ok", "results": []}')["level"]
    'ok'
    """
    start = output.find("{")
    if start < 0:
        raise ValueError("no JSON in the health check's output")
    data = json.loads(output[start:])
    if not isinstance(data, dict) or Key.RESULTS not in data:
        raise ValueError("not a health check status")
    return data


def format_status(host: str, status: Mapping[str, Any]) -> str:
    """What a person reads: the host's level, one line per check, what Slack was sent."""
    level = str(status.get(Key.LEVEL, "?")).upper()
    lines = [f"[{host}] {level}  checked {status.get(Key.CHECKED_AT)}"]
    for r in status.get(Key.RESULTS, []):
        lines.append(f"[{host}]   {r[Key.LEVEL].upper():<8} {r[Key.NAME]:<10} {r[Key.SUMMARY]}")
    alert = status.get(Key.ALERT) or {}
    if alert.get(Key.SENT):
        lines.append(f"[{host}]   slack: sent {alert[Key.SENT]}")
    if alert.get(Key.ERROR):
        lines.append(f"[{host}]   slack: NOT sent: {alert[Key.ERROR]}")
    lines += [f"[{host}]   {line}" for line in rules_lines(status)]
    return "\n".join(lines) + "\n"


def rules_lines(status: Mapping[str, Any]) -> list[str]:
    """The alert hold and the alert rules of a status: held or not, firing, sent, failed.

    >>> for line in rules_lines({"hold": {"held": True, "until": 0, "reason": "deploy r7"},
    ...     "rules": {"firing": ["API down"], "sent": [], "metric_errors": {"q": "exit 1"}}}):
    ...     print(line)
    alerts held until 1970-01-01T00:00:00+00:00: deploy r7
    rules firing: API down
    metric q: no value (exit 1)
    """
    hold = status.get(Key.HOLD) or {}
    out = []
    if hold.get("held"):
        until = datetime.fromtimestamp(float(hold.get("until", 0)), UTC).isoformat()
        out.append(f"alerts held until {until}: {hold.get('reason', '')}")
    elif hold.get("note"):
        out.append(f"hold: {hold['note']}")
    rules = status.get(Key.RULES) or {}
    if rules.get("firing"):
        out.append("rules firing: " + ", ".join(rules["firing"]))
    out += [f"rule: sent {line}" for line in rules.get("sent", [])]
    out += [f"rule: NOT sent {line}" for line in rules.get("failed", [])]
    out += [
        f"metric {m}: no value ({why})" for m, why in (rules.get("metric_errors") or {}).items()
    ]
    return out


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
    chosen = [h for h in hosts if ROLE in h.roles]
    found: dict[str, Mapping[str, Any]] = {}
    script = check_script(alert) if run else f"cat {shlex.quote(STATUS_FILE)}"

    def work(remote: Remote, ctx: RunContext) -> list[Change]:
        res = remote.run(script, ok_codes=tuple(ExitCode), what="opskit-healthcheck")
        if not res.stdout.strip():
            raise ConfigError(f"no health status on {remote.name} yet: {res.stderr.strip()}")
        found[remote.name] = parse_status(res.stdout)
        return []

    results = run_on_hosts(inventory, chosen, work, workers=workers)
    return [HostHealth(r.host, found.get(r.host), r.error) for r in results]
