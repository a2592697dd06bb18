"""The host's own history for `inv report.daily|weekly`, read on the host (read-only).

The report sends this module's source in its one remote command per host and runs it as
`python3 - PARAMS_JSON` (standard library only, Python 3.11+). It prints one JSON object
(`History`):

- `nginx`: requests, 4xx, 5xx and request-time percentiles per hour or day from the access log,
  rotated logs (`.1`, `.N.gz`) included, within the window;
- `alerts`: the health check's runs that logged problems (cron pipes them to
  `logger -t opskit-healthcheck`), from the journal, else from /var/log/syslog*, and the last
  result of the health check however it ran.

The laptop side (opskit.report) imports the parameter and JSON shapes, the bucket names and
their label formats from here.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, TypedDict

# --- what the laptop and the host share -------------------------------------------------------

HOUR: Literal["hour"] = "hour"
DAY: Literal["day"] = "day"
Bucket = Literal["hour", "day"]
# Bucket labels (UTC): the report's tables and charts name the hours and days the same way.
HOUR_FORMAT = "%Y-%m-%dT%H:00Z"
DAY_FORMAT = "%Y-%m-%d"
# The health check's syslog tag (roles/healthcheck's cron line) and its last result.
HEALTHCHECK_TAG = "opskit-healthcheck"
HEALTHCHECK_STATUS = "/var/lib/opskit/healthcheck/status.json"
MAX_RUNS = 3000  # alert runs kept (the newest)
TOP_PATHS = 5  # paths with the most 5xx answers


class Params(TypedDict):
    """What the report asks for (argv[1], JSON): the window as UNIX times, the bucket size, the
    access log to aggregate (None: no nginx on this host)."""

    since: float
    until: float
    bucket: Bucket
    access_log: str | None


# One hour's or day's traffic ("4xx" is not a name: the functional form of TypedDict).
Counts = TypedDict(
    "Counts",
    {
        "requests": int,
        "4xx": int,
        "5xx": int,
        "p50_ms": float | None,
        "p95_ms": float | None,
        "timed": int,
    },
)


class NginxError(TypedDict):
    path: str
    error: str


class Nginx(TypedDict):
    path: str
    files: list[str]
    buckets: dict[str, Counts]
    unparsed: int
    with_times: int
    top_5xx_paths: list[tuple[str, int]]


class Run(TypedDict):
    """One run of the health check: its problem lines [level, check, summary], the Slack message
    it sent (alert, changed, recovered), a Slack failure, its other lines."""

    problems: list[list[str]]
    sent: str | None
    slack_error: str | None
    other: list[str]
    time: str


class LastCheck(TypedDict):
    time: str
    level: str


class Alerts(TypedDict):
    source: str  # journal, syslog or none
    runs: list[Run]
    dropped: int
    last: LastCheck | None


class History(TypedDict):
    nginx: Nginx | NginxError | None
    alerts: Alerts


# --- nginx's access log ------------------------------------------------------------------------

# nginx's combined format, optionally followed by $request_time (`rt=0.123` or a bare number).
LOG = re.compile(
    r'^\S+ \S+ \S+ \[(?P<time>[^\]]+)\] "(?P<request>[^"]*)" (?P<status>\d{3}) \S+'
    r'(?: "[^"]*" "[^"]*")?(?P<rest>.*)$'
)
RT = re.compile(r"(?:^|\s)(?:rt=|request_time=)?(\d+\.\d+)\s*$")


@dataclass(frozen=True)
class Request:
    """One access-log line: when, the status, the path asked for, the request time if logged."""

    ts: float
    status: int
    path: str
    seconds: float | None


def parse_line(line: str) -> Request | None:
    """The request of one access-log line; None when the line is not in the log format.

    >>> r = parse_line('1.2.3.4 - - [23/Nov/2026:05:10:00 +0000] "GET /a?x=1 HTTP/1.1" 502 9 '
    ...                '"-" "curl/8" 0.250')
    >>> r.status, r.path, r.seconds, datetime.fromtimestamp(r.ts, UTC).hour
    (502, '/a', 0.25, 5)
    >>> parse_line("garbage") is None
    True
    """
    m = LOG.match(line)
    if not m:
        return None
    try:
        when = datetime.strptime(m.group("time"), "%d/%b/%Y:%H:%M:%S %z")
    except ValueError:
        return None
    parts = m.group("request").split()
    path = parts[1].split("?")[0][:80] if len(parts) > 1 else "?"
    rt = RT.search(m.group("rest"))
    seconds = float(rt.group(1)) if rt else None
    return Request(when.timestamp(), int(m.group("status")), path, seconds)


def bucket_of(ts: float, bucket: Bucket) -> str:
    """The label of the hour or day (UTC) that holds `ts`.

    >>> bucket_of(0, "hour"), bucket_of(0, "day")
    ('1970-01-01T00:00Z', '1970-01-01')
    """
    return datetime.fromtimestamp(ts, UTC).strftime(HOUR_FORMAT if bucket == HOUR else DAY_FORMAT)


def percentile(sorted_values: Sequence[float], p: int) -> float | None:
    """The `p`th percentile (nearest rank) of seconds, in milliseconds; None without values.

    >>> percentile([0.1, 0.2, 0.3, 2.5], 50), percentile([0.1, 0.2, 0.3, 2.5], 95)
    (200.0, 2500.0)
    """
    if not sorted_values:
        return None
    i = max(0, -(-p * len(sorted_values) // 100) - 1)
    return round(sorted_values[i] * 1000, 1)


@dataclass
class _Tally:
    requests: int = 0
    c4xx: int = 0
    c5xx: int = 0
    times: list[float] = field(default_factory=list)


@dataclass
class Traffic:
    """Requests per bucket, lines not understood, the paths answered 5xx most often."""

    buckets: dict[str, _Tally] = field(default_factory=dict)
    unparsed: int = 0
    with_times: int = 0
    errors_by_path: dict[str, int] = field(default_factory=dict)

    def add(self, req: Request | None, since: float, until: float, bucket: Bucket) -> None:
        """Count one parsed line (None: a line not understood) if it falls in the window."""
        if req is None:
            self.unparsed += 1
            return
        if req.ts < since or req.ts > until:
            return
        t = self.buckets.setdefault(bucket_of(req.ts, bucket), _Tally())
        t.requests += 1
        if req.status >= 500:
            t.c5xx += 1
            self.errors_by_path[req.path] = self.errors_by_path.get(req.path, 0) + 1
        elif req.status >= 400:
            t.c4xx += 1
        if req.seconds is not None:
            t.times.append(req.seconds)
            self.with_times += 1

    def counts(self) -> dict[str, Counts]:
        """Per bucket, in time order: requests, 4xx, 5xx, p50 and p95 request times (ms)."""
        out: dict[str, Counts] = {}
        for key, t in sorted(self.buckets.items()):
            times = sorted(t.times)
            out[key] = {
                "requests": t.requests,
                "4xx": t.c4xx,
                "5xx": t.c5xx,
                "p50_ms": percentile(times, 50),
                "p95_ms": percentile(times, 95),
                "timed": len(times),
            }
        return out

    def top_5xx_paths(self) -> list[tuple[str, int]]:
        return sorted(self.errors_by_path.items(), key=lambda kv: -kv[1])[:TOP_PATHS]


def aggregate(lines: Iterable[str], since: float, until: float, bucket: Bucket) -> Traffic:
    """Access-log lines counted per hour or day of the window [since, until].

    >>> line = '1.2.3.4 - - [01/Jan/1970:01:00:00 +0000] "GET / HTTP/1.1" {} 9 "-" "c" 0.1'
    >>> t = aggregate([line.format(200), line.format(503), "junk"], 0, 7200, "hour")
    >>> [(k, c["requests"], c["5xx"]) for k, c in t.counts().items()], t.unparsed
    ([('1970-01-01T01:00Z', 2, 1)], 1)
    """
    traffic = Traffic()
    for line in lines:
        traffic.add(parse_line(line), since, until, bucket)
    return traffic


def log_files(path: str, since: float) -> list[str]:
    """The log and its rotated files (`.1`, `.N.gz`) written to since `since`."""
    files = []
    for f in [path, path + ".1", *glob.glob(glob.escape(path) + ".*.gz")]:
        try:
            if os.path.isfile(f) and os.path.getmtime(f) >= since:
                files.append(f)
        except OSError:
            pass
    return files


def read_lines(path: str) -> Iterator[str]:
    """The lines of a log file, gunzipped when its name ends in .gz (OSError if unreadable)."""
    if path.endswith(".gz"):
        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as gz:
            yield from gz
    else:
        with open(path, encoding="utf-8", errors="replace") as fh:
            yield from fh


def nginx(
    path: str | None, since: float, until: float, bucket: Bucket
) -> Nginx | NginxError | None:
    """The access log's traffic in the window (None: no log to read)."""
    if not path:
        return None
    if not os.path.exists(path):
        return {"path": path, "error": "no such file"}
    traffic, files = Traffic(), log_files(path, since)
    for f in files:
        try:
            for line in read_lines(f):
                traffic.add(parse_line(line), since, until, bucket)
        except OSError as exc:
            return {"path": path, "error": f"{f}: {exc.strerror}"}
    return {
        "path": path,
        "files": files,
        "buckets": traffic.counts(),
        "unparsed": traffic.unparsed,
        "with_times": traffic.with_times,
        "top_5xx_paths": traffic.top_5xx_paths(),
    }


# --- the health check's runs --------------------------------------------------------------------

PROBLEM = re.compile(r"^(WARNING|CRITICAL|UNKNOWN|ERROR)\s+(\S+)\s+(.*)$")
SENT = re.compile(r"^slack: sent (\w+)")
SLACK_FAILED = re.compile(r"could not alert Slack \((\w+)\): (.*)$")
SYSLOG = re.compile(rf"^(\S+) \S+ {HEALTHCHECK_TAG}(?:\[(\d+)\])?: (.*)$")

Line = tuple[float, str, str]  # (time, pid, message) of one logged line


def journal_lines(since: float, until: float) -> list[Line] | None:
    """The health check's lines in the window from the journal; None when it cannot be read."""
    argv = ["journalctl", "-t", HEALTHCHECK_TAG, "--since", f"@{int(since)}"]
    argv += ["--until", f"@{int(until) + 1}", "-o", "json", "--no-pager", "-q"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    return parse_journal(proc.stdout.splitlines())


def parse_journal(lines: Iterable[str]) -> list[Line]:
    """`journalctl -o json` entries as lines (a MESSAGE of bytes comes as a list of ints).

    >>> parse_journal(['{"MESSAGE": [104, 105], "_PID": "7", "__REALTIME_TIMESTAMP": "2000000"}',
    ...                'not json'])
    [(2.0, '7', 'hi')]
    """
    out = []
    for raw in lines:
        try:
            e = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(e, dict):
            continue
        msg = e.get("MESSAGE")
        if isinstance(msg, list):
            msg = bytes(msg).decode("utf-8", "replace")
        ts = int(e.get("__REALTIME_TIMESTAMP", 0)) / 1e6
        out.append((ts, str(e.get("_PID", "")), str(msg or "")))
    return out


def syslog_lines(since: float, until: float, pattern: str = "/var/log/syslog*") -> list[Line]:
    """The health check's lines in the window from rsyslog's files (rotated .gz included)."""
    out = []
    for f in sorted(glob.glob(pattern)):
        try:
            for line in read_lines(f):
                m = SYSLOG.match(line.rstrip("\n"))
                if not m:
                    continue
                try:
                    ts = datetime.fromisoformat(m.group(1)).timestamp()
                except ValueError:
                    continue
                if since <= ts <= until:
                    out.append((ts, m.group(2) or "", m.group(3)))
        except OSError:
            continue
    return sorted(out)


@dataclass
class _Run:
    pid: str
    ts: float
    problems: list[list[str]] = field(default_factory=list)
    sent: str | None = None
    slack_error: str | None = None
    other: list[str] = field(default_factory=list)

    def as_json(self) -> Run:
        return {
            "problems": self.problems,
            "sent": self.sent,
            "slack_error": self.slack_error,
            "other": self.other,
            "time": datetime.fromtimestamp(self.ts, UTC).isoformat(timespec="seconds"),
        }


def group_runs(lines: Iterable[Line]) -> list[Run]:
    """The lines grouped into runs: one cron run is one logger process, so the lines of a run
    share its pid within seconds.

    >>> runs = group_runs([(0.0, "1", "CRITICAL disk / 95% used"), (1.0, "1", "slack: sent alert"),
    ...                    (60.0, "2", "WARNING http slow"), (61.0, "2", "could not alert Slack "
    ...                    "(timeout): read timed out")])
    >>> [(r["time"], r["problems"], r["sent"], r["slack_error"]) for r in runs]
    ... # doctest: +NORMALIZE_WHITESPACE
    [('1970-01-01T00:00:00+00:00', [['critical', 'disk', '/ 95% used']], 'alert', None),
     ('1970-01-01T00:01:00+00:00', [['warning', 'http', 'slow']], None, 'timeout: read timed out')]
    """
    runs: list[_Run] = []
    for ts, pid, msg in lines:
        if not runs or runs[-1].pid != pid or ts - runs[-1].ts > 30:
            runs.append(_Run(pid, ts))
        run = runs[-1]
        if m := PROBLEM.match(msg):
            run.problems.append([m.group(1).lower(), m.group(2), m.group(3)[:300]])
        elif m := SENT.match(msg):
            run.sent = m.group(1)
        elif m := SLACK_FAILED.search(msg):
            run.slack_error = f"{m.group(1)}: {m.group(2)[:200]}"
        else:
            run.other.append(msg[:300])
    return [r.as_json() for r in runs]


def last_check(path: str = HEALTHCHECK_STATUS) -> LastCheck | None:
    """The last result of the health check, however it ran (`inv monitoring.check` runs it
    without logging): it closes an episode whose recovery the journal does not show."""
    try:
        with open(path, encoding="utf-8") as f:
            st = json.load(f)
        return {"time": str(st["checked_at"]), "level": str(st["level"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def alerts(since: float, until: float) -> Alerts:
    """The health check's runs in the window (the newest MAX_RUNS) and its last result."""
    source, lines = "journal", journal_lines(since, until)
    if not lines:
        source, lines = "syslog", syslog_lines(since, until)
    runs = group_runs(lines)
    return {
        "source": source if lines else "none",
        "runs": runs[-MAX_RUNS:],
        "dropped": max(0, len(runs) - MAX_RUNS),
        "last": last_check(),
    }


# --- the program -----------------------------------------------------------------------------


def parse_params(text: str) -> Params:
    """The report's parameters (argv[1]); ValueError when they are not what it sends.

    >>> parse_params('{"since": 0, "until": 60, "bucket": "day", "access_log": null}')["bucket"]
    'day'
    >>> parse_params('{"since": 0, "until": 60, "bucket": "week"}')
    Traceback (most recent call last):
    ...
    ValueError: bucket: expected hour or day, got 'week'
    """
    p = json.loads(text)
    if not isinstance(p, dict):
        raise ValueError("expected a JSON object")
    try:
        since, until = float(p["since"]), float(p["until"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"since/until: expected UNIX times ({exc!r})") from None
    bucket, log = p.get("bucket"), p.get("access_log")
    if bucket not in (HOUR, DAY):
        raise ValueError(f"bucket: expected {HOUR} or {DAY}, got {bucket!r}")
    if log is not None and not isinstance(log, str):
        raise ValueError(f"access_log: expected a path or null, got {log!r}")
    return {"since": since, "until": until, "bucket": bucket, "access_log": log}


def history(params: Params) -> History:
    """The host's history in the window the report asked for."""
    since, until, bucket = params["since"], params["until"], params["bucket"]
    return {
        "nginx": nginx(params["access_log"], since, until, bucket),
        "alerts": alerts(since, until),
    }


def main(argv: Sequence[str]) -> int:
    """`python3 - PARAMS_JSON`: print the host's history as one JSON object; 2 on bad params."""
    try:
        params = parse_params(argv[1])
    except (IndexError, ValueError) as exc:
        print(f"report_history: bad parameters: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(history(params)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
