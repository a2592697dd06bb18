"""Resources of the app and nginx roles that opskit/resources.py does not have.

They live in the opskit package (not in roles/*/role.py) because role modules are loaded by
path, and dataclasses need their module to be importable.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass

from opskit.app.spec import PM2_BIN, AppLayout
from opskit.core.artifacts import Bundle
from opskit.core.errors import OpsError
from opskit.resources import NOTHING, Plan, Resource, q

MARKER = ".opskit-sha256"


@dataclass(frozen=True)
class Unpacked(Resource):
    """Directory `path` holds exactly the files of a local tarball, known by its sha256.

    The tarball is built (or read from the operator's cache) only when the engine plans this
    resource, and sent inline with the change script only when the host's copy differs.
    """

    path: str
    label: str
    source: Callable[[], Bundle]
    strip: int = 0  # leading path parts of the tarball's entries to drop (npm's `package/`)

    @property
    def id(self) -> str:  # type: ignore[override]
        return f"unpacked:{self.path}"

    def probe(self) -> str:
        return f"cat -- {q(self.path + '/' + MARKER)} 2>/dev/null || echo absent"

    def plan(self, state: str, changed: frozenset[str]) -> Plan:
        bundle = self.source()
        have = state.strip()
        if have == bundle.sha256:
            return NOTHING
        reason = "install" if have == "absent" else f"replace (sha256 {have[:12]}...)"
        return Plan(
            (f"{reason} {self.label} (sha256 {bundle.sha256[:12]}...)",),
            data={"bundle": bundle},
        )

    def script(self, plan: Plan) -> str:
        """The tarball travels in the command's own stdin, read by `head -c` at full speed: a
        here-document would be read by bash one byte at a time (its input is a pipe), which
        takes minutes for the ~57 MB of a Node build. This must stay a top-level command of
        the script (the engine's apply script is one): bash reads the data's bytes as the
        script's otherwise."""
        bundle: Bundle = plan.data["bundle"]
        p, new, old = q(self.path), q(self.path + ".opskit-new"), q(self.path + ".opskit-old")
        b64 = base64.b64encode(bundle.read()).decode()
        tar = f"tar -xz -C {new} --no-same-owner" + (
            f" --strip-components={self.strip}" if self.strip else ""
        )
        return "\n".join(
            [
                f"rm -rf -- {new} {old} && install -d -m 0755 -- {new}",
                f"head -c {len(b64)} | base64 -d | {tar}",
                b64,
                f"echo {bundle.sha256} > {new}/{MARKER}",
                f"if [ -e {p} ]; then mv -T -- {p} {old}; fi",
                f"mv -T -- {new} {p} && rm -rf -- {old}",
            ]
        )


@dataclass(frozen=True)
class CpuIs(Resource):
    """The host's CPU (`uname -m`) is `arch`; otherwise the host fails before anything changes,
    naming `why` (e.g. a Node build that only runs there)."""

    arch: str
    why: str

    @property
    def id(self) -> str:  # type: ignore[override]
        return f"cpu:{self.arch}"

    def probe(self) -> str:
        return "uname -m"

    def plan(self, state: str, changed: frozenset[str]) -> Plan:
        have = state.strip()
        if have != self.arch:
            raise OpsError(f"this host's CPU is {have or 'unknown'}, not {self.arch}: {self.why}")
        return NOTHING

    def script(self, plan: Plan) -> str:
        return "true"


@dataclass(frozen=True)
class DaemonReload(Resource):
    """`systemctl daemon-reload` once when a unit file in `watch` changed (a handler)."""

    watch: tuple[str, ...]

    @property
    def id(self) -> str:  # type: ignore[override]
        return "systemd:daemon-reload"

    def probe(self) -> str:
        return "true"

    def plan(self, state: str, changed: frozenset[str]) -> Plan:
        return Plan(("daemon-reload (unit changed)",)) if changed & set(self.watch) else NOTHING

    def script(self, plan: Plan) -> str:
        return "systemctl daemon-reload"


@dataclass(frozen=True)
class AppReload(Resource):
    """When the ecosystem file changed and a release is deployed, PM2 reloads the app with it
    (`startOrReload --update-env`) and saves the process list. Not a deploy: no health gate."""

    layout: AppLayout
    watch: tuple[str, ...]
    node_bin: str = "/usr/bin"  # the node PM2's CLI runs under (spec.node_bin_dir)

    @property
    def id(self) -> str:  # type: ignore[override]
        return f"pm2:{self.layout.name}"

    def probe(self) -> str:
        return f"if [ -L {q(self.layout.current)} ]; then echo deployed; else echo none; fi"

    def plan(self, state: str, changed: frozenset[str]) -> Plan:
        if state.strip() == "deployed" and changed & set(self.watch):
            return Plan(("reload the app (its environment changed)",))
        return NOTHING

    def script(self, plan: Plan) -> str:
        lo = self.layout
        pm2 = (
            f"runuser -u {q(lo.user)} -- env HOME={q(lo.home)} PM2_HOME={q(lo.pm2_home)} "
            f"PATH={q(self.node_bin)}:/usr/local/bin:/usr/bin:/bin {PM2_BIN}"
        )
        # umask: dump.pm2 holds the app's environment (its secrets); the owner's only.
        return (
            "umask 077\n"
            f"systemctl is-active -q {q(lo.pm2_service)} || systemctl start {q(lo.pm2_service)}\n"
            f"{pm2} startOrReload {q(lo.ecosystem)} --update-env >/dev/null\n"
            f"{pm2} save --force >/dev/null"
        )
