"""System resources: packages, services (and systemd daemon-reload), users, guarded commands."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from opskit.core.errors import ConfigError
from opskit.core.resource import (
    NOTHING,
    Plan,
    Resource,
    q,
)


@dataclass(frozen=True)
class DaemonReload(Resource):
    """Handler: `systemctl daemon-reload` once when a unit file in `watch` changed; `name` tells
    apart the handlers of several roles on one host."""

    watch: tuple[str, ...]
    name: str = ""

    @property
    def id(self) -> str:  # type: ignore[override]
        return f"systemd:daemon-reload ({self.name})" if self.name else "systemd:daemon-reload"

    def probe(self) -> str:
        return "true"

    def plan(self, state: str, changed: frozenset[str]) -> Plan:
        return Plan(("daemon-reload (unit changed)",)) if changed & set(self.watch) else NOTHING

    def script(self, plan: Plan) -> str:
        return "systemctl daemon-reload"


# --- packages, services, users ------------------------------------------------------------


@dataclass(frozen=True)
class Packages(Resource):
    """Every package in `names` is installed (apt); one install for all that are missing.

    An install adds files and units and may start services, so the engine installs every missing
    package of the host first and probes the other resources again afterwards (`alters_host`).
    """

    names: tuple[str, ...]
    alters_host = True

    @property
    def id(self) -> str:  # type: ignore[override]
        return "packages:" + ",".join(self.names)

    def probe(self) -> str:
        # dpkg's state of each name; when one is not installed, also what installed packages
        # provide: a virtual name (postgresql-contrib on Debian 13) is satisfied by a provider.
        names = " ".join(q(n) for n in self.names)
        return (
            f"_opskit_p=$(dpkg-query -W -f='${{Package}} ${{db:Status-Abbrev}}\\n' -- {names} "
            "2>/dev/null); printf '%s\\n' \"$_opskit_p\"; "
            f"if [ \"$(printf '%s\\n' \"$_opskit_p\" | grep -c ' ii')\" -lt {len(self.names)} ]; "
            "then "
            "echo '@provides'; dpkg-query -W -f='${db:Status-Abbrev}|${Provides}\\n' 2>/dev/null "
            "| sed -n 's/^ii *|//p'; fi"
        )

    @staticmethod
    def installed(state: str) -> set[str]:
        """Names dpkg reports as installed ('ii'), and the names installed packages provide.

        >>> sorted(Packages.installed("sudo ii \\ncron rc \\n"))
        ['sudo']
        >>> sorted(Packages.installed("@provides\\npostgresql-contrib (= 17+278), pg-x\\n"))
        ['pg-x', 'postgresql-contrib']
        """
        found = set()
        own, _, provides = state.partition("@provides\n")
        for line in own.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[1] == "ii":
                found.add(parts[0].split(":")[0])
        for line in provides.splitlines():
            for item in line.split(","):
                if item.strip():
                    found.add(item.split()[0].split(":")[0])
        return found

    def plan(self, state: str, changed: frozenset[str]) -> Plan:
        missing = [n for n in self.names if n not in self.installed(state)]
        if not missing:
            return NOTHING
        return Plan((f"install {' '.join(missing)}",), data={"missing": missing})

    def script(self, plan: Plan) -> str:
        pkgs = " ".join(q(n) for n in plan.data["missing"])
        install = (
            "apt-get install -y -q --no-install-recommends -o Acquire::Retries=3 "
            "-o Dpkg::Options::=--force-confold "
            f"-- {pkgs} >/tmp/.opskit-apt.log 2>&1"
        )
        return (
            "export DEBIAN_FRONTEND=noninteractive\n"
            f"if ! {install}; then apt-get update -q >/dev/null 2>&1 || true;"
            f" {install} || {{ tail -n 20 /tmp/.opskit-apt.log >&2; exit 100; }}; fi"
        )


@dataclass(frozen=True)
class Service(Resource):
    """systemd unit `name` enabled and running; reloaded (or restarted) once when any resource
    in `reload_on` (`restart_on`) changed in this run — the handler."""

    name: str
    enabled: bool = True
    running: bool = True
    reload_on: tuple[str, ...] = ()
    restart_on: tuple[str, ...] = ()

    @property
    def id(self) -> str:  # type: ignore[override]
        return f"service:{self.name}"

    def probe(self) -> str:
        # "<is-enabled>|<is-active>": enabled/disabled/static/masked/... | active/inactive/failed
        return f"_opskit_unit {q(self.name)}"

    def prefetch(self) -> Mapping[str, Sequence[str]]:
        return {"unit": [self.name]}

    def plan(self, state: str, changed: frozenset[str]) -> Plan:
        enabled, _, active = state.strip().partition("|")
        reasons = []
        if self.enabled and enabled not in ("enabled", "static", "alias", "indirect"):
            reasons.append(f"enable ({enabled or 'not found'})")
        if not self.enabled and enabled == "enabled":
            reasons.append("disable")
        if self.running and active != "active":
            reasons.append(f"start ({active})")
        elif not self.running and active == "active":
            reasons.append("stop")
        elif self.running:
            if changed & set(self.restart_on):
                reasons.append("restart (config changed)")
            elif changed & set(self.reload_on):
                reasons.append("reload (config changed)")
        return Plan(tuple(reasons))

    def script(self, plan: Plan) -> str:
        n = q(self.name)
        steps = []
        for r in plan.reasons:
            verb = r.split()[0]
            steps.append(
                {
                    "enable": f"systemctl enable -q -- {n}",
                    "disable": f"systemctl disable -q -- {n}",
                    "start": f"systemctl start -- {n}",
                    "stop": f"systemctl stop -- {n}",
                    "restart": f"systemctl restart -- {n}",
                    "reload": f"systemctl reload-or-restart -- {n}",
                }[verb]
            )
        return "\n".join(steps)


@dataclass(frozen=True)
class User(Resource):
    """User `name` exists with `shell`, a home, and `groups` (added to, never removed from)."""

    name: str
    groups: tuple[str, ...] = ()
    shell: str = "/bin/bash"
    system: bool = False

    @property
    def id(self) -> str:  # type: ignore[override]
        return f"user:{self.name}"

    def probe(self) -> str:
        n = q(self.name)
        return f"getent passwd -- {n} || echo absent; id -nG -- {n} 2>/dev/null || true"

    def plan(self, state: str, changed: frozenset[str]) -> Plan:
        lines = state.strip().splitlines()
        if not lines or lines[0] == "absent":
            return Plan(("create",))
        shell = lines[0].split(":")[-1]
        have = set(lines[1].split()) if len(lines) > 1 else set()
        reasons = []
        if shell != self.shell:
            reasons.append(f"shell {shell} -> {self.shell}")
        missing = [g for g in self.groups if g not in have]
        if missing:
            reasons.append(f"add to {','.join(missing)}")
        return Plan(tuple(reasons))

    def script(self, plan: Plan) -> str:
        n = q(self.name)
        groups = f"-G {q(','.join(self.groups))} " if self.groups else ""
        if plan.reasons == ("create",):
            system = "--system " if self.system else ""
            return f"useradd {system}-m -s {q(self.shell)} {groups}-- {n}"
        return f"usermod -s {q(self.shell)} {('-a ' + groups) if groups else ''}-- {n}"


@dataclass(frozen=True)
class Command(Resource):
    """Run `command` unless its guard says the work is done: `creates` exists, or `unless`
    (a read-only shell test) succeeds."""

    name: str
    command: str
    creates: str | None = None
    unless: str | None = None

    @property
    def id(self) -> str:  # type: ignore[override]
        return f"command:{self.name}"

    def __post_init__(self) -> None:
        if not self.creates and not self.unless:
            raise ConfigError(f"command {self.name}: needs a guard (creates= or unless=)")

    def probe(self) -> str:
        test = f"[ -e {q(self.creates)} ]" if self.creates else f"( {self.unless} ) >/dev/null 2>&1"
        return f"if {test}; then echo done; else echo todo; fi"

    def plan(self, state: str, changed: frozenset[str]) -> Plan:
        return NOTHING if state.strip() == "done" else Plan((f"run {self.name}",))

    def script(self, plan: Plan) -> str:
        return self.command
