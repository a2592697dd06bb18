"""`inv status`: one screen for the fleet, read from the hosts in one remote command each.

Per host, only what applies to its roles: the health endpoint (status, latency p50/p95 of
`status_samples` GETs made on the host), CPU, memory, disk, database connections against
max_connections (postgresql), PM2 processes, restarts and uptime and the current release (app),
certificate days left (certbot), the newest verified backup's age (backup) and the last
health-check result (healthcheck). Each value is judged against the `status_*` thresholds
(opskit/defaults/status.yml) into ok / warning / critical, or unknown when it could not be read.

The newest backup's age comes from the database host's own record: the manifests opskit-backup
writes next to each local copy, marked uploaded only after the upload was verified in S3, and
its last-run.json. That keeps `status` one SSH command per host with no S3 call from the laptop;
`inv backup.list` is the proof from S3 itself (checksums, what the bucket really holds).

`collect()` reads and judges (`FleetStatus.to_dict()` is the JSON the reports build on);
`format_fleet()` and `to_json()` only format. Nothing here prints or exits.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from opskit.app import deploy
from opskit.app import spec as app_spec
from opskit.backup.schedule import allowed_age, max_gap
from opskit.backup.spec import config_for
from opskit.backup.text import human_age, human_size
from opskit.certs import ops as certs
from opskit.core.errors import ConfigError, OpsError
from opskit.core.inventory import Host, Inventory
from opskit.core.result import HostResult
from opskit.core.secrets import Secret

q = shlex.quote

# Order of severity: a host that could not be read is worse than a warning, better than critical.
LEVELS = ("ok", "warning", "unknown", "critical")
RANK = {name: i for i, name in enumerate(LEVELS)}
HEALTHCHECK_STATUS = "/var/lib/opskit/healthcheck/status.json"  # roles/healthcheck
HEALTHCHECK_STATE = "/var/lib/opskit/healthcheck/state.json"
PM2_SEARCH_PATH = "/usr/local/bin:/usr/bin:/bin"
UNGRADABLE = (
    "health",
    "latency",
    "cpu",
    "memory",
    "disk",
    "db_connections",
    "pm2",
    "pm2_restarts",
    "cert",
    "backup_age",
    "healthcheck",
    "release",
)
# healthcheck_checks name -> the status metrics it stands for (for status_ungraded: null).
_CHECK_METRICS = {
    "http": ("health", "latency"),
    "database": ("db_connections",),
    "disk": ("disk",),
    "memory": ("memory",),
    "cpu": ("cpu",),
    "pm2": ("pm2", "pm2_restarts"),
}
_MARK = "@@@opskit-status"


class StatusExit(IntEnum):
    """Exit codes of `inv status`: the worst state found (as `inv certs.status`)."""

    OK = 0
    HOST_FAILED = 1  # a host or a metric could not be read; nothing was critical
    USAGE = 2  # bad arguments or inventory; nothing was read
    WARNING = 4  # the worst metric is a warning
    CRITICAL = 5  # a metric is critical


def worst_of(levels: Sequence[str]) -> str:
    """The most severe of `levels` ("ok" when there are none).

    >>> worst_of(["ok", "warning", "unknown"]), worst_of([])
    ('unknown', 'ok')
    """
    return max(levels, key=RANK.__getitem__, default="ok")


# --- settings: the status_* variables of one host, checked ------------------------------------


@dataclass(frozen=True)
class Pair:
    """Warning and critical thresholds (a value at or above one is at that level)."""

    warning: float
    critical: float


@dataclass(frozen=True)
class BackupSettings:
    database: str
    local_dir: str
    schedule: str
    warning_hours: float | None
    critical_hours: float | None


@dataclass(frozen=True)
class Settings:
    """What to read on one host and how to judge it (from its variables; pure)."""

    samples: int
    timeout: float
    cpu_seconds: float
    health_url: str  # "" = no health endpoint on this host
    health_keyword: str
    latency: Pair
    cpu: Pair
    memory: Pair
    disk: Pair
    disk_paths: tuple[str, ...]
    db: Pair | None  # None: no postgresql role
    pm2_user: str  # "" = no app role
    pm2_apps: tuple[str, ...]
    pm2_restarts: Pair
    app: app_spec.AppLayout | None
    cert_specs: tuple[certs.CertSpec, ...] | None  # None: no certbot role
    cert_days: tuple[int, int]  # warning, critical (days left below)
    backup: BackupSettings | None
    healthcheck: Pair | None  # minutes; None: no healthcheck role
    ungraded: frozenset[str] = frozenset()


def _number(key: str, value: Any, *, lo: float = 0, hi: float | None = None) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < lo or (hi is not None and value > hi):
        bounds = f"{lo:g}-{hi:g}" if hi is not None else f">= {lo:g}"
        raise ConfigError(f"{key}: expected a number {bounds}, got {value!r}")
    return float(value)


def _pair(
    v: Mapping[str, Any],
    name: str,
    *,
    fallback: str | None,
    default: tuple[float, float],
    percent: bool = False,
    suffix: str = "",
) -> Pair:
    """status_<name>_warning<suffix> / _critical<suffix>; null: the `fallback`_warning<suffix> /
    _critical<suffix> variable when the host has it, else `default`.

    >>> _pair({"status_cpu_warning": None, "status_cpu_critical": 95}, "cpu",
    ...       fallback=None, default=(70, 90), percent=True)
    Pair(warning=70.0, critical=95.0)
    """
    values, keys = [], []
    for i, level in enumerate(("warning", "critical")):
        key = f"status_{name}_{level}{suffix}"
        value = v.get(key)
        if value is None and fallback is not None and f"{fallback}_{level}{suffix}" in v:
            key = f"{fallback}_{level}{suffix}"
            value = v[key]
        if value is None:
            value = default[i]
        values.append(_number(key, value, hi=100 if percent else None))
        keys.append(key)
    if values[0] > values[1]:
        raise ConfigError(f"{keys[0]} ({values[0]:g}) is above {keys[1]} ({values[1]:g})")
    return Pair(values[0], values[1])


def _health_url(v: Mapping[str, Any], roles: Sequence[str]) -> str:
    url = v.get("status_health_url")
    key = "status_health_url"
    if url is None and "healthcheck" in roles:
        url = v.get("healthcheck_health_url")
        key = "healthcheck_health_url"
    if url is None and "app_port" in v:
        return f"http://127.0.0.1:{v['app_port']}{v.get('app_health_path', '/health')}"
    if url is None:
        return ""
    if not isinstance(url, str) or (url and not url.startswith(("http://", "https://"))):
        raise ConfigError(f"{key}: expected an http(s) URL, got {url!r}")
    return url


def _ungraded(v: Mapping[str, Any], roles: Sequence[str]) -> frozenset[str]:
    raw = v.get("status_ungraded")
    if raw is None:
        checks = v.get("healthcheck_checks") if "healthcheck" in roles else None
        if not isinstance(checks, list):
            return frozenset()
        return frozenset(m for c, ms in _CHECK_METRICS.items() if c not in checks for m in ms)
    if not isinstance(raw, list) or any(m not in UNGRADABLE for m in raw):
        raise ConfigError(
            f"status_ungraded: a list of {', '.join(UNGRADABLE)} (or null), got {raw!r}"
        )
    return frozenset(raw)


def _hours(td: dt.timedelta | None) -> float | None:
    return None if td is None else td.total_seconds() / 3600


def _backup_settings(host: Host) -> BackupSettings:
    v = host.vars
    cfg = config_for(host)
    gap = max_gap(cfg.schedule)
    warning = v.get("status_backup_warning_hours")
    critical = v.get("status_backup_critical_hours")
    w = _hours(allowed_age(cfg)) if warning is None else None
    c = _hours(2 * gap + cfg.grace) if critical is None and gap is not None else None
    if warning is not None:
        w = _number("status_backup_warning_hours", warning)
    if critical is not None:
        c = _number("status_backup_critical_hours", critical)
    if w is not None and c is not None and w > c:
        raise ConfigError(
            f"status_backup_warning_hours ({w:g}) is above status_backup_critical_hours ({c:g})"
        )
    local_dir = v.get("backup_local_dir", "/var/backups/postgresql")
    if not isinstance(local_dir, str) or not local_dir.startswith("/"):
        raise ConfigError(f"backup_local_dir: expected an absolute path, got {local_dir!r}")
    return BackupSettings(cfg.database, local_dir, cfg.schedule, w, c)


def _healthcheck_pair(v: Mapping[str, Any]) -> Pair:
    gap = max_gap(str(v.get("healthcheck_schedule", "*/5 * * * *")))
    minutes = gap.total_seconds() / 60 if gap is not None else 5.0
    w, c = v.get("status_healthcheck_warning_minutes"), v.get("status_healthcheck_critical_minutes")
    pair = Pair(
        3 * minutes if w is None else _number("status_healthcheck_warning_minutes", w),
        12 * minutes if c is None else _number("status_healthcheck_critical_minutes", c),
    )
    if pair.warning > pair.critical:
        raise ConfigError(
            f"status_healthcheck_warning_minutes ({pair.warning:g}) is above "
            f"status_healthcheck_critical_minutes ({pair.critical:g})"
        )
    return pair


def settings_for(host: Host, *, samples: int | None = None) -> Settings:
    """The checked settings of one host; ConfigError names the host and the key."""
    try:
        return _settings(host, samples)
    except ConfigError as exc:
        text = str(exc)
        raise ConfigError(
            text if text.startswith(f"{host.name}: ") else f"{host.name}: {text}"
        ) from None


def _settings(host: Host, samples: int | None) -> Settings:
    v, roles = host.vars, host.roles
    n = v.get("status_samples", 5) if samples is None else samples
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 50:
        key = "--samples" if samples is not None else "status_samples"
        raise ConfigError(f"{key}: expected a whole number 1-50, got {n!r}")
    timeout = _number("status_timeout", v.get("status_timeout", 5), lo=0.1, hi=300)
    cpu_seconds = _number(
        "status_cpu_sample_seconds", v.get("status_cpu_sample_seconds", 1), lo=0.1, hi=10
    )
    hc = "healthcheck" in roles
    keyword = v.get("status_health_keyword")
    if keyword is None:
        keyword = v.get("healthcheck_health_keyword", "healthy") if hc else "healthy"
    if not isinstance(keyword, str):
        raise ConfigError(f"status_health_keyword: expected text, got {keyword!r}")
    paths = v.get("status_disk_paths")
    paths_key = "status_disk_paths"
    if paths is None and hc:
        paths, paths_key = v.get("healthcheck_disk_paths"), "healthcheck_disk_paths"
    if paths is None:
        paths = ["/"]
    if (
        not isinstance(paths, list)
        or not paths
        or not all(isinstance(p, str) and p.startswith("/") for p in paths)
    ):
        raise ConfigError(f"{paths_key}: a list of absolute paths, got {paths!r}")

    def fb(name: str) -> str | None:
        return f"healthcheck_{name}" if hc else None

    db = None
    if "postgresql" in roles:
        db = _pair(v, "db_connections", fallback=None, default=(80, 95), percent=True)
    app = app_spec.AppLayout.from_vars(v) if "app" in roles else None
    cert_specs = certs.declared_certificates(v) if "certbot" in roles else None
    return Settings(
        samples=n,
        timeout=timeout,
        cpu_seconds=cpu_seconds,
        health_url=_health_url(v, roles),
        health_keyword=keyword,
        latency=_pair(
            v,
            "latency",
            fallback="healthcheck_response_time" if hc else None,
            default=(500, 2000),
            suffix="_ms",
        ),
        cpu=_pair(v, "cpu", fallback=fb("cpu"), default=(70, 90), percent=True),
        memory=_pair(v, "memory", fallback=fb("memory"), default=(70, 90), percent=True),
        disk=_pair(v, "disk", fallback=fb("disk"), default=(70, 90), percent=True),
        disk_paths=tuple(paths),
        db=db,
        pm2_user=app.user if app else "",
        pm2_apps=(app.name,) if app else (),
        pm2_restarts=_pair(v, "pm2_restarts", fallback=fb("pm2_restarts"), default=(1, 5)),
        app=app,
        cert_specs=cert_specs,
        cert_days=certs.thresholds(v) if cert_specs is not None else (30, 7),
        backup=_backup_settings(host) if "backup" in roles else None,
        healthcheck=_healthcheck_pair(v) if hc else None,
        ungraded=_ungraded(v, roles),
    )


def check_hosts(hosts: Sequence[Host], *, samples: int | None = None) -> dict[str, Settings]:
    """Settings of every host, all checked before anything runs (ConfigError on the first bad)."""
    if samples is not None and (isinstance(samples, bool) or not 1 <= samples <= 50):
        raise ConfigError(f"--samples: expected a whole number 1-50, got {samples!r}")
    return {h.name: settings_for(h, samples=samples) for h in hosts}


# --- the remote command -------------------------------------------------------------------------

# Runs on the host (Debian's python3, stdlib only) as root; prints one JSON object. Every part
# catches its own errors, so one unreadable metric never hides the others.
PROBE = r"""
import base64, json, os, shutil, subprocess, sys, time, urllib.error, urllib.request
from datetime import datetime, timezone

cfg = json.loads(base64.b64decode(sys.argv[1]))
# By its full path: /usr/sbin is not on every PATH (cron's is /usr/bin:/bin).
RUNUSER = shutil.which("runuser", path="/usr/sbin:/usr/bin:/sbin:/bin") or "runuser"
out = {"now": time.time()}
timeout = float(cfg["timeout"])


def cpu_times():
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return sum(fields), fields[3] + (fields[4] if len(fields) > 4 else 0)


def part(name, fn):
    try:
        out[name] = fn()
    except Exception as exc:  # reported as unknown; the other parts still run
        out[name] = {"error": f"{type(exc).__name__}: {exc}"}


def cpu():
    # Sampled first and alone: the probes below (node for pm2, psql) would count as load.
    t1, i1 = cpu_times()
    time.sleep(float(cfg["cpu_seconds"]))
    t2, i2 = cpu_times()
    busy = t2 - t1
    return {"percent": round(100.0 * (busy - (i2 - i1)) / busy, 1) if busy else 0.0}


def memory():
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            info[key] = int(rest.split()[0])
    total = info["MemTotal"]
    avail = info.get("MemAvailable", info.get("MemFree", 0))
    return {"percent": round(100.0 * (total - avail) / total, 1), "total_kib": total,
            "available_kib": avail}


def disks():
    found = []
    for path in cfg["disk_paths"]:
        try:
            st = os.statvfs(path)
        except OSError as exc:
            found.append({"path": path, "error": exc.strerror or str(exc)})
            continue
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        avail = st.f_bavail * st.f_frsize
        pct = round(100.0 * used / (used + avail), 1) if used + avail else 0.0
        found.append({"path": path, "percent": pct, "used_bytes": used, "avail_bytes": avail,
                      "size_bytes": st.f_blocks * st.f_frsize})
    return found


def health():
    samples = []
    for _ in range(int(cfg["samples"])):
        started = time.monotonic()
        item = {}
        try:
            with urllib.request.urlopen(cfg["health_url"], timeout=timeout) as resp:
                body = resp.read(65536).decode("utf-8", "replace")
                item["status"] = resp.status
        except urllib.error.HTTPError as exc:
            item["status"], body = exc.code, ""
        except (urllib.error.URLError, OSError) as exc:
            item["error"] = str(getattr(exc, "reason", exc))
            body = None
        item["ms"] = round((time.monotonic() - started) * 1000, 1)
        if body is not None:
            healthy = item["status"] == 200
            keyword = cfg["health_keyword"]
            if healthy and keyword:
                try:
                    healthy = json.loads(body).get("status") == keyword
                except (ValueError, AttributeError):
                    healthy = keyword in body
            item["healthy"] = healthy
            if not healthy:
                item["body"] = body[:120]
        samples.append(item)
    return samples


def database():
    sql = ("SELECT count(*) FILTER (WHERE backend_type = 'client backend'), "
           "current_setting('max_connections') FROM pg_stat_activity")
    p = subprocess.run([RUNUSER, "-u", "postgres", "--", "psql", "-X", "-A", "-t", "-q",
                        "-c", sql], capture_output=True, text=True, timeout=timeout + 5,
                       cwd="/")
    if p.returncode != 0:
        lines = [ln for ln in (p.stderr or p.stdout).strip().splitlines() if ln.strip()]
        text = " ".join(" ".join(lines[-2:]).split())
        return {"error": text or f"psql exit {p.returncode}", "down": True}
    used, _, most = p.stdout.strip().partition("|")
    return {"used": int(used), "max": int(most)}


def pm2():
    user, home = cfg["pm2_user"], f"/home/{cfg['pm2_user']}/.pm2"
    binary = shutil.which("pm2", path=PM2_SEARCH_PATH)
    if not binary:
        return {"error": "pm2 is not installed", "down": True}
    pid_file = os.path.join(home, "pm2.pid")
    try:
        with open(pid_file) as f:
            os.kill(int(f.read().strip()), 0)
    except (OSError, ValueError):
        # Asking `pm2 jlist` now would start a daemon of its own: report instead.
        return {"error": f"the PM2 daemon of {user} is not running (no live pid in {pid_file})",
                "down": True}
    p = subprocess.run([RUNUSER, "-u", user, "--", "env", f"PM2_HOME={home}", binary, "jlist"],
                       capture_output=True, text=True, timeout=timeout + 20, cwd="/")
    start = p.stdout.find("[")
    if p.returncode != 0 or start < 0:
        return {"error": f"pm2 jlist failed (exit {p.returncode}): {p.stderr.strip()[-200:]}"}
    procs = []
    for pr in json.loads(p.stdout[start:]):
        env = pr.get("pm2_env") or {}
        procs.append({"name": pr.get("name"), "status": env.get("status"),
                      "restarts": int(env.get("restart_time") or 0),
                      "unstable_restarts": int(env.get("unstable_restarts") or 0),
                      "started_ms": env.get("pm_uptime"),
                      "memory": (pr.get("monit") or {}).get("memory")})
    return {"processes": procs}


def read_json(path):
    with open(path) as f:
        return json.load(f)


def healthcheck():
    found = {}
    try:
        st = read_json(HEALTHCHECK_STATUS)
    except FileNotFoundError:
        return {"missing": True}
    found["level"] = st.get("level")
    found["checked_at"] = st.get("checked_at")
    when = datetime.fromisoformat(str(st.get("checked_at")))
    found["age_seconds"] = round(time.time() - when.timestamp(), 1)
    found["results"] = [{k: r.get(k) for k in ("name", "level", "summary")}
                        for r in st.get("results", [])]
    try:
        state = read_json(HEALTHCHECK_STATE)
    except (OSError, ValueError):
        state = {}
    found["pm2_restarts"] = state.get("pm2_restarts")
    current = cfg.get("app_current")
    if current and state.get("pm2_release") != os.path.realpath(current):
        # As the health check does: a deploy's reload restarts every process; not counted.
        found["pm2_restarts"] = None
        found["pm2_baseline"] = "the release changed since the last health check"
    return found


def backups():
    b = cfg["backup"]
    d, db = b["local_dir"], b["database"]
    newest, count = None, 0
    try:
        names = sorted(os.listdir(d))
    except FileNotFoundError:
        names = []
    for name in names:
        if not (name.startswith(db + "-") and name.endswith(".dump.json")):
            continue
        try:
            m = read_json(os.path.join(d, name))
        except (OSError, ValueError):
            continue
        if m.get("uploaded") is True:  # written only after the upload was verified
            count += 1
            newest = m
    found = {"count": count}
    if newest:
        created = datetime.fromisoformat(newest["created"])
        found["newest"] = newest.get("key")
        found["created"] = newest["created"]
        found["age_seconds"] = round(time.time() - created.timestamp(), 1)
    try:
        last = read_json(os.path.join(d, "last-run.json"))
        found["last_run"] = {k: last.get(k) for k in ("ok", "finished", "error", "failed_step")}
    except (OSError, ValueError):
        found["last_run"] = None
    return found


part("cpu", cpu)
part("memory", memory)
part("disks", disks)
if cfg["health_url"]:
    part("health", health)
if cfg["db"]:
    part("database", database)
if cfg["pm2_user"]:
    part("pm2", pm2)
if cfg["healthcheck"]:
    part("healthcheck", healthcheck)
if cfg["backup"]:
    part("backup", backups)
print(json.dumps(out))
"""


def probe_config(s: Settings) -> dict[str, Any]:
    """What the host-side probe needs (no secret ever goes in here)."""
    return {
        "timeout": s.timeout,
        "cpu_seconds": s.cpu_seconds,
        "disk_paths": list(s.disk_paths),
        "samples": s.samples,
        "health_url": s.health_url,
        "health_keyword": s.health_keyword,
        "db": s.db is not None,
        "pm2_user": s.pm2_user,
        "app_current": s.app.current if s.app else None,
        "healthcheck": s.healthcheck is not None,
        "backup": (
            {"local_dir": s.backup.local_dir, "database": s.backup.database} if s.backup else None
        ),
    }


def remote_script(s: Settings) -> str:
    """The one command that reads everything of a host: the certificates (certs.collect_script)
    and releases (deploy.state_script) in subshells, then the probe; sections are marked."""
    parts = []
    if s.cert_specs is not None:
        parts.append(f'echo "{_MARK} certs"\n( {certs.collect_script(s.cert_specs)} )')
    if s.app is not None:
        parts.append(
            f'echo "{_MARK} release"\n( {deploy.state_script(s.app)} )\n'
            f'echo "{_MARK} release-exit $?"'
        )
    config = base64.b64encode(json.dumps(probe_config(s)).encode()).decode()
    constants = (
        f"HEALTHCHECK_STATUS = {HEALTHCHECK_STATUS!r}\n"
        f"HEALTHCHECK_STATE = {HEALTHCHECK_STATE!r}\n"
        f"PM2_SEARCH_PATH = {PM2_SEARCH_PATH!r}\n"
    )
    parts.append(
        f'echo "{_MARK} probe"\n'
        "command -v python3 >/dev/null || { echo 'python3 is missing on the host' >&2; exit 3; }\n"
        f"python3 - {q(config)} <<'OPSKIT_STATUS_PROBE'\n{constants}{PROBE}\nOPSKIT_STATUS_PROBE"
    )
    return "\n".join(parts) + "\n"


@dataclass(frozen=True)
class Raw:
    """What the remote command printed, split by section."""

    probe: Mapping[str, Any]
    certs: str = ""
    release: str = ""
    release_exit: int = 0


def parse_output(stdout: str) -> Raw:
    """Split the remote command's output into its sections (ValueError when the probe is missing).

    >>> r = parse_output('@@@opskit-status release\\n@@current releases/a\\n'
    ...                  '@@@opskit-status release-exit 0\\n@@@opskit-status probe\\n{"now": 1}\\n')
    >>> r.release, r.release_exit, r.probe
    ('@@current releases/a\\n', 0, {'now': 1})
    """
    sections: dict[str, list[str]] = {}
    current = ""
    release_exit = 0
    for line in stdout.splitlines(keepends=True):
        if line.startswith(_MARK + " "):
            word = line[len(_MARK) + 1 :].strip()
            if word.startswith("release-exit"):
                release_exit = int(word.split()[-1])
                current = ""
            else:
                current = word
                sections.setdefault(current, [])
            continue
        if current:
            sections[current].append(line)
    probe_text = "".join(sections.get("probe", [])).strip()
    start = probe_text.find("{")
    if start < 0:
        raise ValueError("the status probe printed nothing")
    probe = json.loads(probe_text[start:])
    return Raw(
        probe,
        "".join(sections.get("certs", [])),
        "".join(sections.get("release", [])),
        release_exit,
    )


# --- judging (pure) -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
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


@dataclass(frozen=True)
class HostStatus:
    host: str
    address: str
    roles: tuple[str, ...]
    metrics: tuple[Metric, ...] = ()
    samples: Mapping[str, list[float]] = field(default_factory=dict)
    error: str | None = None
    unreachable: bool = False
    commands: int = 0
    seconds: float = 0.0

    @property
    def level(self) -> str:
        if self.error:
            return "unknown"
        return worst_of([m.level for m in self.metrics])

    def metric(self, name: str) -> Metric | None:
        return next((m for m in self.metrics if m.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "address": self.address,
            "roles": list(self.roles),
            "level": self.level,
            "error": self.error,
            "unreachable": self.unreachable,
            "metrics": [m.to_dict() for m in self.metrics],
            "samples": {k: list(v) for k, v in self.samples.items()},
            "commands": self.commands,
            "seconds": round(self.seconds, 2),
        }


@dataclass(frozen=True)
class FleetStatus:
    generated_at: dt.datetime
    hosts: tuple[HostStatus, ...]

    @property
    def worst(self) -> str:
        return worst_of([h.level for h in self.hosts])

    @property
    def exit_code(self) -> StatusExit:
        """CRITICAL if any metric is critical, else HOST_FAILED if a host or a metric could not
        be read, else WARNING if any metric is a warning, else OK."""
        worst = self.worst
        if worst == "critical":
            return StatusExit.CRITICAL
        if worst == "unknown":
            return StatusExit.HOST_FAILED
        if worst == "warning":
            return StatusExit.WARNING
        return StatusExit.OK

    def to_dict(self) -> dict[str, Any]:
        stamp = self.generated_at.astimezone(dt.UTC).isoformat(timespec="seconds")
        return {
            "generated_at": stamp.replace("+00:00", "Z"),
            "worst": self.worst,
            "exit_code": int(self.exit_code),
            "hosts": [h.to_dict() for h in self.hosts],
        }


def grade(value: float, pair: Pair) -> str:
    """ok / warning / critical of `value` (at or above a threshold is at its level).

    >>> grade(69.9, Pair(70, 90)), grade(70, Pair(70, 90)), grade(95, Pair(70, 90))
    ('ok', 'warning', 'critical')
    """
    if value >= pair.critical:
        return "critical"
    if value >= pair.warning:
        return "warning"
    return "ok"


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (as the health check's p95).

    >>> percentile([5, 1, 3, 2, 4], 50), percentile([5, 1, 3, 2, 4], 95)
    (3, 5)
    """
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


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
    if "error" in part:
        return str(part["error"])
    return None


def _pct_metric(name: str, label: str, part: Any, pair: Pair, detail: str = "") -> Metric:
    err = _error(part)
    if err or not isinstance(part, dict):
        return Metric(name, label, None, "%", "unknown", err or "not read")
    value = float(part["percent"])
    return Metric(name, label, value, "%", grade(value, pair), detail, pair.warning, pair.critical)


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
            else f"unreachable ({bad.get('error', '?')})"
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
                grade(ms, s.latency),
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
        level = "critical" if isinstance(part, dict) and part.get("down") else "unknown"
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
        grade(pct, s.db),
        f"{used} of max_connections {most}",
        s.db.warning,
        s.db.critical,
    )


def _pm2_metrics(s: Settings, part: Any, hc: Any, now: float) -> list[Metric]:
    err = _error(part)
    if err:
        level = "critical" if isinstance(part, dict) and part.get("down") else "unknown"
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
                grade(since, s.pm2_restarts),
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
    found = certs.parse_collect(host, text, s.cert_specs)
    warning, critical = s.cert_days
    out = []
    for lineage in found.lineages:
        st = certs.evaluate(
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
                st.state.name.lower(),
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
    level = "ok"
    if b.critical_hours is not None and hours >= b.critical_hours:
        level = "critical"
    elif b.warning_hours is not None and hours >= b.warning_hours:
        level = "warning"
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
    if part.get("missing"):
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
            grade(minutes, pair),
            f"checked {human_seconds(age)} ago ({part.get('checked_at')})",
            pair.warning,
            pair.critical,
        ),
    ]


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
    host_now = float(p.get("now") or now.timestamp())
    metrics: list[Metric] = []
    samples: dict[str, list[float]] = {}
    if s.health_url:
        health, answered = _health_metrics(s, p.get("health"))
        metrics += health
        samples["health_ms"] = answered
    metrics.append(_pct_metric("cpu", "cpu", p.get("cpu"), s.cpu, f"busy over {s.cpu_seconds:g} s"))
    mem = p.get("memory")
    mem_detail = ""
    if isinstance(mem, dict) and "total_kib" in mem:
        mem_detail = (
            f"{int(mem['available_kib']) // 1024} of {int(mem['total_kib']) // 1024} MiB available"
        )
    metrics.append(_pct_metric("memory", "memory", mem, s.memory, mem_detail))
    disks = p.get("disks")
    if not isinstance(disks, list):
        metrics.append(
            Metric("disk:/", "disk /", None, "%", "unknown", _error(disks) or "not read")
        )
    else:
        for d in disks:
            name = f"disk:{d['path']}"
            if "error" in d:
                metrics.append(
                    Metric(name, f"disk {d['path']}", None, "%", "critical", str(d["error"]))
                )
                continue
            free = human_size(int(d["avail_bytes"]))
            size = human_size(int(d["size_bytes"]))
            metrics.append(
                _pct_metric(name, f"disk {d['path']}", d, s.disk, f"{free} free of {size}")
            )
    if s.db is not None:
        metrics.append(_db_metric(s, p.get("database")))
    if s.pm2_user:
        metrics += _pm2_metrics(s, p.get("pm2"), p.get("healthcheck"), host_now)
    if s.cert_specs is not None:
        metrics += _cert_metrics(s, raw.certs, host.name, now)
    if s.backup is not None:
        metrics.append(_backup_metric(s, p.get("backup")))
    if s.healthcheck is not None:
        metrics += _healthcheck_metrics(s, p.get("healthcheck"))
    if s.app is not None:
        metrics.append(_release_metric(s, raw))
    return [_ungrade(m, s.ungraded) for m in metrics], samples


def read_host(remote: Any, s: Settings) -> Raw:
    """Read everything of one host in one remote command."""
    res = remote.run(remote_script(s), what="read status", timeout=120 + s.samples * s.timeout)
    try:
        return parse_output(res.stdout)
    except ValueError as exc:
        raise OpsError(f"the status probe's output was not understood: {exc}") from None


class Reader:
    """Reads and judges hosts' status over connections someone else opened: `collect` runs it
    on its own; `inv report.*` runs it beside other readers on the same connection.

    Every host's settings are checked when it is made: a bad value raises ConfigError.
    """

    def __init__(self, hosts: Sequence[Host], *, samples: int | None = None) -> None:
        self.hosts = list(hosts)
        self.settings = check_hosts(hosts, samples=samples)
        self.raw: dict[str, Raw] = {}

    def read(self, remote: Any) -> None:
        """One remote command on `remote` (a host of `hosts`)."""
        self.raw[remote.name] = read_host(remote, self.settings[remote.name])

    def host_status(self, r: HostResult, when: dt.datetime) -> HostStatus:
        """The judged status of the host of `r` (the runner's result of the read)."""
        h = next(h for h in self.hosts if h.name == r.host)
        if r.error or r.host not in self.raw:
            return HostStatus(
                h.name,
                h.address,
                h.roles,
                error=r.error or "not read",
                unreachable=r.unreachable,
                commands=r.commands,
                seconds=r.seconds,
            )
        metrics, series = evaluate(h, self.settings[h.name], self.raw[h.name], when)
        return HostStatus(
            h.name,
            h.address,
            h.roles,
            tuple(metrics),
            series,
            commands=r.commands,
            seconds=r.seconds,
        )


def collect(
    inventory: Inventory,
    hosts: Sequence[Host],
    *,
    workers: int = 8,
    samples: int | None = None,
    sudo_password: Secret | None = None,
    now: dt.datetime | None = None,
    on_host: Callable[[HostStatus], None] | None = None,
) -> FleetStatus:
    """Read and judge `hosts` (one connection and one remote command each, in parallel).

    Every host's settings are checked first: a bad value raises ConfigError and nothing runs.
    """
    from opskit.core.runner import run_on_hosts

    reader = Reader(hosts, samples=samples)

    def work(remote: Any, ctx: Any) -> list[Any]:
        reader.read(remote)
        return []

    results = run_on_hosts(inventory, hosts, work, workers=workers, sudo_password=sudo_password)
    when = now or dt.datetime.now(dt.UTC)
    out = []
    for r in results:
        hs = reader.host_status(r, when)
        if on_host is not None:
            on_host(hs)
        out.append(hs)
    return FleetStatus(when, tuple(out))


# --- output (pure) ------------------------------------------------------------------------------

_COLORS = {"ok": "32", "warning": "33", "critical": "31", "unknown": "35"}


def paint(text: str, level: str, color: bool) -> str:
    """`text` in the level's colour (bold for critical) when `color`, else as is."""
    if not color:
        return text
    code = _COLORS.get(level, "0")
    if level == "critical":
        code = f"1;{code}"
    return f"\033[{code}m{text}\033[0m"


def format_value(m: Metric) -> str:
    """
    >>> format_value(Metric("cpu", "cpu", 12.5, "%", "ok"))
    '12.5 %'
    >>> format_value(Metric("x", "x", None, "ms", "unknown"))
    '-'
    >>> format_value(Metric("x", "x", 3.0, "ms", "ok"))
    '3 ms'
    """
    if m.value is None:
        return "-"
    if isinstance(m.value, float) and m.value.is_integer() and m.unit not in ("%",):
        text = f"{int(m.value)}"
    else:
        text = f"{m.value}"
    return f"{text} {m.unit}".strip()


def _limits(m: Metric) -> str:
    if m.warning is None and m.critical is None:
        return ""
    below = m.unit == "days"  # certificates: fewer days left is worse
    word = "<" if below else ">="

    def num(x: float | None) -> str:
        return "-" if x is None else f"{x:g}"

    return f"[warn {word}{num(m.warning)}, crit {word}{num(m.critical)}]"


def format_host(h: HostStatus, *, color: bool) -> str:
    """One host's block: a header line, then one line per metric."""
    level = h.level
    head = (
        f"{paint(f'{level.upper():<8}', level, color)}  {h.host}  {h.address}  "
        f"({', '.join(h.roles) or 'no roles'})"
    )
    lines = [head]
    if h.error:
        label = "UNREACHABLE" if h.unreachable else "FAILED"
        first, *rest = h.error.splitlines() or [""]
        lines.append(f"    {paint(label, 'unknown', color)}  {first}")
        lines += [f"      {x}" for x in rest[:10]]
        return "\n".join(lines) + "\n"
    for m in h.metrics:
        word = paint(f"{m.level:<8}", m.level, color)
        detail = " ".join(x for x in (m.detail, _limits(m)) if x)
        lines.append(f"    {word}  {m.label:<17} {format_value(m):>12}  {detail}".rstrip())
    return "\n".join(lines) + "\n"


def format_fleet(fleet: FleetStatus, *, color: bool = False) -> str:
    """The screen: hosts worst first (then in inventory order), then a summary line."""
    order = sorted(range(len(fleet.hosts)), key=lambda i: (-RANK[fleet.hosts[i].level], i))
    blocks = [format_host(fleet.hosts[i], color=color) for i in order]
    counts = {lvl: sum(1 for h in fleet.hosts if h.level == lvl) for lvl in LEVELS}
    unreachable = sum(1 for h in fleet.hosts if h.unreachable)
    stamp = fleet.generated_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    n = len(fleet.hosts)
    summary = (
        f"{n} host{'s' if n != 1 else ''}: {counts['critical']} critical, "
        f"{counts['unknown']} unknown ({unreachable} unreachable), {counts['warning']} warning, "
        f"{counts['ok']} ok; worst {paint(fleet.worst, fleet.worst, color)} "
        f"(exit {int(fleet.exit_code)}) at {stamp}"
    )
    return "\n".join(blocks) + summary + "\n"


def to_json(fleet: FleetStatus) -> str:
    return json.dumps(fleet.to_dict(), indent=2) + "\n"
