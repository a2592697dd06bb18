#!/usr/bin/python3
"""opskit health check: the app, its database, disk, memory, CPU, PM2, error rate and latency.

Reads its JSON config (CONFIG_PATH; thresholds, what to check; no secret), runs every check,
writes the result to <state_dir>/status.json (read by `inv status`), and alerts Slack when the
state changes (which checks fail and how badly), at most every remind_minutes while it keeps
failing, and once when everything is back to OK. The webhook URL is read from a file only root
can read; it is never printed. A failed Slack call is retried on the next run.

Exit codes: 0 all OK, 1 warning, 2 critical, 3 the check itself could not run.

roles/healthcheck installs this file verbatim as /usr/local/bin/opskit-healthcheck and writes
its config (`Config`). It runs on the hosts' Python (3.11 and later) with the standard library
only, and imports nothing of opskit; the laptop side imports its paths, exit codes, check names
and JSON keys from here.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from enum import IntEnum
from typing import Any, Final, NotRequired, TypedDict, cast

# --- what the laptop side shares: paths, exit codes, check names, JSON keys -----------------

CONFIG_PATH: Final = "/etc/opskit/healthcheck.json"
STATE_DIR: Final = "/var/lib/opskit/healthcheck"  # the config's default state_dir
STATUS_NAME: Final = "status.json"  # the last result, 0644: `inv monitoring.status`, `inv status`
STATE_NAME: Final = "state.json"  # alert state and PM2 restart counts, 0600
STATUS_FILE: Final = f"{STATE_DIR}/{STATUS_NAME}"
STATE_FILE: Final = f"{STATE_DIR}/{STATE_NAME}"
# cron runs us with PATH=/usr/bin:/bin; runuser, pg_isready's peers and friends live in sbin.
PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PM2_SEARCH_PATH: Final = "/usr/local/bin:/usr/bin:/bin"


class ExitCode(IntEnum):
    """How the program exits: the worst level found, or that it could not run."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    NOT_RUN = 3  # unreadable config, or another check still running


# The checks by the name of their results (healthcheck_checks, hints, `inv status`).
HTTP: Final = "http"
DATABASE: Final = "database"
DISK: Final = "disk"
MEMORY: Final = "memory"
CPU: Final = "cpu"
PM2: Final = "pm2"
ERROR_RATE: Final = "error_rate"
P95: Final = "p95"
CHECKS: Final = (HTTP, DATABASE, DISK, MEMORY, CPU, PM2, ERROR_RATE, P95)
ACCESS_LOG: Final = "access_log"  # the config section of error_rate and p95 (one log read)


class Key:
    """Keys of status.json: {host, level, checked_at, seconds, results, alert}; each result is
    {name, level, summary, ...details}; alert is {sent, error}."""

    HOST: Final = "host"
    LEVEL: Final = "level"  # the worst level: ok, warning or critical
    CHECKED_AT: Final = "checked_at"  # ISO 8601, UTC
    SECONDS: Final = "seconds"  # how long the run took
    RESULTS: Final = "results"
    ALERT: Final = "alert"
    NAME: Final = "name"  # of a result: one of CHECKS
    SUMMARY: Final = "summary"  # of a result: one line for people
    SENT: Final = "sent"  # of the alert: what was sent (decide()), or null
    ERROR: Final = "error"  # of the alert: why Slack was not reached, or null
    HOLD: Final = "hold"  # the alert hold (read_hold()): {held, until, reason, note}
    RULES: Final = "rules"  # the alert rules (run_rules()): {firing, samples, sent, failed, ...}


class StateKey:
    """Keys of state.json (what the next run needs)."""

    NOTIFIED: Final = "notified"  # {problem key: level} that Slack was last told about
    LAST_SENT: Final = "last_sent"  # epoch seconds of the last message
    SINCE: Final = "since"  # epoch seconds since when something fails
    PM2_RESTARTS: Final = "pm2_restarts"  # {app: restarts in all} at the last check
    PM2_RELEASE: Final = "pm2_release"  # the release those counts belong to


# A result's level; "skipped" (nothing to judge) counts as ok.
RANK: Final = {"ok": 0, "skipped": 0, "warning": 1, "critical": 2}
EXIT_CODES: Final = {"ok": ExitCode.OK, "warning": ExitCode.WARNING, "critical": ExitCode.CRITICAL}

# --- the config (written by roles/healthcheck from the inventory) ---------------------------


class HttpConfig(TypedDict):
    url: str
    keyword: str  # the "status" the JSON answer must have (else: the text must contain it)
    warning_ms: float
    critical_ms: float


class DatabaseConfig(TypedDict):
    host: str
    port: int


class DiskConfig(TypedDict):
    paths: list[str]
    warning: float  # percent used
    critical: float


class PercentConfig(TypedDict):
    warning: float
    critical: float


class CpuConfig(TypedDict):
    warning: float
    critical: float
    sample_seconds: float


class Pm2Config(TypedDict):
    user: str
    home: str  # PM2_HOME
    apps: list[str]  # empty: every process PM2 has
    restarts_warning: float  # restarts since the last check
    restarts_critical: float
    current: NotRequired[str]  # the app's `current` symlink: a new release resets the counts
    bin: NotRequired[str]  # pm2 itself (default: from the PATH)


class AccessLogConfig(TypedDict):
    path: str
    window_minutes: float
    min_requests: int  # fewer requests in the window: no verdict
    error_rate_warning: NotRequired[float]  # percent of 5xx (no key: no error_rate check)
    error_rate_critical: NotRequired[float]
    p95_warning_ms: NotRequired[float]  # (no key: no p95 check)
    p95_critical_ms: NotRequired[float]


class ChecksConfig(TypedDict, total=False):
    """Which checks run (a missing one does not) and their targets and thresholds."""

    http: HttpConfig
    database: DatabaseConfig
    disk: DiskConfig
    memory: PercentConfig
    cpu: CpuConfig
    pm2: Pm2Config
    access_log: AccessLogConfig


class Config(TypedDict):
    host: str  # the name in alerts; empty: the hostname
    remind_minutes: float
    timeout: float  # seconds per probe
    state_dir: str
    slack_webhook_file: str  # the webhook URL, root 0600
    checks: ChecksConfig
    hints: dict[str, str]  # "what to do first" by check name, replacing HINTS
    hint_vars: dict[str, Any]  # what the hints' {placeholders} stand for
    _comment: NotRequired[str]
    # Alert rules (the inventory's `alerts`): none means only the Slack alerts above.
    metrics: NotRequired[dict[str, MetricConfig]]
    rules: NotRequired[list[RuleConfig]]
    targets: NotRequired[dict[str, TargetConfig]]
    targets_file: NotRequired[str]  # the targets' URLs, keys and passwords, root 0600


Result = dict[str, Any]  # {name, level, summary, ...details}: see Key

# --- judgement ------------------------------------------------------------------------------

ICON: Final = {"warning": ":warning:", "critical": ":red_circle:", "ok": ":white_check_mark:"}
COLOR: Final = {"warning": "warning", "critical": "danger", "ok": "good"}
HINTS: Final = {
    HTTP: "Check the app: `systemctl status {pm2_unit}`, `sudo -u {pm2_user} PM2_HOME={pm2_home}"
    " pm2 logs --lines 50`; if the last deploy broke it, `inv rollback`.",
    DATABASE: "Check PostgreSQL: `pg_isready -h {db_host} -p {db_port}` from this host, and"
    " `systemctl status postgresql` and its log on the database host.",
    DISK: "Free space: `du -xh {disk_path} 2>/dev/null | sort -h | tail -20` (old releases,"
    " /var/log, local backups in /var/backups).",
    MEMORY: "`ps aux --sort=-rss | head`: which process grew? PM2 restarts the app above its"
    " max_memory_restart.",
    CPU: "`top -o %CPU`: a runaway process or a traffic spike?",
    PM2: "`sudo -u {pm2_user} PM2_HOME={pm2_home} pm2 describe {pm2_apps}`, and"
    " `pm2 logs --err --lines 100` for why it restarts.",
    ERROR_RATE: "New errors in Sentry, and `tail -n 100 /var/log/nginx/error.log`; if they"
    " started with the last deploy, `inv rollback`.",
    P95: "Slow requests: slow queries in pg_stat_statements, and this host's CPU and memory.",
}


def worst(results: Sequence[Result]) -> str:
    """The worst level of `results` ("ok" when there are none; "skipped" counts as ok).

    >>> worst([result("disk", "warning", ""), result("pm2", "skipped", "")]), worst([])
    ('warning', 'ok')
    """
    level = "ok"
    for r in results:
        if RANK[r[Key.LEVEL]] > RANK[level]:
            level = r[Key.LEVEL]
    return level


def grade(value: float, warning: float | None, critical: float | None) -> str:
    """ok / warning / critical: at or above a threshold is at its level (None: no threshold).

    >>> grade(69.9, 70, 90), grade(70, 70, 90), grade(90, 70, 90), grade(5, None, None)
    ('ok', 'warning', 'critical', 'ok')
    """
    if critical is not None and value >= critical:
        return "critical"
    if warning is not None and value >= warning:
        return "warning"
    return "ok"


def result(name: str, level: str, summary: str, **extra: Any) -> Result:
    return {Key.NAME: name, Key.LEVEL: level, Key.SUMMARY: summary, **extra}


# --- the checks -----------------------------------------------------------------------------


def check_http(c: HttpConfig, timeout: float) -> Result:
    url = c["url"]
    started = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = resp.read(65536).decode("utf-8", "replace")
            status = resp.status
    except urllib.error.HTTPError as exc:
        return result(HTTP, "critical", f"{url} answered HTTP {exc.code}", status=exc.code, up=0)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return result(HTTP, "critical", f"{url} is unreachable ({reason})", up=0)
    ms = round((time.monotonic() - started) * 1000)
    keyword = c.get("keyword") or ""
    healthy = True
    if keyword:
        try:
            healthy = json.loads(body).get("status") == keyword
        except (ValueError, AttributeError):
            healthy = keyword in body
    if not healthy:
        return result(
            HTTP,
            "critical",
            f"{url} answered {status} without status {keyword!r}: {body[:120]}",
            status=status,
            ms=ms,
            up=0,
        )
    level = grade(ms, c.get("warning_ms"), c.get("critical_ms"))
    summary = f"{url} healthy in {ms} ms"
    if level != "ok":
        summary += (
            f" (slow: warning at {c.get('warning_ms')} ms, critical at {c.get('critical_ms')} ms)"
        )
    return result(HTTP, level, summary, status=status, ms=ms, up=1)


def check_database(c: DatabaseConfig, timeout: float) -> Result:
    host, port = c["host"], int(c["port"])
    if os.path.exists("/usr/bin/pg_isready"):
        try:
            p = subprocess.run(
                ["pg_isready", "-q", "-h", host, "-p", str(port), "-t", str(int(timeout))],
                capture_output=True,
                text=True,
                timeout=timeout + 5,
            )
        except subprocess.TimeoutExpired:
            return result(DATABASE, "critical", f"PostgreSQL at {host}:{port}: no answer")
        # pg_isready: 0 accepting, 1 rejecting (starting up), 2 no response, 3 no attempt
        if p.returncode == 0:
            return result(DATABASE, "ok", f"PostgreSQL at {host}:{port} accepts connections")
        why = {1: "rejecting connections", 2: "no response"}.get(p.returncode, "bad parameters")
        return result(DATABASE, "critical", f"PostgreSQL at {host}:{port}: {why}")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        return result(DATABASE, "critical", f"PostgreSQL at {host}:{port}: {exc}")
    return result(DATABASE, "ok", f"PostgreSQL port {host}:{port} open (pg_isready not installed)")


def check_disk(c: DiskConfig) -> list[Result]:
    out = []
    for path in c["paths"]:
        try:
            st = os.statvfs(path)
        except OSError as exc:
            out.append(result(DISK, "critical", f"{path}: {exc.strerror}", path=path))
            continue
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        avail = st.f_bavail * st.f_frsize
        pct = round(100.0 * used / (used + avail), 1) if used + avail else 0.0
        level = grade(pct, c["warning"], c["critical"])
        summary = (
            f"{path} {pct}% used ({avail // 2**20} MiB free; "
            f"warning {c['warning']}%, critical {c['critical']}%)"
        )
        out.append(result(DISK, level, summary, path=path, percent=pct))
    return out


def check_memory(c: PercentConfig) -> Result:
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            info[key] = int(rest.split()[0])
    total, avail = info["MemTotal"], info.get("MemAvailable", info.get("MemFree", 0))
    pct = round(100.0 * (total - avail) / total, 1)
    level = grade(pct, c["warning"], c["critical"])
    summary = (
        f"memory {pct}% used ({avail // 1024} MiB available; "
        f"warning {c['warning']}%, critical {c['critical']}%)"
    )
    return result(MEMORY, level, summary, percent=pct)


def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields), idle


def check_cpu(c: CpuConfig) -> Result:
    total1, idle1 = _cpu_times()
    time.sleep(float(c.get("sample_seconds", 1)))
    total2, idle2 = _cpu_times()
    busy = total2 - total1
    pct = round(100.0 * (busy - (idle2 - idle1)) / busy, 1) if busy else 0.0
    level = grade(pct, c["warning"], c["critical"])
    summary = f"CPU {pct}% busy (warning {c['warning']}%, critical {c['critical']}%)"
    return result(CPU, level, summary, percent=pct)


def check_pm2(c: Pm2Config, state: dict[str, Any], timeout: float) -> list[Result]:
    """Every process of the apps online, and restarts since the last check (kept in `state`)."""
    user, home = c["user"], c["home"]
    pm2 = c.get("bin") or "pm2"
    if not (shutil.which(pm2, path=PM2_SEARCH_PATH) or os.access(pm2, os.X_OK)):
        return [
            result(
                PM2, "warning", f"pm2 is not installed ({pm2} not found): the PM2 check cannot run"
            )
        ]
    pid_file = os.path.join(home, "pm2.pid")
    try:
        with open(pid_file) as f:
            pid = int(f.read().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        # `pm2 jlist` would start a daemon of its own; report instead.
        return [
            result(
                PM2,
                "critical",
                f"the PM2 daemon of {user} is not running (no live pid in {pid_file})",
            )
        ]
    try:
        p = subprocess.run(
            ["runuser", "-u", user, "--", "env", f"PM2_HOME={home}", pm2, "jlist"],
            capture_output=True,
            text=True,
            timeout=timeout + 20,
        )
        procs = json.loads(p.stdout[p.stdout.find("[") :] if "[" in p.stdout else "x")
    except (subprocess.TimeoutExpired, ValueError, OSError) as exc:
        return [result(PM2, "critical", f"pm2 jlist failed for {user}: {exc}")]
    apps = c.get("apps") or sorted({pr.get("name") for pr in procs})
    previous = state.get(StateKey.PM2_RESTARTS, {})
    # A deploy or rollback reloads every process (one restart each): when the release changed
    # since the last check, the restarts start from here instead of alerting.
    release = os.path.realpath(c["current"]) if c.get("current") else None
    if release != state.get(StateKey.PM2_RELEASE):
        previous = {}
    state[StateKey.PM2_RELEASE] = release
    current = {}
    out = []
    for app in apps:
        mine = [pr for pr in procs if pr.get("name") == app]
        if not mine:
            out.append(result(PM2, "critical", f"PM2 has no process named {app!r}", app=app))
            continue
        down = [pr for pr in mine if pr.get("pm2_env", {}).get("status") != "online"]
        restarts = sum(int(pr.get("pm2_env", {}).get("restart_time", 0)) for pr in mine)
        current[app] = restarts
        new = max(0, restarts - int(previous.get(app, restarts)))
        if down:
            states = ", ".join(sorted({pr.get("pm2_env", {}).get("status", "?") for pr in down}))
            summary = f"{app}: {len(down)} of {len(mine)} processes not online ({states})"
            out.append(result(PM2, "critical", summary, app=app))
            continue
        level = grade(new, c.get("restarts_warning"), c.get("restarts_critical"))
        summary = (
            f"{app}: {len(mine)} processes online, {new} restarts "
            f"since the last check ({restarts} in all)"
        )
        out.append(result(PM2, level, summary, app=app, restarts=new))
    state[StateKey.PM2_RESTARTS] = current
    return out


_LOG = re.compile(
    r'^\S+ \S+ \S+ \[(?P<time>[^\]]+)\] "(?P<request>[^"]*)" (?P<status>\d{3}) \S+'
    r'(?: "[^"]*" "[^"]*")?(?P<rest>.*)$'
)
_RT = re.compile(r"(?:^|\s)(?:rt=|request_time=)?(\d+\.\d+)\s*$")


def read_access_log(
    path: str, window_minutes: float, now: datetime
) -> list[tuple[int, float | None]]:
    """(status, seconds or None) of each request in the last window_minutes."""
    cutoff = now - timedelta(minutes=window_minutes)
    out = []
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 8 * 2**20))
        lines = f.read().decode("utf-8", "replace").splitlines()
    for line in reversed(lines):
        m = _LOG.match(line)
        if not m:
            continue
        try:
            when = datetime.strptime(m.group("time"), "%d/%b/%Y:%H:%M:%S %z")
        except ValueError:
            continue
        if when < cutoff:
            break
        rt = _RT.search(m.group("rest"))
        out.append((int(m.group("status")), float(rt.group(1)) if rt else None))
    return out


def check_access_log(c: AccessLogConfig, now: datetime) -> list[Result]:
    path = c["path"]
    try:
        requests = read_access_log(path, c["window_minutes"], now)
    except OSError as exc:
        return [result(ERROR_RATE, "skipped", f"{path}: {exc.strerror}")]
    out = []
    n = len(requests)
    window = f"{n} requests in {c['window_minutes']} min"
    if "error_rate_warning" in c:
        if n < c["min_requests"]:
            summary = f"{window} (fewer than {c['min_requests']}: no error rate)"
            out.append(result(ERROR_RATE, "ok", summary))
        else:
            errors = sum(1 for s, _ in requests if s >= 500)
            pct = round(100.0 * errors / n, 2)
            warning, critical = c["error_rate_warning"], c["error_rate_critical"]
            level = grade(pct, warning, critical)
            summary = f"{pct}% 5xx ({errors} of {window}; warning {warning}%, critical {critical}%)"
            out.append(result(ERROR_RATE, level, summary, percent=pct))
    if "p95_warning_ms" in c:
        times = sorted(t for _, t in requests if t is not None)
        if len(times) < c["min_requests"]:
            why = "no request times in the log" if n and not times else window
            out.append(result(P95, "ok", f"p95 not computed ({why})"))
        else:
            p95 = round(times[max(0, -(-95 * len(times) // 100) - 1)] * 1000)
            warning, critical = c["p95_warning_ms"], c["p95_critical_ms"]
            level = grade(p95, warning, critical)
            summary = f"p95 {p95} ms over {window} (warning {warning} ms, critical {critical} ms)"
            out.append(result(P95, level, summary, ms=p95))
    return out


def run_checks(config: Config, state: dict[str, Any]) -> list[Result]:
    """Every configured check, in a fixed order; a check that crashes is a critical result."""
    checks = cast("dict[str, Any]", config["checks"])
    timeout = float(config.get("timeout", 10))
    now = datetime.now(UTC)
    runners: list[tuple[str, Callable[[Any], list[Result]]]] = [
        (HTTP, lambda c: [check_http(c, timeout)]),
        (DATABASE, lambda c: [check_database(c, timeout)]),
        (DISK, check_disk),
        (MEMORY, lambda c: [check_memory(c)]),
        (CPU, lambda c: [check_cpu(c)]),
        (PM2, lambda c: check_pm2(c, state, timeout)),
        (ACCESS_LOG, lambda c: check_access_log(c, now)),
    ]
    out: list[Result] = []
    for name, run in runners:
        if name not in checks:
            continue
        try:
            out.extend(run(checks[name]))
        except Exception as exc:  # a broken check is reported, the others still run
            out.append(result(name, "critical", f"the {name} check failed: {exc!r}"))
    return out


# --- alerting -------------------------------------------------------------------------------


def problem_key(r: Result) -> str:
    """What identifies a problem across runs: the check, and its path or app if it has one.

    >>> problem_key(result("disk", "warning", "", path="/var"))
    'disk /var'
    >>> problem_key(result("cpu", "ok", ""))
    'cpu'
    """
    detail = r.get("path") or r.get("app") or ""
    return f"{r[Key.NAME]} {detail}" if detail else str(r[Key.NAME])


def problems_of(results: Sequence[Result]) -> dict[str, str]:
    """{problem key: level} of the results that are not ok: the state alerts are about."""
    return {problem_key(r): r[Key.LEVEL] for r in results if RANK[r[Key.LEVEL]] > 0}


def hint(config: Config, name: str) -> str:
    hints = {**HINTS, **config.get("hints", {})}
    text = hints.get(name, "")
    try:
        return text.format(**config.get("hint_vars", {}))
    except (KeyError, IndexError):
        return text


SLACK_TEXT_KEYS = frozenset({"text", "fallback", "title", "value", "pretext", "footer"})


def slack_escape(text: str) -> str:
    """Slack's control characters as the entities Slack asks for, so that text from a health
    endpoint can neither ping (`<!channel>`) nor link; nothing else is encoded
    (https://api.slack.com/reference/surfaces/formatting#escaping).

    >>> slack_escape("<!channel> & <b>")
    '&lt;!channel&gt; &amp; &lt;b&gt;'
    """
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def escape_payload(value: Any, key: str = "") -> Any:
    """The payload with every text field (text, fallback, title, value, ...) escaped."""
    if isinstance(value, dict):
        return {k: escape_payload(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [escape_payload(v, key) for v in value]
    if isinstance(value, str) and key in SLACK_TEXT_KEYS:
        return slack_escape(value)
    return value


def message(
    config: Config,
    kind: str,
    level: str,
    problems: Mapping[str, str],
    results: Sequence[Result],
    since: float | None,
    recovered: Sequence[str],
) -> dict[str, Any]:
    """The Slack payload of `kind` (decide()): text and one attachment."""
    host = config["host"]
    failing = [r for r in results if problem_key(r) in problems]
    if kind == "recovered":
        seconds = int(time.time() - since) if since else 0
        lasted = f" after {seconds} s" if seconds < 120 else f" after {seconds // 60} min"
        lasted = lasted if since else ""
        text = f"{ICON['ok']} RECOVERED {host}: all checks OK{lasted} (was: {', '.join(recovered)})"
        summaries = "\n".join(
            f"{r[Key.NAME]}: {r[Key.SUMMARY]}" for r in results if r[Key.LEVEL] != "skipped"
        )
        all_ok: dict[str, Any] = {
            "color": COLOR["ok"],
            "fallback": text,
            "text": summaries,
            "footer": "opskit healthcheck",
        }
        return dict(escape_payload({"text": text, "attachments": [all_ok]}))
    label = {"alert": "", "changed": " (changed)", "reminder": " (still failing)"}[kind]
    what = ", ".join(f"{r[Key.NAME]} {r[Key.LEVEL]}" for r in failing)
    text = f"{ICON[level]} {level.upper()} {host}{label}: {what}"
    first: list[str] = []
    for r in failing:
        h = hint(config, r[Key.NAME])
        if h and h not in first:
            first.append(h)
    fields = [
        {"title": f"{r[Key.NAME]} ({r[Key.LEVEL]})", "value": r[Key.SUMMARY], "short": False}
        for r in failing
    ]
    if recovered:
        fields.append({"title": "recovered", "value": ", ".join(recovered), "short": False})
    attachment: dict[str, Any] = {
        "color": COLOR[level],
        "fallback": text,
        "title": f"{host}: {what}",
        "fields": fields,
        "footer": "opskit healthcheck",
        "text": "What to do first: " + " ".join(first) if first else "",
    }
    return dict(escape_payload({"text": text, "attachments": [attachment]}))


def post_slack(config: Config, payload: Mapping[str, Any]) -> str | None:
    """Send `payload`; return None on success, else why not (never the URL)."""
    path = config["slack_webhook_file"]
    try:
        with open(path) as f:
            url = f.read().strip()
    except OSError as exc:
        return f"cannot read the webhook file {path}: {exc.strerror}"
    if not url:
        return f"the webhook file {path} is empty"
    data = json.dumps(payload).encode()
    for attempt in range(3):
        req = urllib.request.Request(
            url, data=data, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=float(config.get("timeout", 10))) as resp:
                resp.read()
                return None
        except urllib.error.HTTPError as exc:
            body = exc.read(200).decode("utf-8", "replace").strip()
            if exc.code == 429 and attempt < 2:
                time.sleep(min(10.0, float(exc.headers.get("Retry-After") or 1)))
                continue
            return f"Slack answered HTTP {exc.code} {body}"
        except (urllib.error.URLError, OSError) as exc:
            if attempt < 2:
                time.sleep(1 + attempt)
                continue
            return f"Slack is unreachable ({getattr(exc, 'reason', exc)})"
    return "Slack kept answering 429"


def decide(
    state: Mapping[str, Any], problems: Mapping[str, str], level: str, now: float, remind: float
) -> str | None:
    """What to send: None, 'alert', 'changed', 'reminder' or 'recovered'.

    A change of the failing set (or of a level) is sent at once; an unchanged problem again
    only `remind` seconds after the last message; nothing while all is OK.
    """
    notified = state.get(StateKey.NOTIFIED, {})
    if problems != notified:
        if not problems:
            return "recovered"
        return "changed" if notified else "alert"
    if problems and now - state.get(StateKey.LAST_SENT, 0) >= remind:
        return "reminder"
    return None


def sent(state: dict[str, Any], problems: Mapping[str, str], now: float) -> None:
    """Record in `state` that Slack now knows `problems` (after a successful message)."""
    state[StateKey.NOTIFIED] = dict(problems)
    state[StateKey.LAST_SENT] = now


# --- alert rules: custom metrics, conditions held `for` a while, routed to named targets ------

# The metrics a rule may name besides the custom ones (config "metrics"), from the checks' results.
METRICS: Final = {
    "error_rate": "percent of 5xx answers in the access-log window (error_rate check)",
    "p95": "p95 latency in ms over the access-log window (p95 check)",
    "http_down": "1 when the health endpoint is unreachable or unhealthy, else 0 (http check)",
    "http_ms": "the health endpoint's response time in ms (http check)",
    "database_down": "1 when the database does not accept connections, else 0 (database check)",
    "disk": "used percent of the fullest checked file system (disk check)",
    "memory": "used memory, percent (memory check)",
    "cpu": "busy CPU, percent (cpu check)",
    "pm2_restarts": "PM2 restarts since the last check, the most of any app (pm2 check)",
}
METRIC_KINDS: Final = ("sql", "http_json", "command")  # custom metrics
OPERATORS: Final = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}
SEVERITIES: Final = ("critical", "high", "warning", "info")
TARGET_KINDS: Final = ("slack", "pagerduty", "email")
# PagerDuty's payload.severity is one of critical, error, warning, info
# (https://developer.pagerduty.com/docs/events-api-v2/trigger-events/).
PAGERDUTY_SEVERITY: Final = {"critical": "critical", "high": "error", "warning": "warning"}
PAGERDUTY_URL: Final = "https://events.pagerduty.com/v2/enqueue"
RULES_KEY: Final = "rules"  # state.json: {rule: {since, value, sent: {target: {state, at}}}}
# The alert hold (a maintenance window, written by a deploy): {"until": <epoch s>, "reason": ".."}.
# While now < until the check still measures and writes status.json (marked held) but sends
# nothing; afterwards it compares against what was last *notified*.
HOLD_NAME: Final = "hold.json"
HOLD_FILE: Final = f"{STATE_DIR}/{HOLD_NAME}"
MAX_HOLD_SECONDS: Final = 24 * 3600  # a hold further ahead is taken as garbled and ignored


class MetricConfig(TypedDict):
    kind: str  # sql | http_json | command
    query: NotRequired[str]  # sql: one number, run with psql as postgres
    database: NotRequired[str]  # sql: the database (default postgres)
    url: NotRequired[str]  # http_json: GET this
    field: NotRequired[str]  # http_json: dotted path of the number in the answer
    command: NotRequired[str]  # command: run with sh -c as root; its stdout is a number


class RuleConfig(TypedDict):
    name: str
    metric: str
    op: str
    value: float
    for_seconds: float
    severity: str
    notify: list[str]  # target names
    description: NotRequired[str]


class TargetConfig(TypedDict):
    kind: str  # slack | pagerduty | email
    url: NotRequired[str]  # pagerduty: the Events API v2 enqueue URL
    smtp_host: NotRequired[str]
    smtp_port: NotRequired[int]
    starttls: NotRequired[bool]
    username: NotRequired[str]
    sender: NotRequired[str]
    to: NotRequired[list[str]]


class Hold(TypedDict):
    held: bool
    until: NotRequired[float]
    reason: NotRequired[str]
    note: NotRequired[str]  # why a hold file was ignored


def read_hold(path: str, now: float) -> Hold:
    """The hold in `path`: held while now < until; a missing file is no hold, a stale (ended),
    garbled or implausible (more than MAX_HOLD_SECONDS ahead) one is ignored with a note.

    >>> import tempfile; d = tempfile.mkdtemp(); p = os.path.join(d, "hold.json")
    >>> read_hold(p, 100)
    {'held': False}
    >>> _ = open(p, "w").write('{"until": 160, "reason": "deploy r42"}')
    >>> read_hold(p, 100)
    {'held': True, 'until': 160.0, 'reason': 'deploy r42'}
    >>> read_hold(p, 200)["note"]
    'hold ended at 1970-01-01T00:02:40+00:00 (deploy r42)'
    >>> _ = open(p, "w").write('{"until": "soon"')
    >>> read_hold(p, 100)["note"]
    'ignored a garbled hold file: not JSON {"until": <unix seconds>, "reason": "<text>"}'
    """
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return {"held": False}
    except (OSError, ValueError):
        data = None
    until = data.get("until") if isinstance(data, dict) else None
    if isinstance(until, bool) or not isinstance(until, (int, float)):
        why = 'not JSON {"until": <unix seconds>, "reason": "<text>"}'
        return {"held": False, "note": f"ignored a garbled hold file: {why}"}
    reason = str(cast("dict[str, Any]", data).get("reason") or "")
    when = datetime.fromtimestamp(until, UTC).isoformat(timespec="seconds")
    if until <= now:
        return {"held": False, "note": f"hold ended at {when} ({reason})"}
    if until - now > MAX_HOLD_SECONDS:
        note = f"ignored a hold until {when}: more than {MAX_HOLD_SECONDS // 3600} h ahead"
        return {"held": False, "note": note}
    return {"held": True, "until": float(until), "reason": reason}


def builtin_samples(results: Sequence[Result]) -> dict[str, float]:
    """The built-in metrics (METRICS) measured by this run's results; a check that did not run
    or gave no verdict (too few requests) gives no sample.

    >>> builtin_samples([result("disk", "ok", "", percent=40.0), result("disk", "ok", "",
    ...     percent=81.5), result("http", "critical", "", up=0), result("database", "ok", "")])
    {'disk': 81.5, 'http_down': 1.0, 'database_down': 0.0}
    """
    out: dict[str, float] = {}
    for r in results:
        name = r[Key.NAME]
        if name == DISK and "percent" in r:
            out["disk"] = max(out.get("disk", 0.0), float(r["percent"]))
        elif name in (MEMORY, CPU, ERROR_RATE) and "percent" in r:
            out[name] = float(r["percent"])
        elif name == P95 and "ms" in r:
            out["p95"] = float(r["ms"])
        elif name == HTTP:
            out["http_down"] = 0.0 if r.get("up") else 1.0
            if "ms" in r:
                out["http_ms"] = float(r["ms"])
        elif name == DATABASE:
            out["database_down"] = 1.0 if r[Key.LEVEL] == "critical" else 0.0
        elif name == PM2 and "restarts" in r:
            out["pm2_restarts"] = max(out.get("pm2_restarts", 0.0), float(r["restarts"]))
    return out


def json_field(data: Any, path: str) -> float:
    """The number at the dotted `path` of `data` (list items by index).

    >>> json_field({"payments": {"failed": [3, 7]}}, "payments.failed.1")
    7.0
    """
    for part in path.split(".") if path else []:
        data = data[int(part)] if isinstance(data, list) else data[part]
    if isinstance(data, bool) or not isinstance(data, (int, float, str)):
        raise ValueError(f"{path}: not a number: {data!r}")
    return float(data)


def measure(c: MetricConfig, timeout: float) -> float:
    """One custom metric's number now; raises (OSError, ValueError, ...) when there is none."""
    kind = c["kind"]
    if kind == "http_json":
        with urllib.request.urlopen(c["url"], timeout=timeout) as resp:
            return json_field(json.loads(resp.read(2**20)), c.get("field", ""))
    if kind == "sql":
        argv = ["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-A", "-t"]
        argv += ["-v", "ON_ERROR_STOP=1", "-d", c.get("database") or "postgres"]
        argv += ["-c", c["query"]]
    else:
        argv = ["sh", "-c", c["command"]]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 5)
    if p.returncode != 0:
        raise ValueError(f"exit {p.returncode}: {p.stderr.strip()[:200]}")
    return float(p.stdout.strip().splitlines()[0] if p.stdout.strip() else "x")


def custom_samples(
    metrics: Mapping[str, MetricConfig], timeout: float
) -> tuple[dict[str, float], dict[str, str]]:
    """(value by metric, why not by metric) of the custom metrics."""
    values, errors = {}, {}
    for name, c in metrics.items():
        try:
            values[name] = measure(c, timeout)
        except Exception as exc:  # no sample: the rules on it wait
            errors[name] = f"{type(exc).__name__}: {exc}"[:300]
    return values, errors


class Notification(TypedDict):
    rule: str
    target: str
    kind: str  # trigger | reminder | resolve
    severity: str
    value: float | None
    since: float | None


def evaluate(
    rules: Sequence[RuleConfig],
    samples: Mapping[str, float],
    state: dict[str, Any],
    now: float,
    *,
    held: bool = False,
    remind: float = 3600.0,
) -> list[Notification]:
    """Update `state` (state.json's RULES_KEY) with this run's `samples` and return what to send
    (pure: no clock, no I/O). A rule fires once its condition has held for `for_seconds`
    (continuously, since the first sample that met it); each target is told `trigger` once,
    `reminder` every `remind` seconds while it fires (not PagerDuty: it keeps an incident open
    by itself), `resolve` once the condition clears. A metric without a sample leaves its rule
    as it was. While `held`, the rules are measured but nothing is sent; what is sent later is
    against what each target was last *told* (mark_sent()).

    >>> rule: RuleConfig = {"name": "r", "metric": "m", "op": ">", "value": 5, "for_seconds": 120,
    ...     "severity": "critical", "notify": ["ops"]}
    >>> st: dict[str, Any] = {}
    >>> [evaluate([rule], {"m": 9}, st, t) for t in (0, 60)], evaluate([rule], {"m": 1}, st, 90)
    ([[], []], [])
    >>> [n["kind"] for t in (100, 160, 220) for n in evaluate([rule], {"m": 9}, st, t)]
    ['trigger']
    """
    rule_states = state.setdefault(RULES_KEY, {})
    for name in set(rule_states) - {r["name"] for r in rules}:
        del rule_states[name]  # a rule that is gone sends nothing more
    out: list[Notification] = []
    for rule in rules:
        rs = rule_states.setdefault(rule["name"], {"since": None, "sent": {}})
        value = samples.get(rule["metric"])
        if value is None:
            continue
        rs["value"] = value
        if OPERATORS[rule["op"]](value, rule["value"]):
            rs["since"] = rs.get("since") if rs.get("since") is not None else now
        else:
            rs["since"] = None
        firing = rs["since"] is not None and now - rs["since"] >= rule["for_seconds"]
        rs["firing"] = firing
        if held:
            continue
        for target in rule["notify"]:
            told = rs["sent"].get(target, {})
            kind = None
            if firing and told.get("state") != "firing":
                kind = "trigger"
            elif firing and now - float(told.get("at", now)) >= remind:
                kind = "reminder" if told.get("kind") != "pagerduty" else None
            elif not firing and told.get("state") == "firing":
                kind = "resolve"
            if kind:
                out.append(
                    {
                        "rule": rule["name"],
                        "target": target,
                        "kind": kind,
                        "severity": rule["severity"],
                        "value": value,
                        "since": rs["since"],
                    }
                )
    return out


def mark_sent(state: dict[str, Any], n: Notification, now: float, target_kind: str) -> None:
    """Record that `n` reached its target (after a successful send)."""
    sent = state[RULES_KEY][n["rule"]]["sent"]
    if n["kind"] == "resolve":
        sent.pop(n["target"], None)
    else:
        sent[n["target"]] = {"state": "firing", "at": now, "kind": target_kind}


def dedup_key(host: str, rule: str) -> str:
    """PagerDuty's dedup_key of a rule on a host: trigger and resolve name the same incident.

    >>> dedup_key("web1", "API down")
    'opskit/web1/API down'
    """
    return f"opskit/{host}/{rule}"


def rule_text(config: Config, rule: RuleConfig, n: Notification, now: float) -> str:
    """One line: what fired (or cleared) where, with the value and the condition."""
    host = config["host"]
    cond = f"{rule['metric']} {rule['op']} {rule['value']:g}"
    value = "no value" if n["value"] is None else f"{n['value']:g}"
    if n["kind"] == "resolve":
        return f"RESOLVED {host}: {rule['name']} ({cond} no longer holds; now {value})"
    lasted = f" for {int(now - n['since']) // 60} min" if n["since"] is not None else ""
    label = " (still firing)" if n["kind"] == "reminder" else ""
    sev = rule["severity"].upper()
    return f"{sev} {host}{label}: {rule['name']} ({cond}{lasted}; now {value})"


def _post_json(url: str, body: Mapping[str, Any], timeout: float) -> tuple[int, str]:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    for attempt in range(3):
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read(2000).decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            text = exc.read(300).decode("utf-8", "replace").strip()
            if exc.code == 429 and attempt < 2:
                time.sleep(min(10.0, float(exc.headers.get("Retry-After") or 1)))
                continue
            return exc.code, text
    return 429, "kept answering 429"


def send_notification(
    config: Config,
    rule: RuleConfig,
    n: Notification,
    target: TargetConfig,
    secret: Mapping[str, Any],
    now: float,
) -> str | None:
    """Send `n` to its target; None on success, else why not (never a URL, key or password)."""
    timeout = float(config.get("timeout", 10))
    text = rule_text(config, rule, n, now)
    kind = target["kind"]
    try:
        if kind == "slack":
            level = "ok" if n["kind"] == "resolve" else "critical"
            if rule["severity"] in ("warning", "info") and n["kind"] != "resolve":
                level = "warning"
            payload = {
                "text": f"{ICON[level]} {text}",
                "attachments": [
                    {
                        "color": COLOR[level],
                        "fallback": text,
                        "text": rule.get("description", ""),
                        "footer": "opskit healthcheck rule",
                    }
                ],
            }
            status, body = _post_json(str(secret["url"]), escape_payload(payload), timeout)
            return None if status == 200 else f"Slack answered HTTP {status} {body[:200]}"
        if kind == "pagerduty":
            event: dict[str, Any] = {
                "routing_key": str(secret["routing_key"]),
                "event_action": "resolve" if n["kind"] == "resolve" else "trigger",
                "dedup_key": dedup_key(config["host"], rule["name"]),
            }
            if n["kind"] != "resolve":
                event["payload"] = {
                    "summary": text[:1024],
                    "source": config["host"],
                    "severity": PAGERDUTY_SEVERITY.get(rule["severity"], "info"),
                    "component": rule["metric"],
                    "custom_details": {"value": n["value"], "rule": rule["name"]},
                }
            status, body = _post_json(target.get("url") or PAGERDUTY_URL, event, timeout)
            return None if status == 202 else f"PagerDuty answered HTTP {status} {body[:200]}"
        msg = EmailMessage()
        msg["Subject"] = text[:200]
        msg["From"] = target["sender"]
        msg["To"] = ", ".join(target["to"])
        msg.set_content(f"{text}\n\n{rule.get('description', '')}\n-- opskit healthcheck\n")
        with smtplib.SMTP(target["smtp_host"], target["smtp_port"], timeout=timeout) as smtp:
            if target.get("starttls"):
                smtp.starttls(context=ssl.create_default_context())
            if target.get("username"):
                smtp.login(target["username"], str(secret.get("password", "")))
            smtp.send_message(msg)
        return None
    except (OSError, smtplib.SMTPException, KeyError, ValueError) as exc:
        return f"{kind} failed: {type(exc).__name__}: {getattr(exc, 'reason', exc)}"


def read_targets_file(path: str) -> dict[str, Any]:
    """The targets' secrets (root 0600): {target: {url | routing_key | password}}."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def run_rules(
    config: Config, state: dict[str, Any], results: Sequence[Result], now: float, *, send: bool
) -> dict[str, Any]:
    """Measure the custom metrics, evaluate the rules, send (`send`); the status section."""
    rules = config.get("rules", [])
    if not rules:
        return {}
    timeout = float(config.get("timeout", 10))
    samples = builtin_samples(results)
    custom, errors = custom_samples(config.get("metrics", {}), timeout)
    samples.update(custom)
    remind = 60 * float(config["remind_minutes"])
    todo = evaluate(rules, samples, state, now, held=not send, remind=remind)
    targets = config.get("targets", {})
    secrets = read_targets_file(config.get("targets_file", "")) if todo else {}
    by_name = {r["name"]: r for r in rules}
    sent, failed = [], []
    for n in todo:
        target = targets[n["target"]]
        error = send_notification(
            config, by_name[n["rule"]], n, target, secrets.get(n["target"], {}), now
        )
        line = f"{n['kind']} {n['rule']} -> {n['target']}"
        if error is None:
            mark_sent(state, n, now, target["kind"])
            sent.append(line)
        else:
            failed.append(f"{line}: {error}")
            print(f"opskit-healthcheck: {line}: {error}", file=sys.stderr)
    firing = sorted(n for n, rs in state.get(RULES_KEY, {}).items() if rs.get("firing"))
    return {
        "firing": firing,
        "samples": samples,
        "metric_errors": errors,
        "sent": sent,
        "failed": failed,
    }


# --- a run: lock, state, checks, alert, status file -----------------------------------------


def write_json(path: str, data: Mapping[str, Any], mode: int = 0o644) -> None:
    """Replace `path` atomically with `data` as JSON, with `mode`."""
    tmp = f"{path}.tmp"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def read_state(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            state = json.load(f)
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def check_and_alert(config: Config, state: dict[str, Any], *, alert: bool) -> dict[str, Any]:
    """Run the checks, alert Slack as decide() says (`alert`), update `state`; the status."""
    started = time.time()
    results = run_checks(config, state)
    level = worst(results)
    problems = problems_of(results)
    if problems and not state.get(StateKey.SINCE):
        state[StateKey.SINCE] = started
    hold = read_hold(os.path.join(config["state_dir"], HOLD_NAME), started)
    outcome: dict[str, str | None] = {Key.SENT: None, Key.ERROR: None}
    kind = decide(state, problems, level, started, 60 * float(config["remind_minutes"]))
    rules = run_rules(config, state, results, started, send=alert and not hold["held"])
    if kind and alert and not hold["held"]:
        recovered = sorted(set(state.get(StateKey.NOTIFIED, {})) - set(problems))
        since = state.get(StateKey.SINCE)
        payload = message(config, kind, level, problems, results, since, recovered)
        error = post_slack(config, payload)
        if error is None:
            sent(state, problems, started)
            outcome[Key.SENT] = kind
        else:
            outcome[Key.ERROR] = error
            print(f"opskit-healthcheck: could not alert Slack ({kind}): {error}", file=sys.stderr)
    if not problems:
        state.pop(StateKey.SINCE, None)
    return {
        Key.HOST: config["host"],
        Key.LEVEL: level,
        Key.CHECKED_AT: datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
        Key.SECONDS: round(time.time() - started, 2),
        Key.RESULTS: results,
        Key.ALERT: outcome,
        Key.HOLD: hold,
        Key.RULES: rules,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="opskit health check (see the file's header)")
    parser.add_argument("--config", default=CONFIG_PATH)
    parser.add_argument("--no-alert", action="store_true", help="check and print; send nothing")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--quiet", action="store_true", help="print only problems (for cron)")
    args = parser.parse_args(argv)
    try:
        with open(args.config) as f:
            config = cast(Config, json.load(f))
    except (OSError, ValueError) as exc:
        print(f"opskit-healthcheck: cannot read {args.config}: {exc}", file=sys.stderr)
        return ExitCode.NOT_RUN
    config["host"] = config.get("host") or socket.gethostname()
    state_dir = config["state_dir"]
    os.makedirs(state_dir, mode=0o755, exist_ok=True)
    with open(os.path.join(state_dir, ".lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            print("opskit-healthcheck: another check is running", file=sys.stderr)
            return ExitCode.NOT_RUN
        state_path = os.path.join(state_dir, STATE_NAME)
        state = read_state(state_path)
        status = check_and_alert(config, state, alert=not args.no_alert)
        if not args.no_alert:
            write_json(state_path, state, 0o600)
            write_json(os.path.join(state_dir, STATUS_NAME), status)
    if args.json:
        print(json.dumps(status, indent=1))
    else:
        for r in status[Key.RESULTS]:
            if not args.quiet or RANK[r[Key.LEVEL]] > 0:
                print(f"{r[Key.LEVEL].upper():<8} {r[Key.NAME]:<10} {r[Key.SUMMARY]}")
        if status[Key.ALERT][Key.SENT]:
            print(f"slack: sent {status[Key.ALERT][Key.SENT]}")
        if status[Key.HOLD]["held"]:
            print(f"held until {status[Key.HOLD]['until']:.0f}: {status[Key.HOLD]['reason']}")
        for line in status[Key.RULES].get("sent", []):
            print(f"rule: sent {line}")
    return EXIT_CODES[status[Key.LEVEL]]


if __name__ == "__main__":
    os.environ["PATH"] = PATH  # as cron runs us: see PATH
    sys.exit(main())
