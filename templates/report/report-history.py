# Run on a host by `inv report.daily|weekly` (opskit/report.py) as `python3 - PARAMS_JSON`:
# standard library only, read-only. Prints one JSON object:
#   nginx:  requests, 4xx, 5xx and request-time percentiles per hour/day from the access log,
#           rotated logs (.1, .N.gz) included, within the window;
#   alerts: the health check's runs that logged problems (cron pipes them to
#           `logger -t opskit-healthcheck`), from the journal, else from /var/log/syslog*.
import glob
import gzip
import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime

P = json.loads(sys.argv[1])
SINCE, UNTIL, BUCKET = float(P["since"]), float(P["until"]), P["bucket"]
MAX_RUNS = 3000
LOG = re.compile(
    r'^\S+ \S+ \S+ \[(?P<time>[^\]]+)\] "(?P<request>[^"]*)" (?P<status>\d{3}) \S+'
    r'(?: "[^"]*" "[^"]*")?(?P<rest>.*)$'
)
RT = re.compile(r"(?:^|\s)(?:rt=|request_time=)?(\d+\.\d+)\s*$")
PROBLEM = re.compile(r"^(WARNING|CRITICAL|UNKNOWN|ERROR)\s+(\S+)\s+(.*)$")
SENT = re.compile(r"^slack: sent (\w+)")
SLACK_FAILED = re.compile(r"could not alert Slack \((\w+)\): (.*)$")


def bucket_of(ts):
    t = datetime.fromtimestamp(ts, UTC)
    return t.strftime("%Y-%m-%dT%H:00Z") if BUCKET == "hour" else t.strftime("%Y-%m-%d")


def pct(sorted_values, p):
    if not sorted_values:
        return None
    i = max(0, -(-p * len(sorted_values) // 100) - 1)
    return round(sorted_values[i] * 1000, 1)


def log_files(path):
    files = []
    for f in [path, path + ".1", *glob.glob(glob.escape(path) + ".*.gz")]:
        try:
            if os.path.isfile(f) and os.path.getmtime(f) >= SINCE:
                files.append(f)
        except OSError:
            pass
    return files


def nginx(path):
    if not path:
        return None
    if not os.path.exists(path):
        return {"path": path, "error": "no such file"}
    buckets, files, unparsed, with_times = {}, [], 0, 0
    errors_by_path = {}
    for f in log_files(path):
        files.append(f)
        opener = gzip.open if f.endswith(".gz") else open
        try:
            with opener(f, "rt", encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    m = LOG.match(line)
                    if not m:
                        unparsed += 1
                        continue
                    try:
                        when = datetime.strptime(m.group("time"), "%d/%b/%Y:%H:%M:%S %z")
                    except ValueError:
                        unparsed += 1
                        continue
                    ts = when.timestamp()
                    if ts < SINCE or ts > UNTIL:
                        continue
                    b = buckets.setdefault(bucket_of(ts), [0, 0, 0, []])
                    status = int(m.group("status"))
                    b[0] += 1
                    if status >= 500:
                        b[2] += 1
                        parts = m.group("request").split()
                        where = parts[1].split("?")[0][:80] if len(parts) > 1 else "?"
                        errors_by_path[where] = errors_by_path.get(where, 0) + 1
                    elif status >= 400:
                        b[1] += 1
                    rt = RT.search(m.group("rest"))
                    if rt:
                        b[3].append(float(rt.group(1)))
                        with_times += 1
        except OSError as exc:
            return {"path": path, "error": f"{f}: {exc.strerror}"}
    out = {}
    for key, (n, c4, c5, times) in sorted(buckets.items()):
        times.sort()
        out[key] = {
            "requests": n,
            "4xx": c4,
            "5xx": c5,
            "p50_ms": pct(times, 50),
            "p95_ms": pct(times, 95),
            "timed": len(times),
        }
    top = sorted(errors_by_path.items(), key=lambda kv: -kv[1])[:5]
    return {
        "path": path,
        "files": files,
        "buckets": out,
        "unparsed": unparsed,
        "with_times": with_times,
        "top_5xx_paths": top,
    }


def journal_lines():
    try:
        proc = subprocess.run(
            [
                "journalctl",
                "-t",
                "opskit-healthcheck",
                "--since",
                f"@{int(SINCE)}",
                "--until",
                f"@{int(UNTIL) + 1}",
                "-o",
                "json",
                "--no-pager",
                "-q",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    lines = []
    for raw in proc.stdout.splitlines():
        try:
            e = json.loads(raw)
        except ValueError:
            continue
        msg = e.get("MESSAGE")
        if isinstance(msg, list):  # journald gives bytes as a list of ints
            msg = bytes(msg).decode("utf-8", "replace")
        ts = int(e.get("__REALTIME_TIMESTAMP", 0)) / 1e6
        lines.append((ts, str(e.get("_PID", "")), msg or ""))
    return lines


def syslog_lines():
    lines = []
    pat = re.compile(r"^(\S+) \S+ opskit-healthcheck(?:\[(\d+)\])?: (.*)$")
    for f in sorted(glob.glob("/var/log/syslog*")):
        opener = gzip.open if f.endswith(".gz") else open
        try:
            with opener(f, "rt", encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    m = pat.match(line.rstrip("\n"))
                    if not m:
                        continue
                    try:
                        ts = datetime.fromisoformat(m.group(1)).timestamp()
                    except ValueError:
                        continue
                    if SINCE <= ts <= UNTIL:
                        lines.append((ts, m.group(2) or "", m.group(3)))
        except OSError:
            continue
    return sorted(lines)


def alerts():
    source, lines = "journal", journal_lines()
    if not lines:
        source, lines = "syslog", syslog_lines()
    runs = []
    for ts, pid, msg in lines:
        # One cron run = one logger process; lines of a run share its pid within seconds.
        if not runs or runs[-1]["pid"] != pid or ts - runs[-1]["ts"] > 30:
            runs.append(
                {
                    "pid": pid,
                    "ts": ts,
                    "problems": [],
                    "sent": None,
                    "slack_error": None,
                    "other": [],
                }
            )
        run = runs[-1]
        m = PROBLEM.match(msg)
        if m:
            run["problems"].append([m.group(1).lower(), m.group(2), m.group(3)[:300]])
            continue
        m = SENT.match(msg)
        if m:
            run["sent"] = m.group(1)
            continue
        m = SLACK_FAILED.search(msg)
        if m:
            run["slack_error"] = f"{m.group(1)}: {m.group(2)[:200]}"
            continue
        run["other"].append(msg[:300])
    for r in runs:
        r["time"] = datetime.fromtimestamp(r.pop("ts"), UTC).isoformat(timespec="seconds")
        r.pop("pid")
    return {
        "source": source if lines else "none",
        "runs": runs[-MAX_RUNS:],
        "dropped": max(0, len(runs) - MAX_RUNS),
        "last": last_check(),
    }


def last_check():
    """The last result of the health check, however it ran (`inv monitoring.check` runs it
    without logging): it closes an episode whose recovery the journal does not show."""
    try:
        with open("/var/lib/opskit/healthcheck/status.json") as f:
            st = json.load(f)
        return {"time": str(st["checked_at"]), "level": str(st["level"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


print(json.dumps({"nginx": nginx(P.get("access_log")), "alerts": alerts()}))
