"""What `inv audit` reports: findings (check, severity, title, detail, fix), how they sort and
collapse, and the exit code they make. Severities and the exit scheme are the checks layer's
(opskit.checks.levels)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from opskit.checks.levels import Severity, exit_status
from opskit.core.errors import ExitStatus


@dataclass(frozen=True)
class Finding:
    """One problem on one host, with what to do about it."""

    check: str
    severity: Severity
    title: str
    detail: str
    fix: str

    def to_dict(self) -> dict[str, str]:
        return {
            "check": self.check,
            "severity": self.severity.label,
            "title": self.title,
            "detail": self.detail,
            "fix": self.fix,
        }


def worst_label(findings: Iterable[Finding]) -> str:
    """ "ok" when nothing is above info, else the worst severity's name.

    >>> worst_label([]), worst_label([Finding("x", Severity.INFO, "", "", "")])
    ('ok', 'ok')
    >>> low, high = Finding("x", Severity.LOW, "", "", ""), Finding("y", Severity.HIGH, "", "", "")
    >>> worst_label([low, high])
    'high'
    """
    worst = max((f.severity for f in findings), default=Severity.INFO)
    return "ok" if worst is Severity.INFO else worst.label


def exit_code(findings: Iterable[Finding], host_failed: bool) -> ExitStatus:
    """5 for a high/critical finding, else 1 when a host failed, else 4 for low/medium, else 0
    (the scheme of every judging task: opskit.checks.levels.exit_status).

    >>> exit_code([Finding("x", Severity.MEDIUM, "", "", "")], True)
    <ExitStatus.HOST_FAILED: 1>
    >>> exit_code([Finding("x", Severity.HIGH, "", "", "")], True)
    <ExitStatus.CRITICAL: 5>
    """
    return exit_status((f.severity.level for f in findings), unreadable=host_failed)


def sort_findings(findings: Iterable[Finding]) -> tuple[Finding, ...]:
    """Worst first; then by check and title, so that runs compare line by line."""
    return tuple(sorted(findings, key=lambda f: (-f.severity, f.check, f.title)))


def collapse(findings: Sequence[Finding]) -> list[Finding]:
    """One finding for problems that are the same on several names of a host (one certificate
    served for two names, one HSTS header on every site); the others are named in its detail.

    >>> a, b = (Finding("hsts", Severity.INFO, f"on {x}", "max-age=1", "fix") for x in "ab")
    >>> [f.detail for f in collapse([a, b])]
    ['max-age=1 (the same on: on b)']
    """
    groups: dict[tuple[str, Severity, str, str], list[Finding]] = {}
    for f in findings:
        groups.setdefault((f.check, f.severity, f.detail, f.fix), []).append(f)
    out = []
    for same in groups.values():
        first = same[0]
        if len(same) == 1:
            out.append(first)
            continue
        others = "; ".join(f.title for f in same[1:])
        out.append(
            Finding(
                first.check,
                first.severity,
                first.title,
                f"{first.detail} (the same on: {others})",
                first.fix,
            )
        )
    return out
