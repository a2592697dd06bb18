"""One sample of the post-deploy watch (`inv deploy --watch`), read on an app host (read-only).

The watch (opskit/app/watch.py) sends this module's source as the one remote command of each
sample, run as root: `python3 - PARAMS_JSON` (standard library only, Python 3.11+). It prints
one JSON object (`Sample`) on its last line:

- the nginx access log's requests since a byte mark (`offset`; -1: from its end now, which
  makes the mark; a log shorter than the mark was rotated: read from its start): how many, how
  many 5xx, their request times in ms (the log's last field, nginx's `$request_time`);
  with `baseline_minutes`, the requests of that many minutes before now instead (the baseline
  measured just before the switch);
- the app's health endpoint on the host (status and whether the body matches);
- PM2: restarts in all and processes online of the app, from `pm2 jlist` as the app's user
  (only when its daemon runs: `pm2 jlist` would start one of its own).

The laptop side imports the parameter and JSON shapes from here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Final, NotRequired, TypedDict

MAX_READ: Final = 8 * 2**20  # bytes of log read at most per sample (the newest ones)
TIMEOUT: Final = 5.0  # seconds for the health request and for `pm2 jlist`


class Pm2Params(TypedDict):
    bin: str
    user: str
    home: str
    app: str


class Params(TypedDict):
    log: str  # nginx's access log
    offset: int  # byte mark: read the requests after it; -1: none, mark the end now
    baseline_minutes: NotRequired[float]  # read the requests of the last N minutes instead
    health_url: NotRequired[str]  # e.g. http://127.0.0.1:3000/health
    health_match: NotRequired[str]  # a regexp the body must match (empty: any)
    pm2: NotRequired[Pm2Params]


class Health(TypedDict):
    ok: bool
    detail: str


class Pm2(TypedDict):
    restarts: int
    online: int
    processes: int
    error: NotRequired[str]


class Sample(TypedDict):
    offset: int  # the mark for the next sample
    requests: int
    errors: int  # 5xx
    times_ms: list[int]
    log_error: NotRequired[str]
    health: NotRequired[Health]
    pm2: NotRequired[Pm2]


_LOG = re.compile(
    r'^\S+ \S+ \S+ \[(?P<time>[^\]]+)\] "(?P<request>[^"]*)" (?P<status>\d{3}) \S+'
    r'(?: "[^"]*" "[^"]*")?(?P<rest>.*)$'
)
_RT = re.compile(r"(?:^|\s)(\d+(?:\.\d+)?)\s*$")


def parse_line(line: str) -> tuple[datetime, int, int | None] | None:
    """(time, status, request time in ms or None) of one line of the opskit log format.

    >>> parse_line('1.2.3.4 - - [05/Dec/2026:08:00:00 +0000] "GET / HTTP/1.1" 500 9 "-" "c" 0.012')
    (datetime.datetime(2026, 12, 5, 8, 0, tzinfo=datetime.timezone.utc), 500, 12)
    >>> parse_line("garbage") is None
    True
    """
    m = _LOG.match(line)
    if not m:
        return None
    try:
        when = datetime.strptime(m.group("time"), "%d/%b/%Y:%H:%M:%S %z")
    except ValueError:
        return None
    rt = _RT.search(m.group("rest"))
    ms = round(float(rt.group(1)) * 1000) if rt else None
    return when, int(m.group("status")), ms


def read_log(path: str, offset: int, baseline_minutes: float | None) -> Sample:
    """The requests after `offset` (or of the last `baseline_minutes`), and the next mark."""
    sample: Sample = {"offset": 0, "requests": 0, "errors": 0, "times_ms": []}
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            sample["offset"] = size
            if offset < 0 and baseline_minutes is None:
                return sample  # the mark only
            if baseline_minutes is not None:
                start = max(0, size - MAX_READ)
            else:  # a log shorter than the mark was rotated since: read it from its start
                start = max(offset if offset <= size else 0, size - MAX_READ)
            f.seek(start)
            data = f.read(size - start)
    except OSError as exc:
        sample["log_error"] = f"{path}: {exc.strerror}"
        return sample
    text = data.decode("utf-8", "replace")
    if not text.endswith("\n"):  # a line nginx is still writing: the next sample reads it
        cut = text.rfind("\n") + 1
        sample["offset"] = start + len(text[:cut].encode("utf-8", "replace"))
        text = text[:cut]
    cutoff = None
    if baseline_minutes is not None:
        cutoff = datetime.now(UTC) - timedelta(minutes=baseline_minutes)
    for line in text.splitlines():
        parsed = parse_line(line)
        if parsed is None:
            continue
        when, status, ms = parsed
        if cutoff is not None and when < cutoff:
            continue
        sample["requests"] += 1
        sample["errors"] += status >= 500
        if ms is not None:
            sample["times_ms"].append(ms)
    return sample


def check_health(url: str, match: str) -> Health:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
            code, body = resp.status, resp.read(4096).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        code, body = exc.code, exc.read(4096).decode("utf-8", "replace")
    except (OSError, ValueError) as exc:
        return {"ok": False, "detail": f"no answer: {exc}"}
    if code != 200:
        return {"ok": False, "detail": f"HTTP {code}: {' '.join(body.split())[:200]}"}
    if match and not re.search(match, body):
        return {"ok": False, "detail": f"HTTP 200 but the body does not match {match}"}
    return {"ok": True, "detail": "HTTP 200"}


def read_pm2(p: Pm2Params) -> Pm2:
    try:
        with open(os.path.join(p["home"], "pm2.pid")) as f:
            os.kill(int(f.read().strip()), 0)
    except (OSError, ValueError):
        return {"restarts": 0, "online": 0, "processes": 0, "error": "PM2's daemon is not running"}
    try:
        out = subprocess.run(
            ["runuser", "-u", p["user"], "--", "env", f"PM2_HOME={p['home']}", p["bin"], "jlist"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT + 10,
        ).stdout
        procs = json.loads(out[out.find("[") :] if "[" in out else "x")
    except (subprocess.TimeoutExpired, ValueError, OSError) as exc:
        return {"restarts": 0, "online": 0, "processes": 0, "error": f"pm2 jlist: {exc}"}
    mine = [pr for pr in procs if isinstance(pr, dict) and pr.get("name") == p["app"]]
    env = [pr.get("pm2_env") or {} for pr in mine]
    return {
        "restarts": sum(int(e.get("restart_time") or 0) for e in env),
        "online": sum(1 for e in env if e.get("status") == "online"),
        "processes": len(mine),
    }


def sample(params: Params) -> Sample:
    out = read_log(params["log"], int(params["offset"]), params.get("baseline_minutes"))
    if params.get("health_url"):
        out["health"] = check_health(params["health_url"], params.get("health_match", ""))
    if "pm2" in params:
        out["pm2"] = read_pm2(params["pm2"])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        params: Params = json.loads(args[0])
    except (IndexError, ValueError) as exc:
        print(f"usage: watch_probe PARAMS_JSON ({exc})", file=sys.stderr)
        return 2
    print(json.dumps(sample(params)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
