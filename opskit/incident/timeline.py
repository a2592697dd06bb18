"""The timeline opskit already knows when an incident opens: the health check's alerts and its
last state, deploys, rollbacks, toggles and the killswitch (each app host's deploy journal),
backups in S3 and certificates issued in the window. One SSH connection per host, through the
report's own reader (opskit.report.sources), the hosts read side by side."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opskit.core.errors import OpsError
from opskit.core.inventory import Host, Inventory
from opskit.core.remote import Remote
from opskit.core.result import Change
from opskit.core.runner import RunContext, run_on_hosts
from opskit.core.secrets import Secret, redact
from opskit.report.data import ReportData, parse_time
from opskit.report.sources import HostPass

MAX_EVENTS = 200  # the newest are kept


@dataclass(frozen=True)
class Event:
    time: dt.datetime
    host: str
    source: str  # healthcheck, deploy, backup, certificate, incident
    text: str

    def to_dict(self) -> dict[str, str]:
        return {
            "time": self.time.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "host": self.host,
            "source": self.source,
            "text": self.text,
        }


def events_from(data: Mapping[str, Any]) -> list[Event]:
    """The timeline in a gathered report's data (`ReportData.to_dict()`), oldest first.

    >>> d = {"since": "2026-01-01T00:00:00Z", "until": "2026-01-02T00:00:00Z",
    ...      "history": {"web1": {"alerts": {"runs": [{"time": "2026-01-01T10:00:00Z",
    ...          "problems": [["CRITICAL", "http", "503 from /health"]], "sent": "alert"}],
    ...          "last": {"time": "2026-01-01T10:05:00Z", "level": "critical"}}}},
    ...      "releases": [{"host": "web1", "events": [{"time": "2026-01-01T09:59:00Z",
    ...          "action": "deploy", "result": "ok", "release": "r2", "from": "r1",
    ...          "operator": "ann", "detail": ""}]}]}
    >>> for e in events_from(d): print(e.to_dict()["time"], e.host, e.source, e.text)
    2026-01-01T09:59:00Z web1 deploy deploy ok: r2 (from r1) by ann
    2026-01-01T10:00:00Z web1 healthcheck alert sent: CRITICAL http: 503 from /health
    2026-01-01T10:05:00Z web1 healthcheck last check: critical
    """
    since, until = parse_time(data.get("since")), parse_time(data.get("until"))
    out: list[Event] = []

    def add(when: Any, host: str, source: str, text: str) -> None:
        t = parse_time(when)
        if t is not None and (since is None or t >= since) and (until is None or t <= until):
            out.append(Event(t, host, source, text))

    for host, hist in sorted((data.get("history") or {}).items()):
        alerts = (hist or {}).get("alerts") or {}
        for run in alerts.get("runs") or []:
            if not run.get("sent") and not run.get("slack_error"):
                continue
            problems = "; ".join(
                f"{p[0]} {p[1]}: {p[2]}" for p in (run.get("problems") or [])[:3] if len(p) >= 3
            )
            what = f"{run.get('sent') or 'alert not'} sent"
            add(run.get("time"), host, "healthcheck", f"{what}: {problems or 'all ok'}")
        last = alerts.get("last")
        if last:
            add(last.get("time"), host, "healthcheck", f"last check: {last.get('level')}")
    for r in data.get("releases") or []:
        for e in r.get("events") or []:
            action = e.get("action") or "?"
            if action in ("toggle", "killswitch"):
                text = f"{e.get('detail')} by {e.get('operator')}"
            else:
                text = (
                    f"{action} {e.get('result')}: {e.get('release')} "
                    f"(from {e.get('from') or 'none'}) by {e.get('operator')}"
                )
                if e.get("detail"):
                    text += f": {e['detail']}"
            add(e.get("time"), r.get("host", "?"), "deploy", text)
    for b in data.get("backups") or []:
        for item in b.get("backups") or []:
            add(
                item.get("last_modified"),
                b.get("host", "?"),
                "backup",
                f"backup {item.get('key')} ({item.get('size')} bytes, "
                f"{item.get('checksum_state') or 'unchecked'})",
            )
        if b.get("error"):
            add(data.get("until"), b.get("host", "?"), "backup", f"not read: {b['error']}")
    for h in (data.get("certs") or {}).get("hosts") or []:
        for c in h.get("certificates") or []:
            disk = c.get("disk") or {}
            add(
                disk.get("not_before"),
                h.get("host", "?"),
                "certificate",
                f"certificate {c.get('name')} issued, valid until {disk.get('not_after')}",
            )
    out.sort(key=lambda e: (e.time, e.host, e.source))
    return out[-MAX_EVENTS:]


def gather(
    inventory: Inventory,
    hosts: Sequence[Host],
    since: dt.datetime,
    until: dt.datetime,
    *,
    sudo_password: Secret | None = None,
    workers: int = 8,
) -> tuple[list[Event], dict[str, str]]:
    """The hosts' timeline over [since, until] and what could not be read (source: error)."""
    data = ReportData(
        kind="daily",  # hourly buckets; the window is the incident's own
        generated_at=until,
        since=since,
        until=until,
        inventory=str(inventory.path),
        hosts=[h.name for h in hosts],
    )
    own = HostPass(data)

    def work(remote: Remote, ctx: RunContext) -> list[Change]:
        try:
            own.read(remote)
        except (OpsError, ValueError) as exc:
            own.note(f"host:{remote.name}", exc, remote.host)
        return []

    results = run_on_hosts(inventory, hosts, work, workers=workers, sudo_password=sudo_password)
    for r in results:
        if r.error:
            data.unreadable.append(r.host)
            data.errors[f"host:{r.host}"] = r.error
    own.finish(hosts, details=50)
    secrets = [s for h in hosts for s in h.secrets]
    errors = {k: redact(v, secrets) for k, v in data.errors.items()}
    events = [
        Event(e.time, e.host, e.source, redact(e.text, secrets))
        for e in events_from(data.to_dict())
    ]
    return events, errors
