"""Migrations on deploy (roles/app/README.md, "Migrations") against the lab's PostgreSQL.

The sample app from a demo repo (app/sample/make-demo-repo): v1 brings schema 1, v2 schema 2,
badmigration a migration that fails. Deploys go to every web host at once (one migration, on the
first), after a verified backup of the db host; requests through nginx are sampled every 50 ms
on every web host. Tests run in file order and build on each other.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from typing import Any

import pytest

from opskit.core.inventory import Host, Inventory, load_inventory
from opskit.core.roles import REPO
from opskit.core.runner import provision_work, run_on_hosts
from tests.integration.conftest import forget_app, write_inventory
from tests.integration.test_deploy import Sampler, get, host_state, run, version

HEALTH_TIMEOUT = 8
TIMINGS: dict[str, Any] = {}
SEEN: dict[str, str] = {}


@pytest.fixture(scope="module")
def mig_inventory(lab_spec: Any, tmp_path_factory: pytest.TempPathFactory) -> Inventory:
    tmp = tmp_path_factory.mktemp("migrate")
    subprocess.run(
        [str(REPO / "app/sample/make-demo-repo"), str(tmp / "sample-app")],
        check=True,
        capture_output=True,
    )

    def change(data: dict[str, Any]) -> None:
        web = data["groups"]["web"]["vars"]
        assert web.get("app_migrate_command"), "inventories/lab.yml: the web hosts migrate"
        assert "PGHOST" in web["app_env"], "inventories/lab.yml: the app's database"
        web.update(
            app_repo=str(tmp / "sample-app"), app_repo_path=".", app_health_timeout=HEALTH_TIMEOUT
        )

    inventory = load_inventory(write_inventory(tmp, change))
    # The first deploy of this module migrates from schema 0 with no release, upload or journal
    # entry left by earlier modules.
    database = inventory.host(inventory.groups["web"][0]).vars["app_env"]["PGDATABASE"]
    forget_app(lab_spec, inventory, database=str(database))
    return inventory


def webs(inventory: Inventory) -> list[Host]:
    return [inventory.host(n) for n in inventory.groups["web"]]


def migrate_entries(inventory: Inventory, host: Host) -> list[dict[str, Any]]:
    state = host_state(inventory, host.name)
    return [dict(j) for j in state.journal if j.get("action") == "migrate"]


def sampled(inventory: Inventory, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    """Run an inv task while every web host is sampled through nginx every 50 ms."""
    samplers = [Sampler(h.address) for h in webs(inventory)]
    started = time.monotonic()
    for s in samplers:
        s.__enter__()
    try:
        done = run(inventory, *args)
    finally:
        for s in samplers:
            s.__exit__()
    report = {
        "seconds": round(time.monotonic() - started, 2),
        "hosts": len(samplers),
        "samples": sum(len(s.samples) for s in samplers),
        "failed": sum(s.failed for s in samplers),
    }
    return done, report


def test_01_provision_database_and_web_hosts(mig_inventory):
    db = [h for h in mig_inventory.hosts if "backup" in h.roles]
    assert db, "the lab inventory needs a host with roles: [postgresql, backup]"
    [r] = run_on_hosts(mig_inventory, db, provision_work(None))
    assert r.error is None, r.error
    results = run_on_hosts(mig_inventory, webs(mig_inventory), provision_work(["app", "nginx"]))
    assert [x.error for x in results] == [None] * len(results)


def test_02_first_deploy_backs_up_then_migrates_once(mig_inventory):
    first = run(mig_inventory, "deploy", "--ref", "v1")
    out = first.stdout + first.stderr
    assert first.returncode == 0, out
    m = re.search(r"verified backup before migrating: (\S+)", out)
    assert m, out
    key = m.group(1)
    hosts = webs(mig_inventory)
    assert f"migrated on {hosts[0].name}: schema 0 -> 1" in out
    assert out.count("migrating on ") == 1, out  # once per deploy, on the first host
    for h in hosts:
        assert version(h.address) == "1.0.0"
        code, body, _ = get(h.address, "/health")
        assert code == 200 and json.loads(body)["database"]["ok"] is True, body
        [entry] = migrate_entries(mig_inventory, h)
        assert entry["backup"] == key and entry["schema"] == "1", entry
        assert entry["schema_before"] == "0" and entry["on"] == hosts[0].name
    code, body, _ = get(hosts[0].address, "/schema")
    assert code == 200 and json.loads(body)["schema_version"] == "1", body
    # the app writes an upload into the shared uploads/ (and a row in the table of migration 1)
    import urllib.request

    req = urllib.request.Request(f"http://{hosts[0].address}/upload", data=b"hi", method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        made = json.loads(r.read())
    assert r.status == 201 and made["rows"] == 1, made
    code, body, _ = get(hosts[0].address, "/upload-count")
    assert json.loads(body)["uploads"] == 1
    # the install script's record, or the app saying it did not run (never a crash)
    code, body, _ = get(hosts[0].address, "/platform")
    assert code == 200 and "recorded" in json.loads(body), body


def test_03_second_deploy_migrates_again_without_a_failed_request(mig_inventory):
    second, report = sampled(mig_inventory, "deploy", "--ref", "v2")
    TIMINGS["deploy v2 (migration 1 -> 2)"] = report
    out = second.stdout + second.stderr
    assert second.returncode == 0, out
    assert "schema 1 -> 2" in out, out
    key = re.search(r"verified backup before migrating: (\S+)", out)
    assert key, out
    SEEN["backup_before_2"] = key.group(1)
    for h in webs(mig_inventory):
        assert version(h.address) == "2.0.0"
        assert migrate_entries(mig_inventory, h)[-1]["schema"] == "2"
    assert report["failed"] == 0, report


def test_04_rollback_across_a_migration_refuses_without_force_and_names_the_backup(mig_inventory):
    hosts = webs(mig_inventory)
    before = [host_state(mig_inventory, h.name).current for h in hosts]
    refused = run(mig_inventory, "rollback")
    out = refused.stdout + refused.stderr
    assert refused.returncode == 2, out
    assert "expects schema 1, the database is at 2" in out, out
    assert f"backup {SEEN['backup_before_2']} holds the data at schema 1" in out, out
    assert [host_state(mig_inventory, h.name).current for h in hosts] == before  # unchanged
    forced, report = sampled(mig_inventory, "rollback", "--force")
    TIMINGS["rollback --force (schema stays 2)"] = report
    out = forced.stdout + forced.stderr
    assert forced.returncode == 0, out
    assert "warning: forced: " in out and SEEN["backup_before_2"] in out, out
    assert report["failed"] == 0, report
    for h in hosts:
        assert version(h.address) == "1.0.0"  # v1's code on schema 2: backward compatible
    # forward again to v2's release: same schema, no --force needed
    again = run(mig_inventory, "rollback", "--to", before[0])
    assert again.returncode == 0, again.stdout + again.stderr
    assert all(version(h.address) == "2.0.0" for h in hosts)


def test_05_a_failed_migration_leaves_every_host_on_the_old_release(mig_inventory):
    hosts = webs(mig_inventory)
    before = [host_state(mig_inventory, h.name).current for h in hosts]
    bad, report = sampled(mig_inventory, "deploy", "--ref", "badmigration")
    TIMINGS["deploy badmigration (fails)"] = report
    out = bad.stdout + bad.stderr
    assert bad.returncode == 1, out
    key = re.search(r"verified backup before migrating: (\S+)", out)
    assert key and f"restore point: backup {key.group(1)}" in out, out
    assert "004_bad.sql failed and was rolled back" in out, out
    assert report["failed"] == 0, report
    for h, was in zip(hosts, before, strict=True):
        state = host_state(mig_inventory, h.name)
        assert state.current == was  # no host switched
        new = state.releases[-1]
        assert new.label == "badmigration" and new.bad is not None, new
        assert version(h.address) == "2.0.0"
    # badmigration's 003 (v3's) applied, then 004 failed and was rolled back: schema 3
    assert "migration failed on" in out and "schema 2 -> 3" in out, out
    code, body, _ = get(hosts[0].address, "/schema")
    assert code == 200 and json.loads(body)["schema_version"] == "3", body


def test_06_timings():
    print("\nmigration timings (every web host sampled every 50 ms through nginx):")
    for what, r in TIMINGS.items():
        print(f"  {what}: {r}")
    assert TIMINGS
