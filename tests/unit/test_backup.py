"""Backups without SSH: the role's variables and resources, the S3 client against a local moto
server (the same stand-in the lab runs), list's age judgement. The host program itself:
tests/unit/test_hostside_backup.py."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import socket
from pathlib import Path
from typing import ClassVar

import pytest
from moto.server import ThreadedMotoServer

from opskit.backup import listing, spec
from opskit.backup.resources import store_for
from opskit.clients import ApiError
from opskit.clients.s3 import (
    LIFECYCLE_RULE_ID,
    BucketPolicy,
    S3Settings,
    S3Store,
    make_client,
)
from opskit.core.cron import max_gap
from opskit.core.errors import ConfigError
from opskit.core.roles import available_roles, check_host_vars
from opskit.core.secrets import Secret
from opskit.hostside import backup as program
from opskit.resources import File
from tests.fakes import make_host

SECRET_KEY = Secret("s3cr3t-access-key-value")
WEBHOOK = Secret("http://127.0.0.1:9/services/T1/B1/hooktoken123")


def role():
    return available_roles()["backup"].module()


def host_vars(**extra):
    v = dict(available_roles()["backup"].defaults)
    v.update(available_roles()["postgresql"].defaults)
    v.update(
        backup_s3_bucket="unit-backups",
        backup_s3_endpoint="http://127.0.0.1:9",
        backup_s3_access_key_id=Secret("AKIDUNIT"),
        backup_s3_secret_access_key=SECRET_KEY,
        backup_slack_webhook=WEBHOOK,
    )
    v.update(extra)
    return v


# --- the role's variables -------------------------------------------------------------------


def test_database_and_owner_come_from_the_postgresql_role():
    s = spec.settings(host_vars())
    assert s["backup_database"] == "app" and s["backup_database_owner"] == "app"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"backup_s3_bucket": ""}, "backup_s3_bucket: required"),
        ({"backup_s3_bucket": "Bad_Bucket"}, "not a valid S3 bucket name"),
        ({"backup_schedule": "0 */6 * *"}, "backup_schedule: cron schedule"),
        ({"backup_local_retention_days": 0}, "backup_local_retention_days"),
        ({"backup_s3_encryption": "rot13"}, "backup_s3_encryption"),
        ({"backup_s3_access_key_id": ""}, "set both or neither"),
        ({"backup_app_stop_command": "systemctl stop pm2-app"}, "set both or neither"),
        ({"backup_slack_webhook": Secret("not a url")}, "backup_slack_webhook: expected"),
        ({"postgresql_app_database": None, "backup_database": ""}, "backup_database: not set"),
    ],
)
def test_bad_variables_name_the_variable(extra, message):
    v = host_vars(**extra)
    with pytest.raises(ConfigError, match=message) as info:
        check_host_vars(available_roles(), ["backup"], v)  # as the inventory's load does
        role().resources(v)
    assert "not a url" not in str(info.value)  # a bad secret URL is never echoed


def test_resources_config_is_sensitive_and_holds_the_secrets():
    res = {r.id: r for r in role().resources(host_vars())}
    conf = res["file:/etc/opskit-backup.json"]
    assert isinstance(conf, File) and conf.sensitive and conf.mode == 0o600
    assert conf.owner == "postgres"
    cfg = program.parse_config(conf.content)
    assert cfg["s3"]["secret_access_key"] == SECRET_KEY and cfg["slack_webhook"] == WEBHOOK
    assert json.loads(conf.content)["_comment"].startswith("Managed by opskit, role backup")
    # A change of the config shows no diff (it holds secrets).
    plan = conf.plan(
        "regular file|600|postgres|postgres\n" + "0" * 64 + "\nb2xkCg==\n", frozenset()
    )
    assert "secret" not in plan.diff.replace("holds secrets", "") and SECRET_KEY not in plan.diff
    cron = res["file:/etc/cron.d/opskit-backup"]
    assert "0 */6 * * * postgres /usr/local/bin/opskit-backup run" in cron.content
    assert f">> {program.LOG} 2>&1" in cron.content


# --- the host program as the role installs it ------------------------------------------------


def test_program_is_the_hostside_module_verbatim_and_managed():
    res = {r.id: r for r in role().resources(host_vars())}
    script = res[f"file:{program.SCRIPT}"]
    assert isinstance(script, File) and script.mode == 0o755 and script.owner == "root"
    first, managed, rest = script.content.split("\n", 2)
    assert first == "#!/usr/bin/python3"
    assert managed.startswith("# Managed by opskit, role backup")
    source = Path(program.__file__).read_text()
    assert source.startswith(first + "\n") and rest == source.split("\n", 1)[1]
    compile(script.content, program.SCRIPT, "exec")


def test_config_file_is_what_the_program_reads():
    s = spec.settings(host_vars(backup_s3_host_label="db-a", backup_http_timeout=2.5))
    cfg = dict(program.parse_config(spec.config_file(s)))
    assert cfg.pop("_comment").startswith("Managed by opskit") and cfg == spec.host_config(s)
    assert cfg["label"] == "db-a" and cfg["http_timeout"] == 2.5 and cfg["database"] == "app"
    assert set(cfg) == set(program.REQUIRED) and set(cfg["s3"]) == set(program.REQUIRED_S3)
    assert spec.config_file(s) == spec.config_file(s)  # the same text every time: no churn


def test_config_errors_name_the_key():
    good = json.loads(spec.config_file(spec.settings(host_vars())))
    for broken, message in [
        ({**good, "database": "app; drop"}, "database: not a plain"),
        ({**good, "s3": {**good["s3"], "bucket": ""}}, "s3.bucket: empty"),
        ({k: v for k, v in good.items() if k != "local_dir"}, "local_dir: missing"),
        ({**good, "local_retention_days": "7"}, "local_retention_days: wrong type"),
    ]:
        with pytest.raises(program.Failure, match=message) as info:
            program.parse_config(json.dumps(broken))
        assert info.value.code == program.EXIT_CONFIG


def test_redact_and_secrets_of():
    cfg = program.parse_config(spec.config_file(spec.settings(host_vars())))
    text = f"failed posting to {WEBHOOK} with key {SECRET_KEY}"
    out = program.redact(text, program.secrets_of(cfg))
    assert WEBHOOK not in out and SECRET_KEY not in out and out.count("***") == 2


# --- S3 against moto (the lab's stand-in, here on loopback) ---------------------------------


@pytest.fixture(scope="module")
def moto_url():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def settings(url, bucket="unit-backups"):
    return S3Settings(
        bucket,
        endpoint=url,
        access_key_id=Secret("AKIDUNIT"),
        secret_access_key=SECRET_KEY,
        max_attempts=2,
    )


def test_ensure_bucket_converges_then_changes_nothing(moto_url):
    store = S3Store(make_client(settings(moto_url)), "unit-backups")
    policy = BucketPolicy("pg", 30)
    planned = store.ensure_bucket(policy, region="us-east-1", dry_run=True)
    assert [c.resource for c in planned if c.changed] == [
        "s3:bucket",
        "s3:lifecycle",
        "s3:encryption",
        "s3:public-access-block",
    ]
    with pytest.raises(ApiError, match="NoSuchBucket"):  # the dry run created nothing
        store.list_objects("pg/")
    first = store.ensure_bucket(policy, region="us-east-1")
    assert all(c.changed for c in first)
    again = store.ensure_bucket(policy, region="us-east-1")
    assert not any(c.changed for c in again)
    # A rule opskit does not manage is kept; a changed retention is put back.
    client = store.client
    rules = client.get_bucket_lifecycle_configuration(Bucket="unit-backups")["Rules"]
    other = {
        "ID": "logs",
        "Status": "Enabled",
        "Filter": {"Prefix": "logs/"},
        "Expiration": {"Days": 3},
    }
    ours = next(r for r in rules if r["ID"] == LIFECYCLE_RULE_ID)
    client.put_bucket_lifecycle_configuration(
        Bucket="unit-backups",
        LifecycleConfiguration={"Rules": [other, {**ours, "Expiration": {"Days": 90}}]},
    )
    fixed = store.ensure_bucket(policy, region="us-east-1")
    assert [c.summary for c in fixed if c.changed] == ["rule: expiry 90 -> 30 days"]
    ids = {
        r["ID"]: r
        for r in client.get_bucket_lifecycle_configuration(Bucket="unit-backups")["Rules"]
    }
    assert (
        set(ids) == {"logs", LIFECYCLE_RULE_ID}
        and ids[LIFECYCLE_RULE_ID]["Expiration"]["Days"] == 30
    )


def test_unmanaged_bucket_must_exist(moto_url):
    store = S3Store(make_client(settings(moto_url, "not-there")), "not-there")
    with pytest.raises(ApiError, match="does not exist"):
        store.ensure_bucket(BucketPolicy("pg", 30), region="us-east-1", manage=False)


def test_unreachable_endpoint_is_a_clear_error_without_secrets():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the socket is
    store = S3Store(make_client(settings(f"http://127.0.0.1:{port}")), "unit-backups", [SECRET_KEY])
    with pytest.raises(ApiError) as info:
        store.list_objects("pg/")
    msg = str(info.value)
    assert msg.startswith("s3 list s3://unit-backups/pg/: cannot connect")
    assert SECRET_KEY not in msg and "AKIDUNIT" not in msg


def _cfg(url, schedule="0 */6 * * *"):
    h = make_host(
        "db9",
        **host_vars(backup_s3_endpoint=url, backup_schedule=schedule, backup_s3_bucket="unit-list"),
    )
    h = type(h)(h.name, h.address, h.port, h.user, h.groups, ("postgresql", "backup"), h.vars)
    return spec.config_for(h)


def test_list_judges_the_newest_backups_age(moto_url, tmp_path):
    cfg = _cfg(moto_url)
    client = store_for(cfg).client
    client.create_bucket(Bucket="unit-list")
    now = dt.datetime.now(dt.UTC)
    good = hashlib.sha256(b"dump").hexdigest()
    for i, meta in enumerate([{"sha256": good}, {}]):
        client.put_object(
            Bucket="unit-list",
            Key=f"pg/db9/app/app-2025010{i}T000000Z.dump",
            Body=b"dump",
            Metadata=meta,
        )
    fresh = listing.list_host(cfg, None, "db9", now=now + dt.timedelta(hours=1))
    assert not fresh.stale and len(fresh.backups) == 2
    assert fresh.problem.startswith("NEWEST BACKUP UNUSABLE: MISSING")
    old = listing.list_host(cfg, None, "db9", now=now + dt.timedelta(hours=7, minutes=5))
    assert old.stale and "allows 7 h 0 min" in old.note
    none = listing.list_host(cfg, None, "nobody", now=now)
    assert none.stale and none.note == "NO BACKUPS"
    text = listing.format_listing(old, now + dt.timedelta(hours=7, minutes=5))
    assert "STALE" in text and "MISSING" in text


@pytest.mark.parametrize(
    ("schedule", "hours"),
    [
        ("0 */6 * * *", 6),
        ("*/15 * * * *", 0.25),
        ("0 3 * * *", 24),
        ("0 3 * * 1", 168),
        ("0 0 1 * *", 31 * 24),
        ("0 9 * * 1-5", 72),
        ("0 0 1,15 * 5", 7 * 24),
    ],
)
def test_max_gap(schedule, hours):
    assert max_gap(schedule) == dt.timedelta(hours=hours)


def test_max_gap_reboot_is_unknown():
    assert max_gap("@reboot") is None


def test_after_converge_sets_the_bucket_and_notes_it(moto_url):
    """The role sets the bucket through opskit.backup.resources (no operations imported)."""
    h = make_host("db8", **host_vars(backup_s3_endpoint=moto_url, backup_s3_bucket="unit-role"))
    h = type(h)(h.name, h.address, h.port, h.user, h.groups, ("postgresql", "backup"), h.vars)

    class Ctx:
        notes: ClassVar[list[str]] = []

    class Remote:
        host = h

    role().after_converge(Remote(), [], Ctx)
    assert any("s3:bucket: create" in n for n in Ctx.notes), Ctx.notes
    Ctx.notes = []
    role().after_converge(Remote(), [], Ctx)
    assert Ctx.notes == ["s3://unit-role: bucket settings unchanged (4 checked)"]


def test_outcomes_as_text():
    from opskit.backup import hosts, text

    data = {
        program.KEY_KEY: "pg/db1/app/app-20250102T030405Z.dump",
        program.KEY_SHA256: "ab" * 32,
        program.KEY_SIZE: 2048,
        program.KEY_SECONDS: {program.SECONDS_DOWNLOAD: 1.25, program.SECONDS_RESTORE: 2},
        program.KEY_TARGET: "opskit_drill_1",
        program.KEY_SCRATCH: True,
        program.KEY_COUNTS: {"public.a": 3, "public.b": 1},
        program.KEY_LIVE_COUNTS: {"public.a": 3, "public.b": 2},
        text.KEY_RPO: 3600,
        text.KEY_RTO: 3.25,
        text.KEY_DIFF: [{"table": "public.b", "restored": 1, "live": 2}],
        text.KEY_CLEANED_UP: True,
    }
    ok = hosts.HostOutcome("db1", ok=True, data=data)
    out = text.format_drill(ok).splitlines()
    assert out[0] == "[db1] drill  pg/db1/app/app-20250102T030405Z.dump"
    assert "2.0 KiB); download 1.2 s, restore 2.0 s" in out[1]
    assert "scratch database opskit_drill_1 restored, counted and dropped" in out[2]
    assert out[3].endswith("restored 3  = live 3") and out[4].endswith("restored 1  ≠ live 2")
    assert out[5] == (
        "[db1]   RPO (age of the data): 1 h 0 min; RTO (download + restore): 3.2 s; "
        "1 table(s) differ from live; cleaned up"
    )
    failed = hosts.HostOutcome("db2", error="restore REFUSED: CHECKSUM MISMATCH\ndetail")
    assert text.format_restore(failed, "restored") == (
        "[db2] FAILED  restore REFUSED: CHECKSUM MISMATCH\n    detail\n"
    )
    gone = hosts.HostOutcome("db3", error="no route", unreachable=True)
    assert text.format_drill(gone) == "[db3] UNREACHABLE  no route\n"
    assert text.outcome_json(failed)["error"].startswith("restore REFUSED")


def test_an_unknown_backup_key_is_refused_from_the_laptop(moto_url):
    """`backup.restore|verify --backup KEY`: the laptop reads the bucket itself, so a key that is
    not there exits 2 (did-you-mean, `inv backup.list`) before any host is touched."""
    from invoke.exceptions import Exit

    from cli.backup import _check_backup_key

    cfg = _cfg(moto_url)
    client = store_for(cfg).client
    client.create_bucket(Bucket="unit-list")
    key = "pg/db9/app/app-20250101T000000Z.dump"
    client.put_object(Bucket="unit-list", Key=key, Body=b"dump")
    _check_backup_key(cfg, key)
    _check_backup_key(cfg, "latest")
    with pytest.raises(Exit) as err:
        _check_backup_key(cfg, key.replace("0101", "0102"))
    assert err.value.code == 2
    assert err.value.message == (
        f"error: --backup: no backup '{key.replace('0101', '0102')}' in s3://unit-list "
        f"(did you mean '{key}'?); see `inv backup.list`"
    )
    with pytest.raises(Exit, match="no-such-key"):
        _check_backup_key(cfg, "no-such-key")
