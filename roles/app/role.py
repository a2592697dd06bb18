"""app: Node.js, PM2 under systemd, the release layout, the ecosystem file, log rotation."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from opskit.app.resources import AppReload, Unpacked
from opskit.app.spec import PM2_BIN, PM2_DIR, AppLayout
from opskit.core.artifacts import npm_bundle
from opskit.core.errors import ConfigError
from opskit.core.secrets import Secret
from opskit.resources import (
    DaemonReload,
    Directory,
    Packages,
    Resource,
    Service,
    Symlink,
    Template,
    User,
)


def _env(v: Mapping[str, Any], layout: AppLayout) -> dict[str, str]:
    env: dict[str, str] = {
        "NODE_ENV": str(v["app_node_env"]),
        "HOST": "127.0.0.1",
        "PORT": str(layout.port),
        "SENTRY_ENVIRONMENT": str(v["app_sentry_environment"]),
    }
    if v["app_sentry_dsn"]:
        env["SENTRY_DSN"] = v["app_sentry_dsn"]
    extra = v["app_env"] or {}
    if not isinstance(extra, dict):
        raise ConfigError("app_env: expected a mapping of NAME: value")
    for name, value in extra.items():
        if not isinstance(name, str) or not name.replace("_", "a").isalnum() or name[0].isdigit():
            raise ConfigError(f"app_env: {name!r} is not an environment variable name")
        if isinstance(value, dict):
            raise ConfigError(
                f"app_env.{name}: a value must be a string or number; for a secret, "
                "reference it from a top-level variable (e.g. app_sentry_dsn: {secret: NAME})"
            )
        if name == "SENTRY_RELEASE":
            raise ConfigError("app_env.SENTRY_RELEASE: set by opskit from the current release")
        env[name] = value if isinstance(value, Secret) else str(value)
    return env


def resources(v: Mapping[str, Any]) -> list[Resource]:
    """The desired state of roles/app/README.md for one host's variables."""
    lo = AppLayout.from_vars(v)
    if v["app_exec_mode"] not in ("cluster", "fork"):
        raise ConfigError("app_exec_mode: cluster or fork")
    if v["app_instances"] != "max" and (
        isinstance(v["app_instances"], bool)
        or not isinstance(v["app_instances"], int)
        or v["app_instances"] < 1
    ):
        raise ConfigError(f"app_instances: a number >= 1 or 'max', got {v['app_instances']!r}")
    if int(v["app_keep_releases"]) < 2:
        raise ConfigError("app_keep_releases: keep at least 2 (else nothing to roll back to)")
    if v["app_log_rotate"] not in ("daily", "weekly", "monthly"):
        raise ConfigError("app_log_rotate: daily, weekly or monthly")
    version = str(v["app_pm2_version"])
    unit = f"/etc/systemd/system/{lo.pm2_service}.service"
    ecosystem = lo.ecosystem
    tv = dict(
        v,
        app_current=lo.current,
        app_log_dir=lo.log_dir,
        app_pm2_home=lo.pm2_home,
        app_pm2=PM2_BIN,
        app_pm2_bin_dir=PM2_BIN.rsplit("/", 1)[0],
        app_env_json=json.dumps(_env(v, lo), indent=8, sort_keys=True).replace("\n}", "\n      }"),
    )
    return [
        Packages((str(v["app_node_package"]), "logrotate", "curl")),
        User(lo.user, shell="/usr/sbin/nologin", system=True),
        Unpacked(PM2_DIR, f"pm2 {version}", lambda: npm_bundle("pm2", version)),
        Symlink("/usr/local/bin/pm2", PM2_BIN),
        Directory(lo.base, 0o755),
        Directory(lo.releases, 0o755),
        Directory(lo.shared, 0o750, lo.user, lo.user),
        Directory(lo.state_dir, 0o700),
        Directory(lo.log_dir, 0o750, lo.user, lo.user),
        Template(
            ecosystem,
            "app/ecosystem.config.js.j2",
            tv,
            mode=0o600,
            owner=lo.user,
            group=lo.user,
            sensitive=True,
        ),
        Template(unit, "app/pm2.service.j2", tv),
        DaemonReload((f"file:{unit}",)),
        Service(lo.pm2_service, restart_on=(f"unpacked:{PM2_DIR}", f"file:{unit}")),
        AppReload(lo, (f"file:{ecosystem}",)),
        Template(
            f"/etc/logrotate.d/pm2-{lo.name}", "app/logrotate.j2", tv, validate="logrotate -d %s"
        ),
    ]
