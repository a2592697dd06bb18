"""Reading and judging the fleet: one host's status, the fleet's, and the readers that make them.

`collect()` opens one connection per host (in parallel) and sends the one remote command;
`Reader` does the same over connections someone else opened (`inv report.*` runs it beside
other readers). `FleetStatus.to_dict()` is the JSON the reports build on.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opskit.checks.levels import exit_status, worst_of
from opskit.core.errors import ExitStatus
from opskit.core.inventory import Host, Inventory
from opskit.core.remote import Remote
from opskit.core.result import Change, HostResult
from opskit.core.runner import RunContext, run_on_hosts
from opskit.core.secrets import Secret
from opskit.status.command import Raw, read_host
from opskit.status.judge import Metric, evaluate
from opskit.status.settings import check_hosts


@dataclass(frozen=True)
class HostStatus:
    """One host's judged metrics, or why it could not be read (`error`; its level is unknown)."""

    host: str
    address: str
    roles: tuple[str, ...]
    metrics: tuple[Metric, ...] = ()
    samples: Mapping[str, list[float]] = field(default_factory=dict)
    error: str | None = None
    unreachable: bool = False
    commands: int = 0
    seconds: float = 0.0

    @property
    def level(self) -> str:
        if self.error:
            return "unknown"
        return worst_of([m.level for m in self.metrics])

    def metric(self, name: str) -> Metric | None:
        return next((m for m in self.metrics if m.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "address": self.address,
            "roles": list(self.roles),
            "level": self.level,
            "error": self.error,
            "unreachable": self.unreachable,
            "metrics": [m.to_dict() for m in self.metrics],
            "samples": {k: list(v) for k, v in self.samples.items()},
            "commands": self.commands,
            "seconds": round(self.seconds, 2),
        }


@dataclass(frozen=True)
class FleetStatus:
    """Every selected host's status, at `generated_at`."""

    generated_at: dt.datetime
    hosts: tuple[HostStatus, ...]

    @property
    def worst(self) -> str:
        return worst_of([h.level for h in self.hosts])

    @property
    def exit_code(self) -> ExitStatus:
        """CRITICAL if any metric is critical, else HOST_FAILED if a host or a metric could not
        be read, else WARNING if any metric is a warning, else OK."""
        return exit_status(h.level for h in self.hosts)

    def to_dict(self) -> dict[str, Any]:
        stamp = self.generated_at.astimezone(dt.UTC).isoformat(timespec="seconds")
        return {
            "generated_at": stamp.replace("+00:00", "Z"),
            "worst": self.worst,
            "exit_code": int(self.exit_code),
            "hosts": [h.to_dict() for h in self.hosts],
        }


class Reader:
    """Reads and judges hosts' status over connections someone else opened: `collect` runs it
    on its own; `inv report.*` runs it beside other readers on the same connection.

    Every host's settings are checked when it is made: a bad value raises ConfigError.
    """

    def __init__(self, hosts: Sequence[Host], *, samples: int | None = None) -> None:
        self.hosts = list(hosts)
        self.settings = check_hosts(hosts, samples=samples)
        self.raw: dict[str, Raw] = {}

    def read(self, remote: Remote) -> None:
        """One remote command on `remote` (a host of `hosts`)."""
        self.raw[remote.name] = read_host(remote, self.settings[remote.name])

    def host_status(self, r: HostResult, when: dt.datetime) -> HostStatus:
        """The judged status of the host of `r` (the runner's result of the read)."""
        h = next(h for h in self.hosts if h.name == r.host)
        if r.error or r.host not in self.raw:
            return HostStatus(
                h.name,
                h.address,
                h.roles,
                error=r.error or "not read",
                unreachable=r.unreachable,
                commands=r.commands,
                seconds=r.seconds,
            )
        metrics, series = evaluate(h, self.settings[h.name], self.raw[h.name], when)
        return HostStatus(
            h.name,
            h.address,
            h.roles,
            tuple(metrics),
            series,
            commands=r.commands,
            seconds=r.seconds,
        )


def collect(
    inventory: Inventory,
    hosts: Sequence[Host],
    *,
    workers: int = 8,
    samples: int | None = None,
    sudo_password: Secret | None = None,
    now: dt.datetime | None = None,
    on_host: Callable[[HostStatus], None] | None = None,
) -> FleetStatus:
    """Read and judge `hosts` (one connection and one remote command each, in parallel).

    Every host's settings are checked first: a bad value raises ConfigError and nothing runs.
    """
    reader = Reader(hosts, samples=samples)

    def work(remote: Remote, ctx: RunContext) -> list[Change]:
        reader.read(remote)
        return []

    results = run_on_hosts(inventory, hosts, work, workers=workers, sudo_password=sudo_password)
    when = now or dt.datetime.now(dt.UTC)
    out = []
    for r in results:
        hs = reader.host_status(r, when)
        if on_host is not None:
            on_host(hs)
        out.append(hs)
    return FleetStatus(when, tuple(out))
