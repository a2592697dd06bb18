"""`inv audit`: security checks of the fleet from outside (the operator's machine) and inside
(one read-only remote command per host), each problem a finding with severity and fix.

Outside, for hosts with the nginx role: dot-files (`/.env`, `/.git/HEAD`, `/.git/config`) and
other paths that must not be served, directory listings, the `Server:` header, HSTS on HTTPS,
the HTTP to HTTPS redirect, and the certificate (chain, names, dates) for every name the
inventory gives the host. Inside, on every host: failed SSH logins by source address and
fail2ban's bans, every authorized_keys file against the keys the inventory allows, listening
sockets against the ones the host's roles explain, sshd's effective settings and nginx's
directory listings. Variables: opskit/core/defaults/audit.yml.

This module runs it (`run`, or `Reader` beside other readers on the same connection) and holds
what comes out (HostAudit, AuditReport); opskit/audit/output.py formats it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from opskit.audit.findings import Finding, exit_code, sort_findings, worst_label
from opskit.audit.inside import INSIDE_CHECKS, Inside, collect_script, judge_inside, parse_inside
from opskit.audit.keys import identity_public_key
from opskit.audit.logins import Bans, Source
from opskit.audit.outside import Outside, probe_host
from opskit.audit.settings import host_settings
from opskit.core.errors import ExitStatus
from opskit.core.inventory import Host, Inventory
from opskit.core.remote import Remote
from opskit.core.result import Change, HostResult
from opskit.core.runner import RunContext, run_on_hosts
from opskit.core.secrets import Secret


@dataclass(frozen=True)
class HostAudit:
    """The audit of one host: its findings worst first, failed logins and bans, what it cost."""

    host: str
    address: str
    error: str | None = None
    unreachable: bool = False
    checks: tuple[str, ...] = ()
    findings: tuple[Finding, ...] = ()
    sources: tuple[Source, ...] = ()
    bans: Bans = field(default_factory=lambda: Bans(False))
    commands: int = 0
    requests: int = 0
    seconds: float = 0.0

    @property
    def failed_logins(self) -> dict[str, Any]:
        by = {
            x.address: x.failures
            for x in sorted(self.sources, key=lambda x: -x.failures)
            if x.failures
        }
        return {"total": sum(by.values()), "by_source": by}

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "address": self.address,
            "error": self.error,
            "unreachable": self.unreachable,
            "checks": list(self.checks),
            "findings": [f.to_dict() for f in self.findings],
            "failed_logins": {
                **self.failed_logins,
                "users": {x.address: list(x.users) for x in self.sources if x.failures},
            },
            "bans": {
                "current": list(self.bans.current),
                "total": self.bans.total,
                "in_window": list(self.bans.in_window),
                "running": self.bans.running,
                "failed_actions": [
                    {"action": a, "address": ip, "why": why}
                    for a, ip, why in self.bans.failed_actions
                ],
            },
            "worst": worst_label(self.findings),
            "remote_commands": self.commands,
            "http_requests": self.requests,
            "seconds": round(self.seconds, 2),
        }


@dataclass(frozen=True)
class AuditReport:
    """The audit of the fleet; `to_dict` is the JSON `inv audit --json` prints and `inv
    report.*` reads."""

    generated_at: dt.datetime
    since_hours: float
    hosts: tuple[HostAudit, ...]

    @property
    def findings(self) -> list[Finding]:
        return [f for h in self.hosts for f in h.findings]

    @property
    def worst(self) -> str:
        return worst_label(self.findings)

    @property
    def exit_code(self) -> ExitStatus:
        return exit_code(self.findings, any(h.error for h in self.hosts))

    def to_dict(self) -> dict[str, Any]:
        return {
            "generated_at": self.generated_at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
            "since_hours": self.since_hours,
            "worst": self.worst,
            "exit_code": int(self.exit_code),
            "hosts": [h.to_dict() for h in self.hosts],
        }


class Reader:
    """Audits hosts over connections someone else opened: `run` uses it on its own, `inv
    report.*` beside other readers on the same connection. Made: every host's audit_*
    settings checked (ConfigError, nothing read). `start` begins the HTTP(S) probes of the web
    hosts from this machine in `pool`; `read` is the one remote command of a host."""

    def __init__(
        self,
        inventory: Inventory,
        hosts: Sequence[Host],
        *,
        since_hours: float | None = None,
        now: dt.datetime | None = None,
    ) -> None:
        identity = identity_public_key(inventory.ssh.identity)
        self.hosts = list(hosts)
        self.since_hours = since_hours
        self.now = now
        self.settings = {
            h.name: host_settings(h, inventory, since_hours=since_hours, identity_key=identity)
            for h in hosts
        }
        self.inside: dict[str, Inside] = {}
        self.outside: dict[str, Future[Outside]] = {}

    def start(self, pool: ThreadPoolExecutor) -> None:
        for h in self.hosts:
            if "nginx" in h.roles:
                self.outside[h.name] = pool.submit(
                    probe_host, h, self.settings[h.name], now=self.now
                )

    def read(self, remote: Remote) -> None:
        s = self.settings[remote.name]
        out = remote.run(collect_script(s.since_hours), what="audit: read the host", timeout=300)
        self.inside[remote.name] = parse_inside(out.stdout)

    def host_audit(self, r: HostResult) -> HostAudit:
        """The audit of the host of `r` (the runner's result of the read); waits for its
        probes from outside."""
        h = next(h for h in self.hosts if h.name == r.host)
        s = self.settings[h.name]
        findings: list[Finding] = []
        checks: list[str] = []
        errors = [r.error] if r.error else []
        inside = self.inside.get(h.name)
        if inside is not None:
            ignore = [str(x) for x in (h.vars.get("base_fail2ban_ignoreip") or [])]
            findings += judge_inside(inside, s, h.name, ignore)
            checks += list(INSIDE_CHECKS)
            if inside.nginx is not None:
                checks.append("nginx-config")
        probe = self.outside[h.name].result() if h.name in self.outside else None
        if probe is not None:
            findings += probe.findings
            checks += sorted(probe.checks)
            errors += [f"outside: {e}" for e in probe.errors]
        return HostAudit(
            h.name,
            h.address,
            "\n".join(errors) or None,
            r.unreachable,
            tuple(dict.fromkeys(checks)),
            sort_findings(findings),
            inside.sources if inside else (),
            inside.bans if inside else Bans(False),
            r.commands,
            probe.requests if probe else 0,
            max(r.seconds, probe.seconds if probe else 0.0),
        )

    def report(self, audits: Sequence[HostAudit]) -> AuditReport:
        hours = (
            self.since_hours
            if self.since_hours is not None
            else max((s.since_hours for s in self.settings.values()), default=24.0)
        )
        return AuditReport(self.now or dt.datetime.now(dt.UTC), hours, tuple(audits))


def run(
    inventory: Inventory,
    hosts: Sequence[Host],
    *,
    workers: int = 8,
    since_hours: float | None = None,
    sudo_password: Secret | None = None,
    now: dt.datetime | None = None,
    on_result: Callable[[HostAudit], None] | None = None,
) -> AuditReport:
    """Audit `hosts`: one remote command each (in parallel, bounded) and, for hosts with the
    nginx role, HTTP(S) probes from this machine at the same time. A host that cannot be
    reached never stops the others. ConfigError for bad audit_* variables (nothing read)."""
    reader = Reader(inventory, hosts, since_hours=since_hours, now=now)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="audit-http") as pool:
        reader.start(pool)

        def work(remote: Remote, ctx: RunContext) -> list[Change]:
            reader.read(remote)
            return []

        results = run_on_hosts(inventory, hosts, work, workers=workers, sudo_password=sudo_password)
        audits = []
        for r in results:
            audit = reader.host_audit(r)
            audits.append(audit)
            if on_result is not None:
                on_result(audit)
    return reader.report(audits)
