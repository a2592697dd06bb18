"""Backups without SSH: the role's variables, the host script's logic, the S3 client against a
local moto server (the same stand-in the lab runs), list's age judgement."""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.util
import json
import os
import socket
import time
from pathlib import Path

import pytest
from boto3.s3.transfer import TransferConfig
from moto.server import ThreadedMotoServer

from opskit.backup import ops as backup
from opskit.clients import ApiError
from opskit.clients.s3 import (
    LIFECYCLE_RULE_ID,
    BucketPolicy,
    S3Settings,
    S3Store,
    make_client,
)
from opskit.core.errors import ConfigError
from opskit.core.render import render
from opskit.core.roles import available_roles, check_host_vars
from opskit.core.secrets import Secret
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
    s = role().settings(host_vars())
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
    cfg = load_script().parse_config(conf.content)
    assert cfg["s3"]["secret_access_key"] == SECRET_KEY and cfg["slack_webhook"] == WEBHOOK
    # A change of the config shows no diff (it holds secrets).
    plan = conf.plan(
        "regular file|600|postgres|postgres\n" + "0" * 64 + "\nb2xkCg==\n", frozenset()
    )
    assert "secret" not in plan.diff.replace("holds secrets", "") and SECRET_KEY not in plan.diff
    cron = res["file:/etc/cron.d/opskit-backup"]
    assert "0 */6 * * * postgres /usr/local/bin/opskit-backup run" in cron.content


# --- the host script ------------------------------------------------------------------------


def load_script(tmp: Path | None = None):
    text = render("backup/opskit-backup.j2", {})
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"opskit-backup-{os.getpid()}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("opskit_backup_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_is_managed_and_valid_python():
    text = render("backup/opskit-backup.j2", {})
    assert text.startswith("#!/usr/bin/python3\n# Managed by opskit, role backup")
    compile(text, "opskit-backup", "exec")
    assert load_script().__doc__.startswith("opskit-backup:")


def test_script_config_errors_name_the_key():
    script = load_script()
    good = json.loads(render("backup/opskit-backup.json.j2", role().settings(host_vars())))
    for broken, message in [
        ({**good, "database": "app; drop"}, "database: not a plain"),
        ({**good, "s3": {**good["s3"], "bucket": ""}}, "s3.bucket: empty"),
        ({k: v for k, v in good.items() if k != "local_dir"}, "local_dir: missing"),
        ({**good, "local_retention_days": "7"}, "local_retention_days: wrong type"),
    ]:
        with pytest.raises(script.Failure, match=message) as info:
            script.parse_config(json.dumps(broken))
        assert info.value.code == script.EXIT_CONFIG


def test_object_key_and_label():
    script = load_script()
    cfg = {"database": "app", "label": "db1", "s3": {"prefix": "/pg/"}}
    when = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert script.object_key(cfg, when) == "pg/db1/app/app-20250102T030405Z.dump"
    cfg["label"] = ""
    assert script.object_key(cfg, when).split("/")[1] == socket.gethostname().split(".")[0]


def test_prune_local_removes_only_old_backups(tmp_path):
    script = load_script()
    now = dt.datetime.now(dt.UTC)
    files = {
        "app-20200101T000000Z.dump": 8,
        "app-20200101T000000Z.dump.json": 8,
        "app-20200102T000000Z.dump": 6,
        "other-20200101T000000Z.dump": 30,  # another database's: not ours to remove
        "notes.txt": 30,
        "x.dump.partial": 2,  # a leftover of a failed run, older than a day
        "y.dump.partial": 0,  # a run in progress
    }
    for name, days in files.items():
        p = tmp_path / name
        p.write_text("x")
        t = time.time() - days * 86400 - 60
        os.utime(p, (t, t))
    removed = script.prune_local(str(tmp_path), "app", 7, now)
    assert sorted(removed) == [
        "app-20200101T000000Z.dump",
        "app-20200101T000000Z.dump.json",
        "x.dump.partial",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "app-20200102T000000Z.dump",
        "notes.txt",
        "other-20200101T000000Z.dump",
        "y.dump.partial",
    ]


def test_redact_and_secrets_of():
    script = load_script()
    cfg = script.parse_config(render("backup/opskit-backup.json.j2", role().settings(host_vars())))
    text = f"failed posting to {WEBHOOK} with key {SECRET_KEY}"
    out = script.redact(text, script.secrets_of(cfg))
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


def test_multipart_checksum_matches_what_s3_reports(moto_url, tmp_path):
    """The script's local recomputation of S3's SHA256 checksum agrees with the server's."""
    script = load_script()
    client = make_client(settings(moto_url, "unit-checksums"))
    client.create_bucket(Bucket="unit-checksums")
    for size in (1000, script.PART_SIZE * 2 + 123):
        path = tmp_path / f"f{size}"
        path.write_bytes(os.urandom(size))
        client.upload_file(
            str(path),
            "unit-checksums",
            path.name,
            ExtraArgs={"ChecksumAlgorithm": "SHA256"},
            Config=TransferConfig(
                multipart_threshold=script.PART_SIZE, multipart_chunksize=script.PART_SIZE
            ),
        )
        head = client.head_object(Bucket="unit-checksums", Key=path.name, ChecksumMode="ENABLED")
        assert script.same_s3_checksum(head["ChecksumSHA256"], script.s3_sha256(str(path)))
    assert not script.same_s3_checksum("AAAA-3", script.s3_sha256(str(path)))


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
    return backup.config_for(h)


def test_list_judges_the_newest_backups_age(moto_url, tmp_path):
    cfg = _cfg(moto_url)
    client = backup.store_for(cfg).client
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
    fresh = backup.list_host(cfg, None, "db9", now=now + dt.timedelta(hours=1))
    assert not fresh.stale and len(fresh.backups) == 2
    assert fresh.problem.startswith("NEWEST BACKUP UNUSABLE: MISSING")
    old = backup.list_host(cfg, None, "db9", now=now + dt.timedelta(hours=7, minutes=5))
    assert old.stale and "allows 7 h 0 min" in old.note
    none = backup.list_host(cfg, None, "nobody", now=now)
    assert none.stale and none.note == "NO BACKUPS"
    text = backup.format_listing(old, now + dt.timedelta(hours=7, minutes=5))
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
    assert backup.max_gap(schedule) == dt.timedelta(hours=hours)


def test_max_gap_reboot_is_unknown():
    assert backup.max_gap("@reboot") is None
