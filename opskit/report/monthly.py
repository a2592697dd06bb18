"""The monthly database and service review (`inv report.monthly`): the slowest queries of
pg_stat_statements (calls, mean, max), tables read by sequential scans far more than by index,
table and index sizes, and the 30-day success criteria against their targets: uptime from
UptimeRobot's API (v3 `GET /monitors/{id}/stats/uptime`), error rate and p95 from nginx's access
logs (rotated ones included). Action items first. One SSH connection per host, one command each
(the access-log reader on web hosts, one psql on database hosts), hosts read side by side."""

from __future__ import annotations

import datetime as dt
import json
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2

from opskit.clients import ApiError
from opskit.clients.uptimerobot import UptimeRobotClient
from opskit.core.errors import OpsError
from opskit.core.inventory import Host, Inventory
from opskit.core.remote import Remote
from opskit.core.result import Change
from opskit.core.roles import TEMPLATES_DIR
from opskit.core.runner import RunContext, run_on_hosts
from opskit.core.secrets import Secret, redact
from opskit.report import charts
from opskit.report.data import ReportError, iso_time
from opskit.report.history import access_log_of, history_command, params_for, parse_history
from opskit.report.render import Rendered, html_with_code, md_escape, md_with_code, slack_escape

WINDOW = dt.timedelta(days=30)
# The runbooks' 30-day success criteria.
UPTIME_TARGET = 99.9  # percent, more is better
ERROR_RATE_TARGET = 1.0  # percent of 5xx, less is better
P95_TARGET_MS = 500.0  # less is better
# What makes a database action item.
SLOW_MEAN_MS = 100.0  # a query whose mean is above this
SEQ_RATIO = 10  # sequential scans at least this many times the index scans ...
SEQ_MIN_ROWS = 1000  # ... that read at least this many rows in all
TOP = 15

# One line of JSON (json_agg puts line breaks between elements; JSON strings escape their own).
REVIEW_SQL = f"""
SELECT replace(json_build_object(
 'database', current_database(),
 'database_bytes', pg_database_size(current_database()),
 'slow_queries', (SELECT coalesce(json_agg(q), '[]'::json) FROM (
    SELECT left(regexp_replace(s.query, '\\s+', ' ', 'g'), 400) AS query,
           r.rolname AS role, s.calls, round(s.mean_exec_time::numeric, 3) AS mean_ms,
           round(s.max_exec_time::numeric, 3) AS max_ms,
           round(s.total_exec_time::numeric, 1) AS total_ms, s.rows
      FROM pg_stat_statements s
      JOIN pg_database d ON d.oid = s.dbid
      LEFT JOIN pg_roles r ON r.oid = s.userid
     WHERE d.datname = current_database() AND s.query !~* 'pg_stat_statements|pg_catalog'
     ORDER BY s.mean_exec_time DESC LIMIT {TOP}) q),
 'tables', (SELECT coalesce(json_agg(t), '[]'::json) FROM (
    SELECT schemaname AS schema, relname AS table, seq_scan, seq_tup_read,
           coalesce(idx_scan, 0) AS idx_scan, coalesce(idx_tup_fetch, 0) AS idx_tup_fetch,
           n_live_tup AS live_rows, pg_total_relation_size(relid) AS total_bytes,
           pg_relation_size(relid) AS table_bytes, pg_indexes_size(relid) AS index_bytes
      FROM pg_stat_user_tables ORDER BY pg_total_relation_size(relid) DESC LIMIT 50) t),
 'indexes', (SELECT coalesce(json_agg(i), '[]'::json) FROM (
    SELECT schemaname AS schema, relname AS table, indexrelname AS index, idx_scan,
           pg_relation_size(indexrelid) AS bytes
      FROM pg_stat_user_indexes ORDER BY pg_relation_size(indexrelid) DESC LIMIT 50) i),
 'stats_since', (SELECT stats_reset FROM pg_stat_statements_info)
)::text, E'\\n', ' ')
"""


def review_command(database: str) -> str:
    """The one remote command on a database host: the review query as postgres, JSON out."""
    return (
        f"runuser -u postgres -- psql -X -q -A -t -v ON_ERROR_STOP=1 -d {shlex.quote(database)} "
        f"<<'OPSKIT_SQL'\n{REVIEW_SQL}\nOPSKIT_SQL\n"
    )


def seq_heavy(tables: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Tables read by sequential scans far more than by index (and not trivially small).

    >>> seq_heavy([{"table": "orders", "seq_scan": 500, "idx_scan": 3, "seq_tup_read": 90000},
    ...            {"table": "users", "seq_scan": 5, "idx_scan": 900, "seq_tup_read": 50}])
    [{'table': 'orders', 'seq_scan': 500, 'idx_scan': 3, 'seq_tup_read': 90000, 'ratio': 166.7}]
    """
    out = []
    for t in tables:
        seq, idx = int(t.get("seq_scan") or 0), int(t.get("idx_scan") or 0)
        if seq >= SEQ_RATIO * max(idx, 1) and int(t.get("seq_tup_read") or 0) >= SEQ_MIN_ROWS:
            out.append({**t, "ratio": round(seq / max(idx, 1), 1)})
    return sorted(out, key=lambda t: -int(t.get("seq_tup_read") or 0))


def traffic(history: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Requests, 5xx and p95 per day over the web hosts; the error rate over the window and the
    p95 the criterion uses: the days' p95 weighted by their requests (the history keeps a p95 per
    day, not the raw times), with the worst day beside it."""
    days: dict[str, dict[str, float]] = {}
    for hist in history.values():
        nginx = hist.get("nginx") or {}
        for day, c in (nginx.get("buckets") or {}).items():
            d = days.setdefault(day, {"requests": 0, "5xx": 0, "p95_weight": 0.0, "timed": 0})
            d["requests"] += int(c.get("requests") or 0)
            d["5xx"] += int(c.get("5xx") or 0)
            if c.get("p95_ms") is not None and c.get("timed"):
                d["p95_weight"] += float(c["p95_ms"]) * int(c["timed"])
                d["timed"] += int(c["timed"])
    rows: list[dict[str, Any]] = [
        {
            "day": day,
            "requests": int(d["requests"]),
            "5xx": int(d["5xx"]),
            "p95_ms": round(d["p95_weight"] / d["timed"], 1) if d["timed"] else None,
        }
        for day, d in sorted(days.items())
    ]
    requests = sum(int(d["requests"]) for d in days.values())
    errors = sum(int(d["5xx"]) for d in days.values())
    timed = sum(d["timed"] for d in days.values())
    p95s = [r["p95_ms"] for r in rows if r["p95_ms"] is not None]
    return {
        "days": rows,
        "requests": requests,
        "5xx": errors,
        "error_rate": round(100.0 * errors / requests, 3) if requests else None,
        "p95_ms": round(sum(d["p95_weight"] for d in days.values()) / timed, 1) if timed else None,
        "p95_worst_day_ms": max(p95s) if p95s else None,
    }


def criterion(name: str, value: float | None, target: float, better: str, unit: str, src: str):  # type: ignore[no-untyped-def]
    met = None if value is None else (value > target if better == "more" else value < target)
    return {
        "name": name,
        "value": value,
        "target": f"{'>' if better == 'more' else '<'} {target:g}{unit}",
        "unit": unit,
        "met": met,
        "source": src,
    }


def action_items(report: Mapping[str, Any]) -> list[dict[str, str]]:
    """Most severe first: missed criteria, unread sources, slow queries, sequential scans."""
    out: list[dict[str, str]] = []
    for c in report["criteria"]:
        if c["met"] is False:
            out.append(
                {
                    "level": "critical",
                    "what": f"{c['name']} {c['value']}{c['unit']} missed its target {c['target']}",
                    "todo": {
                        "uptime": "read the month's incidents (`inv report.weekly`) and fix the "
                        "top cause of downtime",
                        "error rate": "the paths with the most 5xx (`inv report.daily`), the "
                        "app's logs and Sentry",
                        "p95": "the slowest queries below, then the app's hot paths",
                    }[c["name"]],
                }
            )
        elif c["met"] is None:
            out.append(
                {
                    "level": "warning",
                    "what": f"{c['name']}: no data ({c['source']})",
                    "todo": "see what was not read below",
                }
            )
    for db in report["databases"]:
        for q in db.get("slow_queries") or []:
            if float(q.get("mean_ms") or 0) >= SLOW_MEAN_MS:
                out.append(
                    {
                        "level": "warning",
                        "what": f"{db['host']}: a query averages {q['mean_ms']} ms over "
                        f"{q['calls']} calls: `{str(q['query'])[:80]}`",
                        "todo": "`EXPLAIN (ANALYZE, BUFFERS)` it; add the index it lacks",
                    }
                )
        for t in db.get("seq_heavy") or []:
            out.append(
                {
                    "level": "warning",
                    "what": f"{db['host']}: table {t['table']} read by {t['seq_scan']} sequential "
                    f"scans vs {t['idx_scan']} index scans ({t['seq_tup_read']} rows read)",
                    "todo": "index the columns its queries filter or join on",
                }
            )
    for source, err in sorted((report.get("errors") or {}).items()):
        out.append(
            {
                "level": "warning",
                "what": f"not read: {source}: {err.splitlines()[0] if err else ''}",
                "todo": "fix access and run it again",
            }
        )
    rank = {"critical": 0, "warning": 1}
    return sorted(out, key=lambda a: rank.get(a["level"], 2))


def uptime_of(hosts: Sequence[Host], since: dt.datetime, until: dt.datetime) -> dict[str, Any]:
    """The uptime UptimeRobot measured over the window for opskit's HTTP monitors (tagged
    healthcheck_uptimerobot_tag): per monitor, and the criterion's value (the lowest)."""
    v = next((h.vars for h in hosts if h.vars.get("healthcheck_uptimerobot_api_key")), None)
    if v is None:
        return {"monitors": [], "error": "no healthcheck_uptimerobot_api_key in the inventory"}
    client = UptimeRobotClient(
        v["healthcheck_uptimerobot_api_key"],
        base_url=str(v.get("healthcheck_uptimerobot_api_url") or "https://api.uptimerobot.com/v3"),
    )
    tag = str(v.get("healthcheck_uptimerobot_tag") or "opskit")
    monitors = []
    for m in client.monitors():
        tags = {t.get("name") if isinstance(t, dict) else t for t in m.get("tags") or []}
        if tag not in tags or m.get("type") == "HEARTBEAT":
            continue
        stats = client.uptime_stats(int(m["id"]), iso_time(since), iso_time(until))
        monitors.append(
            {
                "id": m["id"],
                "name": m.get("friendlyName"),
                "url": m.get("url"),
                "uptime": float(stats["uptime"]),
                "downtime_s": stats.get("total_downtime_seconds"),
                "incidents": stats.get("incident_count"),
            }
        )
    if not monitors:
        return {"monitors": [], "error": f"no UptimeRobot monitor tagged {tag!r}"}
    return {"monitors": monitors, "uptime": min(m["uptime"] for m in monitors)}


def gather(
    inventory: Inventory,
    hosts: Sequence[Host],
    *,
    now: dt.datetime | None = None,
    workers: int = 8,
    sudo_password: Secret | None = None,
) -> dict[str, Any]:
    """The month's numbers: one connection and one command per host, then UptimeRobot."""
    until = now or dt.datetime.now(dt.UTC)
    since = until - WINDOW
    history: dict[str, dict[str, Any]] = {}
    databases: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}

    def work(remote: Remote, ctx: RunContext) -> list[Change]:
        h = remote.host
        try:
            if "postgresql" in h.roles:
                database = str(h.vars.get("postgresql_app_database") or "app")
                res = remote.run(review_command(database), what="database review", timeout=120)
                lines = [x for x in res.stdout.splitlines() if x.startswith("{")]
                if not lines:
                    raise ValueError("the review query printed no JSON")
                review = json.loads(lines[-1])
                review["host"] = h.name
                review["seq_heavy"] = seq_heavy(review.get("tables") or [])
                databases[h.name] = review
            elif access_log_of(h):
                params = params_for(h, "monthly", since.timestamp(), until.timestamp())
                res = remote.run(history_command(params), what="access logs", timeout=300)
                history[h.name] = parse_history(res.stdout)
        except (OpsError, ValueError) as exc:
            errors[f"host:{h.name}"] = redact(str(exc), h.secrets)
        return []

    results = run_on_hosts(inventory, hosts, work, workers=workers, sudo_password=sudo_password)
    for r in results:
        if r.error:
            errors[f"host:{r.host}"] = r.error
    try:
        uptime = uptime_of(hosts, since, until)
    except ApiError as exc:
        uptime = {"monitors": [], "error": str(exc)}
    if uptime.get("error"):
        errors["uptimerobot"] = uptime["error"]
    t = traffic(history)
    report: dict[str, Any] = {
        "kind": "monthly",
        "generated_at": iso_time(until),
        "since": iso_time(since),
        "until": iso_time(until),
        "inventory": str(inventory.path),
        "hosts": [h.name for h in hosts],
        "criteria": [
            criterion(
                "uptime",
                uptime.get("uptime"),
                UPTIME_TARGET,
                "more",
                " %",
                "UptimeRobot, the lowest of opskit's monitors",
            ),
            criterion(
                "error rate",
                t["error_rate"],
                ERROR_RATE_TARGET,
                "less",
                " %",
                "5xx share of the web hosts' access logs",
            ),
            criterion(
                "p95",
                t["p95_ms"],
                P95_TARGET_MS,
                "less",
                " ms",
                "nginx request time, the days' p95 weighted by requests",
            ),
        ],
        "uptime": uptime,
        "traffic": t,
        "databases": [databases[k] for k in sorted(databases)],
        "errors": errors,
    }
    report["actions"] = action_items(report)
    return report


# --- rendering ---------------------------------------------------------------------------------


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR / "report")),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default=False),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["md"] = md_escape
    env.filters["mdcode"] = md_with_code
    env.filters["code"] = html_with_code
    env.filters["slack"] = slack_escape
    env.filters["size"] = human_bytes
    return env


def human_bytes(n: Any) -> str:
    """`8.0 kB`, `1.5 MB`.

    >>> human_bytes(8192), human_bytes(1572864), human_bytes(None)
    ('8.0 kB', '1.5 MB', 'n/a')
    """
    if n is None:
        return "n/a"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def view(report: Mapping[str, Any]) -> dict[str, Any]:
    """What the templates show: the report plus its charts and headline."""
    t = report["traffic"]
    crit = sum(1 for a in report["actions"] if a["level"] == "critical")
    worst = "critical" if crit else "warning" if report["actions"] else "ok"
    slow = [
        (f"{db['host']}: {str(q['query'])[:28]}", float(q["mean_ms"]), SLOW_MEAN_MS, None)
        for db in report["databases"]
        for q in (db.get("slow_queries") or [])[:8]
    ]
    sizes = [
        (f"{db['host']}: {x['table']}", float(x["total_bytes"]) / 1024, None, None)
        for db in report["databases"]
        for x in (db.get("tables") or [])[:8]
    ]
    return {
        **report,
        "worst": worst,
        "critical": crit,
        "title": "Monthly review: database and success criteria",
        "charts": {
            "traffic": charts.columns(
                [(r["day"][5:], r["requests"], r["5xx"]) for r in t["days"]],
                title="requests and 5xx per day (UTC)",
                width=640,
            ),
            "p95": charts.sparkline(
                [float(r["p95_ms"]) for r in t["days"] if r["p95_ms"] is not None],
                title="p95 per day (ms)",
                unit=" ms",
                critical=P95_TARGET_MS,
                width=400,
            )
            if any(r["p95_ms"] is not None for r in t["days"])
            else "",
            "slow": charts.gauge_bars(
                slow,
                title="slowest queries: mean (ms)",
                unit=" ms",
                maximum=max([s[1] for s in slow] + [SLOW_MEAN_MS]) * 1.1,
                width=520,
            )
            if slow
            else "",
            "sizes": charts.gauge_bars(
                sizes,
                title="largest tables (kB, with indexes)",
                unit=" kB",
                maximum=max([s[1] for s in sizes] + [1.0]) * 1.1,
                width=520,
            )
            if sizes
            else "",
        },
    }


def render(report: Mapping[str, Any], *, secrets: Sequence[str] = ()) -> Rendered:
    """Markdown, HTML, the Slack summary and the JSON of the monthly review; secrets redacted."""
    v = view(report)
    env = _env()
    try:
        md = env.get_template("monthly.md.j2").render(v=v)
        html = env.get_template("monthly.html.j2").render(v=v)
    except jinja2.TemplateError as exc:
        raise ReportError(f"templates/report: {exc}") from exc
    met = ", ".join(
        f"{c['name']} {c['value'] if c['value'] is not None else 'n/a'}{c['unit']} "
        f"({'met' if c['met'] else 'MISSED' if c['met'] is False else 'no data'})"
        for c in report["criteria"]
    )
    slack = slack_escape(
        f"Monthly review: {v['worst'].upper()}; {met}; {len(report['actions'])} action item(s)"
    )
    body = json.dumps(dict(report), indent=1, default=str) + "\n"
    return Rendered(*(redact(x, secrets) for x in (md, html, slack + "\n", body)))
