"""The view of a report (pure): what the Markdown, HTML and Slack templates show, built from
the report's JSON; the unit tests feed it dicts. Per host: the status table and charts, traffic
per hour or day, alerts, backups, certificates, releases, audit findings and failed logins; for
a weekly, the trends of the week and its standing to-do items."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from opskit.checks.levels import worst_of
from opskit.hostside.report_history import DAY_FORMAT, HOUR_FORMAT
from opskit.report import charts
from opskit.report.data import parse_time
from opskit.report.judge import (
    action,
    action_items,
    as_level,
    fmt_value,
    incidents,
    metric_of,
    nginx_totals,
    numbers,
    severity_of,
    threshold_text,
)

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
    ("os", "OS"),
    ("security_updates", "Security updates"),
    ("reboot", "Reboot"),
)


def _bucket_labels(report: Mapping[str, Any]) -> list[str]:
    """Every hour (daily) or day (weekly) of the window, as the history program names them."""
    since = parse_time(report["since"])
    until = parse_time(report["until"])
    assert since and until
    out = []
    if report["kind"] == "daily":
        t = since.replace(minute=0, second=0, microsecond=0)
        while t <= until:
            out.append(t.strftime(HOUR_FORMAT))
            t += dt.timedelta(hours=1)
    else:
        d = since.date()
        while d <= until.date():
            out.append(d.strftime(DAY_FORMAT))
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
            m = metric_of(h, key)
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
                "limits": threshold_text(m),
                "detail": m.get("detail") or "",
            }
            for m in h.get("metrics", [])
        ]
        samples = [float(x) for x in (h.get("samples") or {}).get("health_ms") or []]
        p95 = metric_of(h, "latency_p95") or metric_of(h, "health") or {}
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
                c["worst"] = worst_of([c["worst"], as_level(level)])
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
        key=lambda f: (_severity_rank(f.get("severity")), str(f.get("host"))),
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
        "incidents": _incidents(report.get("incidents")),
        "errors": errors,
        "seconds": report.get("seconds") or {},
        "has_status": report.get("status") is not None,
        "has_audit": report.get("audit") is not None,
    }


def _severity_rank(value: Any) -> int:
    """Findings in order: critical first, info last, an unknown severity after it.

    >>> sorted(["low", "bogus", "critical", "info"], key=_severity_rank)
    ['critical', 'low', 'info', 'bogus']
    """
    severity = severity_of(value)
    return -severity if severity is not None else 1


def _in_window(report: Mapping[str, Any], when: Any) -> bool:
    t, since = parse_time(when), parse_time(report.get("since"))
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
        action(
            "info",
            "fleet",
            "restore drill: prove the newest backup restores",
            "`inv backup.drill`",
            "routine",
        ),
        action(
            "info", "fleet", "verify every host against its role specs", "`inv verify`", "routine"
        ),
    ]
    if nums.get("cert_min_days") is not None and nums["cert_min_days"] < 30:
        out.append(
            action(
                "info",
                "fleet",
                f"a certificate expires in {nums['cert_min_days']} days",
                "`inv certs.renew` (certbot.timer should do it: check why not)",
                "routine",
            )
        )
    if nums.get("failed_logins"):
        out.append(
            action(
                "info",
                "fleet",
                f"{nums['failed_logins']} failed SSH logins this week",
                "review the sources in the table below; block persistent ones",
                "routine",
            )
        )
    return out


def _incidents(section: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The weekly's incidents (opskit.report.incidents) with durations a person reads.

    >>> v = _incidents({"count": 1, "open": 0, "by_severity": {"high": 1}, "incidents": [
    ...     {"file": "a.md", "title": "t", "severity": "high", "status": "resolved",
    ...      "opened_at": "x", "duration_s": 3900.0}], "total_duration_s": 3900.0,
    ...     "longest_duration_s": 3900.0, "mean_time_to_resolve_s": 3900.0})
    >>> v["rows"][0]["duration"], v["total"], v["mttr"]
    ('1 h 05 min', '1 h 05 min', '1 h 05 min')
    """
    if section is None:
        return None

    def hm(seconds: Any) -> str:
        if seconds is None:
            return "n/a"
        m = int(float(seconds) // 60)
        return f"{m // 60} h {m % 60:02d} min" if m >= 60 else f"{m} min"

    return {
        "count": section.get("count", 0),
        "open": section.get("open", 0),
        "by_severity": section.get("by_severity") or {},
        "total": hm(section.get("total_duration_s")),
        "longest": hm(section.get("longest_duration_s")),
        "mttr": hm(section.get("mean_time_to_resolve_s")),
        "directory": section.get("directory", ""),
        "rows": [
            {**i, "duration": hm(i.get("duration_s"))} for i in section.get("incidents") or []
        ],
    }
