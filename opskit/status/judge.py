"""Judging what the probe read on one host (pure): its metrics, each ok / warning / critical
against the host's thresholds, or unknown when it could not be read.

`evaluate` makes the metrics of one host from its `Raw` output; the levels and their order are
opskit.checks.levels'. A metric the host's settings leave ungraded (status_ungraded) shows its
value as ok, with what it would be in its detail.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from opskit.app import deploy
from opskit.app import spec as app_spec
from opskit.backup.text import human_age, human_size
from opskit.certs import judge as certs_judge
from opskit.certs import read as certs_read
from opskit.checks.levels import RANK, Pair, level_of, worst_of
from opskit.checks.thresholds import percentile
from opskit.core.inventory import Host
from opskit.hostside import status_probe as probe
from opskit.hostside.healthcheck import STATUS_FILE as HEALTHCHECK_STATUS
from opskit.status.command import Raw
from opskit.status.settings import Settings


@dataclass(frozen=True)
class Metric:
    """One judged reading: `name` is its key in the JSON ("disk:/", "cert:<name>"), `value` in
    `unit` (None: not read), `level` its verdict; `warning`/`critical` the thresholds it was
    judged against, when it has any."""

    name: str
    label: str
    value: float | int | str | None
    unit: str
    level: str
    detail: str = ""
    warning: float | None = None
    critical: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "value": self.value,
            "unit": self.unit,
            "level": self.level,
            "detail": self.detail,
            "warning": self.warning,
            "critical": self.critical,
        }


def human_seconds(seconds: float) -> str:
    """
    >>> human_seconds(42), human_seconds(300), human_seconds(7300), human_seconds(200000)
    ('42 s', '5 min', '2 h 1 min', '2 d 7 h')
    """
    return human_age(dt.timedelta(seconds=max(0, int(seconds))))


def _cut(text: str, n: int) -> str:
    """
    >>> _cut("abcdef", 4), _cut("abc", 4)
    ('abc…', 'abc')
    """
    return text if len(text) <= n else text[: n - 1] + "…"


def _error(part: Any) -> str | None:
    """Why a part of the probe's output cannot be judged (None: it can)."""
    if not isinstance(part, dict):
        return "not read by the probe"
    if probe.KEY_ERROR in part:
        return str(part[probe.KEY_ERROR])
    return None


def _pct_metric(name: str, label: str, part: Any, pair: Pair, detail: str = "") -> Metric:
    err = _error(part)
    if err or not isinstance(part, dict):
        return Metric(name, label, None, "%", "unknown", err or "not read")
    value = float(part["percent"])
    return Metric(name, label, value, "%", pair.level(value), detail, pair.warning, pair.critical)


def _memory_metric(s: Settings, part: Any) -> Metric:
    detail = ""
    if isinstance(part, dict) and "total_kib" in part:
        avail, total = int(part["available_kib"]) // 1024, int(part["total_kib"]) // 1024
        detail = f"{avail} of {total} MiB available"
    return _pct_metric("memory", "memory", part, s.memory, detail)


def _disk_metrics(s: Settings, part: Any) -> list[Metric]:
    if not isinstance(part, list):
        return [Metric("disk:/", "disk /", None, "%", "unknown", _error(part) or "not read")]
    out = []
    for d in part:
        name, label = f"disk:{d['path']}", f"disk {d['path']}"
        if probe.KEY_ERROR in d:  # the path is not there: what should be mounted is not
            out.append(Metric(name, label, None, "%", "critical", str(d[probe.KEY_ERROR])))
            continue
        free = human_size(int(d["avail_bytes"]))
        size = human_size(int(d["size_bytes"]))
        out.append(_pct_metric(name, label, d, s.disk, f"{free} free of {size}"))
    return out


def _health_metrics(s: Settings, part: Any) -> tuple[list[Metric], list[float]]:
    url = s.health_url
    err = _error(part) if not isinstance(part, list) else None
    if err or not isinstance(part, list) or not part:
        unknown = Metric("health", "health", None, "", "unknown", err or "not read")
        return [unknown], []
    n = len(part)
    healthy = [x for x in part if x.get("healthy")]
    answered = [float(x["ms"]) for x in part if "status" in x]
    last = part[-1]
    value: int | None = last.get("status")
    if len(healthy) == n:
        level, detail = "ok", f"{n}/{n} healthy at {url}"
    else:
        bad = next(x for x in reversed(part) if not x.get("healthy"))
        why = (
            f"HTTP {bad['status']}" + (f": {bad['body']!r}" if bad.get("body") else "")
            if "status" in bad
            else f"unreachable ({bad.get(probe.KEY_ERROR, '?')})"
        )
        level = "critical" if not healthy else "warning"
        detail = f"{len(healthy)}/{n} healthy at {url}: {why}"
    metrics = [Metric("health", "health", value, "", level, detail)]
    for p in (50, 95):
        name = f"latency_p{p}"
        if not answered:
            metrics.append(Metric(name, f"latency p{p}", None, "ms", "unknown", "no answer"))
            continue
        ms = round(percentile(answered, p), 1)
        metrics.append(
            Metric(
                name,
                f"latency p{p}",
                ms,
                "ms",
                s.latency.level(ms),
                f"over {len(answered)} GETs",
                s.latency.warning,
                s.latency.critical,
            )
        )
    return metrics, answered


def _db_metric(s: Settings, part: Any) -> Metric:
    assert s.db is not None
    err = _error(part)
    if err:
        level = "critical" if isinstance(part, dict) and part.get(probe.KEY_DOWN) else "unknown"
        return Metric(
            "db_connections",
            "db connections",
            None,
            "%",
            level,
            f"PostgreSQL: {err}",
            s.db.warning,
            s.db.critical,
        )
    used, most = int(part["used"]), int(part["max"])
    pct = round(100.0 * used / most, 1) if most else 100.0
    return Metric(
        "db_connections",
        "db connections",
        pct,
        "%",
        s.db.level(pct),
        f"{used} of max_connections {most}",
        s.db.warning,
        s.db.critical,
    )


def _pm2_metrics(s: Settings, part: Any, hc: Any, now: float) -> list[Metric]:
    err = _error(part)
    if err:
        level = "critical" if isinstance(part, dict) and part.get(probe.KEY_DOWN) else "unknown"
        return [Metric("pm2", "pm2", None, "online", level, err)]
    procs = [p for p in part.get("processes", []) if p.get("name") in s.pm2_apps]
    app = ", ".join(s.pm2_apps)
    online = [p for p in procs if p.get("status") == "online"]
    if not procs:
        pm2 = Metric("pm2", "pm2", 0, "online", "critical", f"PM2 has no process named {app!r}")
    elif len(online) < len(procs):
        states = ", ".join(sorted({str(p.get("status")) for p in procs if p not in online}))
        pm2 = Metric(
            "pm2",
            "pm2",
            len(online),
            "online",
            "critical",
            f"{len(procs) - len(online)} of {len(procs)} processes of {app} not online ({states})",
        )
    else:
        pm2 = Metric("pm2", "pm2", len(online), "online", "ok", f"{len(procs)} processes of {app}")
    out = [pm2]
    total = sum(int(p.get("restarts", 0)) for p in procs)
    baseline = hc.get("pm2_restarts") if isinstance(hc, dict) else None
    if isinstance(baseline, dict) and all(a in baseline for a in s.pm2_apps):
        # As the health check counts them: per app, never negative (a PM2 restart resets).
        since = sum(
            max(
                0,
                sum(int(p.get("restarts", 0)) for p in procs if p["name"] == a) - int(baseline[a]),
            )
            for a in s.pm2_apps
        )
        age = hc.get("age_seconds")
        when = f" ({human_seconds(age)} ago)" if isinstance(age, (int, float)) else ""
        out.append(
            Metric(
                "pm2_restarts",
                "pm2 restarts",
                since,
                "",
                s.pm2_restarts.level(since),
                f"since the last health check{when}; {total} in all",
                s.pm2_restarts.warning,
                s.pm2_restarts.critical,
            )
        )
    else:
        why = (hc or {}).get("pm2_baseline") or "no health-check baseline"
        out.append(
            Metric(
                "pm2_restarts",
                "pm2 restarts",
                total,
                "",
                "ok",
                f"in all (not graded: {why})",
            )
        )
    starts = [float(p["started_ms"]) for p in online if p.get("started_ms")]
    if starts:
        up = round(max(0.0, now - max(starts) / 1000))
        out.append(
            Metric(
                "pm2_uptime",
                "pm2 uptime",
                up,
                "s",
                "ok",
                f"youngest process up {human_seconds(up)}",
            )
        )
    return out


def _cert_metrics(s: Settings, text: str, host: str, now: dt.datetime) -> list[Metric]:
    assert s.cert_specs is not None
    found = certs_read.parse_collect(host, text, s.cert_specs)
    warning, critical = s.cert_days
    out = []
    for lineage in found.lineages:
        st = certs_judge.evaluate(
            lineage,
            now,
            warning_days=warning,
            critical_days=critical,
            host=host,
            last_hook=found.last_hook(lineage.name),
        )
        disk = lineage.disk
        detail = "; ".join(st.problems) or (
            f"not after {disk.not_after:%Y-%m-%d} UTC, nginx serves it" if disk else ""
        )
        out.append(
            Metric(
                f"cert:{lineage.name}",
                f"cert {lineage.name}",
                st.days_left,
                "days",
                st.state,
                detail,
                warning,
                critical,
            )
        )
    return out


def _backup_metric(s: Settings, part: Any) -> Metric:
    assert s.backup is not None
    b = s.backup
    err = _error(part)
    if err:
        return Metric("backup_age", "backup age", None, "h", "unknown", err)
    last = part.get("last_run") or {}
    failed = ""
    if last and not last.get("ok"):
        failed = (
            f"; LAST RUN FAILED at {last.get('failed_step') or '?'} ({last.get('finished', '?')}): "
            f"{last.get('error') or '?'}"
        )
    if "age_seconds" not in part:
        return Metric(
            "backup_age",
            "backup age",
            None,
            "h",
            "critical",
            f"no verified backup on record in {b.local_dir}{failed}",
            b.warning_hours,
            b.critical_hours,
        )
    hours = round(float(part["age_seconds"]) / 3600, 1)
    level = level_of(hours, b.warning_hours, b.critical_hours)
    if failed:
        level = worst_of([level, "warning"])
    detail = (
        f"newest verified {human_seconds(float(part['age_seconds']))} ago "
        f"({part['count']} local, schedule '{b.schedule}'){failed}"
    )
    return Metric(
        "backup_age", "backup age", hours, "h", level, detail, b.warning_hours, b.critical_hours
    )


def _healthcheck_metrics(s: Settings, part: Any) -> list[Metric]:
    assert s.healthcheck is not None
    pair = s.healthcheck
    err = _error(part)
    if err:
        return [Metric("healthcheck", "health check", None, "", "unknown", err)]
    if part.get(probe.KEY_MISSING):
        return [
            Metric(
                "healthcheck",
                "health check",
                None,
                "",
                "warning",
                f"no result yet ({HEALTHCHECK_STATUS} missing: has cron run it?)",
            )
        ]
    level = str(part.get("level") or "unknown")
    level = level if level in RANK else "unknown"
    problems = [
        f"{r['name']} {r['level']}: {_cut(str(r.get('summary', '')), 90)}"
        for r in part.get("results", [])
        if r.get("level") in RANK and r.get("level") != "ok"
    ]
    age = float(part.get("age_seconds") or 0)
    minutes = round(age / 60, 1)
    return [
        Metric(
            "healthcheck",
            "health check",
            level,
            "",
            level,
            ", ".join(problems) or "all checks ok",
        ),
        Metric(
            "healthcheck_age",
            "health check age",
            minutes,
            "min",
            pair.level(minutes),
            f"checked {human_seconds(age)} ago ({part.get('checked_at')})",
            pair.warning,
            pair.critical,
        ),
    ]


def _node_metric(part: Any) -> Metric:
    """The app's Node.js version (shown, not graded; unknown when it does not run).

    >>> _node_metric({"version": "26.12.1"}).value, _node_metric({"error": "no node"}).level
    ('26.12.1', 'unknown')
    """
    err = _error(part)
    if err or not isinstance(part, dict) or not part.get("version"):
        return Metric("node", "node", None, "", "unknown", err or "not read")
    return Metric("node", "node", str(part["version"]), "", "ok")


def _system_metrics(part: Any) -> list[Metric]:
    """The host's release (shown), its pending security updates (shown with their names: the
    base role's unattended upgrades install them daily) and whether it waits for a reboot
    (warning: an upgraded kernel or library is not in use until then)."""
    err = _error(part)
    if err or not isinstance(part, dict):
        why = err or "not read"
        return [
            Metric("os", "os", None, "", "unknown", why),
            Metric("security_updates", "security updates", None, "", "unknown", why),
            Metric("reboot", "reboot", None, "", "unknown", why),
        ]
    pretty = str(part.get("os", "unknown"))
    short = f"{pretty.split()[0]} {part['version_id']}" if part.get("version_id") else pretty
    found = [Metric("os", "os", short, "", "ok", pretty if short != pretty else "")]
    if "updates_error" in part or "security_updates" not in part:
        found.append(
            Metric(
                "security_updates",
                "security updates",
                None,
                "",
                "unknown",
                f"apt: {part.get('updates_error', 'not read')}",
            )
        )
    else:
        count = int(part.get("security_updates", 0))
        names = list(part.get("security_packages") or [])
        more = count - len(names)
        detail = ", ".join(names) + (f" and {more} more" if more > 0 else "")
        detail = f"pending: {detail}" if count else f"{int(part.get('updates', 0))} other updates"
        found.append(Metric("security_updates", "security updates", count, "", "ok", detail))
    if part.get("reboot_required"):
        pkgs = ", ".join(part.get("reboot_packages") or []) or "see /run/reboot-required"
        found.append(Metric("reboot", "reboot", "required", "", "warning", f"for {pkgs}"))
    else:
        found.append(Metric("reboot", "reboot", "not needed", "", "ok"))
    return found


def _release_metric(s: Settings, raw: Raw) -> Metric:
    if raw.release_exit == app_spec.UNPROVISIONED_EXIT:
        assert s.app is not None
        return Metric(
            "release",
            "release",
            None,
            "",
            "critical",
            f"{s.app.releases} does not exist: the app role is not provisioned",
        )
    state = deploy.parse_state(raw.release)
    if not state.current:
        return Metric("release", "release", None, "", "critical", "no current release")
    rel = state.find(state.current)
    meta = rel.meta if rel else {}
    detail = (
        f"{rel.label if rel else '?'} deployed {meta.get('deployed_at', '?')} by "
        f"{meta.get('deployed_by', '?')}"
    )
    level = "ok"
    if rel is None:
        level, detail = "critical", f"current points to {state.current}, which is not a release"
    elif rel.bad:
        level = "warning"
        detail += f"; marked BAD: {rel.bad.get('reason', '')}"
    if state.lock:
        detail += f"; LOCKED: {deploy.describe_lock(state.lock)}"
    if state.activating:
        detail += "; an activation is running"
    return Metric("release", "release", state.current, "", level, detail)


def _ungrade(m: Metric, ungraded: frozenset[str]) -> Metric:
    family = m.name.split(":", 1)[0]
    family = {"latency_p50": "latency", "latency_p95": "latency", "pm2_uptime": "pm2"}.get(
        family, family
    )
    family = "healthcheck" if family == "healthcheck_age" else family
    if family not in ungraded:
        return m
    note = "not graded (status_ungraded)" + (f": would be {m.level}" if m.level != "ok" else "")
    detail = f"{m.detail}; {note}" if m.detail else note
    return Metric(m.name, m.label, m.value, m.unit, "ok", detail)


def evaluate(
    host: Host, s: Settings, raw: Raw, now: dt.datetime
) -> tuple[list[Metric], dict[str, list[float]]]:
    """Judge what one host's probe read (pure): its metrics and its sampled series."""
    p = raw.probe
    host_now = float(p.get(probe.KEY_NOW) or now.timestamp())
    metrics: list[Metric] = []
    samples: dict[str, list[float]] = {}
    if s.health_url:
        health, answered = _health_metrics(s, p.get(probe.KEY_HEALTH))
        metrics += health
        samples["health_ms"] = answered
    cpu_detail = f"busy over {s.cpu_seconds:g} s"
    metrics.append(_pct_metric("cpu", "cpu", p.get(probe.KEY_CPU), s.cpu, cpu_detail))
    metrics.append(_memory_metric(s, p.get(probe.KEY_MEMORY)))
    metrics += _disk_metrics(s, p.get(probe.KEY_DISKS))
    metrics += _system_metrics(p.get(probe.KEY_SYSTEM))
    if s.db is not None:
        metrics.append(_db_metric(s, p.get(probe.KEY_DATABASE)))
    if s.pm2_user:
        metrics += _pm2_metrics(s, p.get(probe.KEY_PM2), p.get(probe.KEY_HEALTHCHECK), host_now)
    if s.node_bin:
        metrics.append(_node_metric(p.get(probe.KEY_NODE)))
    if s.cert_specs is not None:
        metrics += _cert_metrics(s, raw.certs, host.name, now)
    if s.backup is not None:
        metrics.append(_backup_metric(s, p.get(probe.KEY_BACKUP)))
    if s.healthcheck is not None:
        metrics += _healthcheck_metrics(s, p.get(probe.KEY_HEALTHCHECK))
    if s.app is not None:
        metrics.append(_release_metric(s, raw))
    return [_ungrade(m, s.ungraded) for m in metrics], samples
