"""Gathering a report (`gather()`): fleet status (opskit.status), the security audit
(opskit.audit) and the report's own pass (opskit.report.sources), all on one SSH connection per
host, the hosts read side by side; then, for a weekly, the numbers of the week's daily reports."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from opskit.audit import reader as audit
from opskit.core.errors import ConfigError, OpsError
from opskit.core.inventory import Host, Inventory
from opskit.core.remote import Remote
from opskit.core.result import Change, HostResult
from opskit.core.runner import RunContext, run_on_hosts
from opskit.core.secrets import Secret, redact
from opskit.report.data import KINDS, ReportData, parse_time, settings_for
from opskit.report.incidents import incidents_in
from opskit.report.sources import HostPass
from opskit.status import fleet as status


def previous_reports(out_dir: Path, since: dt.datetime, until: dt.datetime) -> list[dict[str, Any]]:
    """The numbers of the daily reports written in the window (a weekly's trend), oldest first."""
    found = []
    for f in sorted(out_dir.glob("daily-*.json")):
        try:
            d = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        t = parse_time(d.get("generated_at"))
        if t is None or not since < t <= until or not isinstance(d.get("numbers"), dict):
            continue
        found.append({"file": f.name, "generated_at": d["generated_at"], **d["numbers"]})
    return found


def gather(
    inventory: Inventory,
    hosts: Sequence[Host],
    kind: str,
    *,
    out_dir: Path | None = None,
    workers: int = 8,
    sudo_password: Secret | None = None,
    now: dt.datetime | None = None,
    skip_audit: bool = False,
) -> ReportData:
    """Collect a `kind` report's numbers from `hosts`: one connection per host, on which the
    status, audit and report readers each send their command. A source that fails is recorded
    in `errors` and the report goes on; ConfigError (bad input) is raised before anything is
    read."""
    if kind not in KINDS:
        raise ConfigError(f"unknown report kind {kind!r} (daily or weekly)")
    settings = settings_for(hosts, str(out_dir) if out_dir else None)
    now = now or dt.datetime.now(dt.UTC)
    data = ReportData(
        kind=kind,
        generated_at=now,
        since=now - KINDS[kind],
        until=now,
        inventory=str(inventory.path),
        hosts=[h.name for h in hosts],
        settings={
            "failed_logins_warning": settings.failed_logins_warning,
            "error_rate_warning": settings.error_rate_warning,
            "error_rate_critical": settings.error_rate_critical,
            "max_items": settings.max_items,
        },
    )
    since_hours = KINDS[kind].total_seconds() / 3600
    status_reader = status.Reader(hosts)
    audit_reader = (
        audit.Reader(inventory, hosts, since_hours=since_hours, now=now)
        if settings.audit and not skip_audit
        else None
    )
    own = HostPass(data)
    readers: list[tuple[str, Callable[[Remote], None]]] = [("status", status_reader.read)]
    if audit_reader is not None:
        readers.append(("audit", audit_reader.read))
    readers.append(("report", own.read))
    failed: dict[tuple[str, str], str] = {}
    spent: dict[str, float] = {}

    def work(remote: Remote, ctx: RunContext) -> list[Change]:
        for name, read in readers:
            started = time.monotonic()
            try:
                read(remote)
            except (OpsError, ValueError) as exc:  # one failing source never stops the others
                failed[(name, remote.name)] = redact(str(exc), remote.host.secrets)
            finally:
                with own.lock:
                    # the slowest host's time per source: hosts are read in parallel
                    spent[name] = max(spent.get(name, 0.0), time.monotonic() - started)
        return []

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="report-http") as pool:
        if audit_reader is not None:
            audit_reader.start(pool)  # the probes from outside run while the hosts are read
        results = run_on_hosts(inventory, hosts, work, workers=workers, sudo_password=sudo_password)

        def as_read(name: str, r: HostResult) -> HostResult:
            return replace(r, error=r.error or failed.get((name, r.host)))

        data.status = status.FleetStatus(
            now, tuple(status_reader.host_status(as_read("status", r), now) for r in results)
        ).to_dict()
        if audit_reader is not None:
            data.audit = audit_reader.report(
                [audit_reader.host_audit(as_read("audit", r)) for r in results]
            ).to_dict()
    for r in results:
        if r.error:
            data.unreadable.append(r.host)
            data.errors[f"host:{r.host}"] = r.error
        elif ("report", r.host) in failed:
            data.errors[f"host:{r.host}"] = failed[("report", r.host)]
    own.finish(hosts, details=5 if kind == "daily" else 40)
    data.seconds.update(spent)
    data.seconds["total"] = time.monotonic() - started
    for section in (data.status, data.audit):
        for h in (section or {}).get("hosts", []):
            if h.get("unreachable") or (h.get("error") and h.get("host") not in data.unreadable):
                data.unreadable.append(str(h.get("host")))
    if kind == "weekly":
        data.previous = previous_reports(settings.out_dir, data.since, data.until)
        incident_dir = Path(str(hosts[0].vars.get("incident_dir") or "incidents"))
        data.incidents = incidents_in(incident_dir, data.since, data.until)
    return data
