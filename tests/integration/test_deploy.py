"""App hosting on lab hosts: the app and nginx roles, `inv deploy`, `inv rollback`, `inv releases`.

The app deployed is the sample app (app/sample) from a demo repo that app/sample/make-demo-repo
makes with tags v1, v2, broken (its /health answers 503), v3, slow (listens only 6 s after it
started) and crash (exits at start). Requests go through nginx on port 80 of the web hosts,
sampled every 50 ms while deploys and rollbacks run. Tests run in file order and build on each
other.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import pytest

from opskit.app import deploy as dep
from opskit.core.inventory import Inventory, load_inventory
from opskit.core.remote import connect
from opskit.core.roles import REPO
from opskit.core.runner import provision_work, run_on_hosts
from opskit.fleet.verify import run_verify
from tests.integration.conftest import forget_app, inv, write_inventory

HEALTH_TIMEOUT = 8
TIMINGS: dict[str, Any] = {}


@pytest.fixture(scope="module")
def app_inventory(lab_spec: Any, tmp_path_factory: pytest.TempPathFactory) -> Inventory:
    tmp = tmp_path_factory.mktemp("deploy")
    subprocess.run(
        [str(REPO / "app/sample/make-demo-repo"), str(tmp / "sample-app")],
        check=True,
        capture_output=True,
    )

    def change(data: dict[str, Any]) -> None:
        web = data["groups"]["web"]
        assert {"app", "nginx"} <= set(web["roles"]), "inventories/lab.yml: web has the app roles"
        web["vars"].update(
            app_repo=str(tmp / "sample-app"), app_repo_path=".", app_health_timeout=HEALTH_TIMEOUT
        )
        # The deploy mechanics without the database (db1 is not provisioned here): the sample
        # app then reports "database: not configured"; test_migrate.py deploys with it.
        env = web["vars"].get("app_env") or {}
        web["vars"]["app_env"] = {k: v for k, v in env.items() if not k.startswith("PG")}
        web["vars"].update(app_migrate_command="", app_schema_version_command="")

    inventory = load_inventory(write_inventory(tmp, change))
    forget_app(lab_spec, inventory)  # the releases and the PM2 environment are this module's
    return inventory


def web(inventory: Inventory) -> list[str]:
    return list(inventory.groups["web"])


def run(inventory: Inventory, *args: str) -> subprocess.CompletedProcess[str]:
    return inv(*args, env={"OPSKIT_INVENTORY": str(inventory.path)})


def get(address: str, path: str = "/", timeout: float = 2.0) -> tuple[int, str, dict[str, str]]:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=timeout) as r:
            return r.status, r.read().decode(), {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), {k.lower(): v for k, v in e.headers.items()}


def version(address: str) -> str:
    code, body, _ = get(address)
    assert code == 200, body
    return json.loads(body)["version"]


@dataclass
class Sampler:
    """GET / through nginx every 50 ms while a deploy or rollback runs; `codes` has each answer's
    status (0: no answer) and Retry-After header."""

    address: str
    samples: list[tuple[float, bool]] = field(default_factory=list)
    codes: list[tuple[int, str | None]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        deadline = time.monotonic() + 120  # bounded: stops by itself
        while not self._stop.is_set() and time.monotonic() < deadline:
            t = time.monotonic()
            try:
                code, _, headers = get(self.address, timeout=3.0)  # slow is not down
            except OSError:
                code, headers = 0, {}
            self.samples.append((t, code == 200))
            self.codes.append((code, headers.get("retry-after")))
            time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def failed(self) -> int:
        return sum(1 for _, ok in self.samples if not ok)

    @property
    def longest_outage(self) -> float:
        """Seconds from the first failed sample of a run of failures to the next good one."""
        worst, start = 0.0, None
        for t, ok in self.samples:
            if not ok and start is None:
                start = t
            elif ok and start is not None:
                worst, start = max(worst, t - start), None
        if start is not None:
            worst = max(worst, self.samples[-1][0] - start)
        return worst

    def report(self) -> dict[str, Any]:
        return {
            "samples": len(self.samples),
            "failed": self.failed,
            "longest_outage_s": round(self.longest_outage, 3),
        }


def host_state(inventory: Inventory, name: str) -> dep.HostState:
    host = inventory.host(name)
    remote = connect(host, inventory.ssh)
    try:
        return dep.read_state(remote, dep.AppLayout.from_vars(host.vars), journal=50)
    finally:
        remote.close()


def label_of_current(inventory: Inventory, name: str) -> str:
    s = host_state(inventory, name)
    current = s.find(s.current or "")
    return current.label if current else "none"


def test_01_provision_app_and_nginx_then_nothing_changes(app_inventory):
    hosts = app_inventory.select(["web"])
    work = provision_work(["app", "nginx"])
    first = run_on_hosts(app_inventory, hosts, work)
    assert [r.error for r in first] == [None] * len(hosts)
    for r in first:
        # Changed on fresh hosts; already right when an earlier test module provisioned them.
        managed = {c.resource for c in r.changes}
        assert {"unpacked:/opt/opskit/pm2", "service:pm2-app", "service:nginx"} <= managed
    again = run_on_hosts(app_inventory, hosts, work)
    assert [[c.resource for c in r.changes if c.changed] for r in again] == [[]] * len(hosts)
    assert [r.commands for r in again] == [1] * len(hosts)


def test_02_deploy_v1_then_v2_serves_v2(app_inventory):
    web1 = app_inventory.host(web(app_inventory)[0])
    first = run(app_inventory, "deploy", "--ref", "v1", "--hosts", web1.name)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "dependencies sent" in first.stdout  # the first release installs them
    assert version(web1.address) == "1.0.0"
    started = time.monotonic()
    with Sampler(web1.address) as sampler:
        second = run(app_inventory, "deploy", "--ref", "v2", "--hosts", web1.name, "-m", "v2!")
    TIMINGS["deploy"] = {"seconds": round(time.monotonic() - started, 2), **sampler.report()}
    assert second.returncode == 0, second.stdout + second.stderr
    assert "dependencies linked from" in second.stdout  # same lock file: nothing installed
    assert version(web1.address) == "2.0.0"
    assert sampler.failed == 0, sampler.report()  # cluster reload: no request failed
    _, body, _ = get(web1.address)
    assert (
        json.loads(body)["sentry_release"]
        == host_state(app_inventory, web1.name).find(json.loads(body)["release"]).meta["sha"]
    )


def test_03_rollback_serves_v1_in_seconds_without_reinstalling(app_inventory, lab_spec):
    from opskit.lab.nspawn import exec_in

    web1 = app_inventory.host(web(app_inventory)[0])
    before = host_state(app_inventory, web1.name)
    v1 = next(r for r in before.releases if r.label == "v1")
    modules = f"/srv/sample/releases/{v1.name}/node_modules/ms"
    inode = exec_in(lab_spec, web1.name, ["stat", "-c", "%i %Y", modules]).stdout
    started = time.monotonic()
    with Sampler(web1.address) as sampler:
        back = run(app_inventory, "rollback", "--hosts", web1.name)
    seconds = time.monotonic() - started
    TIMINGS["rollback"] = {"seconds": round(seconds, 2), **sampler.report()}
    assert back.returncode == 0, back.stdout + back.stderr
    assert f"release:{v1.name}  rolled back to v1" in back.stdout
    assert version(web1.address) == "1.0.0"
    assert seconds < 30, back.stdout  # about 3 s on a quiet machine (2 cores)
    assert sampler.failed == 0, sampler.report()
    # the same files: nothing unpacked or installed again
    assert exec_in(lab_spec, web1.name, ["stat", "-c", "%i %Y", modules]).stdout == inode
    after = host_state(app_inventory, web1.name)
    assert [r.name for r in after.releases] == [r.name for r in before.releases]
    assert after.journal[-1]["action"] == "rollback" and after.journal[-1]["result"] == "ok"
    # A target that no host (or only some) has changes no host: refused (exit 2) once every
    # host's lock is held and its state read, before any switch.
    nowhere = run(app_inventory, "rollback", "--to", "no-such-release")
    assert nowhere.returncode == 2, nowhere.stdout + nowhere.stderr
    out = nowhere.stdout + nowhere.stderr
    assert "refused before any host changed" in out and "no release 'no-such-release'" in out
    assert version(web1.address) == "1.0.0"
    # Sentry learns that v1's commit is live again (a deploy of its existing release)
    from opskit.lab import registry as labsvc

    sha = str(v1.meta["sha"])
    deploys = [
        i
        for i in labsvc.read_inbox(lab_spec, "sentry")
        if i.get("kind") == "deploy" and i.get("version") == sha
    ]
    assert deploys, back.stdout + back.stderr
    assert f"Sentry release {sha} (" in back.stdout


def keeping(inventory: Inventory, tmp_path: Any, keep: int) -> Inventory:
    """A copy of `inventory` whose web hosts keep only `keep` releases."""
    import yaml

    data = yaml.safe_load(inventory.path.read_text())
    data["groups"]["web"]["vars"]["app_keep_releases"] = keep
    path = tmp_path / "keep.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_inventory(path)


def test_04_failed_deploy_never_reaches_live_traffic_nor_prunes(app_inventory, tmp_path):
    web1 = app_inventory.host(web(app_inventory)[0])
    before = host_state(app_inventory, web1.name)
    assert [r.label for r in before.releases] == ["v1", "v2"] and before.current
    # With app_keep_releases 2, a good deploy would prune v1; a failed one must prune nothing.
    tight = keeping(app_inventory, tmp_path, 2)
    started = time.monotonic()
    with Sampler(web1.address) as sampler:
        bad = run(tight, "deploy", "--ref", "broken", "--hosts", web1.name)
    TIMINGS["failed_deploy"] = {"seconds": round(time.monotonic() - started, 2), **sampler.report()}
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "health gate failed" in bad.stdout and "HTTP 503" in bad.stdout
    assert "is marked bad" in bad.stdout and "serves on: no live request reached" in bad.stdout
    # the whole point: the broken release took no live request while it failed its gate
    assert sampler.failed == 0 and len(sampler.samples) > 10, sampler.report()
    # 503 is a definite answer: the gate fails at once instead of waiting HEALTH_TIMEOUT
    gate = float(bad.stdout.split("health gate failed after ", 1)[1].split("s", 1)[0])
    assert gate < HEALTH_TIMEOUT / 2, bad.stdout
    assert version(web1.address) == "1.0.0"  # the previous release serves
    # a release whose process exits at start: refused connections from a dead process are
    # definite too
    with Sampler(web1.address) as sampler:
        crash = run(tight, "deploy", "--ref", "crash", "--hosts", web1.name)
    assert crash.returncode == 1 and "the release's process exited" in crash.stdout, crash.stdout
    gate = float(crash.stdout.split("health gate failed after ", 1)[1].split("s", 1)[0])
    assert gate < HEALTH_TIMEOUT / 2 and sampler.failed == 0, (crash.stdout, sampler.report())
    state = host_state(app_inventory, web1.name)
    assert {r.name for r in before.releases} <= {r.name for r in state.releases}  # none pruned
    assert state.current == before.current
    broken = next(r for r in state.releases if r.label == "broken")
    assert broken.bad and "HTTP 503" in broken.bad["reason"]
    assert [j["result"] for j in state.journal if j["ref"] in ("broken", "crash")] == [
        "failed",
        "failed",
    ]
    listing = run(app_inventory, "releases", "--hosts", web1.name)
    assert f"  ! {broken.name}  broken" in listing.stdout
    # deploy v3, then roll back: the bad release (between v2 and v3) is skipped
    assert run(app_inventory, "deploy", "--ref", "v3", "--hosts", web1.name).returncode == 0
    assert version(web1.address) == "3.0.0"
    back = run(app_inventory, "rollback", "--hosts", web1.name)
    assert back.returncode == 0, back.stdout + back.stderr
    assert version(web1.address) == "2.0.0"
    refused = run(app_inventory, "rollback", "--to", broken.name, "--hosts", web1.name)
    assert refused.returncode == 2 and "marked bad" in refused.stdout + refused.stderr


def test_05_second_deploy_refused_and_killed_deploy_leaves_a_working_release(app_inventory):
    web1 = app_inventory.host(web(app_inventory)[0])
    assert version(web1.address) == "2.0.0"
    slow = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "invoke",
            "deploy",
            "--ref",
            "slow",
            "--hosts",
            web1.name,
            "--health-timeout",
            "4",
            "-m",
            "holding the lock",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={
            **os.environ,
            "OPSKIT_INVENTORY": str(app_inventory.path),
            "OPSKIT_OPERATOR": "alice@laptop",
        },
    )
    try:
        deadline = time.monotonic() + 60
        while not (s := host_state(app_inventory, web1.name)).activating:
            assert time.monotonic() < deadline and slow.poll() is None, "no activation began"
            time.sleep(0.3)
        assert s.lock and s.lock["owner"] == "alice@laptop"
        second = run(app_inventory, "deploy", "--ref", "v3", "--hosts", web1.name)
        assert second.returncode == 1
        assert "refused: a deploy holds the lock: alice@laptop since" in second.stdout
        assert "(deploy slow: holding the lock)" in second.stdout
        # Kill the first deploy while its health gate waits for the (too slow) new release.
        os.kill(slow.pid, signal.SIGKILL)
        slow.wait(timeout=10)
    finally:
        if slow.poll() is None:
            slow.kill()
            slow.wait()
        if slow.stdout:
            slow.stdout.close()
    deadline = time.monotonic() + 5
    while host_state(app_inventory, web1.name).lock is not None:  # died with its holder
        assert time.monotonic() < deadline, "the lock outlived its holder"
        time.sleep(0.2)
    # The activation goes on without the operator: the gate times out (the release listens after
    # 6 s, the gate gives it 4), v2 never stopped serving, the slow release is marked bad.
    deadline = time.monotonic() + 3 * 4 + 30
    while (s := host_state(app_inventory, web1.name)).activating:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert label_of_current(app_inventory, web1.name) == "v2"
    assert version(web1.address) == "2.0.0"
    newest = s.releases[-1]
    assert newest.label == "slow" and newest.bad is not None
    assert "not listening yet" in newest.bad["reason"]
    assert s.journal[-1]["operator"] == "alice@laptop" and s.journal[-1]["result"] == "failed"


def _deploy_in_background(inventory: Inventory, *args: str, who: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "invoke", "deploy", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "OPSKIT_INVENTORY": str(inventory.path), "OPSKIT_OPERATOR": who},
    )


def test_05b_one_deploy_at_a_time_for_the_whole_fleet(app_inventory):
    """Two deploys started 1 s and 6 s after a batched one: both refused, naming the holder,
    whatever host the first is on; the first one's slow release may use the whole gate."""
    hosts = web(app_inventory)
    web1 = app_inventory.host(hosts[0])
    before = {h: host_state(app_inventory, h).releases for h in hosts}
    started = time.monotonic()
    with Sampler(web1.address) as sampler:
        first = _deploy_in_background(
            app_inventory,
            *("--ref", "slow", "--hosts", "web", "--batch", "1", "--health-timeout", "20"),
            *("-m", "fleet lock"),
            who="alice@laptop",
        )
        try:
            refusals = []
            for at in (1, 6):
                time.sleep(max(0.0, started + at - time.monotonic()))
                second = run(app_inventory, "deploy", "--ref", "v3", "--hosts", "web")
                refusals.append(second)
                assert first.poll() is None, "the first deploy ended before the second was tried"
            out, _ = first.communicate(timeout=300)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
    TIMINGS["slow_start_deploy_2_hosts"] = {
        "seconds": round(time.monotonic() - started, 2),
        **sampler.report(),
    }
    for second in refusals:
        assert second.returncode == 1, second.stdout + second.stderr
        assert "refused: a deploy holds the lock: alice@laptop since" in second.stdout
        assert "(deploy slow: fleet lock)" in second.stdout
        assert "this host is unchanged" in second.stdout
    assert first.returncode == 0, out
    # a slow start is not a failure: the gate waited for it (it listens after 6 s)
    waited = [float(x.split(" s,", 1)[0]) for x in out.split("healthy after ")[1:]]
    assert len(waited) == len(hosts) and min(waited) >= 3, out
    assert sampler.failed == 0, sampler.report()
    for h in hosts:
        assert version(app_inventory.host(h).address) == "3.1.0"
        after = host_state(app_inventory, h)
        assert not any(r.label == "v3" and r not in before[h] for r in after.releases)  # refused


def test_06_batched_deploy_stops_after_a_failed_first_batch(app_inventory):
    web1, web2 = (app_inventory.host(n) for n in web(app_inventory)[:2])
    before = host_state(app_inventory, web2.name)
    out = run(app_inventory, "deploy", "--ref", "broken", "--hosts", "web", "--batch", "1")
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"[{web1.name}] FAILED   health gate failed" in out.stdout
    assert f"[{web2.name}] FAILED   not run: batch 1 failed ({web1.name})" in out.stdout
    assert host_state(app_inventory, web2.name).releases == before.releases
    good = run(app_inventory, "deploy", "--ref", "v3", "--hosts", "web", "--batch", "1")
    assert good.returncode == 0, good.stdout + good.stderr
    assert version(web1.address) == version(web2.address) == "3.0.0"


def test_06b_maintenance_page_while_the_app_is_stopped(app_inventory):
    """What `backup.restore --replace` does around the database swap: the maintenance switch on,
    the app stopped, started, the switch off. nginx answers 503 with Retry-After, never 502."""
    from opskit.backup import restore

    web1 = app_inventory.host(web(app_inventory)[0])
    remote = connect(web1, app_inventory.ssh)
    try:
        with Sampler(web1.address) as sampler:
            time.sleep(0.5)
            remote.run(restore.maintenance_on(web1, "systemctl stop pm2-app"), what="stop")
            time.sleep(2)
            remote.run(restore.maintenance_off(web1, "systemctl start pm2-app"), what="start")
            time.sleep(1)
    finally:
        remote.close()
    codes = [c for c, _ in sampler.codes]
    TIMINGS["maintenance"] = {
        "samples": len(codes),
        "503": codes.count(503),
        "200": codes.count(200),
        "other": len(codes) - codes.count(503) - codes.count(200),
    }
    assert set(codes) == {200, 503}, TIMINGS["maintenance"]  # no 502, no refused connection
    assert all(retry == "30" for c, retry in sampler.codes if c == 503)
    assert codes[-1] == 200 and version(web1.address) == "3.0.0"
    code, _, headers = get(web1.address)
    assert code == 200 and "retry-after" not in headers


def test_06c_a_busy_spare_port_is_refused_and_changes_nothing(app_inventory, lab_spec):
    from opskit.lab.nspawn import exec_in

    web1 = app_inventory.host(web(app_inventory)[0])
    before = host_state(app_inventory, web1.name)
    busy = [
        "systemd-run",
        "--unit=opskit-test-spare-port",
        "--collect",
        "python3",
        "-m",
        "http.server",
        "--bind",
        "127.0.0.1",
        "3001",  # app_candidate_port: the gate would talk to this server instead of the release
    ]
    assert exec_in(lab_spec, web1.name, busy).returncode == 0
    try:
        deadline = time.monotonic() + 10
        while exec_in(lab_spec, web1.name, ["curl", "-s", "http://127.0.0.1:3001/"]).returncode:
            assert time.monotonic() < deadline, "the stand-in on the spare port did not start"
            time.sleep(0.2)
        out = run(app_inventory, "deploy", "--ref", "v2", "--hosts", web1.name)
    finally:
        exec_in(lab_spec, web1.name, ["systemctl", "stop", "opskit-test-spare-port"])
    assert out.returncode == 1, out.stdout + out.stderr
    assert "app_candidate_port 3001 is in use by another program" in out.stdout
    assert "(nothing changed)" in out.stdout
    after = host_state(app_inventory, web1.name)
    assert after.current == before.current and version(web1.address) == "3.0.0"
    assert after.releases == before.releases  # nothing unpacked, nothing marked


def test_07_nginx_denies_dot_files_sends_headers_passes_websockets(app_inventory):
    address = app_inventory.host(web(app_inventory)[0]).address
    for path in ("/.env", "/.git/config", "/.git/HEAD", "/x/.env"):
        code, body, _ = get(address, path)
        assert code == 404 and "<center>nginx</center>" in body, path  # nginx's, not the app's
    code, _, headers = get(address, "/")
    assert code == 200
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "SAMEORIGIN"
    assert headers["server"] == "nginx"
    with socket.create_connection((address, 80), timeout=5) as s:
        s.sendall(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        head = s.recv(4096)
        assert head.startswith(b"HTTP/1.1 101"), head
        s.sendall(b"ping")
        assert s.recv(16) == b"ping"  # the upgraded connection is passed through both ways


def test_08_a_broken_nginx_config_never_replaces_a_working_one(app_inventory, lab_spec, tmp_path):
    from opskit.lab.nspawn import exec_in

    web1 = app_inventory.host(web(app_inventory)[0])
    site = "/etc/nginx/conf.d/opskit-sample.conf"
    before = exec_in(lab_spec, web1.name, ["sha256sum", site]).stdout

    def change(data: dict[str, Any]) -> None:
        data["groups"]["web"]["vars"].update(nginx_upstream="no-such-host.invalid:3000")

    broken = load_inventory(write_inventory(tmp_path, change))
    [result] = run_on_hosts(broken, [broken.host(web1.name)], provision_work(["nginx"]))
    assert result.error and "nginx -t failed" in result.error
    assert exec_in(lab_spec, web1.name, ["sha256sum", site]).stdout == before
    assert version(web1.address) == "3.0.0"


def test_09_pm2_brings_the_current_release_back_after_a_restart(app_inventory, lab_spec):
    from opskit.lab.nspawn import exec_in

    web1 = app_inventory.host(web(app_inventory)[0])
    restart = exec_in(lab_spec, web1.name, ["systemctl", "restart", "pm2-app"])
    assert restart.returncode == 0, restart.stderr
    deadline = time.monotonic() + 30
    while True:
        try:
            if version(web1.address) == "3.0.0":
                break
        except (OSError, AssertionError):
            pass
        assert time.monotonic() < deadline, "the app did not come back after a PM2 restart"
        time.sleep(0.5)
    body = json.loads(get(web1.address)[1])
    current = host_state(app_inventory, web1.name)
    assert body["release"] == current.current
    assert body["sentry_release"] == current.find(current.current or "").meta["sha"]


def test_10_second_provision_changes_nothing_and_specs_pass(app_inventory):
    hosts = app_inventory.select(["web"])
    again = run_on_hosts(app_inventory, hosts, provision_work(["app", "nginx"]))
    assert [[c.resource for c in r.changes if c.changed] for r in again] == [[]] * len(hosts)
    assert run_verify(app_inventory, hosts, roles=["app", "nginx"]) == 0


def test_11_releases_and_journal(app_inventory):
    web1 = web(app_inventory)[0]
    out = run(app_inventory, "releases", "--journal", "30")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("current: ") == len(web(app_inventory))
    assert f"[{web1}] 5 release(s)" in out.stdout  # app_keep_releases
    lines = out.stdout.splitlines()
    assert any(line.startswith("  * ") and " v3 " in line for line in lines)
    assert any(" rollback ok " in line for line in lines)
    assert any(" deploy   failed " in line and "alice@laptop" in line for line in lines)
    assert any(" deploy   ok " in line and "alice@laptop" in line for line in lines)  # fleet
    print("\nmeasured on", web1, json.dumps(TIMINGS, indent=2))


def test_12_shared_paths_outlive_deploys_prunes_and_rollbacks(app_inventory, tmp_path):
    """app_shared_paths: [uploads/] (as inventories/lab.yml sets it): a file the app's user writes
    through the current release's link is still there, through each new release's link, after a
    deploy (which prunes), a rollback, and a rollback to a release made before the variable."""
    import yaml

    web1 = app_inventory.host(web(app_inventory)[0])
    data = yaml.safe_load(app_inventory.path.read_text())
    data["groups"]["web"]["vars"]["app_shared_paths"] = ["uploads/"]
    (tmp_path / "shared.yml").write_text(yaml.safe_dump(data, sort_keys=False))
    shared = load_inventory(tmp_path / "shared.yml")
    base, user = "/srv/sample", shared.host(web1.name).vars["app_user"]

    def sh(script: str) -> str:
        remote = connect(shared.host(web1.name), shared.ssh)
        try:
            return remote.run(script, what="look at the shared paths").stdout.strip()
        finally:
            remote.close()

    def uploads() -> Any:
        code, body, _ = get(web1.address, "/upload-count")
        assert code == 200, body
        return json.loads(body)["uploads"]

    first = run(shared, "deploy", "--ref", "v1", "--hosts", web1.name)
    assert first.returncode == 0, first.stdout + first.stderr
    r1 = host_state(shared, web1.name).current
    assert sh(f"stat -c '%U %a %F' {base}/shared/uploads") == f"{user} 750 directory"
    assert sh(f"readlink {base}/releases/{r1}/uploads") == f"{base}/shared/uploads"
    assert uploads() == 0
    sh(f"runuser -u {user} -- sh -c 'echo jpeg > {base}/current/uploads/photo.jpg'")
    assert uploads() == 1

    with Sampler(web1.address) as sampler:
        second = run(shared, "deploy", "--ref", "v2", "--hosts", web1.name)
    TIMINGS["deploy_with_shared_paths"] = sampler.report()
    assert second.returncode == 0, second.stdout + second.stderr
    assert sampler.failed == 0, sampler.report()
    after = host_state(shared, web1.name)
    r2 = after.current
    assert r2 != r1 and version(web1.address) == "2.0.0"
    assert len(after.releases) == 5  # app_keep_releases: the deploy pruned
    assert sh(f"readlink {base}/releases/{r2}/uploads") == f"{base}/shared/uploads"
    assert sh(f"cat {base}/current/uploads/photo.jpg") == "jpeg" and uploads() == 1

    with Sampler(web1.address) as sampler:
        back = run(shared, "rollback", "--hosts", web1.name)
    assert back.returncode == 0 and sampler.failed == 0, (back.stdout, sampler.report())
    assert host_state(shared, web1.name).current == r1 and version(web1.address) == "1.0.0"
    assert sh(f"cat {base}/current/uploads/photo.jpg") == "jpeg" and uploads() == 1

    # a release prepared before app_shared_paths existed gets its link when it is activated
    older = [r for r in after.releases if r.name not in (r1, r2) and r.bad is None]
    assert older, [r.name for r in after.releases]
    old = older[-1].name
    # The lab sets app_shared_paths from the start, so this release has its link: take it away
    # to make it one of before the variable (a release's own uploads/ would be replaced too).
    sh(f"rm -f {base}/releases/{old}/uploads")
    assert sh(f"[ -e {base}/releases/{old}/uploads ] && echo there || echo none") == "none"
    again = run(shared, "rollback", "--to", old, "--hosts", web1.name)
    assert again.returncode == 0, again.stdout + again.stderr
    assert sh(f"readlink {base}/releases/{old}/uploads") == f"{base}/shared/uploads"
    assert sh(f"cat {base}/current/uploads/photo.jpg") == "jpeg" and uploads() == 1
    assert run_verify(shared, shared.select([web1.name]), roles=["app"]) == 0  # the spec agrees
    print("\nshared paths:", json.dumps(TIMINGS.get("deploy_with_shared_paths")))
