"""app: Node.js, PM2 under systemd, the release layout, the ecosystem file, log rotation."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from opskit.app.resources import AppReload, CpuIs, Unpacked
from opskit.app.spec import (
    NODE_CPU,
    NODE_PACKAGE,
    NPM_DIR,
    PM2_BIN,
    PM2_DIR,
    AppLayout,
    node_bin_dir,
    node_dir,
    node_source,
)
from opskit.core.artifacts import npm_bundle, npm_pack
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
    if v.get("app_admin_token"):  # the admin endpoints (opskit/app/toggles.py)
        env["ADMIN_TOKEN"] = v["app_admin_token"]
        env["ADMIN_STATE_FILE"] = f"{layout.shared}/admin-state.json"
        env["ADMIN_PATH"] = str(v["app_admin_path"])
    # Names and values are checked at load (roles/app/schema.yml); a value may be a Secret.
    for name, value in (v["app_env"] or {}).items():
        if name == "SENTRY_RELEASE":
            raise ConfigError("app_env.SENTRY_RELEASE: set by opskit from the current release")
        env[name] = value if isinstance(value, Secret) else str(value)
    return env


def resources(v: Mapping[str, Any]) -> list[Resource]:
    """The desired state of roles/app/README.md for one host's variables."""
    lo = AppLayout.from_vars(v)
    version = str(v["app_pm2_version"])
    npm_version = str(v["app_npm_version"])
    node_version = str(v["app_node_version"])
    official = node_source(v) == "official"
    node_bin = node_bin_dir(v)
    unit = f"/etc/systemd/system/{lo.pm2_service}.service"
    ecosystem = lo.ecosystem
    tv = dict(
        v,
        app_current=lo.current,
        app_log_dir=lo.log_dir,
        app_pm2_home=lo.pm2_home,
        app_pm2=PM2_BIN,
        app_pm2_bin_dir=PM2_BIN.rsplit("/", 1)[0],
        app_node_bin_dir=node_bin,
        app_candidate_port=lo.spare_port,
        app_env_json=json.dumps(_env(v, lo), indent=10, sort_keys=True).replace(
            "\n}", "\n        }"
        ),
    )
    node: list[Resource] = []
    node_ids: tuple[str, ...] = ()
    if official:
        # The official build runs on x86_64 only: another CPU fails here, before any change.
        why = (
            f"app_node_source official installs {NODE_PACKAGE} (x86_64 builds only); "
            "set app_node_source: distro for this host"
        )
        nd = node_dir(node_version)
        node = [
            CpuIs(NODE_CPU, why),
            Unpacked(
                nd, f"node {node_version}", lambda: npm_pack(NODE_PACKAGE, node_version), strip=1
            ),
        ]
        node_ids = (f"unpacked:{nd}",)
    # The official build links libatomic (not in a minimal Debian 12); distro: Debian's nodejs.
    node_pkg = ("libatomic1",) if official else (str(v["app_node_package"]),)
    packages = (*node_pkg, "logrotate", "curl")
    return [
        *node,
        Packages(packages),
        User(lo.user, shell="/usr/sbin/nologin", system=True),
        Unpacked(PM2_DIR, f"pm2 {version}", lambda: npm_bundle("pm2", version)),
        # npm for builds on the hosts (npm rebuild, app_build_command, npm prune), run by `node`
        Unpacked(NPM_DIR, f"npm {npm_version}", lambda: npm_bundle("npm", npm_version)),
        Symlink("/usr/local/bin/pm2", PM2_BIN),
        # PM2's home holds the app's environment (secrets) in dump.pm2: its owner's only.
        Directory(lo.pm2_home, 0o700, lo.user, lo.user),
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
        Service(lo.pm2_service, restart_on=(f"unpacked:{PM2_DIR}", *node_ids, f"file:{unit}")),
        AppReload(lo, (f"file:{ecosystem}",), node_bin),
        Template(
            f"/etc/logrotate.d/pm2-{lo.name}", "app/logrotate.j2", tv, validate="logrotate -d %s"
        ),
    ]
