"""Idempotent primitives as declarative resources.

Each resource gives a read-only shell `probe()`, a pure `plan()` over what the probe printed, and
the shell that converges it (`script()`). The engine (opskit/engine.py) concatenates the probes
of every resource on a host into one remote command, plans locally, and runs every needed change
in one more command, so a no-op run costs a single round trip per host.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opskit.errors import ConfigError
from opskit.render import render

q = shlex.quote
DIFF_LIMIT = 64 * 1024  # old contents above this size are not fetched for a diff
BACKUP_DIR = "/var/backups/opskit"


def backup_path(path: str) -> str:
    """Where the previous version of a checked config file is kept.

    >>> backup_path("/etc/ssh/sshd_config.d/10-x.conf")
    '/var/backups/opskit/etc_ssh_sshd_config.d_10-x.conf.prev'
    """
    return f"{BACKUP_DIR}/{path.strip('/').replace('/', '_')}.prev"


@dataclass(frozen=True)
class Plan:
    """What a resource must do: `reasons` (empty = nothing), a diff, and data for script()."""

    reasons: tuple[str, ...] = ()
    diff: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)


NOTHING = Plan()


class Resource:
    """Base class: subclasses set `id` and implement probe, plan and script."""

    id: str

    def probe(self) -> str:
        """Read-only shell printing the state. It runs inside engine.probe_script, whose helpers
        (engine.PROBE_HELPERS: `_opskit_stat`, `_opskit_sha256`, `_opskit_unit`) answer from
        state read for all resources at once (see prefetch) and fall back to reading directly."""
        raise NotImplementedError

    def prefetch(self) -> Mapping[str, Sequence[str]]:
        """What the engine may read for every resource in one go before the probes run:
        {"stat": paths, "sha256": paths, "unit": systemd units}. Only an optimisation."""
        return {}

    def plan(self, state: str, changed: frozenset[str]) -> Plan:
        """Decide from the probe output (pure). `changed`: ids of resources changing before."""
        raise NotImplementedError

    def script(self, plan: Plan) -> str:
        raise NotImplementedError


def unified_diff(old: str, new: str, path: str) -> str:
    """A unified diff of two texts, headed with `path`.

    >>> print(unified_diff("a\\n", "b\\n", "/etc/x"), end="")
    --- /etc/x
    +++ /etc/x (new)
    @@ -1 +1 @@
    -a
    +b
    """
    lines = difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True), path, f"{path} (new)"
    )
    out = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
    return out


# --- files ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileState:
    kind: str  # "regular file", "directory", "symbolic link", ...
    mode: int
    owner: str
    group: str
    sha256: str = ""
    old_text: str | None = None  # present when the content differs and the file is small


def parse_stat(line: str) -> tuple[str, int, str, str]:
    """Parse `stat -c '%F|%a|%U|%G'`.

    >>> parse_stat("regular file|640|root|adm")
    ('regular file', 416, 'root', 'adm')
    """
    kind, mode, owner, group = line.strip().split("|")
    return kind, int(mode, 8), owner, group


def _stat_probe(path: str) -> str:
    # Prints `stat -c '%F|%a|%U|%G'` of the path, or "absent" (engine.PROBE_HELPERS).
    return f"_opskit_stat {q(path)}"


def _attr_reasons(current: FileState, mode: int, owner: str, group: str) -> list[str]:
    reasons = []
    if current.mode != mode:
        reasons.append(f"mode {current.mode:04o} -> {mode:04o}")
    if current.owner != owner:
        reasons.append(f"owner {current.owner} -> {owner}")
    if current.group != group:
        reasons.append(f"group {current.group} -> {group}")
    return reasons


@dataclass(frozen=True)
class File(Resource):
    """`path` holds exactly `content`, owned by owner:group with `mode`.

    `validate` is run on the new file before it replaces the old one (`%s` is its path, e.g.
    `visudo -cf %s`); `check_after` runs after the swap, and a failure puts the old file back
    (for drop-ins that only the whole configuration can test: `sshd -t`, `nginx -t`).
    """

    path: str
    content: str
    mode: int = 0o644
    owner: str = "root"
    group: str = "root"
    validate: str | None = None
    check_after: str | None = None
    sensitive: bool = False  # never show a diff (the content holds secrets)

    @property
    def id(self) -> str:  # type: ignore[override]
        return f"file:{self.path}"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content.encode()).hexdigest()

    def probe(self) -> str:
        p = q(self.path)
        return (
            f"_opskit_stat {p}; "
            f'if [ -f {p} ]; then _opskit_sha256 {p}; echo "$_opskit_s"; '
            f'if [ "$_opskit_s" != {self.sha256} ] && [ $(stat -c %s -- {p}) -le {DIFF_LIMIT} ]; '
            f"then base64 -w0 < {p}; echo; fi; fi"
        )

    def prefetch(self) -> Mapping[str, Sequence[str]]:
        return {"stat": [self.path], "sha256": [self.path]}

    @staticmethod
    def parse(state: str) -> FileState | None:
        """Parse the probe output.

        >>> File.parse("absent\\n") is None
        True
        >>> File.parse("regular file|644|root|root\\n" + "a" * 64 + "\\nb2xkCg==\\n").old_text
        'old\\n'
        """
        lines = state.strip("\n").split("\n")
        if lines[0] == "absent":
            return None
        kind, mode, owner, group = parse_stat(lines[0])
        sha = lines[1].strip() if len(lines) > 1 else ""
        old = None
        if len(lines) > 2:
            old = base64.b64decode(lines[2]).decode("utf-8", errors="replace")
        return FileState(kind, mode, owner, group, sha, old)

    def plan(self, state: str, changed: frozenset[str]) -> Plan:
        current = self.parse(state)
        if current is None:
            diff = "" if self.sensitive else unified_diff("", self.content, self.path)
            return Plan(("create",), diff)
        if current.kind != "regular file":
            raise ConfigError(f"{self.path} exists and is a {current.kind}, not a file")
        reasons = []
        diff = ""
        if current.sha256 != self.sha256:
            reasons.append("content")
            if self.sensitive:
                diff = f"(content of {self.path} not shown: it holds secrets)\n"
            elif current.old_text is not None:
                diff = unified_diff(current.old_text, self.content, self.path)
            else:
                diff = f"(content of {self.path} differs; too large to show)\n"
        reasons += _attr_reasons(current, self.mode, self.owner, self.group)
        return Plan(tuple(reasons), diff, {"content": "content" in reasons})

    @staticmethod
    def restore_script(path: str) -> str:
        """Shell that puts back the version of `path` saved before the last checked change."""
        prev = q(backup_path(path))
        return f"if [ -e {prev} ]; then mv -f -- {prev} {q(path)}; else rm -f -- {q(path)}; fi"

    def script(self, plan: Plan) -> str:
        p = q(self.path)
        attrs = f"chown {q(self.owner)}:{q(self.group)} -- {{f}} && chmod {self.mode:04o} -- {{f}}"
        if plan.reasons != ("create",) and not plan.data.get("content"):
            return attrs.format(f=p)  # only owner/group/mode differ
        b64 = base64.b64encode(self.content.encode()).decode()
        lines = [
            f'_opskit_tmp=$(mktemp -- "$(dirname -- {p})/.opskit.XXXXXX")',
            f"base64 -d > \"$_opskit_tmp\" <<'OPSKIT_EOF'\n{b64}\nOPSKIT_EOF",
            attrs.format(f='"$_opskit_tmp"'),
        ]
        if self.validate:
            check = self.validate.replace("%s", '"$_opskit_tmp"')
            lines.append(
                f'if ! _opskit_out=$({check} 2>&1); then echo "validation failed for {self.path}:'
                f' $_opskit_out" >&2; exit 65; fi'
            )
        if self.check_after:
            # The previous version stays in BACKUP_DIR so that it can be put back, now or later
            # (restore_script); a copy in the config's own directory could be included by it.
            prev = q(backup_path(self.path))
            lines += [
                f"mkdir -p {BACKUP_DIR}; rm -f -- {prev}; [ ! -e {p} ] || cp -p -- {p} {prev}",
                f"mv -f -- \"$_opskit_tmp\" {p}; _opskit_tmp=''",
                f"if ! _opskit_out=$({self.check_after} 2>&1); then "
                f"{self.restore_script(self.path)}; "
                f'echo "{self.check_after} failed with the new {self.path}; the previous file was '
                f'put back: $_opskit_out" >&2; exit 65; fi',
            ]
        else:
            lines.append(f"mv -f -- \"$_opskit_tmp\" {p}; _opskit_tmp=''")
        return "\n".join(lines)


def Template(path: str, template: str, variables: Mapping[str, Any], **kwargs: Any) -> File:
    """A File whose content is `templates/<template>` rendered with `variables`."""
    return File(path, render(template, variables), **kwargs)


@dataclass(frozen=True)
class Directory(Resource):
    path: str
    mode: int = 0o755
    owner: str = "root"
    group: str = "root"

    @property
    def id(self) -> str:  # type: ignore[override]
        return f"directory:{self.path}"

    def probe(self) -> str:
        return _stat_probe(self.path)

    def prefetch(self) -> Mapping[str, Sequence[str]]:
        return {"stat": [self.path]}

    def plan(self, state: str, changed: frozenset[str]) -> Plan:
        if state.strip() == "absent":
            return Plan(("create",))
        kind, mode, owner, group = parse_stat(state)
        if kind != "directory":
            raise ConfigError(f"{self.path} exists and is a {kind}, not a directory")
        current = FileState(kind, mode, owner, group)
        return Plan(tuple(_attr_reasons(current, self.mode, self.owner, self.group)))

    def script(self, plan: Plan) -> str:
        return (
            f"install -d -m {self.mode:04o} -o {q(self.owner)} -g {q(self.group)} -- {q(self.path)}"
        )


@dataclass(frozen=True)
class Absent(Resource):
    """`path` (a file or a symlink) does not exist."""

    path: str

    @property
    def id(self) -> str:  # type: ignore[override]
        return f"absent:{self.path}"

    def probe(self) -> str:
        p = q(self.path)
        return f"if [ -e {p} ] || [ -L {p} ]; then echo present; else echo absent; fi"

    def plan(self, state: str, changed: frozenset[str]) -> Plan:
        return Plan(("remove",)) if state.strip() == "present" else NOTHING

    def script(self, plan: Plan) -> str:
        return f"rm -f -- {q(self.path)}"


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


@dataclass(frozen=True)
class Symlink(Resource):
    path: str
    target: str

    @property
    def id(self) -> str:  # type: ignore[override]
        return f"symlink:{self.path}"

    def probe(self) -> str:
        p = q(self.path)
        return (
            f'if [ -L {p} ]; then echo "link $(readlink -- {p})"; '
            f"elif [ -e {p} ]; then echo other; else echo absent; fi"
        )

    def plan(self, state: str, changed: frozenset[str]) -> Plan:
        state = state.strip()
        if state == f"link {self.target}":
            return NOTHING
        if state == "absent":
            return Plan(("create",))
        if state == "other":
            return Plan((f"replace non-link with link to {self.target}",))
        return Plan((f"target {state[5:]} -> {self.target}",))

    def script(self, plan: Plan) -> str:
        p, tmp = q(self.path), q(self.path + ".opskit-new")
        return f"ln -sfn -- {q(self.target)} {tmp} && mv -Tf -- {tmp} {p}"


# --- packages, services, users ------------------------------------------------------------


@dataclass(frozen=True)
class Packages(Resource):
    """Every package in `names` is installed (apt); one install for all that are missing."""

    names: tuple[str, ...]

    @property
    def id(self) -> str:  # type: ignore[override]
        return "packages:" + ",".join(self.names)

    def probe(self) -> str:
        names = " ".join(q(n) for n in self.names)
        return (
            f"dpkg-query -W -f='${{Package}} ${{db:Status-Abbrev}}\\n' -- {names} 2>/dev/null; true"
        )

    @staticmethod
    def installed(state: str) -> set[str]:
        """Names dpkg reports as installed ('ii').

        >>> sorted(Packages.installed("sudo ii \\ncron rc \\n"))
        ['sudo']
        """
        found = set()
        for line in state.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[1] == "ii":
                found.add(parts[0].split(":")[0])
        return found

    def plan(self, state: str, changed: frozenset[str]) -> Plan:
        missing = [n for n in self.names if n not in self.installed(state)]
        if not missing:
            return NOTHING
        return Plan((f"install {' '.join(missing)}",), data={"missing": missing})

    def script(self, plan: Plan) -> str:
        pkgs = " ".join(q(n) for n in plan.data["missing"])
        install = (
            "apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confold "
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
class Line(Resource):
    """`path` contains `line`; with `regexp`, every line matching it is replaced by `line`
    (appended when none matches)."""

    path: str
    line: str
    regexp: str | None = None

    @property
    def id(self) -> str:  # type: ignore[override]
        return f"line:{self.path}:{self.regexp or self.line}"

    def probe(self) -> str:
        p = q(self.path)
        pattern = f"-E -- {q(self.regexp)}" if self.regexp else f"-xF -- {q(self.line)}"
        return f"if [ -f {p} ]; then grep {pattern} {p} || true; else echo absent; fi"

    def plan(self, state: str, changed: frozenset[str]) -> Plan:
        lines = state.splitlines()
        if lines[:1] == ["absent"]:
            raise ConfigError(f"{self.path} does not exist (a line can only be put in a file)")
        if lines and all(line == self.line for line in lines):
            return NOTHING
        old = "".join(f"-{line}\n" for line in lines if line != self.line)
        diff = f"--- {self.path}\n+++ {self.path} (new)\n{old}+{self.line}\n"
        return Plan(("replace line" if old else "add line",), diff, {"replace": bool(lines)})

    def script(self, plan: Plan) -> str:
        p = q(self.path)
        if not plan.data["replace"]:
            return f"printf '%s\\n' {q(self.line)} >> {p}"
        return (
            f'_opskit_tmp=$(mktemp -- {p}.opskit.XXXXXX) && cp -p -- {p} "$_opskit_tmp" && '
            f"RE={q(self.regexp or '^' + re.escape(self.line) + '$')} LINE={q(self.line)} "
            f'awk \'$0 ~ ENVIRON["RE"] {{print ENVIRON["LINE"]; next}} {{print}}\' {p} '
            f'> "$_opskit_tmp" && mv -f -- "$_opskit_tmp" {p}; _opskit_tmp=\'\''
        )

    def __post_init__(self) -> None:
        if "\n" in self.line:
            raise ConfigError(f"line for {self.path} must be a single line")


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


# --- cron ----------------------------------------------------------------------------------

_CRON_FIELDS = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
_CRON_NAMES = {
    3: ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
    4: ["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
}
_CRON_SPECIAL = {
    "@reboot",
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
}


def validate_cron_schedule(schedule: str) -> str:
    """Return `schedule` if cron accepts it, else raise ConfigError saying which field is wrong.

    >>> validate_cron_schedule("*/5 * * * *")
    '*/5 * * * *'
    >>> validate_cron_schedule("61 * * * *")
    Traceback (most recent call last):
    ...
    opskit.errors.ConfigError: cron schedule '61 * * * *': minute '61' is out of range 0-59
    """
    s = " ".join(schedule.split())
    if s in _CRON_SPECIAL:
        return s
    parts = s.split(" ")
    names = ["minute", "hour", "day of month", "month", "day of week"]
    if len(parts) != 5:
        raise ConfigError(f"cron schedule {schedule!r}: expected 5 fields, got {len(parts)}")
    for i, (part, (lo, hi)) in enumerate(zip(parts, _CRON_FIELDS, strict=True)):
        for item in part.split(","):
            rng, _, step = item.partition("/")
            if step and (not step.isdigit() or int(step) == 0):
                raise ConfigError(
                    f"cron schedule {schedule!r}: {names[i]} step {step!r} is invalid"
                )
            if rng == "*":
                continue
            bounds = rng.split("-")
            if len(bounds) > 2:
                raise ConfigError(f"cron schedule {schedule!r}: {names[i]} {item!r} is invalid")
            for b in bounds:
                if b.lower() in _CRON_NAMES.get(i, []):  # jan, mon, ... also in ranges
                    continue
                if not b.isdigit():
                    raise ConfigError(
                        f"cron schedule {schedule!r}: {names[i]} {b!r} is not a number"
                    )
                if not lo <= int(b) <= hi:
                    raise ConfigError(
                        f"cron schedule {schedule!r}: {names[i]} {b!r} is out of range {lo}-{hi}"
                    )
    return s


def CronEntry(
    name: str,
    schedule: str,
    command: str,
    *,
    user: str = "root",
    env: Mapping[str, str] | None = None,
) -> File:
    """`/etc/cron.d/<name>` runs `command` as `user` on `schedule` (validated)."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ConfigError(
            f"cron entry {name!r}: names are letters, digits, '_' and '-' (cron skips others)"
        )
    if not re.fullmatch(r"[a-z_][a-z0-9_-]*", user):
        raise ConfigError(f"cron entry {name!r}: invalid user {user!r}")
    if "\n" in command or not command.strip():
        raise ConfigError(f"cron entry {name!r}: the command must be one non-empty line")
    lines = ["# Managed by opskit; local edits are overwritten."]
    lines += [f"{k}={v}" for k, v in (env or {}).items()]
    lines.append(f"{validate_cron_schedule(schedule)} {user} {command}")
    return File(f"/etc/cron.d/{name}", "\n".join(lines) + "\n", mode=0o644)


def ids(resources: Sequence[Resource]) -> list[str]:
    return [r.id for r in resources]
