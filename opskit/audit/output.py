"""`inv audit` as text (a person reads it: worst first, each finding with detail and fix; colour
on a terminal) and as JSON. Functions return strings: cli/audit.py prints them."""

from __future__ import annotations

import json

from opskit.audit.findings import worst_label
from opskit.audit.reader import AuditReport, HostAudit
from opskit.checks.levels import Severity

_COLOURS = {
    Severity.CRITICAL: "1;31",
    Severity.HIGH: "31",
    Severity.MEDIUM: "33",
    Severity.LOW: "36",
    Severity.INFO: "2",
}


def format_host(h: HostAudit, *, colour: bool = False) -> str:
    """One host's findings as a person reads them: worst first, each with detail and fix."""

    def paint(sev: Severity, text: str) -> str:
        return f"\x1b[{_COLOURS[sev]}m{text}\x1b[0m" if colour else text

    counts = {sev: sum(1 for f in h.findings if f.severity is sev) for sev in Severity}
    shown = ", ".join(f"{n} {sev.label}" for sev, n in sorted(counts.items(), reverse=True) if n)
    label = "UNREACHABLE" if h.unreachable else worst_label(h.findings).upper()
    lines = [
        f"[{h.host}] {label}  {h.address}  {len(h.findings)} finding(s)"
        + (f": {shown}" if shown else "")
        + f"  ({h.commands} remote command(s), {h.requests} HTTP request(s), {h.seconds:.1f} s)"
    ]
    for e in (h.error or "").splitlines():
        lines.append(f"  ! {e}")
    for f in h.findings:
        lines.append(f"  {paint(f.severity, f'{f.severity.label:<8}')}  {f.check:<17} {f.title}")
        lines.append(f"  {'':8}  {'':17} {f.detail}")
        lines.append(f"  {'':8}  {'':17} fix: {f.fix}")
    if not h.unreachable and h.checks:
        fl = h.failed_logins
        by = ", ".join(
            f"{ip} {n}" + (" (banned)" if ip in h.bans.current else "")
            for ip, n in list(fl["by_source"].items())[:5]
        )
        more = " ..." if len(fl["by_source"]) > 5 else ""
        bans = (
            f"fail2ban: {len(h.bans.current)} banned now, {h.bans.total} since it started"
            if h.bans.running
            else "fail2ban: not running"
        )
        lines.append(
            f"  failed SSH logins: {fl['total']}{' (' + by + more + ')' if by else ''}; {bans}"
        )
    return "\n".join(lines) + "\n"


def format_report(report: AuditReport, *, colour: bool = False, hosts: bool = True) -> str:
    """Every host (unless hosts=False: the summary only), then the summary line."""
    text = "".join(format_host(h, colour=colour) for h in report.hosts) if hosts else ""
    counts = {sev: sum(1 for f in report.findings if f.severity is sev) for sev in Severity}
    failed = sum(1 for h in report.hosts if h.error)
    return text + (
        f"{len(report.hosts)} host(s), last {report.since_hours:g} h: worst {report.worst}; "
        + ", ".join(f"{counts[sev]} {sev.label}" for sev in reversed(Severity))
        + f"; {failed} host(s) not fully read (exit {int(report.exit_code)})\n"
    )


def report_json(report: AuditReport) -> str:
    return json.dumps(report.to_dict(), indent=2) + "\n"
