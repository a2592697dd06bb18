"""What the backup role promises (roles/backup/README.md), checked on the host itself."""

from __future__ import annotations

import json

from opskit.hostside.backup import CONFIG, LOG, PROGRAM, SCRIPT

ROLE = "backup"


def test_script_installed(host):
    f = host.file(SCRIPT)
    assert f.exists and f.mode == 0o755 and f.user == "root"
    assert (
        "Managed by opskit" in f.content_string and "opskit/hostside/backup.py" in f.content_string
    )
    assert host.run(f"{SCRIPT} --help").rc == 0
    assert host.run("python3 -c 'import boto3'").rc == 0


def test_config_readable_by_postgres_only(host, hostvars):
    f = host.file(CONFIG)
    assert f.mode == 0o600 and f.user == "postgres" and f.group == "postgres"
    cfg = json.loads(f.content_string)
    assert cfg["s3"]["bucket"] == hostvars["backup_s3_bucket"]
    assert cfg["local_retention_days"] == hostvars["backup_local_retention_days"]


def test_local_directory(host, hostvars):
    d = host.file(hostvars["backup_local_dir"])
    assert d.is_directory and d.mode == 0o700 and d.user == "postgres"


def test_cron_entry_runs_as_postgres_on_schedule(host, hostvars):
    cron = host.file(f"/etc/cron.d/{PROGRAM}")
    assert cron.mode == 0o644 and cron.user == "root"
    line = [x for x in cron.content_string.splitlines() if x and not x.startswith("#")][-1]
    assert line == f"{hostvars['backup_schedule']} postgres {SCRIPT} run >> {LOG} 2>&1"
    assert host.service("cron").is_running


def test_script_reads_its_config(host, hostvars):
    out = json.loads(host.check_output(f"{SCRIPT} info --json"))
    assert out["bucket"] == hostvars["backup_s3_bucket"] and out["live_exists"] is True
    assert out["prefix"].startswith(hostvars["backup_s3_prefix"].strip("/") + "/")
