"""Judging certificates for `inv certs.status`: expiry against certbot_warning_days /
certbot_critical_days and, for a certificate the inventory declares, whether it covers the declared
names and is the one nginx serves. A certificate's state is a level of opskit.checks.levels
("ok", "warning", "critical"); the task exits with exit_status: 5 a certificate is critical, else
1 a host could not be read, else 4 one is in the warning window, else 0.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opskit.certs.read import HookRun, HostCerts, Lineage, info_json, read_host
from opskit.certs.spec import LIVE_DIR, declared_certificates, thresholds
from opskit.checks.levels import exit_status, worst_of
from opskit.core.errors import ExitStatus
from opskit.core.runner import run_on_hosts

# The levels a certificate can have, in the order the summary counts them.
CERT_LEVELS = ("ok", "warning", "critical")


@dataclass(frozen=True)
class CertStatus:
    """The verdict on one certificate of one host."""

    host: str
    lineage: Lineage
    state: str  # a level: "ok", "warning" or "critical"
    days_left: int | None
    served: str  # "same", "different", "none" (nothing on 443), "-" (no certificate on disk)
    problems: tuple[str, ...]
    last_hook: HookRun | None = None


def evaluate(
    lineage: Lineage,
    now: dt.datetime,
    *,
    warning_days: int,
    critical_days: int,
    host: str = "",
    last_hook: HookRun | None = None,
) -> CertStatus:
    """Judge one certificate (pure): expiry against the thresholds, and, for a certificate the
    inventory declares, whether it covers the declared names and is the one nginx serves."""
    problems: list[str] = []
    state = "ok"

    def worse(level: str, problem: str) -> None:
        nonlocal state
        state = worst_of((state, level))
        problems.append(problem)

    disk, served = lineage.disk, lineage.served
    if disk is None:
        worse(
            "critical",
            f"declared but not issued: no {LIVE_DIR}/{lineage.name}/cert.pem (run inv provision)",
        )
        return CertStatus(host, lineage, state, None, "-", tuple(problems), last_hook)
    days = disk.days_left(now)
    if disk.not_after <= now:
        worse("critical", f"EXPIRED on {disk.not_after:%Y-%m-%d %H:%M} UTC")
    elif days < critical_days:
        worse("critical", f"expires in {days} day(s) (critical below {critical_days})")
    elif days < warning_days:
        worse("warning", f"expires in {days} days (warning below {warning_days})")
    if served is None:
        match = "none"
    elif served.fingerprint == disk.fingerprint:
        match = "same"
    else:
        match = "different"
    if lineage.declared is not None:
        missing = sorted(set(lineage.declared.domains) - set(disk.names))
        if missing:
            worse("warning", f"does not cover {', '.join(missing)} (run inv provision)")
        hook = f"; last deploy hook: {last_hook.describe()}" if last_hook else ""
        if match == "none":
            worse(
                "critical",
                f"nginx serves nothing on port 443 for {lineage.sni} (is its TLS site enabled? "
                "run inv provision)",
            )
        elif match == "different" and served is not None:
            worse(
                "critical",
                f"nginx serves another certificate for {lineage.sni} ({served.brief()}, "
                f"issuer {served.issuer!r}): it has not been reloaded since the certificate "
                f"on disk changed{hook}",
            )
    elif match != "same":
        problems.append("not declared in the inventory: opskit does not serve it")
    return CertStatus(host, lineage, state, days, match, tuple(problems), last_hook)


@dataclass(frozen=True)
class StatusReport:
    """`inv certs.status` for all selected hosts."""

    hosts: tuple[HostCerts, ...]
    statuses: tuple[CertStatus, ...]
    now: dt.datetime

    @property
    def worst(self) -> str:
        """The worst level of the certificates ("ok" when there are none)."""
        return worst_of(s.state for s in self.statuses)

    @property
    def exit_code(self) -> ExitStatus:
        """CRITICAL if any certificate is critical, else HOST_FAILED if a host could not be
        read, else WARNING if any is in the warning window, else OK."""
        return exit_status(
            (s.state for s in self.statuses), unreadable=any(h.error for h in self.hosts)
        )


def build_report(
    hosts: Sequence[HostCerts], settings: Mapping[str, tuple[int, int]], now: dt.datetime
) -> StatusReport:
    """Judge every certificate of every host that could be read (pure)."""
    statuses = []
    for h in hosts:
        if h.error:
            continue
        warning, critical = settings[h.host]
        for lineage in h.lineages:
            statuses.append(
                evaluate(
                    lineage,
                    now,
                    warning_days=warning,
                    critical_days=critical,
                    host=h.host,
                    last_hook=h.last_hook(lineage.name),
                )
            )
    return StatusReport(tuple(hosts), tuple(statuses), now)


def _timer_text(timer: str) -> str:
    enabled, _, active = timer.partition("|")
    return f"certbot.timer {enabled or 'missing'}, {active or 'unknown'}"


def format_status(report: StatusReport) -> str:
    """The report as a person reads it: per host, one line per certificate, problems below."""
    lines = []
    for h in report.hosts:
        if h.error:
            label = "UNREACHABLE" if h.unreachable else "FAILED"
            lines.append(f"[{h.host}] {label}  {h.error.splitlines()[0]}")
            lines += [f"    {x}" for x in h.error.splitlines()[1:]]
            continue
        mine = [s for s in report.statuses if s.host == h.host]
        lines.append(f"[{h.host}] {len(mine)} certificate(s); renewal: {_timer_text(h.timer)}")
        for s in mine:
            d = s.lineage.disk
            served = {"same": "served=disk", "different": "SERVED!=DISK", "none": "NOT SERVED"}
            head = f"  {s.state:<8}  {s.lineage.name}"
            if d is None:
                lines.append(f"{head}  not issued")
            else:
                lines.append(
                    f"{head}  {s.days_left} days left (not after {d.not_after:%Y-%m-%d %H:%M} "
                    f"UTC)  {served.get(s.served, s.served)}"
                )
                lines.append(f"{'':12}issuer {d.issuer!r}; names: {', '.join(d.names) or '-'}")
            lines += [f"{'':12}! {p}" for p in s.problems]
    counts = {lv: sum(1 for s in report.statuses if s.state == lv) for lv in CERT_LEVELS}
    failed = sum(1 for h in report.hosts if h.error)
    lines.append(
        f"{len(report.hosts)} host(s), {len(report.statuses)} certificate(s): "
        f"{counts['ok']} ok, {counts['warning']} warning, "
        f"{counts['critical']} critical; {failed} host(s) not read "
        f"(exit {int(report.exit_code)})"
    )
    return "\n".join(lines) + "\n"


def status_json(report: StatusReport) -> str:
    """`inv certs.status --json` (also the certificates section of `inv report`)."""
    hosts = []
    for h in report.hosts:
        certs = []
        for s in (s for s in report.statuses if s.host == h.host):
            d = s.lineage.disk
            certs.append(
                {
                    "name": s.lineage.name,
                    "declared": s.lineage.declared is not None,
                    "names": list(d.names) if d else [],
                    "not_after": d.not_after.isoformat() if d else None,
                    "days_left": s.days_left,
                    "issuer": d.issuer if d else None,
                    "server": s.lineage.server or None,
                    "state": s.state,
                    "served_matches_disk": s.served == "same" if d else None,
                    "served": s.served,
                    "disk": info_json(d),
                    "served_certificate": info_json(s.lineage.served),
                    "problems": list(s.problems),
                    "last_deploy_hook": s.last_hook.__dict__ if s.last_hook else None,
                }
            )
        enabled, _, active = h.timer.partition("|")
        hosts.append(
            {
                "host": h.host,
                "error": h.error,
                "unreachable": h.unreachable,
                "timer": {"enabled": enabled, "active": active} if not h.error else None,
                "certificates": certs,
            }
        )
    return (
        json.dumps(
            {
                "now": report.now.isoformat(),
                "worst": report.worst,
                "exit_code": int(report.exit_code),
                "hosts": hosts,
            },
            indent=2,
        )
        + "\n"
    )


def status(
    inventory: Any,
    hosts: Sequence[Any],
    *,
    workers: int = 8,
    sudo_password: Any = None,
    now: dt.datetime | None = None,
) -> StatusReport:
    """Read and judge the certificates of `hosts` (one remote command per host)."""
    settings = {h.name: thresholds(h.vars) for h in hosts}
    declared = {h.name: declared_certificates(h.vars) for h in hosts}
    found: dict[str, HostCerts] = {}

    def work(remote: Any, ctx: Any) -> list[Any]:
        found[remote.name] = read_host(remote, declared[remote.name])
        return []

    results = run_on_hosts(inventory, hosts, work, workers=workers, sudo_password=sudo_password)
    read = []
    for r in results:
        if r.error:
            read.append(HostCerts(r.host, error=r.error, unreachable=r.unreachable))
        else:
            read.append(found[r.host])
    return build_report(read, settings, now or dt.datetime.now(dt.UTC))
