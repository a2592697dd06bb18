#!/usr/bin/python3
"""The status probe: reads one host's numbers for `inv status` and prints them as one JSON object.

Never installed: opskit.status sends this module's source inside the one remote command it runs
per host (`python3 - CONFIG <<HEREDOC`, the source as the here-document, CONFIG the JSON of a
`ProbeConfig`). It runs as root with the host's python3 (Debian's 3.11 or 3.13), stdlib only,
and imports nothing of opskit. Each part (cpu, memory, disks, the system: release, pending
updates and reboot-required, health, database, pm2, the last health check, backups) catches its
own errors and reports them as `{"error": ...}`, so one unreadable metric never hides the others.

The laptop side imports the marker and the JSON keys from here; the parsing helpers are pure
and tested on the laptop (tests/unit/test_status.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypedDict, cast

# Marks the sections of the remote command's output (certs, release, probe).
MARK = "@@@opskit-status"

# Written by the health check (roles/healthcheck); status reads its last result and baseline.
# runuser by its full path: /usr/sbin is not on every PATH (cron's is /usr/bin:/bin).
SBIN_SEARCH_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

# The keys of the JSON object the probe prints: the host's clock, then one per part read.
KEY_NOW = "now"
KEY_CPU = "cpu"
KEY_MEMORY = "memory"
KEY_DISKS = "disks"
KEY_HEALTH = "health"
KEY_DATABASE = "database"
KEY_PM2 = "pm2"
KEY_HEALTHCHECK = "healthcheck"
KEY_BACKUP = "backup"
KEY_NODE = "node"
KEY_SYSTEM = "system"
# In a part: why it could not be read; DOWN: because its service is not running (critical, not
# unknown); MISSING: the health check has written no result yet.
KEY_ERROR = "error"
KEY_DOWN = "down"
KEY_MISSING = "missing"

BODY_LIMIT = 65536  # bytes of a health answer read
BODY_SHOWN = 120  # characters of a bad answer reported


class BackupConfig(TypedDict):
    local_dir: str
    database: str


class HealthcheckConfig(TypedDict):
    """Where the health check keeps its last result and state (its own constants, passed in)."""

    status_file: str
    state_file: str


class ProbeConfig(TypedDict):
    """What the probe reads (built by opskit.status.command.probe_config; never a secret)."""

    timeout: float
    cpu_seconds: float
    disk_paths: list[str]
    samples: int
    health_url: str  # "" = no health endpoint
    health_keyword: str
    db: bool
    pm2_user: str  # "" = no app
    app_current: str | None  # the app's `current` link: a deploy resets the restart baseline
    healthcheck: HealthcheckConfig | None  # None: no healthcheck role
    pm2_search_path: str
    backup: BackupConfig | None
    updates: bool  # read the pending updates (apt-get --simulate: about a second)
    node_bin: str  # the app's node directory (app_node_source); "" = no app


Part = dict[str, Any]


def failed(exc: BaseException) -> Part:
    """The part's entry when reading it raised `exc`.

    >>> failed(OSError("boom"))
    {'error': 'OSError: boom'}
    """
    return {KEY_ERROR: f"{type(exc).__name__}: {exc}"}


# --- cpu, memory, disks ---------------------------------------------------------------------------


def cpu_times(stat_line: str) -> tuple[int, int]:
    """(total, idle + iowait) jiffies from the `cpu` line of /proc/stat.

    >>> cpu_times("cpu  100 0 50 800 50 0 0 0 0 0")
    (1000, 850)
    """
    fields = [int(x) for x in stat_line.split()[1:]]
    return sum(fields), fields[3] + (fields[4] if len(fields) > 4 else 0)


def cpu_percent(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Busy percent between two `cpu_times` readings.

    >>> cpu_percent((1000, 850), (1100, 900)), cpu_percent((5, 5), (5, 5))
    (50.0, 0.0)
    """
    total = after[0] - before[0]
    idle = after[1] - before[1]
    return round(100.0 * (total - idle) / total, 1) if total else 0.0


def _read_cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as f:
        return cpu_times(f.readline())


def cpu(cfg: ProbeConfig) -> Part:
    # Sampled first and alone: the probes after it (node for pm2, psql) would count as load.
    before = _read_cpu_times()
    time.sleep(float(cfg["cpu_seconds"]))
    return {"percent": cpu_percent(before, _read_cpu_times())}


def memory_of(meminfo: str) -> Part:
    """Used percent, total and available KiB from the text of /proc/meminfo.

    >>> memory_of("MemTotal: 1000 kB\\nMemFree: 100 kB\\nMemAvailable: 250 kB\\n")
    {'percent': 75.0, 'total_kib': 1000, 'available_kib': 250}
    """
    info: dict[str, int] = {}
    for line in meminfo.splitlines():
        key, _, rest = line.partition(":")
        if rest.split():
            info[key] = int(rest.split()[0])
    total = info["MemTotal"]
    avail = info.get("MemAvailable", info.get("MemFree", 0))
    return {
        "percent": round(100.0 * (total - avail) / total, 1),
        "total_kib": total,
        "available_kib": avail,
    }


def memory(cfg: ProbeConfig) -> Part:
    with open("/proc/meminfo") as f:
        return memory_of(f.read())


def disk_of(path: str, blocks: int, bfree: int, bavail: int, frsize: int) -> Part:
    """One file system's use as df counts it (blocks reserved for root are not available).

    >>> disk_of("/", 100, 40, 30, 1024)["percent"]
    66.7
    """
    used = (blocks - bfree) * frsize
    avail = bavail * frsize
    return {
        "path": path,
        "percent": round(100.0 * used / (used + avail), 1) if used + avail else 0.0,
        "used_bytes": used,
        "avail_bytes": avail,
        "size_bytes": blocks * frsize,
    }


def disks(cfg: ProbeConfig) -> list[Part]:
    found: list[Part] = []
    for path in cfg["disk_paths"]:
        try:
            st = os.statvfs(path)
        except OSError as exc:
            found.append({"path": path, KEY_ERROR: exc.strerror or str(exc)})
            continue
        found.append(disk_of(path, st.f_blocks, st.f_bfree, st.f_bavail, st.f_frsize))
    return found


# --- the system: release, pending security updates, reboot required --------------------------

OS_RELEASE = "/etc/os-release"
# Written by Debian's update-notifier-common hooks (and unattended-upgrades) when an upgraded
# package (a kernel, libc, systemd, ...) needs a reboot; the .pkgs file names the packages.
REBOOT_REQUIRED = "/run/reboot-required"
# What apt would upgrade, simulated: reads the host's package lists only (no network, no lock).
APT_SIMULATE = [
    "apt-get",
    "--simulate",
    "-o",
    "Debug::NoLocking=true",
    "-o",
    "Dir::Cache::pkgcache=",
    "-o",
    "Dir::Cache::srcpkgcache=",
    "upgrade",
]
SHOWN_PACKAGES = 10
APT_TIMEOUT = 60  # seconds; about one on a server, a few on a busy laptop


def os_release_of(text: str) -> dict[str, str]:
    """The fields of /etc/os-release (os-release(5): KEY=value, values optionally quoted).

    >>> os_release_of('PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\\nVERSION_ID="13"\\nID=debian\\n')
    {'PRETTY_NAME': 'Debian GNU/Linux 13 (trixie)', 'VERSION_ID': '13', 'ID': 'debian'}
    """
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            fields[key.strip()] = value.strip().strip("'\"")
    return fields


def upgrades_of(simulated: str) -> tuple[list[str], list[str]]:
    """(every package apt would upgrade, those of them from a security suite), from the output
    of `apt-get --simulate upgrade` ("Inst NAME [OLD] (NEW ORIGIN:SUITE [ARCH])").

    >>> upgrades_of("Inst zlib1g [1:1.2.13] (1:1.2.13+deb12u1 Debian-Security:12/stable-security"
    ...             " [amd64])\\nInst tzdata [2024a] (2025b Debian:12.11/stable [all])\\nConf x\\n")
    (['zlib1g', 'tzdata'], ['zlib1g'])
    """
    every: list[str] = []
    security: list[str] = []
    for line in simulated.splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[0] != "Inst":
            continue
        every.append(fields[1])
        if "-security" in line.partition("(")[2]:
            security.append(fields[1])
    return every, security


def system(cfg: ProbeConfig) -> Part:
    with open(OS_RELEASE) as f:
        release = os_release_of(f.read())
    found: Part = {
        "os": release.get("PRETTY_NAME") or release.get("NAME", "unknown"),
        "version_id": release.get("VERSION_ID", ""),
        "reboot_required": os.path.exists(REBOOT_REQUIRED),
    }
    try:
        with open(REBOOT_REQUIRED + ".pkgs") as f:
            found["reboot_packages"] = sorted(set(f.read().split()))[:SHOWN_PACKAGES]
    except OSError:
        found["reboot_packages"] = []
    if not cfg.get("updates"):
        return found
    apt = shutil.which("apt-get", path=SBIN_SEARCH_PATH)
    if apt is None:
        found["updates_error"] = "apt-get is missing"
        return found
    env = {"PATH": SBIN_SEARCH_PATH, "LANG": "C", "LC_ALL": "C"}
    run = subprocess.run(APT_SIMULATE, capture_output=True, text=True, timeout=APT_TIMEOUT, env=env)
    if run.returncode != 0:
        found["updates_error"] = short_error(run.stderr or run.stdout)
        return found
    every, security = upgrades_of(run.stdout)
    found["updates"] = len(every)
    found["security_updates"] = len(security)
    found["security_packages"] = security[:SHOWN_PACKAGES]
    return found


# --- the health endpoint ----------------------------------------------------------------------


def is_healthy(status: int, body: str, keyword: str) -> bool:
    """HTTP 200 and, when `keyword` is set, a JSON body whose "status" is it (a body that is not
    a JSON object: the keyword anywhere in it).

    >>> is_healthy(200, '{"status": "healthy"}', "healthy"), is_healthy(200, "{}", "healthy")
    (True, False)
    >>> is_healthy(200, "all healthy", "healthy"), is_healthy(503, "healthy", "")
    (True, False)
    >>> is_healthy(200, "", ""), is_healthy(200, '["healthy"]', "healthy")
    (True, True)
    """
    if status != 200:
        return False
    if not keyword:
        return True
    try:
        doc = json.loads(body)
    except ValueError:
        return keyword in body
    if not isinstance(doc, dict):
        return keyword in body
    return bool(doc.get("status") == keyword)


def health_sample(url: str, keyword: str, timeout: float) -> Part:
    """One GET of the health endpoint: status, ms, healthy (and the body when not), or error."""
    started = time.monotonic()
    item: Part = {}
    body: str | None
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = resp.read(BODY_LIMIT).decode("utf-8", "replace")
            item["status"] = resp.status
    except urllib.error.HTTPError as exc:
        item["status"], body = exc.code, ""
    except (urllib.error.URLError, OSError) as exc:
        item[KEY_ERROR] = str(getattr(exc, "reason", exc))
        body = None
    item["ms"] = round((time.monotonic() - started) * 1000, 1)
    if body is not None:
        item["healthy"] = is_healthy(int(item["status"]), body, keyword)
        if not item["healthy"]:
            item["body"] = body[:BODY_SHOWN]
    return item


def health(cfg: ProbeConfig) -> list[Part]:
    timeout = float(cfg["timeout"])
    return [
        health_sample(cfg["health_url"], cfg["health_keyword"], timeout)
        for _ in range(int(cfg["samples"]))
    ]


# --- PostgreSQL and PM2 -----------------------------------------------------------------------

CONNECTIONS_SQL = (
    "SELECT count(*) FILTER (WHERE backend_type = 'client backend'), "
    "current_setting('max_connections') FROM pg_stat_activity"
)


def short_error(text: str, lines: int = 2) -> str:
    """The last non-empty `lines` of a tool's output on one line.

    >>> short_error("psql: error: connection\\n  failed:  refused\\n\\n")
    'psql: error: connection failed: refused'
    """
    found = [ln for ln in text.strip().splitlines() if ln.strip()]
    return " ".join(" ".join(found[-lines:]).split())


def connections_of(psql_out: str) -> Part:
    """Client connections and max_connections from `psql -A -t` of CONNECTIONS_SQL.

    >>> connections_of("12|100\\n")
    {'used': 12, 'max': 100}
    """
    used, _, most = psql_out.strip().partition("|")
    return {"used": int(used), "max": int(most)}


def database(cfg: ProbeConfig) -> Part:
    runuser = shutil.which("runuser", path=SBIN_SEARCH_PATH) or "runuser"
    command = [runuser, "-u", "postgres", "--", "psql", "-X", "-A", "-t", "-q"]
    p = subprocess.run(
        [*command, "-c", CONNECTIONS_SQL],
        capture_output=True,
        text=True,
        timeout=float(cfg["timeout"]) + 5,
        cwd="/",
    )
    if p.returncode != 0:
        text = short_error(p.stderr or p.stdout)
        return {KEY_ERROR: text or f"psql exit {p.returncode}", KEY_DOWN: True}
    return connections_of(p.stdout)


def pm2_processes(jlist_out: str) -> list[Part]:
    """The processes of `pm2 jlist` (its JSON may follow other output).

    >>> [p] = pm2_processes('noise\\n[{"name": "shop", "pm2_env": {"status": "online", '
    ...                     '"restart_time": 2, "pm_uptime": 5}, "monit": {"memory": 9}}]')
    >>> p["name"], p["status"], p["restarts"], p["unstable_restarts"], p["started_ms"], p["memory"]
    ('shop', 'online', 2, 0, 5, 9)
    """
    start = jlist_out.find("[")
    if start < 0:
        raise ValueError("pm2 jlist printed no list")
    procs: list[Part] = []
    for pr in json.loads(jlist_out[start:]):
        env = pr.get("pm2_env") or {}
        procs.append(
            {
                "name": pr.get("name"),
                "status": env.get("status"),
                "restarts": int(env.get("restart_time") or 0),
                "unstable_restarts": int(env.get("unstable_restarts") or 0),
                "started_ms": env.get("pm_uptime"),
                "memory": (pr.get("monit") or {}).get("memory"),
            }
        )
    return procs


def _pid_alive(pid_file: str) -> bool:
    try:
        with open(pid_file) as f:
            os.kill(int(f.read().strip()), 0)
    except (OSError, ValueError):
        return False
    return True


def pm2(cfg: ProbeConfig) -> Part:
    user = cfg["pm2_user"]
    home = f"/home/{user}/.pm2"
    binary = shutil.which("pm2", path=cfg["pm2_search_path"])
    if not binary:
        return {KEY_ERROR: "pm2 is not installed", KEY_DOWN: True}
    pid_file = os.path.join(home, "pm2.pid")
    if not _pid_alive(pid_file):
        # Asking `pm2 jlist` now would start a daemon of its own: report instead.
        return {
            KEY_ERROR: f"the PM2 daemon of {user} is not running (no live pid in {pid_file})",
            KEY_DOWN: True,
        }
    runuser = shutil.which("runuser", path=SBIN_SEARCH_PATH) or "runuser"
    p = subprocess.run(
        [runuser, "-u", user, "--", "env", f"PM2_HOME={home}", binary, "jlist"],
        capture_output=True,
        text=True,
        timeout=float(cfg["timeout"]) + 20,
        cwd="/",
    )
    if p.returncode != 0 or "[" not in p.stdout:
        return {KEY_ERROR: f"pm2 jlist failed (exit {p.returncode}): {p.stderr.strip()[-200:]}"}
    return {"processes": pm2_processes(p.stdout)}


def node(cfg: ProbeConfig) -> Part:
    """The version of the node the app runs under (`<node_bin>/node --version`)."""
    binary = os.path.join(cfg["node_bin"], "node")
    if not os.access(binary, os.X_OK):
        return {KEY_ERROR: f"no node at {binary}"}
    p = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, cwd="/")
    if p.returncode != 0:
        return {KEY_ERROR: f"{binary} --version failed: {p.stderr.strip()[-200:]}"}
    return {"version": p.stdout.strip().removeprefix("v")}


# --- the last health check and the backups ----------------------------------------------------


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def healthcheck_of(
    status: Mapping[str, Any], state: Mapping[str, Any], release: str | None, now: float
) -> Part:
    """What status shows of the health check's last result (`status`) and its saved state: the
    level, when, each check's outcome, and the PM2 restart baseline unless `release` (where
    `current` points now; None: no app) changed since.

    >>> st = {"level": "ok", "checked_at": "2026-01-01T00:00:00+00:00",
    ...       "results": [{"name": "http", "level": "ok", "summary": "fine", "ms": 3}]}
    >>> h = healthcheck_of(st, {"pm2_restarts": {"a": 1}, "pm2_release": "/r/1"}, "/r/2",
    ...                    1767225660.0)
    >>> h["age_seconds"], h["results"], h["pm2_restarts"]
    (60.0, [{'name': 'http', 'level': 'ok', 'summary': 'fine'}], None)
    >>> h["pm2_baseline"]
    'the release changed since the last health check'
    """
    when = datetime.fromisoformat(str(status.get("checked_at")))
    found: Part = {
        "level": status.get("level"),
        "checked_at": status.get("checked_at"),
        "age_seconds": round(now - when.timestamp(), 1),
        "results": [
            {k: r.get(k) for k in ("name", "level", "summary")} for r in status.get("results", [])
        ],
        "pm2_restarts": state.get("pm2_restarts"),
    }
    if release is not None and state.get("pm2_release") != release:
        # As the health check does: a deploy's reload restarts every process; not counted.
        found["pm2_restarts"] = None
        found["pm2_baseline"] = "the release changed since the last health check"
    return found


def healthcheck(cfg: ProbeConfig) -> Part:
    files = cfg["healthcheck"]
    assert files is not None  # only called for hosts with the healthcheck role
    try:
        status = read_json(files["status_file"])
    except FileNotFoundError:
        return {KEY_MISSING: True}
    try:
        state = read_json(files["state_file"])
    except (OSError, ValueError):
        state = {}
    current = cfg["app_current"]
    release = os.path.realpath(current) if current else None
    return healthcheck_of(status, state if isinstance(state, dict) else {}, release, time.time())


def is_manifest(name: str, database: str) -> bool:
    """A backup's manifest (opskit-backup writes `<database>-<stamp>.dump.json`).

    >>> is_manifest("app-20260101T000000Z.dump.json", "app"), is_manifest("last-run.json", "app")
    (True, False)
    """
    return name.startswith(database + "-") and name.endswith(".dump.json")


def backups_of(manifests: Iterable[Mapping[str, Any]], last_run: Any, now: float) -> Part:
    """The verified backups on record: how many, and the newest's key, time and age. Only a
    manifest marked uploaded counts (opskit-backup marks it after verifying the upload in S3);
    `manifests` are in name order, oldest first.

    >>> m = [{"created": "2026-01-01T00:00:00+00:00", "uploaded": True, "key": "k1"},
    ...      {"created": "2026-01-01T01:00:00+00:00", "uploaded": False, "key": "k2"}]
    >>> b = backups_of(m, {"ok": True, "finished": "x", "extra": 1}, 1767229200.0)
    >>> b["count"], b["newest"], b["age_seconds"], b["last_run"]
    (1, 'k1', 3600.0, {'ok': True, 'finished': 'x', 'error': None, 'failed_step': None})
    """
    newest: Mapping[str, Any] | None = None
    count = 0
    for m in manifests:
        if m.get("uploaded") is True:
            count += 1
            newest = m
    found: Part = {"count": count}
    if newest:
        created = datetime.fromisoformat(newest["created"])
        found["newest"] = newest.get("key")
        found["created"] = newest["created"]
        found["age_seconds"] = round(now - created.timestamp(), 1)
    found["last_run"] = (
        {k: last_run.get(k) for k in ("ok", "finished", "error", "failed_step")}
        if isinstance(last_run, dict)
        else None
    )
    return found


def backups(cfg: ProbeConfig) -> Part:
    b = cfg["backup"]
    if b is None:
        raise ValueError("no backup configured")
    d = b["local_dir"]
    try:
        names = sorted(os.listdir(d))
    except FileNotFoundError:
        names = []
    manifests = []
    for name in names:
        if not is_manifest(name, b["database"]):
            continue
        try:
            m = read_json(os.path.join(d, name))
        except (OSError, ValueError):
            continue
        if isinstance(m, dict):
            manifests.append(m)
    try:
        last = read_json(os.path.join(d, "last-run.json"))
    except (OSError, ValueError):
        last = None
    return backups_of(manifests, last, time.time())


# --- the program ------------------------------------------------------------------------------

Reader = Callable[[ProbeConfig], Any]


def parts(cfg: ProbeConfig) -> list[tuple[str, Reader]]:
    """The parts to read for `cfg`, in order (cpu first and alone: see `cpu`)."""
    chosen: list[tuple[str, Reader]] = [
        (KEY_CPU, cpu),
        (KEY_MEMORY, memory),
        (KEY_DISKS, disks),
        (KEY_SYSTEM, system),
    ]
    optional: Sequence[tuple[object, str, Reader]] = (
        (cfg["health_url"], KEY_HEALTH, health),
        (cfg["db"], KEY_DATABASE, database),
        (cfg["pm2_user"], KEY_PM2, pm2),
        (cfg.get("node_bin", ""), KEY_NODE, node),
        (cfg["healthcheck"], KEY_HEALTHCHECK, healthcheck),
        (cfg["backup"], KEY_BACKUP, backups),
    )
    chosen += [(key, read) for wanted, key, read in optional if wanted]
    return chosen


def probe(cfg: ProbeConfig) -> dict[str, Any]:
    """Read every part `cfg` asks for; a part that raises is reported, the others still run."""
    out: dict[str, Any] = {KEY_NOW: time.time()}
    for key, read in parts(cfg):
        try:
            out[key] = read(cfg)
        except Exception as exc:  # reported as unknown; the other parts still run
            out[key] = failed(exc)
    return out


def main(argv: Sequence[str]) -> int:
    """`status_probe CONFIG_JSON`: print the probe's JSON object on one line."""
    if len(argv) != 1:
        print("usage: status_probe CONFIG_JSON", file=sys.stderr)
        return 2
    try:
        cfg = json.loads(argv[0])
    except ValueError as exc:
        print(f"status_probe: the config is not JSON: {exc}", file=sys.stderr)
        return 2
    if not isinstance(cfg, dict):
        print("status_probe: the config is not a JSON object", file=sys.stderr)
        return 2
    print(json.dumps(probe(cast(ProbeConfig, cfg))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
