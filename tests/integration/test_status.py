"""`inv status` on the lab: every metric read from the hosts, and each failure the runbooks fear
showing with the right severity and exit code: PostgreSQL stopped, a disk filling past its
thresholds, the app stopped, a host unreachable.

The hosts' / is this machine's big disk, so the disk test gets a file system of its own: a 10 MiB
tmpfs mounted in the database host (systemd-nspawn lets a container's root mount tmpfs) and
added to `status_disk_paths` in this module's copy of the lab inventory. Tests run in file
order on hosts other modules have used: the first converges them again with the lab inventory,
deploys the app, takes a backup and runs the health check; each test puts back what it breaks.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opskit.certs import spec as certs
from opskit.core.inventory import Host, Inventory, load_inventory
from opskit.core.remote import connect
from opskit.core.roles import REPO
from opskit.core.runner import provision_work, run_on_hosts
from opskit.status import fleet as status
from opskit.status.judge import Metric
from opskit.status.output import format_fleet
from tests.integration.conftest import inv, write_inventory

MOUNT = "/mnt/opskit-status-test"
FILL = f"{MOUNT}/fill"
NUMBERS: dict[str, Any] = {}


@pytest.fixture(scope="module")
def status_inventory(lab_inventory: Inventory, tmp_path_factory: pytest.TempPathFactory) -> Path:
    def change(data: dict[str, Any]) -> None:
        # the database hosts' groups only: the mount exists there
        for group in data["groups"].values():
            if "postgresql" in group.get("roles", []):
                group.setdefault("vars", {})["status_disk_paths"] = ["/", MOUNT]
            if "app_repo" in group.get("vars", {}):  # relative to lab.yml, not to this copy
                group["vars"]["app_repo"] = str(REPO)
        # nginx's error rate and p95 judge the last 5 minutes of whatever earlier test modules
        # sent (5xx on purpose among it): here the health check watches the hosts' own state.
        data["vars"]["healthcheck_checks"] = ["http", "database", "disk", "memory", "pm2"]

    return write_inventory(tmp_path_factory.mktemp("status"), change)


@pytest.fixture(scope="module")
def inventory(status_inventory: Path) -> Inventory:
    return load_inventory(status_inventory)


def first_with(inventory: Inventory, role: str) -> Host:
    hosts = [h for h in inventory.hosts if role in h.roles]
    if not hosts:
        pytest.fail(
            f"{inventory.path}: needs a host with the {role} role (see inventories/lab.yml)"
        )
    return hosts[0]


@pytest.fixture(scope="module")
def web(inventory: Inventory) -> Host:
    return first_with(inventory, "app")


@pytest.fixture(scope="module")
def db(inventory: Inventory) -> Host:
    return first_with(inventory, "postgresql")


def sh(inventory: Inventory, host: Host, script: str, ok: tuple[int, ...] = (0,)) -> str:
    remote = connect(host, inventory.ssh)
    try:
        return remote.run(script, ok_codes=ok, what=script.splitlines()[0]).stdout
    finally:
        remote.close()


def run_status(path: Path, *args: str) -> Any:
    return inv("status", *args, env={"OPSKIT_INVENTORY": str(path)})


def collect(inventory: Inventory, hosts: list[Host]) -> status.FleetStatus:
    return status.collect(inventory, hosts)


def metric(fleet: status.FleetStatus, host: Host, name: str) -> Metric:
    [h] = [x for x in fleet.hosts if x.host == host.name]
    m = h.metric(name)
    assert m is not None, f"{host.name} has no metric {name}: {[x.name for x in h.metrics]}"
    return m


def clear_of_cron(seconds: float = 45) -> None:
    """Wait until the health check's cron (*/5) will not run for `seconds`: a run while a test
    has broken something would keep that result as the host's last health check."""
    to_boundary = 300 - time.time() % 300
    if to_boundary < seconds:
        time.sleep(to_boundary + 10)


def fresh_health_check(path: Path, hosts: str) -> None:
    """Run the health check now, clear of cron's run. Once: the deploy's reload restarted every
    PM2 instance, and a changed release is the health check's cue not to count those."""
    clear_of_cron(60)
    check = inv("monitoring.check", "--hosts", hosts, env={"OPSKIT_INVENTORY": str(path)})
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.fixture(scope="module", autouse=True)
def _put_back(inventory: Inventory, web: Host, db: Host) -> Iterator[None]:
    """Whatever a test broke is put back at the end of the module, even after a failure."""
    yield
    sh(inventory, db, f"rm -f {FILL}; umount {MOUNT} 2>/dev/null; systemctl start postgresql")
    sh(inventory, web, "systemctl start pm2-app")


def test_01_converge_deploy_back_up_and_check(inventory, status_inventory, db):
    results = run_on_hosts(inventory, list(inventory.hosts), provision_work(None))
    assert not [r for r in results if r.error], [r.error for r in results]
    env = {"OPSKIT_INVENTORY": str(status_inventory)}
    for args in (("deploy",), ("backup.run",)):
        proc = inv(*args, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    sh(inventory, db, f"mkdir -p {MOUNT}; mountpoint -q {MOUNT} || mount -t tmpfs -o size=10m "
       f"opskit-status {MOUNT}")  # fmt: skip
    fresh_health_check(status_inventory, "all")


def test_02_a_healthy_fleet_is_ok_and_the_numbers_are_the_hosts(
    inventory, status_inventory, web, db
):
    hosts = list(inventory.hosts)
    started = time.monotonic()
    fleet = collect(inventory, hosts)
    NUMBERS["cold_seconds"] = round(time.monotonic() - started, 2)
    started = time.monotonic()
    collect(inventory, hosts)
    NUMBERS["warm_seconds"] = round(time.monotonic() - started, 2)
    NUMBERS["commands"] = {h.host: h.commands for h in fleet.hosts}
    print(f"status numbers: {NUMBERS}", file=sys.stderr)
    text = format_fleet(fleet)
    assert fleet.exit_code == 0, text  # CPU is shown ungraded: the lab's hosts share its CPUs
    assert all(h.commands == 1 for h in fleet.hosts), NUMBERS
    # Disk: what df says on the host (df rounds its Use% up)
    df = sh(inventory, db, f"df --output=pcent {MOUNT} / | tail -n 2").split()
    assert abs(metric(fleet, db, f"disk:{MOUNT}").value - float(df[0].rstrip("%"))) <= 1
    assert abs(metric(fleet, db, "disk:/").value - float(df[1].rstrip("%"))) <= 1
    # Database connections: max_connections and the client backends psql counts
    out = sh(
        inventory,
        db,
        'runuser -u postgres -- psql -X -A -t -c "SELECT count(*) FILTER (WHERE backend_type = '
        "'client backend') FROM pg_stat_activity\" -c 'SHOW max_connections'",
    ).split()
    m = metric(fleet, db, "db_connections")
    assert f"of max_connections {out[1]}" in m.detail
    used = int(m.detail.split()[0])
    assert abs(used - (int(out[0]) - 1)) <= 2  # psql's own session is one of them
    # PM2: as many online processes as app_instances; the release `current` points to
    assert metric(fleet, web, "pm2").value == web.vars["app_instances"]
    current = sh(inventory, web, f"basename $(readlink /srv/{web.vars['app_name']}/current)")
    current = current.strip()
    assert metric(fleet, web, "release").value == current
    # Health and its samples; the certificate's days left as openssl reads them on the host
    health = metric(fleet, web, "health")
    assert health.value == 200 and health.level == "ok"
    [wh] = [h for h in fleet.hosts if h.host == web.name]
    assert len(wh.samples["health_ms"]) == 5
    p95 = metric(fleet, web, "latency_p95").value
    assert p95 == max(wh.samples["health_ms"])
    cert = certs.declared_certificates(web.vars)[0]
    end = sh(
        inventory,
        web,
        f"openssl x509 -enddate -noout -in {cert.cert_dir}/cert.pem | cut -d= -f2 | date -f - +%s",
    )
    days = (int(end) - time.time()) // 86400
    assert metric(fleet, web, f"cert:{cert.name}").value == days
    # Memory: /proc/meminfo on the host, a moment later
    mem = dict(
        line.split(":", 1)
        for line in sh(inventory, db, "cat /proc/meminfo").splitlines()
        if ":" in line
    )
    total, avail = int(mem["MemTotal"].split()[0]), int(mem["MemAvailable"].split()[0])
    assert abs(metric(fleet, db, "memory").value - 100 * (total - avail) / total) < 5
    assert metric(fleet, db, "backup_age").value < 1  # the backup of test_01
    assert metric(fleet, web, "healthcheck").value == "ok"


def test_03_postgresql_stopped_is_critical_exit_5(inventory, status_inventory, db):
    clear_of_cron()
    sh(inventory, db, "systemctl stop postgresql")
    try:
        proc = run_status(status_inventory, "--hosts", db.name)
        assert proc.returncode == 5, proc.stdout + proc.stderr
        line = next(x for x in proc.stdout.splitlines() if "db connections" in x)
        assert line.split()[0] == "critical" and "PostgreSQL" in line, proc.stdout
        assert "\x1b[" not in proc.stdout  # piped: plain
        assert proc.stdout.splitlines()[0].startswith(f"CRITICAL  {db.name}")
    finally:
        sh(inventory, db, "systemctl start postgresql")
    deadline = time.time() + 30
    while sh(inventory, db, "pg_isready -q; echo $?", ok=(0, 1, 2)).strip() != "0":
        assert time.time() < deadline, "PostgreSQL did not come back"
        time.sleep(1)
    proc = run_status(status_inventory, "--hosts", db.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(("mib", "level", "code"), [(7.5, "warning", 4), (9.5, "critical", 5)])
def test_04_a_filling_disk_warns_then_is_critical(
    inventory, status_inventory, db, mib, level, code
):
    sh(inventory, db, f"rm -f {FILL}; fallocate -l {int(mib * 1024)}KiB {FILL}")
    try:
        proc = run_status(status_inventory, "--hosts", db.name, "--json")
        assert proc.returncode == code, proc.stdout + proc.stderr
        data = json.loads(proc.stdout)
        [host] = data["hosts"]
        [disk] = [m for m in host["metrics"] if m["name"] == f"disk:{MOUNT}"]
        assert disk["level"] == level and host["level"] == level and data["worst"] == level
        assert abs(disk["value"] - mib * 10) <= 0.5  # of 10 MiB
        df = sh(inventory, db, f"df --output=pcent {MOUNT} | tail -n 1").strip().rstrip("%")
        assert abs(disk["value"] - float(df)) <= 1
        assert (disk["warning"], disk["critical"]) == (70, 90)
    finally:
        sh(inventory, db, f"rm -f {FILL}")


def test_05_app_stopped_is_critical_in_health_and_pm2(inventory, status_inventory, web):
    clear_of_cron()
    sh(inventory, web, "systemctl stop pm2-app")
    try:
        proc = run_status(status_inventory, "--hosts", web.name, "--json")
        assert proc.returncode == 5, proc.stdout + proc.stderr
        [host] = json.loads(proc.stdout)["hosts"]
        by = {m["name"]: m for m in host["metrics"]}
        assert by["health"]["level"] == "critical", by["health"]
        assert "0/5 healthy" in by["health"]["detail"]
        assert by["pm2"]["level"] == "critical", by["pm2"]
        assert "not running" in by["pm2"]["detail"]
        assert host["samples"]["health_ms"] == []
        # the PM2 daemon was only asked about, never started by `status`
        assert sh(inventory, web, "systemctl is-active pm2-app", ok=(0, 3)).strip() != "active"
    finally:
        sh(inventory, web, "systemctl start pm2-app")
    deadline = time.time() + 60
    while True:
        fleet = collect(inventory, [web])
        if metric(fleet, web, "health").level == "ok" and metric(fleet, web, "pm2").level == "ok":
            break
        assert time.time() < deadline, format_fleet(fleet)
        time.sleep(2)


def test_06_an_unreachable_host_exits_1_and_the_others_are_read(
    lab_inventory, tmp_path, db, inventory
):
    def change(data: dict[str, Any]) -> None:
        data.setdefault("vars", {})["status_disk_paths"] = ["/"]
        net = data["lab"]["gateway"].rsplit(".", 1)[0]
        data["groups"]["ghosts"] = {"hosts": {"sghost": {"address": f"{net}.250"}}}

    path = write_inventory(tmp_path, change)
    proc = run_status(path, "--hosts", f"{db.name},sghost", "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    hosts = {h["host"]: h for h in json.loads(proc.stdout)["hosts"]}
    assert hosts["sghost"]["unreachable"] is True and hosts["sghost"]["level"] == "unknown"
    assert hosts[db.name]["level"] == "ok", hosts[db.name]
    assert json.loads(proc.stdout)["worst"] == "unknown"


def test_07_bad_thresholds_exit_2_and_read_nothing(tmp_path, db):
    def change(data: dict[str, Any]) -> None:
        data.setdefault("vars", {})["status_disk_warning"] = 95

    path = write_inventory(tmp_path, change)
    proc = run_status(path, "--hosts", db.name)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "status_disk_warning (95) is above" in proc.stderr
    assert proc.stdout == ""
