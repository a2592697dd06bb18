"""One severity model for everything that judges: status, audit, certificates, reports, alerts.

A metric or certificate has a *level*: ok < warning < unknown (could not be read) < critical.
An audit finding has a *severity* (info, low, medium, high, critical), which maps onto a level.
Every judging task exits with the same scheme (`exit_status`): 5 critical, else 1 something
unreadable, else 4 warning, else 0 (2 stays bad input, raised before anything is read).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

from opskit.core.errors import ExitStatus

# Order of severity: a host that could not be read is worse than a warning, better than critical.
LEVELS = ("ok", "warning", "unknown", "critical")
RANK = {name: i for i, name in enumerate(LEVELS)}


def worst_of(levels: Iterable[str]) -> str:
    """The most severe of `levels` ("ok" when there are none).

    >>> worst_of(["ok", "warning", "unknown"]), worst_of([])
    ('unknown', 'ok')
    """
    return max(levels, key=RANK.__getitem__, default="ok")


@dataclass(frozen=True)
class Pair:
    """Warning and critical thresholds (a value at or above one is at that level)."""

    warning: float
    critical: float

    def level(self, value: float) -> str:
        """ok / warning / critical of `value` (higher is worse).

        >>> t = Pair(70, 90)
        >>> t.level(50), t.level(75), t.level(95)
        ('ok', 'warning', 'critical')
        """
        return level_of(value, self.warning, self.critical)


def level_of(value: float, warning: float | None, critical: float | None) -> str:
    """ok / warning / critical of `value` against thresholds (higher is worse; None: no limit).

    >>> level_of(50, 70, 90), level_of(75, 70, 90), level_of(95, 70, 90), level_of(5, None, None)
    ('ok', 'warning', 'critical', 'ok')
    """
    if critical is not None and value >= critical:
        return "critical"
    if warning is not None and value >= warning:
        return "warning"
    return "ok"


class Severity(IntEnum):
    """How bad a finding is. `info` never changes the exit code."""

    INFO = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @property
    def level(self) -> str:
        """The level this severity counts as: info ok, low/medium warning, high/critical critical.

        >>> Severity.MEDIUM.level, Severity.HIGH.level, Severity.INFO.level
        ('warning', 'critical', 'ok')
        """
        if self >= Severity.HIGH:
            return "critical"
        return "warning" if self >= Severity.LOW else "ok"


def exit_status(levels: Iterable[str], *, unreadable: bool = False) -> ExitStatus:
    """The exit code of a judging task: 5 critical, else 1 unreadable, else 4 warning, else 0.

    An "unknown" level counts as unreadable.

    >>> exit_status(["ok", "warning"]), exit_status(["warning"], unreadable=True)
    (<ExitStatus.WARNING: 4>, <ExitStatus.HOST_FAILED: 1>)
    >>> exit_status(["critical", "unknown"]), exit_status([])
    (<ExitStatus.CRITICAL: 5>, <ExitStatus.OK: 0>)
    """
    worst = worst_of(levels)
    if worst == "critical":
        return ExitStatus.CRITICAL
    if unreadable or worst == "unknown":
        return ExitStatus.HOST_FAILED
    return ExitStatus.WARNING if worst == "warning" else ExitStatus.OK
