"""File resources: file, template, directory, absent, symlink, line in file."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opskit.core.errors import ConfigError
from opskit.core.render import managed_by, render
from opskit.core.resource import (
    BACKUP_DIR,
    DIFF_LIMIT,
    NOTHING,
    Plan,
    Resource,
    backup_path,
    q,
    unified_diff,
)

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

    def config_check(self) -> tuple[str, str] | None:
        # The check run after a change checks the whole configuration: the engine also runs it
        # in every probe, so a broken service fails the host even when this file is right.
        return (self.check_after, self.path) if self.check_after else None

    def staging_dir(self) -> str | None:
        return str(Path(self.path).parent)

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


HOSTSIDE_DIR = Path(__file__).resolve().parents[1] / "hostside"


def host_program_source(program: str, role: str) -> str:
    """The text installed for `opskit/hostside/<program>.py`: its source, verbatim, with a
    managed-by line after the shebang (the module's own first line, else python3's)."""
    source_file = HOSTSIDE_DIR / f"{program}.py"
    if not program.isidentifier() or program.startswith("_"):
        raise ConfigError(f"host program {program!r}: name a module of opskit/hostside/")
    try:
        source = source_file.read_text()
    except OSError as exc:
        raise ConfigError(f"{source_file}: no such host program ({exc.strerror})") from exc
    shebang, rest = "#!/usr/bin/python3\n", source
    if source.startswith("#!"):
        shebang, _, rest = source.partition("\n")
        shebang += "\n"
    header = f"# {managed_by(role)} Source: opskit/hostside/{program}.py\n"
    return shebang + header + rest


def HostProgram(path: str, program: str, *, role: str, mode: int = 0o755, **kwargs: Any) -> File:
    """A File holding the host program `opskit/hostside/<program>.py` verbatim (a typed module
    under the repo's lint and type gates); what it needs comes from its JSON config or argv."""
    return File(path, host_program_source(program, role), mode, **kwargs)


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
