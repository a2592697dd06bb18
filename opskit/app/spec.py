"""The app's layout on a host and the names deploys and the app role agree on (no operations).

/srv/<app>/releases/<name>/      one directory per release (code, node_modules, metadata)
/srv/<app>/current               symlink to releases/<name>, switched atomically
/srv/<app>/shared/               the app's own files; ecosystem.config.js (0600)
/srv/<app>/.opskit/              root only: deploy lock, journal, activation state
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opskit.core.errors import ConfigError

PM2_DIR = "/opt/opskit/pm2"
PM2_BIN = f"{PM2_DIR}/node_modules/pm2/bin/pm2"
RELEASE_META = ".opskit-release.json"
BAD_MARK = ".opskit-bad"
LOCKED_EXIT = 75
UNPROVISIONED_EXIT = 78


@dataclass(frozen=True)
class AppLayout:
    """Where the app lives on a host, from its variables (roles/app/defaults.yml)."""

    name: str
    user: str
    port: int
    root: str = "/srv"  # tests point it at a temporary directory
    candidate_port: int = 0  # the spare port a release proves itself on (0: port + 1)

    @classmethod
    def from_vars(cls, v: Mapping[str, Any]) -> AppLayout:
        name, user, port = v["app_name"], v["app_user"], v["app_port"]
        if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,31}", name):
            raise ConfigError(f"app_name: {name!r}: lower-case letters, digits, '-', '_'")
        if not isinstance(user, str) or not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", user):
            raise ConfigError(f"app_user: {user!r} is not a valid user name")
        if user in ("root", v.get("base_deploy_user", "deploy")):
            raise ConfigError(f"app_user: {user!r}: the app needs a user of its own")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigError(f"app_port: expected a TCP port number, got {port!r}")
        spare = v.get("app_candidate_port", port + 1)
        if isinstance(spare, bool) or not isinstance(spare, int) or not 0 < spare < 65536:
            raise ConfigError(f"app_candidate_port: expected a TCP port number, got {spare!r}")
        if spare == port:
            raise ConfigError(f"app_candidate_port: {spare} is app_port; choose a spare port")
        return cls(name, user, port, candidate_port=spare)

    @property
    def spare_port(self) -> int:
        return self.candidate_port or self.port + 1

    @property
    def candidate(self) -> str:
        """The PM2 name of a release proving itself on the spare port during a deploy."""
        return f"{self.name}-candidate"

    @property
    def base(self) -> str:
        return f"{self.root}/{self.name}"

    @property
    def releases(self) -> str:
        return f"{self.base}/releases"

    @property
    def shared(self) -> str:
        return f"{self.base}/shared"

    @property
    def current(self) -> str:
        return f"{self.base}/current"

    @property
    def ecosystem(self) -> str:
        return f"{self.shared}/ecosystem.config.js"

    @property
    def state_dir(self) -> str:
        return f"{self.base}/.opskit"

    @property
    def journal(self) -> str:
        return f"{self.state_dir}/journal.jsonl"

    @property
    def log_dir(self) -> str:
        return f"/var/log/{self.name}"

    @property
    def home(self) -> str:
        return f"/home/{self.user}"

    @property
    def pm2_home(self) -> str:
        return f"{self.home}/.pm2"

    @property
    def pm2_service(self) -> str:
        return f"pm2-{self.user}"

    @property
    def activate_unit(self) -> str:
        return f"opskit-{self.name}-activate"
