"""Backups on the lab: PostgreSQL and the backup role on the db host, S3 = the lab's moto server,
Slack and heartbeat = the lab's stand-ins. Tests run in file order and build on each other."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import socket
import urllib.request
from urllib.parse import urlsplit

import pytest

from opskit.backup.listing import list_backups
from opskit.backup.resources import store_for
from opskit.backup.spec import config_for
from opskit.core.inventory import load_inventory
from opskit.core.runner import provision_work, run_on_hosts
from opskit.fleet.verify import run_verify
from opskit.hostside.backup import CONFIG, LAST_RUN
from opskit.lab import registry as labsvc
from opskit.lab.nspawn import exec_in
from tests.integration.conftest import LAB_INVENTORY, inv, write_inventory

OUTPUTS: list[str] = []  # everything the tasks printed: no secret may be in it
STATE: dict[str, object] = {}


def run_inv(*args, **kwargs):
    proc = inv(*args, **kwargs)
    OUTPUTS.extend([proc.stdout, proc.stderr])
    return proc


def inv_json(*args, expect=0):
    proc = run_inv(*args, "--json")
    assert proc.returncode == expect, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def db(lab_inventory):
    hosts = [h for h in lab_inventory.hosts if "backup" in h.roles]
    assert hosts, "the lab inventory needs a group with roles: [postgresql, backup]"
    return hosts[0]


@pytest.fixture(scope="module")
def cfg(db, lab_spec):
    # The lab's S3 keeps its state while the lab runs (`lab.up --fresh` only wipes the hosts):
    # start from an empty one, as a fresh lab has.
    url = labsvc.service_url(lab_spec, "s3")
    urllib.request.urlopen(
        urllib.request.Request(f"{url}/moto-api/reset", method="POST"), timeout=10
    )
    return config_for(db)


@pytest.fixture(scope="module")
def s3(cfg):
    return store_for(cfg).client


def sh(spec, host, script, check=True):
    r = exec_in(spec, host.name, ["bash", "-c", script])
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def sql(spec, host, query, database="app"):
    return sh(
        spec,
        host,
        f"cd / && runuser -u postgres -- psql -X -A -t -q -d {database} "
        f"-v ON_ERROR_STOP=1 <<'EOF'\n{query}\nEOF",
    ).strip()


def databases(spec, host):
    return set(sql(spec, host, "SELECT datname FROM pg_database", "postgres").split())


def live_counts(spec, host):
    out = sh(spec, host, "opskit-backup counts --database app --json")
    return json.loads(out)["counts"]


def keys(s3, cfg):
    r = s3.list_objects_v2(Bucket=cfg.s3.bucket, Prefix=cfg.prefix + "/")
    return sorted(o["Key"] for o in r.get("Contents", []))


def provision(inventory, host):
    [r] = run_on_hosts(inventory, [host], provision_work(None))
    return r


def test_01_provision_converges_db_host_and_bucket(lab_inventory, db, cfg):
    first = provision(lab_inventory, db)
    assert first.error is None, first.error
    ids = {c.resource for c in first.changes}
    assert {
        "postgresql:role:app",
        "postgresql:database:app",
        "postgresql:extension:app:pg_stat_statements",
        f"file:{CONFIG}",
        "file:/etc/cron.d/opskit-backup",
    } <= ids
    # The S3 stand-in was emptied (fixture `cfg`): the bucket is made and set up again.
    assert any("s3:bucket: create" in n for n in first.notes), first.notes
    assert any("s3:lifecycle" in n for n in first.notes), first.notes
    # The config holds secrets: its diff is never shown.
    [conf] = [c for c in first.changes if c.resource == f"file:{CONFIG}"]
    assert conf.diff == "" or "not shown" in conf.diff


def test_02_second_provision_changes_nothing(lab_inventory, db):
    again = provision(lab_inventory, db)
    assert again.error is None and again.changed_count == 0, [c for c in again.changes if c.changed]
    assert again.commands == 1
    assert any("bucket settings unchanged" in n for n in again.notes), again.notes
    check = run_inv("backup.bucket", "--check")
    assert check.returncode == 0 and "changed" not in check.stdout, check.stdout


def test_03_bucket_retention_encryption_public_access(s3, cfg):
    rules = s3.get_bucket_lifecycle_configuration(Bucket=cfg.s3.bucket)["Rules"]
    [rule] = [r for r in rules if r["ID"] == "opskit-backup-retention"]
    assert rule["Expiration"]["Days"] == 30 and rule["Filter"]["Prefix"] == "pg/"
    enc = s3.get_bucket_encryption(Bucket=cfg.s3.bucket)["ServerSideEncryptionConfiguration"]
    assert enc["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    block = s3.get_public_access_block(Bucket=cfg.s3.bucket)["PublicAccessBlockConfiguration"]
    assert all(block.values()) and len(block) == 4


def test_04_backup_lands_in_s3_with_checksum_and_pings_heartbeat(lab_spec, db, s3, cfg):
    sql(
        lab_spec,
        db,
        "CREATE TABLE items (id int PRIMARY KEY, name text); "
        "INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, 5000) g; "
        "CREATE TABLE notes (body text); INSERT INTO notes VALUES ('a'), ('b'), ('c'); "
        "ALTER TABLE items OWNER TO app; ALTER TABLE notes OWNER TO app;",
    )
    token = urlsplit(db.vars["backup_heartbeat_url"]).path.strip("/")
    beats = len(labsvc.read_inbox(lab_spec, "heartbeat"))
    report = inv_json("backup.run")
    [h] = report["hosts"]
    assert h["ok"] and h["heartbeat"] == "pinged" and h["upload_check"] in ("s3-sha256", "download")
    key = h["key"]
    STATE["first_key"] = key
    obj = s3.get_object(Bucket=cfg.s3.bucket, Key=key)
    data = obj["Body"].read()
    assert obj["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest() == h["sha256"]
    assert obj["ServerSideEncryption"] == "AES256"
    head = s3.head_object(Bucket=cfg.s3.bucket, Key=key, ChecksumMode="ENABLED")
    assert head.get("ChecksumSHA256"), "S3's own SHA256 checksum is stored"
    new_beats = labsvc.read_inbox(lab_spec, "heartbeat")[beats:]
    assert [b["token"] for b in new_beats] == [token]
    local = f"{cfg_local_dir(db)}/{key.rsplit('/', 1)[1]}"
    assert sh(lab_spec, db, f"sha256sum {local}").split()[0] == h["sha256"]


def cfg_local_dir(host):
    return host.vars["backup_local_dir"]


def test_05_list_shows_it_and_flags_old_backups(lab_inventory, db):
    report = inv_json("backup.list")
    [h] = report["hosts"]
    assert not h["stale"] and h["backups"][-1]["key"] == STATE["first_key"]
    assert h["backups"][-1]["checksum_state"].startswith("sha256 recorded")
    text = run_inv("backup.list")
    assert text.returncode == 0 and STATE["first_key"].rsplit("/", 1)[1] in text.stdout
    # Seen 8 hours later, the newest backup is older than "every 6 hours" (+1 h grace) allows.
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=8)
    [old] = list_backups(lab_inventory, [db], now=later)
    assert old.stale and "STALE" in old.note and "allows 7 h 0 min" in old.note


def test_06_restore_into_new_database_has_live_row_counts(lab_spec, db):
    before = databases(lab_spec, db)
    report = inv_json("backup.restore", "--backup", "latest")
    [h] = [report] if "host" in report else report["hosts"]
    target = h["target"]
    assert h["ok"] and target not in before and target in databases(lab_spec, db)
    live = live_counts(lab_spec, db)
    assert live == {"public.items": 5000, "public.notes": 3}
    assert h["counts"] == live == h["live_counts"]
    restored = json.loads(sh(lab_spec, db, f"opskit-backup counts --database {target} --json"))
    assert restored["counts"] == live
    assert (
        sql(
            lab_spec,
            db,
            f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{target}'",
            "postgres",
        )
        == "app"
    )
    sql(lab_spec, db, f"DROP DATABASE {target}", "postgres")


def test_07_replace_refuses_without_confirmation(lab_spec, db, s3, cfg):
    before_keys, before_dbs = keys(s3, cfg), databases(lab_spec, db)
    proc = run_inv("backup.restore", "--replace")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "without confirmation" in proc.stderr and "Traceback" not in proc.stderr
    assert keys(s3, cfg) == before_keys and databases(lab_spec, db) == before_dbs


def test_08_replace_takes_a_fresh_backup_first_and_stops_the_app(
    tmp_path, lab_spec, lab_inventory, db, s3, cfg
):
    web = [h for h in lab_inventory.hosts if h.name != db.name]
    events = "/var/tmp/opskit-app-events"
    for h in web:
        sh(lab_spec, h, f"rm -f {events}")

    def change(data):
        group = next(g for g in data["groups"].values() if db.name in g.get("hosts", {}))
        group["vars"].update(
            backup_app_hosts=",".join(h.name for h in web),
            # the maintenance switch (nginx's 503 page) is on while the app is stopped
            backup_app_stop_command=f"echo stop >> {events}; "
            f"[ -e /var/lib/opskit/maintenance/sample ] && echo maintenance >> {events}",
            backup_app_start_command=f"echo start >> {events}",
        )

    path = write_inventory(tmp_path, change)
    sql(lab_spec, db, "INSERT INTO notes VALUES ('written after the first backup')")
    before = set(keys(s3, cfg))
    report = inv_json(
        "backup.restore", "-i", str(path), "--replace", "--yes", "--backup", STATE["first_key"]
    )
    assert report["ok"], report
    steps = report["steps"]
    fresh = report["fresh_backup"]
    assert fresh not in before and fresh in keys(s3, cfg)
    assert steps[0].startswith("fresh backup of the live app")
    stop = [i for i, s in enumerate(steps) if s.startswith("app stopped")]
    swap = [i for i, s in enumerate(steps) if " is now app;" in s]
    start = [i for i, s in enumerate(steps) if s.startswith("app started")]
    assert len(stop) == len(start) == len(web) and max(stop) < swap[0] < min(start), steps
    for h in web:
        assert sh(lab_spec, h, f"cat {events}").split() == ["stop", "maintenance", "start"]
        assert sh(lab_spec, h, "ls -A /var/lib/opskit/maintenance").split() == []  # off again
    # Live is the first backup again; the row written later is in the fresh backup and in the
    # previous database, kept under its new name.
    assert live_counts(lab_spec, db)["public.notes"] == 3
    kept = report["previous_kept_as"]
    assert sql(lab_spec, db, "SELECT count(*) FROM notes", kept) == "4"
    verified = inv_json("backup.verify", "--backup", fresh)
    assert verified["hosts"][0]["counts"]["public.notes"] == 4
    sql(lab_spec, db, f"DROP DATABASE {kept}", "postgres")


def test_09_corrupted_object_fails_verify_and_is_refused_by_restore(lab_spec, db, s3, cfg):
    fresh = inv_json("backup.run")["hosts"][0]["key"]
    obj = s3.get_object(Bucket=cfg.s3.bucket, Key=fresh)
    data = bytearray(obj["Body"].read())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size, same metadata
    s3.put_object(Bucket=cfg.s3.bucket, Key=fresh, Body=bytes(data), Metadata=obj["Metadata"])
    dbs = databases(lab_spec, db)
    verify = inv_json("backup.verify", expect=1)
    [h] = verify["hosts"]
    assert not h["ok"] and "CHECKSUM MISMATCH" in h["error"] and "REFUSED" in h["error"]
    assert databases(lab_spec, db) == dbs
    restore = run_inv("backup.restore", "--backup", fresh)
    assert restore.returncode == 1 and "CHECKSUM MISMATCH" in restore.stdout + restore.stderr
    assert databases(lab_spec, db) == dbs, "no database was created from a corrupt backup"
    listing = inv_json("backup.list", expect=1)["hosts"][0]
    assert listing["backups"][-1]["checksum_state"].startswith("FAILED verification")
    assert "NEWEST BACKUP UNUSABLE" in listing["problem"]
    s3.delete_object(Bucket=cfg.s3.bucket, Key=fresh)


def _closed_port(address):
    for port in range(5990, 6000):
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((address, port)) != 0:
                return port
    raise AssertionError("no closed port found")


def test_10_s3_unreachable_exits_nonzero_alerts_keeps_local_copy_no_heartbeat(
    lab_spec, lab_inventory, db
):
    gateway = lab_spec.gateway.split("/")[0]
    port = _closed_port(gateway)
    sh(
        lab_spec,
        db,
        f"python3 - <<'EOF'\nimport json\np = '{CONFIG}'\n"
        "c = json.load(open(p))\n"
        f"c['s3']['endpoint'] = 'http://{gateway}:{port}'\nc['s3']['max_attempts'] = 2\n"
        "json.dump(c, open(p, 'w'))\nEOF",
    )
    beats = len(labsvc.read_inbox(lab_spec, "heartbeat"))
    alerts = len(labsvc.read_inbox(lab_spec, "slack"))
    report = inv_json("backup.run", expect=1)
    [h] = report["hosts"]
    assert not h["ok"] and h["failed_step"] == "upload" and h["heartbeat"] == "not pinged"
    assert h["local_copy_kept"] is True and h["alert"] == "sent"
    sh(lab_spec, db, f"test -s {h['local_path']}")
    # Only the backup's alerts: the health checks of other hosts may post meanwhile.
    new_alerts = [
        a
        for a in labsvc.read_inbox(lab_spec, "slack")[alerts:]
        if "backup" in a["payload"].get("text", "").lower()
    ]
    assert len(new_alerts) == 1 and "FAILED at upload" in new_alerts[0]["payload"]["text"]
    assert h["local_path"] in new_alerts[0]["payload"]["text"]
    assert len(labsvc.read_inbox(lab_spec, "heartbeat")) == beats
    OUTPUTS.append(json.dumps(new_alerts))
    last = json.loads(sh(lab_spec, db, f"cat {cfg_local_dir(db)}/{LAST_RUN}"))
    assert last["ok"] is False
    # A provision puts the configuration back (and only that).
    fixed = provision(lab_inventory, db)
    assert [c.resource for c in fixed.changes if c.changed] == [f"file:{CONFIG}"]


def test_11_local_copies_older_than_7_days_removed_newer_kept(lab_spec, db):
    d = cfg_local_dir(db)
    sh(
        lab_spec,
        db,
        f"""
        cd {d}
        for f in app-20200101T000000Z.dump app-20200101T000000Z.dump.json; do
          runuser -u postgres -- touch -d '8 days ago' $f; done
        runuser -u postgres -- touch -d '6 days ago' app-20200102T000000Z.dump
        runuser -u postgres -- touch -d '30 days ago' unrelated-notes.txt
    """,
    )
    [h] = inv_json("backup.run")["hosts"]
    assert sorted(h["removed_local"]) == [
        "app-20200101T000000Z.dump",
        "app-20200101T000000Z.dump.json",
    ]
    left = sh(lab_spec, db, f"ls {d}").split()
    assert "app-20200102T000000Z.dump" in left and "unrelated-notes.txt" in left
    assert h["key"].rsplit("/", 1)[1] in left
    sh(lab_spec, db, f"rm -f {d}/app-20200102T000000Z.dump {d}/unrelated-notes.txt")


def test_12_drill_reports_rpo_and_rto_and_cleans_up(lab_spec, db):
    dbs = databases(lab_spec, db)
    [h] = inv_json("backup.drill")["hosts"]
    assert h["ok"] and h["diff"] == [] and h["counts"] == h["live_counts"]
    assert 0 <= h["rpo_seconds"] < 900 and h["rto_seconds"] > 0
    assert h["cleaned_up"] and databases(lab_spec, db) == dbs
    text = run_inv("backup.drill")
    assert text.returncode == 0 and "RPO" in text.stdout and "RTO" in text.stdout, text.stdout


def test_13_verify_specs_pass(lab_inventory, db):
    assert run_verify(lab_inventory, [db]) == 0


def test_14_provision_again_changes_nothing(lab_inventory, db):
    again = provision(lab_inventory, db)
    assert again.error is None and again.changed_count == 0


def test_15_bad_input_is_a_clear_error_and_touches_nothing(tmp_path, db):
    def bad(data):
        group = next(g for g in data["groups"].values() if db.name in g.get("hosts", {}))
        group["vars"]["backup_schedule"] = "0 */6 * *"

    proc = run_inv("provision", "-i", str(write_inventory(tmp_path, bad)), "--hosts", db.name)
    # Checked at load, before any host is contacted: exit 2, the variable named, nothing run.
    assert proc.returncode == 2 and "backup_schedule" in proc.stderr and proc.stdout == ""
    again = run_inv("backup.run", "-i", str(write_inventory(tmp_path, bad, "b.yml")))
    assert again.returncode == 2 and "backup_schedule" in again.stderr
    other = next(h for h in load_inventory(LAB_INVENTORY).hosts if "backup" not in h.roles)
    wrong = run_inv("backup.restore", "--hosts", other.name)
    assert (
        wrong.returncode == 2 and "none of the selected hosts has the backup role" in wrong.stderr
    )


def test_16_no_secret_in_any_output(lab_spec):
    values = [v for k, v in labsvc.ensure_lab_secrets(lab_spec).items() if len(v) >= 8]
    text = "\n".join(OUTPUTS)
    leaked = [v[:4] + "…" for v in values if v in text]
    assert not leaked, f"secrets in output: {leaked}"
