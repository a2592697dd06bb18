"""Database migrations of a deploy, and the schema guard of a rollback.

With ``app_migrate_command`` set, a deploy runs it **once**, on the first app host of the deploy,
after the new release is prepared on every host and before any host switches (the deploy's
``stage`` hook, see deploy.run_in_batches):

1. every host prepares the release, then waits for the others (a host that failed to prepare
   stops the migration: no host switches);
2. when the inventory has a backed-up database, a fresh verified backup is taken first (the
   caller's ``backup`` callable: opskit/backup's run + verify) and its key kept;
3. the first host runs, in the new release's directory as the app user with the app's
   environment (its PM2 ecosystem file), ``app_schema_version_command``, the migration, and the
   version command again: one remote command;
4. every host appends a ``migrate`` entry to its journal (release, schema before and after,
   backup key), or, when the migration failed, marks the release bad; no host switched.

The schema version of each release is what its migrate entry recorded. ``inv rollback`` to a
release whose schema is older than the live one is refused (``schema_guard``) unless forced,
naming the backup taken just before the database left the target's schema.
Migrations must be backward compatible with the release still serving: the new schema is live
while the old release serves, until every host switched.
"""

from __future__ import annotations

import base64
import json
import shlex
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opskit.app.deploy import DeployError, HostState, Release
from opskit.app.release import operator
from opskit.app.spec import BAD_MARK, DISTRO_NODE_BIN, AppLayout, node_bin_dir, npm_shim
from opskit.core.errors import ConfigError
from opskit.core.remote import Remote
from opskit.core.runner import RunContext
from opskit.core.secrets import redact

q = shlex.quote

JOURNAL_TAIL = 1000  # journal lines a rollback's guard reads
WAIT_SECONDS = 1800  # longest a host waits for the others to prepare, or for the migration
MIGRATE = "migrate"


class MigrationError(DeployError):
    """The migration failed: no host switched, the release is marked bad."""


@dataclass(frozen=True)
class Settings:
    command: str  # app_migrate_command ("" : no migrations)
    version_command: str  # app_schema_version_command

    @classmethod
    def from_vars(cls, v: Mapping[str, Any]) -> Settings:
        """
        >>> Settings.from_vars({"app_migrate_command": "npm run migrate",
        ...                     "app_schema_version_command": ""})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        opskit.core.errors.ConfigError: app_schema_version_command: empty, but app_migrate_...
        """
        cmd = str(v.get("app_migrate_command") or "").strip()
        ver = str(v.get("app_schema_version_command") or "").strip()
        if cmd and not ver:
            raise ConfigError(
                "app_schema_version_command: empty, but app_migrate_command is set: name the "
                "command that prints the schema version"
            )
        return cls(cmd, ver)


def schema_key(version: str) -> tuple[int, int, str]:
    """Order of schema versions: numbers numerically, anything else after them as text.

    >>> sorted(["10", "9", "b", "0"], key=schema_key)
    ['0', '9', '10', 'b']
    """
    v = version.strip()
    return (0, int(v), "") if v.isdigit() else (1, 0, v)


# --- on the host ---------------------------------------------------------------------------------

# Runs `sh -c CMD` in the release's directory with the app's environment: PM2's ecosystem file
# describes the candidate (cwd = the release) when OPSKIT_CANDIDATE names it.
_RUN_JS = (
    "const a=require(process.argv[1]).apps[0];"
    "const env=Object.assign({},process.env,a.env);delete env.OPSKIT_CANDIDATE;"
    "const r=require('child_process').spawnSync('/bin/sh',['-c',process.argv[2]],"
    "{cwd:a.cwd,env,stdio:'inherit'});process.exit(r.status===null?1:r.status)"
)


def migrate_script(
    layout: AppLayout, release: str, s: Settings, node_bin: str = DISTRO_NODE_BIN
) -> str:
    """One remote command: schema version, migration, schema version (markers on stdout). The
    commands run under the app's node (`node_bin` first on PATH) with an `npm` beside it."""
    rdir = f"{layout.releases}/{release}"
    path = f'"$B":{q(node_bin)}:/usr/local/bin:/usr/bin:/bin'

    def app(cmd: str) -> str:
        return (
            f"runuser -u {q(layout.user)} -- env HOME={q(layout.home)} PATH={path} "
            f"OPSKIT_CANDIDATE={q(rdir)} node -e {q(_RUN_JS)} {q(layout.ecosystem)} {q(cmd)}"
        )

    return f"""set -u
B=$(mktemp -d) && trap 'rm -rf -- "$B"' EXIT && chmod 0755 "$B" || exit 3
{npm_shim('"$B"', f"{node_bin}/node")} || exit 3
cd {q(rdir)} || exit 3
before=$({app(s.version_command)} 2>/dev/null | sed '/^\\s*$/d' | tail -n1)
echo "@@before $before"
echo "@@output"
{app(s.command)} 2>&1
rc=$?
after=$({app(s.version_command)} 2>/dev/null | sed '/^\\s*$/d' | tail -n1)
echo "@@after $after"
echo "@@rc $rc"
"""


@dataclass(frozen=True)
class Outcome:
    ok: bool
    host: str
    before: str
    after: str
    output: str
    backup: str  # the fresh backup's key ("" : no backed-up database)
    seconds: float

    def describe(self) -> str:
        """
        >>> Outcome(True, "w1", "1", "2", "", "db1/x.dump", 1.25).describe()
        'migrated on w1: schema 1 -> 2 in 1.2 s (backup before: db1/x.dump)'
        """
        backup = f" (backup before: {self.backup})" if self.backup else ""
        if not self.ok:
            now = self.after or self.before or "?"
            moved = f"{self.before} -> {now}" if now != self.before else f"stays {now}"
            return f"migration failed on {self.host}: schema {moved}{backup}"
        change = f"{self.before} -> {self.after}" if self.before != self.after else self.after
        what = "migrated" if self.before != self.after else "no migration pending"
        return f"{what} on {self.host}: schema {change} in {self.seconds:.1f} s{backup}"


def parse_migration(output: str) -> tuple[str, str, int, str]:
    """(before, after, exit code, the migration's own output).

    >>> parse_migration("@@before 1\\n@@output\\napplied 002\\n@@after 2\\n@@rc 0\\n")
    ('1', '2', 0, 'applied 002')
    """
    before = after = ""
    rc = 1
    out: list[str] = []
    inside = False
    for line in output.splitlines():
        if line.startswith("@@before"):
            before = line[len("@@before") :].strip()
        elif line == "@@output":
            inside = True
        elif line.startswith("@@after"):
            after, inside = line[len("@@after") :].strip(), False
        elif line.startswith("@@rc "):
            rc = int(line.split()[1]) if line.split()[1].isdigit() else 1
        elif inside:
            out.append(line)
    return before, after, rc, "\n".join(out).strip()


def record_script(layout: AppLayout, release: str, entry: Mapping[str, Any], *, bad: bool) -> str:
    """Append the migrate entry to the journal; when it failed, mark the release bad too."""
    line = base64.b64encode((json.dumps(entry, sort_keys=True) + "\n").encode()).decode()
    lines = ["set -eu", f"echo {line} | base64 -d >> {q(layout.state_dir)}/journal.jsonl"]
    if bad:
        mark = {
            "at": entry["time"],
            "by": entry["operator"],
            "action": "deploy",
            "reason": entry["detail"],
        }
        b64 = base64.b64encode((json.dumps(mark) + "\n").encode()).decode()
        target = f"{layout.releases}/{release}"
        lines.append(f"[ ! -d {q(target)} ] || echo {b64} | base64 -d > {q(target)}/{BAD_MARK}")
    return "\n".join(lines) + "\n"


# --- the deploy's coordinator --------------------------------------------------------------------


class Migration:
    """Once per deploy: every host's `stage` hook calls `run` after preparing its release."""

    def __init__(
        self,
        hosts: Sequence[str],
        settings: Settings,
        backup: Callable[[], str] | None = None,
        progress: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.hosts = list(hosts)
        self.runner = self.hosts[0]  # the first app host of the deploy
        self.settings = settings
        self.backup = backup
        self.progress = progress
        self.cond = threading.Condition()
        self.staged: set[str] = set()
        self.failed: dict[str, str] = {}
        self.outcome: Outcome | None = None
        self.error: str = ""

    def _wait(self, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + WAIT_SECONDS
        while not ready():
            if time.monotonic() > deadline:
                raise DeployError(f"not switched: timed out waiting for {what}")
            self.cond.wait(0.2)

    def stage(
        self, prepare: Callable[[Remote, RunContext], str]
    ) -> Callable[[Remote, RunContext], None]:
        """The deploy's stage hook: `prepare` the release on this host (it returns its name),
        then `run`; a host that failed to prepare stops the migration for every host."""

        def hook(remote: Remote, ctx: RunContext) -> None:
            try:
                release = prepare(remote, ctx)
            except Exception as exc:
                self.prepare_failed(remote.name, str(exc).splitlines()[0] if str(exc) else "?")
                raise
            ctx.notes.append(self.run(remote, release).describe())

        return hook

    def prepare_failed(self, host: str, why: str) -> None:
        with self.cond:
            self.failed[host] = why
            self.cond.notify_all()

    def run(self, remote: Remote, release: str) -> Outcome:
        """Wait until every host prepared `release`, migrate on the first host, record the outcome
        on this one. Raises MigrationError (release marked bad here) when the migration failed."""
        with self.cond:
            self.staged.add(remote.name)
            self.cond.notify_all()
            self._wait(
                lambda: bool(self.failed) or self.staged >= set(self.hosts),
                "every host to prepare the release",
            )
            if self.failed:
                host, why = sorted(self.failed.items())[0]
                raise DeployError(
                    f"not switched, not migrated: {host} could not prepare {release} ({why})"
                )
        if remote.name == self.runner:
            self._migrate(remote, release)
        with self.cond:
            self._wait(lambda: self.outcome is not None or bool(self.error), "the migration")
        layout = AppLayout.from_vars(remote.host.vars)
        if self.outcome is None:  # the backup or the connection failed: nothing was migrated
            raise DeployError(f"not switched, not migrated: {self.error}")
        o = self.outcome
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "action": MIGRATE,
            "operator": operator(),
            "release": release,
            "result": "ok" if o.ok else "failed",
            "schema": o.after or o.before,  # a failed run keeps the migrations before it
            "schema_before": o.before,
            "backup": o.backup,
            "on": o.host,
            "seconds": round(o.seconds, 2),
            "detail": o.describe(),
        }
        remote.run(record_script(layout, release, entry, bad=not o.ok), what="record migration")
        if not o.ok:
            tail = "\n".join(o.output.splitlines()[-15:])
            raise MigrationError(
                f"{o.describe()}; no host switched, {release} is marked bad"
                + (f"; restore point: backup {o.backup}" if o.backup else "")
                + (f"\nmigration output:\n{tail}" if tail else "")
            )
        return o

    def _migrate(self, remote: Remote, release: str) -> None:
        started = time.monotonic()
        try:
            key = ""
            if self.backup is not None:
                self.progress("a fresh verified backup before migrating")
                key = self.backup()
            started = time.monotonic()  # the migration's own time, without the backup's
            self.progress(f"migrating on {remote.name}: {self.settings.command}")
            layout = AppLayout.from_vars(remote.host.vars)
            res = remote.run(
                migrate_script(layout, release, self.settings, node_bin_dir(remote.host.vars)),
                what="migrate",
                ok_codes=range(0, 256),
                timeout=WAIT_SECONDS,
            )
            out = redact(res.stdout + res.stderr, remote.host.secrets)
            before, after, rc, text = parse_migration(out)
            outcome = Outcome(
                rc == 0 and bool(after), remote.name, before, after, text, key,
                time.monotonic() - started,
            )  # fmt: skip
            with self.cond:
                self.outcome = outcome
                self.cond.notify_all()
        except Exception as exc:
            with self.cond:
                self.error = str(exc)
                self.cond.notify_all()
            raise


# --- the rollback's guard ------------------------------------------------------------------------


def migrations(journal: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [j for j in journal if j.get("action") == MIGRATE and j.get("result") == "ok"]


def schema_guard(state: HostState, target: Release, *, force: bool) -> str | None:
    """Refuse (DeployError) a rollback to a release whose schema is older than the live one,
    naming the backup taken when the database left the target's schema; with `force`, the
    warning to show instead. None when the schemas agree (or nothing was migrated).

    >>> j = ({"action": "migrate", "result": "ok", "release": "r1", "schema": "1",
    ...       "schema_before": "0", "backup": "k0"},
    ...      {"action": "migrate", "result": "ok", "release": "r2", "schema": "2",
    ...       "schema_before": "1", "backup": "k1"})
    >>> s = HostState((Release("r1", {}), Release("r2", {})), "r2", journal=j)
    >>> try:
    ...     schema_guard(s, s.releases[0], force=False)
    ... except DeployError as exc:
    ...     print(str(exc).replace("; ", ";\\n").replace(": its", ":\\nits"))
    r1 expects schema 1, the database is at 2 (migrated by r2):
    its code may not work with the newer schema;
    backup k1 holds the data at schema 1 (inv backup.restore --backup k1 --replace);
    --force rolls back anyway
    >>> schema_guard(s, s.releases[1], force=False) is None
    True
    >>> print(schema_guard(s, s.releases[0], force=True))
    forced: r1 expects schema 1, the database is at 2; backup k1 holds the data at schema 1
    """
    done = migrations(state.journal)
    if not done:
        return None
    # the live schema: also what a failed run left (the migrations it applied before failing)
    live = [j for j in state.journal if j.get("action") == MIGRATE and j.get("schema")][-1]
    live_schema = str(live.get("schema", ""))
    mine = [j for j in done if j.get("release") == target.name]
    if not mine:
        why = (
            f"{target.name} has no recorded schema version (deployed before migrations were "
            f"configured), the database is at {live_schema}"
        )
        if force:
            return f"forced: {why}"
        raise DeployError(f"{why}; --force rolls back anyway")
    target_schema = str(mine[-1].get("schema", ""))
    if schema_key(target_schema) >= schema_key(live_schema):
        return None
    left = [
        j
        for j in done
        if str(j.get("schema_before")) == target_schema and str(j.get("schema")) != target_schema
    ]
    key = str(left[-1].get("backup") or "") if left else ""
    restore = (
        f"backup {key} holds the data at schema {target_schema}"
        if key
        else f"no backup was recorded when the database left schema {target_schema}"
    )
    if force:
        return (
            f"forced: {target.name} expects schema {target_schema}, the database is at "
            f"{live_schema}; {restore}"
        )
    how = f" (inv backup.restore --backup {key} --replace)" if key else ""
    raise DeployError(
        f"{target.name} expects schema {target_schema}, the database is at {live_schema} "
        f"(migrated by {live.get('release', '?')}): its code may not work with the newer schema; "
        f"{restore}{how}; --force rolls back anyway"
    )
