"""healthcheck: a health-check script, its config from the inventory, cron, Slack alerts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opskit.core.errors import ConfigError
from opskit.core.render import managed_by
from opskit.core.secrets import Secret
from opskit.resources import CronEntry, Directory, File, Resource, Template

SCRIPT = "/usr/local/bin/opskit-healthcheck"
CONFIG = "/etc/opskit/healthcheck.json"
WEBHOOK_FILE = "/etc/opskit/healthcheck-slack-webhook"
STATE_DIR = "/var/lib/opskit/healthcheck"
STATUS_FILE = f"{STATE_DIR}/status.json"  # what `inv status` and `inv monitoring.check` read
CRON_NAME = "opskit-healthcheck"
CHECKS = ("http", "database", "disk", "memory", "cpu", "pm2", "error_rate", "p95")


def _number(v: Mapping[str, Any], key: str) -> float:
    value: float = v[key]  # a number in range: checked at load (roles/healthcheck/schema.yml)
    return value


def _pair(v: Mapping[str, Any], name: str) -> dict[str, float]:
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


def build_config(v: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON config of the script for one host (pure): only the checks that have a target."""
    enabled = v["healthcheck_checks"]
    remind = _number(v, "healthcheck_remind_minutes")
    checks: dict[str, Any] = {}
    url = health_url(v)
    if "http" in enabled and url:
        checks["http"] = {
            "url": url,
            "keyword": str(v["healthcheck_health_keyword"] or ""),
            "warning_ms": _number(v, "healthcheck_response_time_warning_ms"),
            "critical_ms": _number(v, "healthcheck_response_time_critical_ms"),
        }
        if checks["http"]["warning_ms"] > checks["http"]["critical_ms"]:
            raise ConfigError(
                "healthcheck_response_time_warning_ms is above "
                "healthcheck_response_time_critical_ms"
            )
    db = v["healthcheck_database_host"]
    if db is None:
        db = "127.0.0.1" if "postgresql_version" in v else ""
    if "database" in enabled and db:
        checks["database"] = {"host": str(db), "port": int(v["healthcheck_database_port"])}
    if "disk" in enabled:
        paths = v["healthcheck_disk_paths"]
        checks["disk"] = {"paths": [str(p) for p in paths], **_pair(v, "disk")}
    if "memory" in enabled:
        checks["memory"] = _pair(v, "memory")
    if "cpu" in enabled:
        checks["cpu"] = {**_pair(v, "cpu"), "sample_seconds": 1}
    user = v["healthcheck_pm2_user"]
    if user is None:
        user = v.get("app_user", "")
    apps = v["healthcheck_pm2_apps"]
    if apps is None:
        apps = [v["app_name"]] if "app_name" in v else []
    if "pm2" in enabled and user:
        checks["pm2"] = {
            "user": str(user),
            "home": f"/home/{user}/.pm2",
            "apps": [str(a) for a in apps],
            **_pair(v, "pm2_restarts"),
        }
        checks["pm2"]["restarts_warning"] = checks["pm2"].pop("warning")
        checks["pm2"]["restarts_critical"] = checks["pm2"].pop("critical")
        if "app_name" in v:  # a deploy's reload restarts every process: not counted (below)
            from opskit.app.spec import AppLayout

            checks["pm2"]["current"] = AppLayout.from_vars(v).current
    log = v["healthcheck_access_log"]
    if log is None:
        log = "/var/log/nginx/access.log" if "nginx_server_names" in v else ""
    if log and ("error_rate" in enabled or "p95" in enabled):
        access: dict[str, Any] = {
            "path": str(log),
            "window_minutes": _number(v, "healthcheck_window_minutes"),
            "min_requests": int(_number(v, "healthcheck_min_requests")),
        }
        if "error_rate" in enabled:
            pair = _pair(v, "error_rate")
            access.update(error_rate_warning=pair["warning"], error_rate_critical=pair["critical"])
        if "p95" in enabled:
            access.update(
                p95_warning_ms=_number(v, "healthcheck_p95_warning_ms"),
                p95_critical_ms=_number(v, "healthcheck_p95_critical_ms"),
            )
        checks["access_log"] = access
    hints = v["healthcheck_hints"]
    return {
        "_comment": managed_by("healthcheck"),
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


def webhook(v: Mapping[str, Any]) -> Secret:
    # Required, a {secret: NAME} and an http(s) URL: checked at load (schema.yml).
    url: Secret = v["healthcheck_slack_webhook_url"]
    return url


def resources(v: Mapping[str, Any]) -> list[Resource]:
    """The desired state of roles/healthcheck/README.md for one host's variables."""
    url = webhook(v)
    config = build_config(v)
    variables = {**v, "healthcheck_config": config, "healthcheck_config_path": CONFIG}
    return [
        Directory("/etc/opskit", 0o755),
        Directory("/var/lib/opskit", 0o755),
        Directory(STATE_DIR, 0o755),
        File(WEBHOOK_FILE, f"{url}\n", mode=0o600, sensitive=True),
        Template(CONFIG, "healthcheck/healthcheck.json.j2", variables, mode=0o644),
        Template(
            SCRIPT,
            "healthcheck/opskit-healthcheck.j2",
            variables,
            mode=0o755,
            validate="python3 -c 'import ast,sys; ast.parse(open(sys.argv[1]).read())' %s",
        ),
        CronEntry(
            CRON_NAME,
            str(v["healthcheck_schedule"]),
            f"{SCRIPT} --quiet 2>&1 | logger -t opskit-healthcheck",
        ),
    ]
