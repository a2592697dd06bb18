"""healthcheck: a health-check program, its config from the inventory, cron, Slack alerts."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from opskit.app.spec import AppLayout
from opskit.core.errors import ConfigError
from opskit.core.render import managed_by
from opskit.core.secrets import Secret
from opskit.hostside.healthcheck import (
    ACCESS_LOG,
    CONFIG_PATH,
    CPU,
    DATABASE,
    DISK,
    ERROR_RATE,
    HTTP,
    MEMORY,
    P95,
    PM2,
    STATE_DIR,
    AccessLogConfig,
    ChecksConfig,
    Config,
    PercentConfig,
)
from opskit.monitoring.spec import (
    CRON_NAME,
    LOG_TAG,
    ROLE,
    SCRIPT,
    TARGETS_FILE,
    WEBHOOK_FILE,
    Alerts,
    compile_alerts,
)
from opskit.resources import Absent, CronEntry, Directory, File, HostProgram, Resource


def _number(v: Mapping[str, Any], key: str) -> float:
    value: float = v[key]  # a number in range: checked at load (roles/healthcheck/schema.yml)
    return value


def _pair(v: Mapping[str, Any], name: str, *, percent: bool = False) -> PercentConfig:
    warning = _number(v, f"healthcheck_{name}_warning")
    critical = _number(v, f"healthcheck_{name}_critical")
    if warning > critical:
        raise ConfigError(
            f"healthcheck_{name}_warning ({warning}) is above healthcheck_{name}_critical "
            f"({critical})"
        )
    return {"warning": warning, "critical": critical}


def health_url(v: Mapping[str, Any]) -> str:
    """The endpoint the check polls: explicit, else the app role's, else none ('').

    >>> health_url({"healthcheck_health_url": None, "app_port": 3000})
    'http://127.0.0.1:3000/health'
    >>> health_url({"healthcheck_health_url": None})
    ''
    """
    url = v["healthcheck_health_url"]
    if url is None:
        if "app_port" not in v:
            return ""
        return f"http://127.0.0.1:{v['app_port']}{v.get('app_health_path', '/health')}"
    return str(url)


def build_config(v: Mapping[str, Any]) -> Config:
    """The JSON config of the health check for one host (pure): only the checks that have a
    target."""
    enabled = v["healthcheck_checks"]
    remind = _number(v, "healthcheck_remind_minutes")
    if remind < 1:
        raise ConfigError("healthcheck_remind_minutes: at least 1")
    checks: ChecksConfig = {}
    url = health_url(v)
    if HTTP in enabled and url:
        checks[HTTP] = {
            "url": url,
            "keyword": str(v["healthcheck_health_keyword"] or ""),
            "warning_ms": _number(v, "healthcheck_response_time_warning_ms"),
            "critical_ms": _number(v, "healthcheck_response_time_critical_ms"),
        }
        if checks[HTTP]["warning_ms"] > checks[HTTP]["critical_ms"]:
            raise ConfigError(
                "healthcheck_response_time_warning_ms is above "
                "healthcheck_response_time_critical_ms"
            )
    db = v["healthcheck_database_host"]
    if db is None:
        db = "127.0.0.1" if "postgresql_version" in v else ""
    if DATABASE in enabled and db:
        checks[DATABASE] = {"host": str(db), "port": int(v["healthcheck_database_port"])}
    if DISK in enabled:
        paths = v["healthcheck_disk_paths"]
        if not isinstance(paths, list) or not all(str(p).startswith("/") for p in paths):
            raise ConfigError(f"healthcheck_disk_paths: a list of absolute paths, got {paths!r}")
        checks[DISK] = {"paths": [str(p) for p in paths], **_pair(v, "disk", percent=True)}
    if MEMORY in enabled:
        checks[MEMORY] = _pair(v, "memory", percent=True)
    if CPU in enabled:
        checks[CPU] = {**_pair(v, "cpu", percent=True), "sample_seconds": 1}
    user = v["healthcheck_pm2_user"]
    if user is None:
        user = v.get("app_user", "")
    apps = v["healthcheck_pm2_apps"]
    if apps is None:
        apps = [v["app_name"]] if "app_name" in v else []
    if PM2 in enabled and user:
        restarts = _pair(v, "pm2_restarts")
        checks[PM2] = {
            "user": str(user),
            "home": f"/home/{user}/.pm2",
            "apps": [str(a) for a in apps],
            "restarts_warning": restarts["warning"],
            "restarts_critical": restarts["critical"],
        }
        if "app_name" in v:  # a deploy's reload restarts every process: not counted (below)
            checks[PM2]["current"] = AppLayout.from_vars(v).current
    log = v["healthcheck_access_log"]
    if log is None:
        log = "/var/log/nginx/access.log" if "nginx_server_names" in v else ""
    if log and (ERROR_RATE in enabled or P95 in enabled):
        access: AccessLogConfig = {
            "path": str(log),
            "window_minutes": _number(v, "healthcheck_window_minutes"),
            "min_requests": int(_number(v, "healthcheck_min_requests")),
        }
        if ERROR_RATE in enabled:
            pair = _pair(v, "error_rate", percent=True)
            access["error_rate_warning"] = pair["warning"]
            access["error_rate_critical"] = pair["critical"]
        if P95 in enabled:
            access["p95_warning_ms"] = _number(v, "healthcheck_p95_warning_ms")
            access["p95_critical_ms"] = _number(v, "healthcheck_p95_critical_ms")
        checks[ACCESS_LOG] = access
    hints = v["healthcheck_hints"]
    config: Config = {
        "_comment": managed_by(ROLE),
        "host": str(v["healthcheck_host_label"] or ""),
        "remind_minutes": remind,
        "timeout": _number(v, "healthcheck_timeout"),
        "state_dir": STATE_DIR,
        "slack_webhook_file": WEBHOOK_FILE,
        "checks": checks,
        "hints": {str(k): str(t) for k, t in hints.items()},
        "hint_vars": {
            "pm2_user": user or "app",
            "pm2_home": f"/home/{user or 'app'}/.pm2",
            "pm2_unit": f"pm2-{user or 'app'}",
            "pm2_apps": " ".join(apps) or "all",
            "db_host": db or "127.0.0.1",
            "db_port": v["healthcheck_database_port"],
            "disk_path": (v["healthcheck_disk_paths"] or ["/"])[0],
        },
    }
    alerts = host_alerts(v, checks)
    if alerts.rules:
        config["metrics"] = alerts.metrics
        config["rules"] = alerts.rules
        config["targets"] = {
            t: alerts.targets[t] for t in sorted({t for r in alerts.rules for t in r["notify"]})
        }
        config["targets_file"] = TARGETS_FILE
    return config


# Which check measures each built-in metric of the alert rules.
_METRIC_CHECK = {
    "error_rate": ACCESS_LOG,
    "p95": ACCESS_LOG,
    "http_down": HTTP,
    "http_ms": HTTP,
    "database_down": DATABASE,
    "disk": DISK,
    "memory": MEMORY,
    "cpu": CPU,
    "pm2_restarts": PM2,
}


def host_alerts(v: Mapping[str, Any], checks: ChecksConfig) -> Alerts:
    """The inventory's `alerts` rules this host can measure: a built-in metric where its check
    runs (error_rate and p95: where that part of the access-log check is on), an SQL metric on
    the database host (the postgresql role), the other custom metrics everywhere."""
    access = checks.get("access_log", {})

    def measurable(metric: str, kind: str) -> bool:
        if kind == "sql":
            return "postgresql_version" in v
        if kind != "builtin":
            return True
        if metric == "error_rate":
            return "error_rate_warning" in access
        if metric == "p95":
            return "p95_warning_ms" in access
        return _METRIC_CHECK[metric] in checks

    return compile_alerts(v.get("healthcheck_alerts"), measurable)


def webhook(v: Mapping[str, Any]) -> Secret:
    # Required, a {secret: NAME} and an http(s) URL: checked at load (schema.yml).
    url: Secret = v["healthcheck_slack_webhook_url"]
    return url


def resources(v: Mapping[str, Any]) -> list[Resource]:
    """The desired state of roles/healthcheck/README.md for one host's variables."""
    url = webhook(v)
    built = build_config(v)
    config = json.dumps(built, indent=1, sort_keys=True) + "\n"
    targets: list[Resource] = []
    if built.get("rules"):
        secrets = host_alerts(v, built["checks"]).secrets
        used = {t: {k: str(s) for k, s in secrets[t].items()} for t in built.get("targets", {})}
        text = json.dumps(used, indent=1, sort_keys=True) + "\n"
        targets.append(File(TARGETS_FILE, text, mode=0o600, sensitive=True))
    else:
        targets.append(Absent(TARGETS_FILE))  # no rules (any more): no secrets left behind
    return [
        Directory("/etc/opskit", 0o755),
        Directory("/var/lib/opskit", 0o755),
        Directory(STATE_DIR, 0o755),
        File(WEBHOOK_FILE, f"{url}\n", mode=0o600, sensitive=True),
        *targets,
        File(CONFIG_PATH, config, mode=0o644),
        HostProgram(
            SCRIPT,
            "healthcheck",
            role=ROLE,
            validate="python3 -c 'import ast,sys; ast.parse(open(sys.argv[1]).read())' %s",
        ),
        CronEntry(
            CRON_NAME,
            str(v["healthcheck_schedule"]),
            f"{SCRIPT} --quiet 2>&1 | logger -t {LOG_TAG}",
        ),
    ]
