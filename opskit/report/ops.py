"""Daily and weekly reviews (`inv report.daily|weekly`): the runbooks' reports, filled in.

`gather()` collects what the review needs: fleet status (opskit.status), the security audit
(opskit.audit), and in one more SSH connection per host the certificates (opskit.certs),
releases and their journal (opskit.app.deploy), the backup label (opskit.backup, then S3 from
the laptop),
and the host's own history: nginx's access log (rotated logs included) aggregated per hour/day
and the health check's problem lines from the journal. The three passes run side by side.

`build_view()` turns the gathered numbers (a JSON-able dict: the `.json` file) into what the
templates show, `render()` writes Markdown, HTML (inline SVG charts) and a Slack summary. The
library never prints: the task prints the paths and the summary.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import shlex
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jinja2
import markupsafe
import requests

from opskit.core.errors import ConfigError, OpsError
from opskit.core.inventory import Host, Inventory
from opskit.core.remote import Remote
from opskit.core.result import Change, HostResult
from opskit.core.roles import TEMPLATES_DIR
from opskit.core.secrets import Secret, redact
from opskit.report import charts

log = logging.getLogger(__name__)

KINDS: Mapping[str, dt.timedelta] = {
    "daily": dt.timedelta(hours=24),
    "weekly": dt.timedelta(days=7),
}
# Severity order of the report's own levels: a host that cannot be read is worse than a warning.
LEVELS = ("ok", "warning", "unknown", "critical")
AUDIT_LEVEL = {
    "ok": "ok",
    "info": "ok",
    "low": "ok",
    "medium": "warning",
    "high": "critical",
    "critical": "critical",
}
SEVERITY_ORDER = {"critical": 0, "high": 1, "medium": 2, "low": 3, "info": 4}
HISTORY_SCRIPT = TEMPLATES_DIR / "report" / "report-history.py"
RELEASE_JOURNAL_LINES = 500


class ReportError(OpsError):
    """The report could not be written or sent."""


def worse(a: str, b: str) -> str:
    """The more severe of two report levels.

    >>> worse("ok", "warning"), worse("critical", "unknown"), worse("bogus", "ok")
    ('warning', 'critical', 'unknown')
    """
    rank = {lvl: i for i, lvl in enumerate(LEVELS)}
    a, b = (x if x in rank else "unknown" for x in (a, b))
    return a if rank[a] >= rank[b] else b


# --- settings ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """The `report_*` variables (opskit/defaults/report.yml), read from the first host."""

    out_dir: Path
    slack_webhook: Secret | None
    link_base: str
    max_items: int
    audit: bool
    failed_logins_warning: int
    error_rate_warning: float
    error_rate_critical: float


def settings_for(hosts: Sequence[Host], out: str | None = None) -> Settings:
    """Fleet-wide report settings from the first selected host's variables (set them under the
    inventory's top-level `vars`); ConfigError on a bad value."""
    if not hosts:
        raise ConfigError("no hosts selected")
    v = hosts[0].vars

    def number(key: str, lo: float) -> float:
        value = v.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < lo:
            raise ConfigError(f"{key}: expected a number >= {lo}, got {value!r}")
        return float(value)

    webhook = v.get("report_slack_webhook_url") or v.get("healthcheck_slack_webhook_url") or None
    if webhook is not None and not isinstance(webhook, Secret):
        raise ConfigError(
            "report_slack_webhook_url: give the webhook as {secret: NAME}, never as plain text"
        )
    if not isinstance(v.get("report_dir"), str) or not v.get("report_dir"):
        raise ConfigError(f"report_dir: expected a directory, got {v.get('report_dir')!r}")
    return Settings(
        out_dir=Path(out or v["report_dir"]),
        slack_webhook=webhook,
        link_base=str(v.get("report_link_base") or ""),
        max_items=int(number("report_max_items", 1)),
        audit=bool(v.get("report_audit", True)),
        failed_logins_warning=int(number("report_failed_logins_warning", 0)),
        error_rate_warning=number("report_error_rate_warning", 0),
        error_rate_critical=number("report_error_rate_critical", 0),
    )


# --- gathering -----------------------------------------------------------------------------------


@dataclass
class ReportData:
    """Everything a report shows; `to_dict()` is the `.json` file and what is rendered."""

    kind: str
    generated_at: dt.datetime
    since: dt.datetime
    until: dt.datetime
    inventory: str
    hosts: list[str]
    status: dict[str, Any] | None = None
    audit: dict[str, Any] | None = None
    certs: dict[str, Any] | None = None
    backups: list[dict[str, Any]] = field(default_factory=list)
    releases: list[dict[str, Any]] = field(default_factory=list)
    history: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)
    previous: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "generated_at": _iso(self.generated_at),
            "since": _iso(self.since),
            "until": _iso(self.until),
            "inventory": self.inventory,
            "hosts": list(self.hosts),
            "status": self.status,
            "audit": self.audit,
            "certs": self.certs,
            "backups": self.backups,
            "releases": self.releases,
            "history": self.history,
            "errors": dict(self.errors),
            "unreadable": sorted(set(self.unreadable)),
            "previous": self.previous,
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
            "settings": self.settings,
        }


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _parse_time(text: Any) -> dt.datetime | None:
    """An ISO-8601 time (a trailing Z allowed) as an aware UTC datetime, or None.

    >>> _parse_time("2026-01-02T03:04:05Z").isoformat()
    '2026-01-02T03:04:05+00:00'
    >>> _parse_time("yesterday") is None
    True
    """
    if not isinstance(text, str) or not text:
        return None
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def history_command(params: Mapping[str, Any]) -> str:
    """The one remote command that reads the host's access logs and health-check journal."""
    code = HISTORY_SCRIPT.read_text()
    return (
        f"python3 - {shlex.quote(json.dumps(params))} <<'OPSKIT_REPORT_PY'\n{code}\n"
        "OPSKIT_REPORT_PY\n"
    )


def parse_history(stdout: str) -> dict[str, Any]:
    """The JSON the history script printed (its last line).

    >>> parse_history('{"nginx": null, "alerts": {"runs": []}}\\n')["alerts"]
    {'runs': []}
    """
    lines = [x for x in stdout.strip().splitlines() if x.startswith("{")]
    if not lines:
        raise ValueError("the history script printed no JSON")
    data = json.loads(lines[-1])
    if not isinstance(data, dict):
        raise ValueError("the history script printed no JSON object")
    return data


def access_log_of(host: Host) -> str | None:
    """The access log to aggregate: report_access_log, else the health check's, else nginx's."""
    v = host.vars
    if v.get("report_access_log"):
        return str(v["report_access_log"])
    if v.get("healthcheck_access_log"):
        return str(v["healthcheck_access_log"])
    return "/var/log/nginx/access.log" if "nginx" in host.roles else None


class _HostPass:
    """The report's own reads of a host: nginx traffic and alert history (one command), then
    certificates, releases and the backup label through their modules' readers."""

    def __init__(self, data: ReportData) -> None:
        self.data = data
        self.bucket = "hour" if data.kind == "daily" else "day"
        self.cert_hosts: dict[str, Any] = {}
        self.cert_settings: dict[str, tuple[int, int]] = {}
        self.releases: dict[str, dict[str, Any]] = {}
        self.labels: dict[str, tuple[str, dict[str, Any] | None]] = {}
        self.lock = threading.Lock()

    def note(self, key: str, exc: Exception, host: Host) -> None:
        with self.lock:
            self.data.errors[key] = redact(str(exc), host.secrets)

    def read(self, remote: Remote) -> None:
        from opskit.app import deploy
        from opskit.app import spec as app_spec
        from opskit.backup.hosts import host_label
        from opskit.backup.spec import config_for
        from opskit.certs import read as certs_read
        from opskit.certs import spec as certs_spec

        data, h = self.data, remote.host
        params = {
            "since": data.since.timestamp(),
            "until": data.until.timestamp(),
            "bucket": self.bucket,
            "access_log": access_log_of(h),
        }
        try:
            res = remote.run(history_command(params), what="report history", timeout=300)
            hist = parse_history(res.stdout)
            with self.lock:
                data.history[h.name] = hist
        except (OpsError, ValueError) as exc:
            self.note(f"history:{h.name}", exc, h)
        if "certbot" in h.roles:
            try:
                declared = certs_spec.declared_certificates(h.vars)
                self.cert_settings[h.name] = certs_spec.thresholds(h.vars)
                self.cert_hosts[h.name] = certs_read.read_host(remote, declared)
            except (OpsError, ValueError) as exc:
                self.note(f"certs:{h.name}", exc, h)
        if "app" in h.roles:
            try:
                state = deploy.read_state(
                    remote, app_spec.AppLayout.from_vars(h.vars), journal=RELEASE_JOURNAL_LINES
                )
                self.releases[h.name] = release_summary(h.name, state, data.since, data.until)
            except (OpsError, ValueError) as exc:
                self.note(f"releases:{h.name}", exc, h)
        if "backup" in h.roles:
            try:
                self.labels[h.name] = host_label(remote, config_for(h))
            except (OpsError, ValueError) as exc:
                self.note(f"backups:{h.name}", exc, h)

    def finish(self, hosts: Sequence[Host], *, details: int) -> None:
        """Judge the certificates as `inv certs.status --json` does; list backups in S3 (from
        this machine, even when the database host could not be read)."""
        from opskit.backup.listing import list_host
        from opskit.backup.spec import config_for
        from opskit.certs import judge as certs_judge
        from opskit.certs import read as certs_read
        from opskit.certs import spec as certs_spec

        data = self.data
        cert_targets = [h for h in hosts if "certbot" in h.roles]
        if cert_targets:
            read = []
            for h in cert_targets:
                if h.name in self.cert_hosts:
                    read.append(self.cert_hosts[h.name])
                else:
                    err = data.errors.get(f"host:{h.name}") or data.errors.get(
                        f"certs:{h.name}", "?"
                    )
                    read.append(
                        certs_read.HostCerts(
                            h.name, error=err, unreachable=h.name in data.unreadable
                        )
                    )
                    self.cert_settings.setdefault(h.name, certs_spec.thresholds(h.vars))
            data.certs = json.loads(
                certs_judge.status_json(
                    certs_judge.build_report(read, self.cert_settings, data.generated_at)
                )
            )
        data.releases = [self.releases[h.name] for h in hosts if h.name in self.releases]
        for h in hosts:
            if "backup" not in h.roles:
                continue
            try:
                cfg = config_for(h)
                label, info = self.labels.get(h.name, (cfg.label or cfg.host, None))
                listing = list_host(cfg, info, label, now=data.generated_at, details=details)
                data.backups.append(backup_summary(listing, data.since))
            except (OpsError, ValueError) as exc:
                data.errors[f"backups:{h.name}"] = redact(str(exc), h.secrets)
                data.backups.append({"host": h.name, "error": data.errors[f"backups:{h.name}"]})


def release_summary(
    host: str, state: Any, since: dt.datetime, until: dt.datetime
) -> dict[str, Any]:
    """One host's current release and the deploys/rollbacks of its journal inside the window."""
    current = state.find(state.current or "") if state.current else None
    events = []
    for j in state.journal:
        t = _parse_time(j.get("time"))
        if t is not None and since <= t <= until:
            events.append(
                {
                    k: j.get(k)
                    for k in (
                        "time",
                        "action",
                        "result",
                        "release",
                        "from",
                        "operator",
                        "ref",
                        "seconds",
                        "detail",
                    )
                }
            )
    return {
        "host": host,
        "current": state.current,
        "current_label": current.label if current else None,
        "deployed_at": current.meta.get("deployed_at") if current else None,
        "releases": len(state.releases),
        "bad": [r.name for r in state.releases if r.bad],
        "events": events,
    }


def backup_summary(listing: Any, since: dt.datetime) -> dict[str, Any]:
    """opskit.backup.ops's listing (as `inv backup.list --json`) plus the window's backups."""
    from opskit.backup.listing import listing_json

    d = listing_json(listing)
    in_window = [b for b in d["backups"] if (_parse_time(b["last_modified"]) or since) > since]
    d["in_window"] = len(in_window)
    d["window_bytes"] = sum(int(b["size"]) for b in in_window)
    newest = d["backups"][-1] if d["backups"] else None
    d["newest"] = newest
    d["newest_verified"] = bool(
        newest and str(newest.get("checksum_state") or "").startswith("verified")
    )
    return d


def _previous_reports(
    out_dir: Path, since: dt.datetime, until: dt.datetime
) -> list[dict[str, Any]]:
    """The numbers of the daily reports written in the window (a weekly's trend), oldest first."""
    found = []
    for f in sorted(out_dir.glob("daily-*.json")):
        try:
            d = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        t = _parse_time(d.get("generated_at"))
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
    from opskit.audit import reader as audit
    from opskit.core.runner import RunContext, run_on_hosts
    from opskit.status import fleet as status

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
    own = _HostPass(data)
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
        data.previous = _previous_reports(settings.out_dir, data.since, data.until)
    return data


# --- the view: what the templates show (pure) -----------------------------------------------------


def fmt_value(value: Any, unit: str = "") -> str:
    """A metric's value with its unit, as a person reads it.

    >>> fmt_value(12.345, "ms"), fmt_value(91.0, "%"), fmt_value(None), fmt_value(7200, "s")
    ('12 ms', '91 %', 'n/a', '2 h 0 min')
    >>> fmt_value("online"), fmt_value(3, "days"), fmt_value(1536, "B")
    ('online', '3 days', '1.5 KiB')
    """
    from opskit.backup.text import human_age, human_size

    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{value} {unit}".strip()
    if unit in ("s", "seconds"):
        return human_age(dt.timedelta(seconds=float(value)))
    if unit in ("B", "bytes"):
        return human_size(float(value))
    if unit in ("ms", "%"):
        return f"{value:.0f} {unit}"
    text = f"{value:.1f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(value)
    return f"{text} {unit}".strip()


COLUMNS = (
    ("health", "Health"),
    ("latency_p50", "p50"),
    ("latency_p95", "p95"),
    ("cpu", "CPU"),
    ("memory", "Memory"),
    ("disk", "Disk"),
    ("db_connections", "DB conn."),
    ("pm2", "PM2"),
    ("pm2_restarts", "Restarts"),
    ("cert", "Cert"),
    ("backup_age", "Backup age"),
    ("release", "Release"),
)


def _metric(host: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    """The host's metric `key`; for "disk" and "cert" the worst of their kind."""
    metrics = [m for m in host.get("metrics", []) if isinstance(m, Mapping)]
    if key in ("disk", "cert"):
        mine = [m for m in metrics if str(m.get("name", "")).startswith(f"{key}:")]
        if not mine:
            return None
        rank = {lvl: i for i, lvl in enumerate(LEVELS)}
        return max(mine, key=lambda m: rank.get(str(m.get("level")), 2))
    return next((m for m in metrics if m.get("name") == key), None)


def _threshold_text(m: Mapping[str, Any]) -> str:
    parts = []
    for k in ("warning", "critical"):
        if m.get(k) is not None:
            parts.append(f"{k} {fmt_value(m[k], str(m.get('unit') or ''))}")
    return ", ".join(parts)


HINTS = {
    "health": "look at the app: `inv releases`, roll back with `inv rollback` if the last "
    "release misbehaves",
    "latency_p50": "slow responses: look at the app's logs and the database's slow queries",
    "latency_p95": "slow responses: look at the app's logs and the database's slow queries",
    "cpu": "find what burns CPU (`top`, `pm2 monit`)",
    "memory": "find what holds memory (`pm2 monit`); restart a leaking process",
    "disk": "free space: old releases, logs, local backups",
    "db_connections": "look for connection leaks; raise max_connections or add a pooler",
    "pm2": "read the app's error log (`pm2 logs`) and its restarts",
    "pm2_restarts": "read the app's error log (`pm2 logs`): why does it restart?",
    "cert": "`inv certs.status`, then `inv certs.renew`",
    "backup_age": "`inv backup.list`; take one now with `inv backup.run`",
    "healthcheck": "`inv monitoring.status` shows the last health check",
}


def _action(level: str, host: str, what: str, todo: str, source: str) -> dict[str, str]:
    return {"level": level, "host": host, "what": what, "todo": todo, "source": source}


def action_items(report: Mapping[str, Any]) -> list[dict[str, str]]:
    """What to do, most severe first, from every warning and finding of the report."""
    out: list[dict[str, str]] = []
    settings = report.get("settings") or {}
    for host in sorted(set(report.get("unreadable") or [])):
        out.append(
            _action(
                "critical",
                host,
                "host could not be read",
                "check SSH and the network; the numbers of this host are missing",
                "hosts",
            )
        )
    for h in (report.get("status") or {}).get("hosts", []):
        for m in h.get("metrics", []):
            level = str(m.get("level", "ok"))
            if level not in ("warning", "critical"):
                continue
            name = str(m.get("name", ""))
            base = name.split(":")[0]
            value = fmt_value(m.get("value"), str(m.get("unit") or ""))
            limits = _threshold_text(m)
            detail = f" — {m['detail']}" if m.get("detail") else ""
            out.append(
                _action(
                    level,
                    str(h.get("host")),
                    f"{m.get('label') or name} {value}"
                    + (f" ({limits})" if limits else "")
                    + detail,
                    HINTS.get(base, "see `inv status`"),
                    "status",
                )
            )
    for h in (report.get("audit") or {}).get("hosts", []):
        for f in h.get("findings", []):
            sev = str(f.get("severity", "low"))
            level = AUDIT_LEVEL.get(sev, "warning")
            if sev in ("info",):
                continue
            out.append(
                _action(
                    level if level != "ok" else "info",
                    str(h.get("host")),
                    f"[{sev}] {f.get('title', '')}",
                    str(f.get("fix") or "see `inv audit`"),
                    "audit",
                )
            )
    for c_host in (report.get("certs") or {}).get("hosts", []):
        for c in c_host.get("certificates", []):
            if c.get("state") in ("warning", "critical"):
                days = c.get("days_left")
                out.append(
                    _action(
                        str(c["state"]),
                        str(c_host.get("host")),
                        f"certificate {c.get('name')}: {days} days left; "
                        + "; ".join(c.get("problems") or []),
                        "`inv certs.renew`" + (f" --cert {c.get('name')}" if c.get("name") else ""),
                        "certs",
                    )
                )
    for b in report.get("backups") or []:
        if b.get("error"):
            out.append(
                _action(
                    "critical",
                    b["host"],
                    f"backups not listed: {b['error']}",
                    "`inv backup.list`",
                    "backups",
                )
            )
            continue
        if b.get("stale"):
            out.append(
                _action(
                    "critical",
                    b["host"],
                    b.get("note") or "backups are stale",
                    "`inv backup.run`; find why cron's backup failed (`inv backup.list`)",
                    "backups",
                )
            )
        if b.get("problem"):
            out.append(
                _action(
                    "critical",
                    b["host"],
                    b["problem"],
                    "`inv backup.verify`, then `inv backup.run`",
                    "backups",
                )
            )
        last = b.get("last_run") or {}
        if last and not last.get("ok", True):
            out.append(
                _action(
                    "warning",
                    b["host"],
                    f"last backup run failed at {last.get('failed_step')}: {last.get('error')}",
                    "`inv backup.run` and read its error",
                    "backups",
                )
            )
    for r in report.get("releases") or []:
        for e in r.get("events", []):
            if e.get("result") not in ("ok", None):
                out.append(
                    _action(
                        "warning",
                        r["host"],
                        f"{e.get('action')} of {e.get('release')} {e.get('result')}: "
                        f"{e.get('detail') or ''}".strip(),
                        "`inv releases --journal 10`; fix the release before the next deploy",
                        "releases",
                    )
                )
    warn_pct = float(settings.get("error_rate_warning", 1.0))
    crit_pct = float(settings.get("error_rate_critical", 5.0))
    for host, hist in sorted((report.get("history") or {}).items()):
        n = nginx_totals(hist)
        if n["requests"]:
            rate = 100.0 * n["5xx"] / n["requests"]
            level = "critical" if rate >= crit_pct else "warning" if rate >= warn_pct else ""
            if level:
                top = ", ".join(
                    f"{p} ({c})" for p, c in (hist.get("nginx") or {}).get("top_5xx_paths", [])[:3]
                )
                out.append(
                    _action(
                        level,
                        host,
                        f"{rate:.2f} % of {n['requests']} requests answered 5xx"
                        + (f"; most on {top}" if top else ""),
                        "read the app's error log (`pm2 logs`) and Sentry for these paths",
                        "nginx",
                    )
                )
        inc = incidents(hist)
        if inc and inc[-1]["open"]:
            out.append(
                _action(
                    "warning",
                    host,
                    f"health-check alert open since {inc[-1]['start']}: "
                    + ", ".join(inc[-1]["checks"]),
                    "`inv monitoring.status`; fix what it names",
                    "alerts",
                )
            )
    limit = int(settings.get("failed_logins_warning", 20))
    for h in (report.get("audit") or {}).get("hosts", []):
        total = int((h.get("failed_logins") or {}).get("total") or 0)
        if limit and total >= limit:
            out.append(
                _action(
                    "info",
                    str(h.get("host")),
                    f"{total} failed SSH logins in the window",
                    "check that fail2ban bans the sources (`fail2ban-client status sshd`)",
                    "audit",
                )
            )
    rank = {"critical": 0, "unknown": 1, "warning": 2, "info": 3}
    out.sort(key=lambda a: (rank.get(a["level"], 4), a["host"], a["source"]))
    return out


def nginx_totals(hist: Mapping[str, Any]) -> dict[str, int]:
    """Requests, 4xx and 5xx over the window of one host's aggregated access log.

    >>> nginx_totals({"nginx": {"buckets": {"a": {"requests": 3, "4xx": 1, "5xx": 1}}}})
    {'requests': 3, '4xx': 1, '5xx': 1}
    """
    buckets = ((hist or {}).get("nginx") or {}).get("buckets") or {}
    return {
        k: sum(int(b.get(k) or 0) for b in buckets.values()) for k in ("requests", "4xx", "5xx")
    }


def incidents(hist: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Alert episodes of one host from its health-check runs: from the first run with problems
    to the run that logged none... (cron logs only problems, so a `recovered` message or the
    end of the problem lines closes one).

    >>> runs = [{"time": "t1", "problems": [["warning", "disk", "x"]], "sent": "alert"},
    ...         {"time": "t2", "problems": [], "sent": "recovered"}]
    >>> [(i["start"], i["end"], i["checks"], i["open"])
    ...  for i in incidents({"alerts": {"runs": runs}})]
    [('t1', 't2', ['disk'], False)]
    >>> runs = [{"time": "2026-11-23T03:30:02+00:00", "problems": [["critical", "http", "x"]]}]
    >>> last = {"time": "2026-11-23T03:31:00+00:00", "level": "ok"}
    >>> [(i["end"], i["open"]) for i in incidents({"alerts": {"runs": runs, "last": last}})]
    [('2026-11-23T03:31:00+00:00', False)]
    """
    runs = ((hist or {}).get("alerts") or {}).get("runs") or []
    out: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    for r in runs:
        problems = r.get("problems") or []
        if problems:
            if cur is None:
                cur = {
                    "start": r.get("time"),
                    "end": None,
                    "checks": [],
                    "worst": "ok",
                    "open": True,
                    "runs": 0,
                    "sent": [],
                }
                out.append(cur)
            cur["runs"] += 1
            for level, check, _ in problems:
                if check not in cur["checks"]:
                    cur["checks"].append(check)
                cur["worst"] = worse(cur["worst"], level if level in LEVELS else "unknown")
            if r.get("sent"):
                cur["sent"].append(r["sent"])
        elif r.get("sent") == "recovered" and cur is not None:
            cur["end"], cur["open"] = r.get("time"), False
            cur["sent"].append("recovered")
            cur = None
    last = ((hist or {}).get("alerts") or {}).get("last") or {}
    if cur is not None and last.get("level") == "ok":
        ended, began = _parse_time(last.get("time")), _parse_time(cur["start"])
        if ended and began and ended > began:  # a later check, run by hand, found all well
            cur["end"], cur["open"] = last["time"], False
    return out


def numbers(report: Mapping[str, Any]) -> dict[str, Any]:
    """The report's headline numbers (kept in the JSON so that a weekly can trend dailies)."""
    status = report.get("status") or {}
    audit = report.get("audit") or {}
    hist = report.get("history") or {}
    acts = action_items(report)
    totals = {"requests": 0, "4xx": 0, "5xx": 0}
    for h in hist.values():
        for k, v in nginx_totals(h).items():
            totals[k] += v
    p95s: list[float] = []
    for h in hist.values():
        for b in (((h.get("nginx") or {}).get("buckets")) or {}).values():
            if b.get("p95_ms") is not None:
                p95s.append(float(b["p95_ms"]))
    runs = [r for h in hist.values() for r in ((h.get("alerts") or {}).get("runs") or [])]
    certs_days = [
        c["days_left"]
        for h in (report.get("certs") or {}).get("hosts", [])
        for c in h.get("certificates", [])
        if isinstance(c.get("days_left"), int)
    ]
    backups = [b for b in report.get("backups") or [] if not b.get("error")]
    newest_ages = [b["newest_age"] for b in backups if b.get("newest_age") is not None]
    events = [e for r in report.get("releases") or [] for e in r.get("events", [])]
    findings: dict[str, int] = {}
    for h in audit.get("hosts", []):
        for f in h.get("findings", []):
            sev = str(f.get("severity", "?"))
            findings[sev] = findings.get(sev, 0) + 1
    restarts = 0.0
    for h in status.get("hosts", []):
        m = _metric(h, "pm2_restarts")
        if m and isinstance(m.get("value"), int | float):
            restarts += float(m["value"])
    worst = overall_level(report)
    return {
        "worst": worst,
        "hosts": len(report.get("hosts") or []),
        "unreadable": len(set(report.get("unreadable") or [])),
        "actions_critical": sum(1 for a in acts if a["level"] == "critical"),
        "actions_warning": sum(1 for a in acts if a["level"] == "warning"),
        "alerts_sent": sum(1 for r in runs if r.get("sent") in ("alert", "changed")),
        "alert_messages": sum(1 for r in runs if r.get("sent")),
        "problem_runs": sum(1 for r in runs if r.get("problems")),
        "incidents": sum(len(incidents(h)) for h in hist.values()),
        "requests": totals["requests"],
        "errors_4xx": totals["4xx"],
        "errors_5xx": totals["5xx"],
        "p95_ms_max": max(p95s) if p95s else None,
        "backups_in_window": sum(int(b.get("in_window") or 0) for b in backups),
        "backup_bytes_in_window": sum(int(b.get("window_bytes") or 0) for b in backups),
        "newest_backup_age_s": min(newest_ages) if newest_ages else None,
        "cert_min_days": min(certs_days) if certs_days else None,
        "deploys": sum(1 for e in events if e.get("action") == "deploy"),
        "rollbacks": sum(1 for e in events if e.get("action") == "rollback"),
        "failed_releases": sum(1 for e in events if e.get("result") not in ("ok", None)),
        "failed_logins": sum(
            int((h.get("failed_logins") or {}).get("total") or 0) for h in audit.get("hosts", [])
        ),
        "bans_current": sum(
            len((h.get("bans") or {}).get("current") or []) for h in audit.get("hosts", [])
        ),
        "findings": findings,
        "pm2_restarts": restarts,
    }


def overall_level(report: Mapping[str, Any]) -> str:
    """The report's worst state over status, audit, certificates, backups and readable hosts."""
    level = "ok"
    status = report.get("status")
    if status:
        level = worse(level, str(status.get("worst", "unknown")))
    audit = report.get("audit")
    if audit:
        level = worse(level, AUDIT_LEVEL.get(str(audit.get("worst")), "unknown"))
    certs = report.get("certs")
    if certs:
        level = worse(level, str(certs.get("worst", "unknown")))
    for b in report.get("backups") or []:
        if b.get("error") or b.get("stale") or b.get("problem"):
            level = worse(level, "critical")
    if report.get("unreadable"):
        level = worse(level, "unknown")
    for name in ("status", "audit"):
        if report.get(name) is None and name in (report.get("errors") or {}):
            level = worse(level, "unknown")
    return level


def _bucket_labels(report: Mapping[str, Any]) -> list[str]:
    """Every hour (daily) or day (weekly) of the window, as the history script names them."""
    since = _parse_time(report["since"])
    until = _parse_time(report["until"])
    assert since and until
    out = []
    if report["kind"] == "daily":
        t = since.replace(minute=0, second=0, microsecond=0)
        while t <= until:
            out.append(t.strftime("%Y-%m-%dT%H:00Z"))
            t += dt.timedelta(hours=1)
    else:
        d = since.date()
        while d <= until.date():
            out.append(d.isoformat())
            d += dt.timedelta(days=1)
    return out


def _traffic(report: Mapping[str, Any], host: str, hist: Mapping[str, Any]) -> dict[str, Any]:
    nginx = hist.get("nginx")
    if not nginx:
        return {}
    if nginx.get("error"):
        return {"host": host, "error": f"{nginx.get('path')}: {nginx['error']}"}
    buckets = nginx.get("buckets") or {}
    labels = _bucket_labels(report)
    daily = report["kind"] == "daily"
    rows = []
    for key in labels:
        b = buckets.get(key, {})
        rows.append(
            {
                "bucket": key,
                "label": key[11:13] if daily else key[5:],
                "requests": int(b.get("requests") or 0),
                "4xx": int(b.get("4xx") or 0),
                "5xx": int(b.get("5xx") or 0),
                "p50_ms": b.get("p50_ms"),
                "p95_ms": b.get("p95_ms"),
            }
        )
    totals = nginx_totals(hist)
    p95 = [r["p95_ms"] for r in rows if r["p95_ms"] is not None]
    unit = "hour (UTC)" if daily else "day (UTC)"
    return {
        "host": host,
        "error": None,
        "path": nginx.get("path"),
        "files": nginx.get("files") or [],
        "rows": rows,
        "active_rows": [r for r in rows if r["requests"]],
        "totals": totals,
        "rate_5xx": round(100.0 * totals["5xx"] / totals["requests"], 2)
        if totals["requests"]
        else None,
        "with_times": nginx.get("with_times", 0),
        "top_5xx_paths": nginx.get("top_5xx_paths") or [],
        "chart": charts.columns(
            [(r["label"], r["requests"], r["5xx"]) for r in rows],
            title=f"{host}: requests and 5xx per {unit}",
            label_every=3 if daily else 1,
        ),
        "latency_chart": charts.sparkline(
            [float(x) for x in p95],
            title=f"{host}: p95 request time per {unit}",
            unit=" ms",
        )
        if p95
        else "",
        "unit": unit,
    }


def build_view(report: Mapping[str, Any]) -> dict[str, Any]:
    """What the templates show, from the report's JSON (pure: the unit tests feed dicts)."""
    status = report.get("status") or {}
    audit = report.get("audit") or {}
    nums = numbers(report)
    acts = action_items(report)
    max_items = int((report.get("settings") or {}).get("max_items", 50))
    hosts_view = []
    present = set()
    for h in status.get("hosts", []):
        cells = {}
        for key, _ in COLUMNS:
            m = _metric(h, key)
            if m is not None:
                present.add(key)
                cells[key] = {
                    "text": fmt_value(m.get("value"), str(m.get("unit") or "")),
                    "level": str(m.get("level", "unknown")),
                }
        metrics = [
            {
                "name": m.get("name"),
                "label": m.get("label") or m.get("name"),
                "text": fmt_value(m.get("value"), str(m.get("unit") or "")),
                "level": str(m.get("level", "unknown")),
                "limits": _threshold_text(m),
                "detail": m.get("detail") or "",
            }
            for m in h.get("metrics", [])
        ]
        samples = [float(x) for x in (h.get("samples") or {}).get("health_ms") or []]
        p95 = _metric(h, "latency_p95") or _metric(h, "health") or {}
        bars = [
            (
                str(m.get("label") or m.get("name")),
                float(m["value"]) if isinstance(m.get("value"), int | float) else None,
                m.get("warning"),
                m.get("critical"),
            )
            for m in h.get("metrics", [])
            if m.get("unit") == "%"
        ]
        hosts_view.append(
            {
                "host": h.get("host"),
                "address": h.get("address"),
                "roles": h.get("roles") or [],
                "level": str(h.get("level", "unknown")),
                "error": h.get("error"),
                "unreachable": bool(h.get("unreachable")),
                "cells": cells,
                "metrics": metrics,
                "samples": samples,
                "latency_chart": charts.sparkline(
                    samples,
                    title=f"{h.get('host')}: health endpoint latency, {len(samples)} samples",
                    unit=" ms",
                    warning=p95.get("warning"),
                    critical=p95.get("critical"),
                ),
                "bars_chart": charts.gauge_bars(bars, title=f"{h.get('host')}: usage vs thresholds")
                if bars
                else "",
            }
        )
    columns = [(k, label) for k, label in COLUMNS if k in present]
    history = report.get("history") or {}
    traffic = [
        t
        for host in report.get("hosts") or []
        if (t := _traffic(report, host, history.get(host) or {}))
    ]
    alert_hosts = []
    for host in report.get("hosts") or []:
        hist = history.get(host) or {}
        alerts = hist.get("alerts")
        if alerts is None:
            continue
        runs = alerts.get("runs") or []
        checks: dict[str, dict[str, Any]] = {}
        for r in runs:
            for level, check, summary in r.get("problems") or []:
                c = checks.setdefault(
                    check,
                    {
                        "check": check,
                        "runs": 0,
                        "worst": "ok",
                        "first": r.get("time"),
                        "last": None,
                        "summary": "",
                    },
                )
                c["runs"] += 1
                c["worst"] = worse(c["worst"], level if level in LEVELS else "unknown")
                c["last"], c["summary"] = r.get("time"), summary
        alert_hosts.append(
            {
                "host": host,
                "source": alerts.get("source"),
                "problem_runs": sum(1 for r in runs if r.get("problems")),
                "messages": [
                    {
                        "time": r.get("time"),
                        "kind": r.get("sent"),
                        "problems": ", ".join(f"{p[1]} {p[0]}" for p in r.get("problems") or []),
                    }
                    for r in runs
                    if r.get("sent")
                ][-max_items:],
                "slack_errors": [r["slack_error"] for r in runs if r.get("slack_error")][-5:],
                "checks": sorted(checks.values(), key=lambda c: -c["runs"]),
                "incidents": incidents(hist),
            }
        )
    backups = []
    for b in report.get("backups") or []:
        if b.get("error"):
            backups.append({"host": b["host"], "error": b["error"]})
            continue
        listed = b.get("backups") or []
        sizes = [float(x["size"]) for x in listed if _in_window(report, x.get("last_modified"))]
        # Small databases in KiB, so the chart's labels say something.
        size_unit, div = ("MiB", 2**20) if max(sizes, default=0) >= 2**20 else ("KiB", 1024)
        newest = b.get("newest") or {}
        backups.append(
            {
                "host": b["host"],
                "error": None,
                "database": b.get("database"),
                "location": b.get("location"),
                "count": len(listed),
                "in_window": b.get("in_window", 0),
                "window_bytes": fmt_value(b.get("window_bytes", 0), "B"),
                "newest_key": newest.get("key"),
                "newest_size": fmt_value(newest.get("size"), "B") if newest else "n/a",
                "newest_size_bytes": newest.get("size"),
                "newest_age": fmt_value(b.get("newest_age"), "s"),
                "allowed": fmt_value(b.get("allowed"), "s") if b.get("allowed") else "n/a",
                "verified": b.get("newest_verified"),
                "checksum": newest.get("checksum_state") or "n/a",
                "stale": bool(b.get("stale")),
                "note": b.get("note") or "",
                "problem": b.get("problem") or "",
                "last_run": b.get("last_run"),
                "level": "critical" if b.get("stale") or b.get("problem") else "ok",
                "window": [
                    {
                        "name": str(x["key"]).rsplit("/", 1)[-1],
                        "time": x.get("last_modified"),
                        "size": fmt_value(x.get("size"), "B"),
                        "checksum": x.get("checksum_state") or "",
                    }
                    for x in listed
                    if _in_window(report, x.get("last_modified"))
                ][-max_items:],
                "chart": charts.sparkline(
                    [x / div for x in sizes],
                    title=f"{b['host']}: backup sizes in the window ({size_unit})",
                    unit=f" {size_unit}",
                )
                if sizes
                else "",
            }
        )
    certs = [
        {
            "host": h.get("host"),
            "error": h.get("error"),
            "name": c.get("name"),
            "days_left": c.get("days_left"),
            "not_after": c.get("not_after"),
            "issuer": c.get("issuer"),
            "state": c.get("state"),
            "served": c.get("served"),
            "problems": c.get("problems") or [],
        }
        for h in (report.get("certs") or {}).get("hosts", [])
        for c in (h.get("certificates") or [{}] if not h.get("error") else [{}])
    ]
    findings = sorted(
        [
            {**f, "host": h.get("host")}
            for h in audit.get("hosts", [])
            for f in h.get("findings", [])
        ],
        key=lambda f: (SEVERITY_ORDER.get(str(f.get("severity")), 5), str(f.get("host"))),
    )
    logins = [
        {
            "host": h.get("host"),
            "total": int((h.get("failed_logins") or {}).get("total") or 0),
            "sources": sorted(
                ((h.get("failed_logins") or {}).get("by_source") or {}).items(),
                key=lambda kv: -kv[1],
            )[:10],
            "bans_current": (h.get("bans") or {}).get("current") or [],
            "bans_total": int((h.get("bans") or {}).get("total") or 0),
        }
        for h in audit.get("hosts", [])
    ]
    previous = list(report.get("previous") or [])
    trend = {}
    if report.get("kind") == "weekly":
        trend = _weekly_trend(report, previous, traffic, backups)
    errors = [
        {"source": k, "error": v.splitlines()[0] if v else ""}
        for k, v in sorted((report.get("errors") or {}).items())
    ]
    todo = acts[:max_items]
    if report.get("kind") == "weekly":
        todo = todo + _routine(report, nums)
    return {
        "kind": report["kind"],
        "title": f"{'Daily' if report['kind'] == 'daily' else 'Weekly'} review "
        f"{str(report['until'])[:10]}",
        "generated_at": report["generated_at"],
        "since": report["since"],
        "until": report["until"],
        "window": "the last 24 hours" if report["kind"] == "daily" else "the last 7 days",
        "inventory": report.get("inventory"),
        "hosts": report.get("hosts") or [],
        "unreadable": sorted(set(report.get("unreadable") or [])),
        "numbers": nums,
        "worst": nums["worst"],
        "status_worst": status.get("worst"),
        "status_at": status.get("generated_at"),
        "audit_worst": audit.get("worst"),
        "columns": columns,
        "fleet": hosts_view,
        "actions": todo,
        "actions_more": max(0, len(acts) - max_items),
        "traffic": traffic,
        "alerts": alert_hosts,
        "backups": backups,
        "certs": certs,
        "releases": report.get("releases") or [],
        "findings": findings[:max_items],
        "findings_more": max(0, len(findings) - max_items),
        "logins": logins,
        "trend": trend,
        "errors": errors,
        "seconds": report.get("seconds") or {},
        "has_status": report.get("status") is not None,
        "has_audit": report.get("audit") is not None,
    }


def _in_window(report: Mapping[str, Any], when: Any) -> bool:
    t, since = _parse_time(when), _parse_time(report.get("since"))
    return bool(t and since and t > since)


def _weekly_trend(
    report: Mapping[str, Any],
    previous: Sequence[Mapping[str, Any]],
    traffic: Sequence[Mapping[str, Any]],
    backups: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """Per day: fleet requests/5xx (access logs), alerts (journal); per daily report: its
    headline numbers (state, days left, restarts, failed logins)."""
    days = _bucket_labels(report)
    fleet = {d: [0, 0] for d in days}
    for t in traffic:
        for r in t.get("rows", []):
            if r["bucket"] in fleet:
                fleet[r["bucket"]][0] += r["requests"]
                fleet[r["bucket"]][1] += r["5xx"]
    alerts = dict.fromkeys(days, 0)
    for hist in (report.get("history") or {}).values():
        for r in ((hist.get("alerts") or {}).get("runs")) or []:
            d = str(r.get("time", ""))[:10]
            if d in alerts and r.get("problems"):
                alerts[d] += 1
    rows: list[dict[str, Any]] = [
        {"day": d, "requests": fleet[d][0], "5xx": fleet[d][1], "problem_runs": alerts[d]}
        for d in days
    ]
    dailies = [
        {
            "date": str(p.get("generated_at", ""))[:16].replace("T", " "),
            "worst": p.get("worst"),
            "cert_min_days": p.get("cert_min_days"),
            "pm2_restarts": p.get("pm2_restarts"),
            "failed_logins": p.get("failed_logins"),
            "requests": p.get("requests"),
            "errors_5xx": p.get("errors_5xx"),
            "backups": p.get("backups_in_window"),
            "actions": f"{p.get('actions_critical', 0)} / {p.get('actions_warning', 0)}",
        }
        for p in previous
    ]
    days_left = [
        float(p["cert_min_days"])
        for p in previous
        if isinstance(p.get("cert_min_days"), int | float)
    ]
    restarts = [
        float(p["pm2_restarts"]) for p in previous if isinstance(p.get("pm2_restarts"), int | float)
    ]
    return {
        "rows": rows,
        "chart": charts.columns(
            [(r["day"][5:], r["requests"], r["5xx"]) for r in rows],
            title="fleet: requests and 5xx per day (UTC)",
        ),
        "dailies": dailies,
        "days_left_chart": charts.sparkline(
            days_left, title="certificate days left, per daily report", unit=" d"
        )
        if days_left
        else "",
        "restarts_chart": charts.sparkline(restarts, title="PM2 restarts, per daily report")
        if restarts
        else "",
    }


def _routine(report: Mapping[str, Any], nums: Mapping[str, Any]) -> list[dict[str, str]]:
    """The weekly review's standing items, with the command that does each."""
    out = [
        _action(
            "info",
            "fleet",
            "restore drill: prove the newest backup restores",
            "`inv backup.drill`",
            "routine",
        ),
        _action(
            "info", "fleet", "verify every host against its role specs", "`inv verify`", "routine"
        ),
    ]
    if nums.get("cert_min_days") is not None and nums["cert_min_days"] < 30:
        out.append(
            _action(
                "info",
                "fleet",
                f"a certificate expires in {nums['cert_min_days']} days",
                "`inv certs.renew` (certbot.timer should do it: check why not)",
                "routine",
            )
        )
    if nums.get("failed_logins"):
        out.append(
            _action(
                "info",
                "fleet",
                f"{nums['failed_logins']} failed SSH logins this week",
                "review the sources in the table below; block persistent ones",
                "routine",
            )
        )
    return out


# --- rendering --------------------------------------------------------------------------------


def md_escape(value: Any) -> str:
    """Text safe inside a Markdown table cell or line: no markup, no table breaks.

    >>> md_escape("a|b *c* <x>\\nd")
    'a\\\\|b \\\\*c\\\\* &lt;x&gt; d'
    """
    text = str(value if value is not None else "")
    for ch in ("\\", "`", "*", "_", "[", "]", "|", "#"):
        text = text.replace(ch, "\\" + ch)
    return text.replace("<", "&lt;").replace(">", "&gt;").replace("\r", " ").replace("\n", " ")


_CODE = re.compile(r"(`[^`\n]+`)")


def md_with_code(value: Any) -> str:
    """Like md_escape, but `code spans` stay code (hints and fixes name commands).

    >>> md_with_code("run `inv a_b` | now_")
    'run `inv a_b` \\\\| now\\\\_'
    """
    parts = _CODE.split(str(value if value is not None else ""))
    return "".join(p if i % 2 else md_escape(p) for i, p in enumerate(parts))


def html_with_code(value: Any) -> markupsafe.Markup:
    """HTML-escaped text whose `code spans` become <code> elements.

    >>> str(html_with_code("run `inv x` <now>"))
    'run <code>inv x</code> &lt;now&gt;'
    """
    text = str(markupsafe.escape(str(value if value is not None else "")))
    return markupsafe.Markup(_CODE.sub(lambda m: f"<code>{m.group(1)[1:-1]}</code>", text))


def slack_escape(value: Any) -> str:
    """Text safe in a Slack message: &, < and > escaped as Slack documents.

    >>> slack_escape("<!channel> & co")
    '&lt;!channel&gt; &amp; co'
    """
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR / "report")),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default=False),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["md"] = md_escape
    env.filters["slack"] = slack_escape
    env.filters["mdcode"] = md_with_code
    env.filters["code"] = html_with_code
    env.filters["value"] = fmt_value
    return env


@dataclass(frozen=True)
class Rendered:
    markdown: str
    html: str
    slack: str
    json: str


def render(report: Mapping[str, Any], *, link: str = "", secrets: Sequence[str] = ()) -> Rendered:
    """Markdown, HTML, the Slack summary and the JSON of one report; secrets redacted."""
    view = build_view(report)
    env = _environment()
    try:
        md = env.get_template(f"{report['kind']}.md.j2").render(v=view)
        html = env.get_template("report.html.j2").render(v=view)
        slack = env.get_template("slack.j2").render(v=view, link=link).strip() + "\n"
    except jinja2.TemplateError as exc:
        raise ReportError(f"templates/report: {exc}") from exc
    body = json.dumps({**report, "numbers": view["numbers"]}, indent=1, default=str) + "\n"
    return Rendered(*(redact(x, secrets) for x in (md, html, slack, body)))


def file_stem(report: Mapping[str, Any]) -> str:
    """`daily-2026-11-23`: the kind and the UTC date of the window's end."""
    return f"{report['kind']}-{str(report['until'])[:10]}"


def write(rendered: Rendered, out_dir: Path, stem: str) -> dict[str, Path]:
    """Write the four files atomically (temp file + rename); their paths by format."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"{out_dir}: cannot create the report directory: {exc.strerror}") from exc
    paths = {}
    for ext, text in (
        ("md", rendered.markdown),
        ("html", rendered.html),
        ("json", rendered.json),
    ):
        path = out_dir / f"{stem}.{ext}"
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            tmp.write_text(text)
            tmp.replace(path)
        except OSError as exc:
            raise ReportError(f"{path}: cannot write: {exc.strerror}") from exc
        paths[ext] = path
    return paths


def post_slack(text: str, webhook: Secret, *, session: requests.Session | None = None) -> None:
    """Send `text` to the Slack incoming webhook; ApiError (URL redacted) when it fails."""
    from opskit.clients.http import JsonApi

    api = JsonApi("Slack", str(webhook), secrets=[str(webhook)], session=session, attempts=3)
    api.request("POST", str(webhook), json={"text": text}, ok=(200,), what="POST webhook")


def check_fail_on(fail_on: str) -> None:
    """ConfigError unless `fail_on` is "", "warning" or "critical"."""
    if fail_on not in ("", "warning", "critical"):
        raise ConfigError(f"--fail-on: expected warning or critical, got {fail_on!r}")


def exit_code(report: Mapping[str, Any], fail_on: str = "") -> int:
    """0 written; 1 a host or a source could not be read; with `fail_on` (warning/critical),
    4 / 5 when the report's worst state reaches it (the report is written either way)."""
    check_fail_on(fail_on)
    level = overall_level(report)
    if fail_on:
        if level == "critical":
            return 5
        if fail_on == "warning" and level in ("warning", "unknown"):
            return 4
    if report.get("unreadable") or report.get("errors"):
        return 1
    return 0


def summary_lines(report: Mapping[str, Any], paths: Mapping[str, Path]) -> str:
    """What the task prints after writing: the paths, then the headline."""
    n = numbers(report)
    lines = [f"wrote {p}" for p in paths.values()]
    lines.append(
        f"{report['kind']} review: {n['worst'].upper()}; {n['hosts']} host(s), "
        f"{n['unreadable']} unreadable; actions: {n['actions_critical']} critical, "
        f"{n['actions_warning']} warning; alerts sent {n['alerts_sent']}; "
        f"requests {n['requests']} ({n['errors_5xx']} 5xx); backups {n['backups_in_window']}; "
        f"cert days left {n['cert_min_days'] if n['cert_min_days'] is not None else 'n/a'}; "
        f"deploys {n['deploys']}, rollbacks {n['rollbacks']}"
    )
    for source, err in sorted((report.get("errors") or {}).items()):
        lines.append(f"  not read: {source}: {err.splitlines()[0] if err else ''}")
    return "\n".join(lines) + "\n"
