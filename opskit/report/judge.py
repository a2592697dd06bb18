"""What the report judges (pure): the action items, most severe first, with what to do; the
health check's alert episodes; the headline numbers (kept in the JSON, so that a weekly can trend
the dailies); the overall level and the exit code, on the one model of opskit.checks.levels."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from opskit.backup.text import human_age, human_size
from opskit.checks.levels import RANK, Severity, exit_status, worst_of
from opskit.core.errors import ConfigError, ExitStatus
from opskit.report.data import parse_time

FAIL_ON = ("", "warning", "critical")


def as_level(value: Any) -> str:
    """`value` if it is a level of opskit.checks.levels, else "unknown".

    >>> as_level("warning"), as_level("bogus"), as_level(None)
    ('warning', 'unknown', 'unknown')
    """
    return value if isinstance(value, str) and value in RANK else "unknown"


def severity_of(value: Any) -> Severity | None:
    """The audit severity named `value` ("high"), or None.

    >>> severity_of("high"), severity_of("ok")
    (<Severity.HIGH: 3>, None)
    """
    return Severity.__members__.get(str(value).upper())


def audit_level(worst: Any) -> str:
    """The level of an audit whose worst finding is `worst` ("ok": nothing above info).

    >>> audit_level("ok"), audit_level("medium"), audit_level("high"), audit_level(None)
    ('ok', 'warning', 'critical', 'unknown')
    """
    if worst == "ok":
        return "ok"
    severity = severity_of(worst)
    return severity.level if severity is not None else "unknown"


def fmt_value(value: Any, unit: str = "") -> str:
    """A metric's value with its unit, as a person reads it.

    >>> fmt_value(12.345, "ms"), fmt_value(91.0, "%"), fmt_value(None), fmt_value(7200, "s")
    ('12 ms', '91 %', 'n/a', '2 h 0 min')
    >>> fmt_value("online"), fmt_value(3, "days"), fmt_value(1536, "B")
    ('online', '3 days', '1.5 KiB')
    """
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


def metric_of(host: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    """The host's metric `key`; for "disk" and "cert" the worst of their kind."""
    metrics = [m for m in host.get("metrics", []) if isinstance(m, Mapping)]
    if key in ("disk", "cert"):
        mine = [m for m in metrics if str(m.get("name", "")).startswith(f"{key}:")]
        if not mine:
            return None
        return max(mine, key=lambda m: RANK[as_level(m.get("level"))])
    return next((m for m in metrics if m.get("name") == key), None)


def threshold_text(m: Mapping[str, Any]) -> str:
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
    "reboot": "reboot the host in a quiet hour (`inv run --sudo --command reboot --hosts HOST`): "
    "upgraded packages are not in use until then",
    "security_updates": "`inv run --sudo --command unattended-upgrade` installs them now",
}


def action(level: str, host: str, what: str, todo: str, source: str) -> dict[str, str]:
    return {"level": level, "host": host, "what": what, "todo": todo, "source": source}


def action_items(report: Mapping[str, Any]) -> list[dict[str, str]]:
    """What to do, most severe first, from every warning and finding of the report."""
    out: list[dict[str, str]] = []
    settings = report.get("settings") or {}
    for host in sorted(set(report.get("unreadable") or [])):
        out.append(
            action(
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
            limits = threshold_text(m)
            detail = f" — {m['detail']}" if m.get("detail") else ""
            out.append(
                action(
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
            severity = severity_of(sev)
            if severity is Severity.INFO:
                continue
            out.append(
                action(
                    severity.level if severity is not None else "warning",
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
                    action(
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
                action(
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
                action(
                    "critical",
                    b["host"],
                    b.get("note") or "backups are stale",
                    "`inv backup.run`; find why cron's backup failed (`inv backup.list`)",
                    "backups",
                )
            )
        if b.get("problem"):
            out.append(
                action(
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
                action(
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
                    action(
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
                    action(
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
                action(
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
                action(
                    "info",
                    str(h.get("host")),
                    f"{total} failed SSH logins in the window",
                    "check that fail2ban bans the sources (`fail2ban-client status sshd`)",
                    "audit",
                )
            )
    # most severe first; "info" (nothing wrong, worth a look) ranks as ok
    out.sort(key=lambda a: (-RANK.get(a["level"], RANK["ok"]), a["host"], a["source"]))
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
                cur["worst"] = worst_of([cur["worst"], as_level(level)])
            if r.get("sent"):
                cur["sent"].append(r["sent"])
        elif r.get("sent") == "recovered" and cur is not None:
            cur["end"], cur["open"] = r.get("time"), False
            cur["sent"].append("recovered")
            cur = None
    last = ((hist or {}).get("alerts") or {}).get("last") or {}
    if cur is not None and last.get("level") == "ok":
        ended, began = parse_time(last.get("time")), parse_time(cur["start"])
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
        m = metric_of(h, "pm2_restarts")
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
    """The report's worst level over status, audit, certificates, backups and readable hosts."""
    levels = []
    status = report.get("status")
    if status:
        levels.append(as_level(status.get("worst", "unknown")))
    audit = report.get("audit")
    if audit:
        levels.append(audit_level(audit.get("worst")))
    certs = report.get("certs")
    if certs:
        levels.append(as_level(certs.get("worst", "unknown")))
    for b in report.get("backups") or []:
        if b.get("error") or b.get("stale") or b.get("problem"):
            levels.append("critical")
    if report.get("unreadable"):
        levels.append("unknown")
    for name in ("status", "audit"):
        if report.get(name) is None and name in (report.get("errors") or {}):
            levels.append("unknown")
    return worst_of(levels)


def check_fail_on(fail_on: str) -> None:
    """ConfigError unless `fail_on` is "", "warning" or "critical"."""
    if fail_on not in FAIL_ON:
        raise ConfigError(f"--fail-on: expected warning or critical, got {fail_on!r}")


def exit_code(report: Mapping[str, Any], fail_on: str = "") -> ExitStatus:
    """The exit code of `inv report.*` (opskit.checks.levels.exit_status): without `fail_on`,
    1 when a host or a source could not be read, else 0; with `fail_on` critical, also 5 when
    the report is critical; with warning, 5 critical, else 1 unreadable, else 4 warning. The
    report is written either way.

    >>> exit_code({"status": {"worst": "warning"}}, "warning")
    <ExitStatus.WARNING: 4>
    >>> exit_code({"status": {"worst": "warning"}, "errors": {"x": "?"}}, "warning")
    <ExitStatus.HOST_FAILED: 1>
    """
    check_fail_on(fail_on)
    level = overall_level(report)
    counted = {"": (), "critical": ("critical",), "warning": ("critical", "unknown", "warning")}
    unreadable = bool(report.get("unreadable") or report.get("errors"))
    return exit_status([level] if level in counted[fail_on] else [], unreadable=unreadable)
