"""opskit.app.migrate: the once-per-deploy migration's coordination, and the rollback's guard."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest

from opskit.app import migrate
from opskit.app.deploy import DeployError, HostState, Release
from opskit.core.errors import ConfigError
from opskit.core.remote import Result
from tests.fakes import make_host

VARS = {"app_name": "sample", "app_user": "app", "app_port": 3000, "app_node_version": "26.12.1"}
SETTINGS = migrate.Settings("node migrate.js", "node migrate.js --version")


@dataclass
class FakeRemote:
    """Answers the migrate script with `answer`; records every script."""

    name: str
    answer: str = "@@before 1\n@@output\napplied 002\n@@after 2\n@@rc 0\n"
    scripts: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.host = make_host(self.name, **VARS)

    def run(self, script: str, **kw: Any) -> Result:
        self.scripts.append(script)
        out = self.answer if kw.get("what") == "migrate" else ""
        return Result(kw.get("what") or "", 0, out, "")


class Ctx:
    def __init__(self) -> None:
        self.notes: list[str] = []


def _deploy(hosts: list[FakeRemote], m: migrate.Migration, prepare: Any) -> dict[str, Any]:
    """Run every host's stage hook in its own thread, as the deploy does; what each ended with."""
    got: dict[str, Any] = {}
    hook = m.stage(prepare)

    def one(r: FakeRemote) -> None:
        ctx = Ctx()
        try:
            hook(r, ctx)  # type: ignore[arg-type]
            got[r.name] = ctx.notes
        except Exception as exc:
            got[r.name] = exc

    threads = [threading.Thread(target=one, args=(r,)) for r in hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return got


def _journal(r: FakeRemote) -> dict[str, Any]:
    [script] = [s for s in r.scripts if "journal.jsonl" in s]
    b64 = script.split("echo ", 1)[1].split(" ", 1)[0]
    import base64

    return dict(json.loads(base64.b64decode(b64)))


def test_migrates_once_on_the_first_host_after_the_backup_and_records_everywhere():
    hosts = [FakeRemote("w1"), FakeRemote("w2")]
    calls: list[str] = []
    m = migrate.Migration(["w1", "w2"], SETTINGS, backup=lambda: calls.append("b") or "db1/k1")
    got = _deploy(hosts, m, lambda r, ctx: "R2")
    assert calls == ["b"]  # one backup
    assert [s for s in hosts[0].scripts if "@@before" in s] and not [
        s for s in hosts[1].scripts if "@@before" in s
    ]  # one migration, on w1
    for r in hosts:
        assert got[r.name] == ["migrated on w1: schema 1 -> 2 in 0.0 s (backup before: db1/k1)"]
        entry = _journal(r)
        assert entry["schema"] == "2" and entry["backup"] == "db1/k1" and entry["release"] == "R2"
        assert ".opskit-bad" not in r.scripts[-1]


def test_a_failed_migration_marks_the_release_bad_everywhere_and_names_the_backup():
    fail = "@@before 2\n@@output\nmigration 004_bad.sql failed\n@@after 2\n@@rc 1\n"
    hosts = [FakeRemote("w1", fail), FakeRemote("w2")]
    m = migrate.Migration(["w1", "w2"], SETTINGS, backup=lambda: "db1/k9")
    got = _deploy(hosts, m, lambda r, ctx: "R4")
    for r in hosts:
        exc = got[r.name]
        assert isinstance(exc, migrate.MigrationError), exc
        assert "restore point: backup db1/k9" in str(exc) and "004_bad.sql failed" in str(exc)
        assert ".opskit-bad" in r.scripts[-1] and _journal(r)["result"] == "failed"


def test_a_host_that_could_not_prepare_stops_the_migration_for_all():
    hosts = [FakeRemote("w1"), FakeRemote("w2")]
    backups: list[int] = []

    def prepare(r: FakeRemote, ctx: Any) -> str:
        if r.name == "w2":
            raise DeployError("disk full")
        return "R2"

    m = migrate.Migration(["w1", "w2"], SETTINGS, backup=lambda: backups.append(1) or "k")
    got = _deploy(hosts, m, prepare)
    assert "could not prepare R2 (disk full)" in str(got["w1"])
    assert str(got["w2"]) == "disk full"
    assert backups == [] and hosts[0].scripts == []  # nothing backed up, migrated or recorded


def test_a_failed_backup_migrates_nothing():
    hosts = [FakeRemote("w1"), FakeRemote("w2")]

    def backup() -> str:
        raise DeployError("the backup before the migration failed (db1: S3 down)")

    got = _deploy(hosts, migrate.Migration(["w1", "w2"], SETTINGS, backup), lambda r, c: "R2")
    assert all("S3 down" in str(got[n]) for n in ("w1", "w2"))
    assert all(r.scripts == [] for r in hosts)


def test_settings_need_the_version_command():
    assert migrate.Settings.from_vars({}).command == ""
    with pytest.raises(ConfigError, match="app_schema_version_command"):
        migrate.Settings.from_vars({"app_migrate_command": "npm run migrate"})


def test_migrate_script_runs_as_the_app_user_in_the_release_with_its_environment():
    from opskit.app.spec import AppLayout

    s = migrate.migrate_script(AppLayout.from_vars(VARS), "R2", SETTINGS)
    assert "runuser -u app" in s and "OPSKIT_CANDIDATE=/srv/sample/releases/R2" in s
    assert "ecosystem.config.js" in s and s.count("node migrate.js --version") == 2
    # under the app's node, with opskit's npm beside it (neither node build ships an npm here)
    s = migrate.migrate_script(AppLayout.from_vars(VARS), "R2", SETTINGS, "/opt/opskit/node-26/bin")
    assert 'PATH="$B":/opt/opskit/node-26/bin:' in s
    assert "exec %s %s" in s and "/opt/opskit/node-26/bin/node" in s and "npm-cli.js" in s


def _entry(release: str, before: str, after: str, backup: str) -> dict[str, str]:
    return {
        "action": "migrate",
        "result": "ok",
        "release": release,
        "schema_before": before,
        "schema": after,
        "backup": backup,
    }


def test_guard_names_the_backup_taken_when_the_target_schema_was_live():
    journal = (
        _entry("r1", "0", "1", "k0"),
        _entry("r2", "1", "2", "k1"),
        _entry("r3", "2", "3", "k2"),
        {"action": "deploy", "result": "ok", "release": "r3"},
    )
    s = HostState(tuple(Release(n, {}) for n in ("r1", "r2", "r3")), "r3", journal=journal)
    with pytest.raises(DeployError, match=r"expects schema 1, the database is at 3.*backup k1"):
        migrate.schema_guard(s, s.releases[0], force=False)
    with pytest.raises(DeployError, match="backup k2 holds the data at schema 2"):
        migrate.schema_guard(s, s.releases[1], force=False)
    assert "k1" in str(migrate.schema_guard(s, s.releases[0], force=True))


def test_guard_lets_equal_schemas_and_unmigrated_fleets_pass():
    s = HostState((Release("r1", {}), Release("r2", {})), "r2")
    assert migrate.schema_guard(s, s.releases[0], force=False) is None  # no migrations at all
    same = (_entry("r1", "0", "2", "k0"), _entry("r2", "2", "2", "k1"))
    s = HostState((Release("r1", {}), Release("r2", {})), "r2", journal=same)
    assert migrate.schema_guard(s, s.releases[0], force=False) is None
    # a failed run that applied nothing leaves the schema; one that applied some moved it
    failed = {**_entry("r3", "2", "2", "k2"), "result": "failed"}
    s = HostState((Release("r1", {}), Release("r2", {})), "r2", journal=(*same, failed))
    assert migrate.schema_guard(s, s.releases[0], force=False) is None
    moved = {**_entry("r3", "2", "3", "k2"), "result": "failed"}
    s = HostState((Release("r1", {}), Release("r2", {})), "r2", journal=(*same, moved))
    with pytest.raises(DeployError, match="the database is at 3"):
        migrate.schema_guard(s, s.releases[1], force=False)


def test_guard_refuses_a_release_without_a_recorded_schema():
    s = HostState(
        (Release("old", {}), Release("r1", {})), "r1", journal=(_entry("r1", "0", "1", "k0"),)
    )
    with pytest.raises(DeployError, match="no recorded schema version"):
        migrate.schema_guard(s, s.releases[0], force=False)
