"""App hosting on lab hosts: the app and nginx roles, `inv deploy`, `inv rollback`, `inv releases`.

The app deployed is the sample app (app/sample) from a demo repo that app/sample/make-demo-repo
makes with tags v1, v2, broken (its /health answers 503) and v3. Requests go through nginx on
port 80 of the web hosts, sampled every 20 ms while deploys and rollbacks run. Tests run in file
order and build on each other.
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
from tests.integration.conftest import inv, write_inventory

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

    return load_inventory(write_inventory(tmp, change))


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
    """GET / through nginx every 20 ms while a deploy or rollback runs."""

    address: str
    samples: list[tuple[float, bool]] = field(default_factory=list)
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
                ok = get(self.address, timeout=3.0)[0] == 200  # slow is not down
            except OSError:
                ok = False
            self.samples.append((t, ok))
            time.sleep(0.02)

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


def test_04_failed_deploy_keeps_the_previous_release_and_is_skipped(app_inventory):
    web1 = app_inventory.host(web(app_inventory)[0])
    with Sampler(web1.address) as sampler:
        bad = run(app_inventory, "deploy", "--ref", "broken", "--hosts", web1.name)
    TIMINGS["failed_deploy"] = sampler.report()
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "health gate failed" in bad.stdout and "HTTP 503" in bad.stdout
    assert "is marked bad" in bad.stdout and "serves again" in bad.stdout
    assert version(web1.address) == "1.0.0"  # the previous release serves
    state = host_state(app_inventory, web1.name)
    broken = next(r for r in state.releases if r.label == "broken")
    assert broken.bad and "HTTP 503" in broken.bad["reason"]
    assert state.journal[-1]["result"] == "failed" and state.journal[-1]["ref"] == "broken"
    listing = run(app_inventory, "releases", "--hosts", web1.name)
    assert f"  ! {broken.name}  broken" in listing.stdout
    # deploy v3, then roll back: the bad release (between v2 and v3) is skipped
    assert run(app_inventory, "deploy", "--ref", "v3", "--hosts", web1.name).returncode == 0
    assert version(web1.address) == "3.0.0"
    back = run(app_inventory, "rollback", "--hosts", web1.name)
    assert back.returncode == 0, back.stdout + back.stderr
    assert version(web1.address) == "2.0.0"
    refused = run(app_inventory, "rollback", "--to", broken.name, "--hosts", web1.name)
    assert refused.returncode == 1 and "marked bad" in refused.stdout


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
            "broken",
            "--hosts",
            web1.name,
            "--health-timeout",
            "20",
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
        assert "(deploy broken: holding the lock)" in second.stdout
        # Kill the first deploy while its health gate runs on the (bad) new release.
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
    # The activation goes on without the operator: gate fails, v2 comes back, broken is marked.
    deadline = time.monotonic() + 2 * 20 + 30
    while (s := host_state(app_inventory, web1.name)).activating:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert label_of_current(app_inventory, web1.name) == "v2"
    assert version(web1.address) == "2.0.0"
    newest = s.releases[-1]
    assert newest.label == "broken" and newest.bad is not None
    assert s.journal[-1]["operator"] == "alice@laptop" and s.journal[-1]["result"] == "failed"


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
    print("\nmeasured on", web1, json.dumps(TIMINGS, indent=2))
