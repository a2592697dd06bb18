"""Change records and per-host results."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Status(StrEnum):
    OK = "ok"
    CHANGED = "changed"


@dataclass(frozen=True)
class Change:
    """What one resource on one host needed: nothing (ok) or a change (also under dry-run)."""

    host: str
    resource: str
    status: Status
    summary: str = ""
    diff: str = ""

    @property
    def changed(self) -> bool:
        return self.status is Status.CHANGED

    @classmethod
    def ok(cls, host: str, resource: str) -> Change:
        return cls(host, resource, Status.OK)

    @classmethod
    def made(cls, host: str, resource: str, summary: str, diff: str = "") -> Change:
        return cls(host, resource, Status.CHANGED, summary, diff)


@dataclass(frozen=True)
class HostResult:
    host: str
    changes: tuple[Change, ...] = ()
    error: str | None = None
    unreachable: bool = False
    commands: int = 0  # remote commands sent to this host during the run
    seconds: float = 0.0
    notes: tuple[str, ...] = field(default=())
    refused: bool = False  # bad input for this host (e.g. an unsupported release): untouched
    lost: bool = False  # the connection died during a step: what that step did is unknown

    @property
    def failed(self) -> bool:
        return self.error is not None and not self.unreachable and not self.lost

    @property
    def ok_count(self) -> int:
        return sum(1 for c in self.changes if not c.changed)

    @property
    def changed_count(self) -> int:
        return sum(1 for c in self.changes if c.changed)
