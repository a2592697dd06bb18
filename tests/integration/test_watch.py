"""The post-deploy watch (`inv deploy --watch`) and the alert hold during the switch, on the lab.

The sample app's demo repo (app/sample/make-demo-repo) has a release `flaky`: healthy to its
health check, but 30 % of its other requests answer 500. Load goes through nginx on port 80 of
the web hosts (GET / every 50 ms per host, bounded) while the deploys run. Tests run in file order.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from opskit.app import deploy as dep
from opskit.app.hold import HOLD_FILE
from opskit.core.inventory import Inventory, load_inventory
from opskit.core.remote import connect
from opskit.core.roles import REPO
from opskit.core.runner import provision_work, run_on_hosts
from opskit.lab import registry as labsvc
from opskit.lab.nspawn import exec_in
from tests.integration.conftest import inv, write_inventory


@pytest.fixture(scope="module")
def app_inventory(lab_spec: Any, tmp_path_factory: pytest.TempPathFactory) -> Inventory:
    tmp = tmp_path_factory.mktemp("watch")
    subprocess.run(
        [str(REPO / "app/sample/make-demo-repo"), str(tmp / "sample-app")],
        check=True,
        capture_output=True,
    )

    def change(data: dict[str, Any]) -> None:
        data["groups"]["web"]["vars"].update(
            app_repo=str(tmp / "sample-app"),
            app_repo_path=".",
            app_health_timeout=8,
            app_watch_interval=1,
            app_watch_baseline_minutes=2,
        )

    return load_inventory(write_inventory(tmp, change))


def web_hosts(inventory: Inventory) -> list[Any]:
    return [inventory.host(n) for n in inventory.groups["web"]]


def run(inventory: Inventory, *args: str) -> subprocess.CompletedProcess[str]:
    return inv(*args, env={"OPSKIT_INVENTORY": str(inventory.path)})


def get(address: str, path: str = "/") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


class Load:
    """GET / through nginx on each address every 50 ms (bounded: stops by itself)."""

    def __init__(self, addresses: list[str], limit: float = 150) -> None:
        self.addresses, self.limit = addresses, limit
        self.codes: list[int] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(a,)) for a in addresses]

    def _loop(self, address: str) -> None:
        deadline = time.monotonic() + self.limit
        while not self._stop.is_set() and time.monotonic() < deadline:
            self.codes.append(get(address)[0])
            time.sleep(0.05)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


class HoldWatcher:
    """Reads the alert hold file on each host every 0.2 s (nsenter, no SSH) while a deploy runs."""

    def __init__(self, lab_spec: Any, names: list[str]) -> None:
        self.lab_spec, self.names = lab_spec, names
        self.seen: dict[str, list[tuple[float, dict[str, Any]]]] = {n: [] for n in names}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop)

    def _loop(self) -> None:
        deadline = time.monotonic() + 150
        while not self._stop.is_set() and time.monotonic() < deadline:
            for n in self.names:
                out = exec_in(self.lab_spec, n, ["cat", HOLD_FILE]).stdout
                if out.strip():
                    self.seen[n].append((time.time(), json.loads(out)))
            time.sleep(0.2)

    def __enter__(self) -> HoldWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def state(inventory: Inventory, name: str) -> dep.HostState:
    host = inventory.host(name)
    remote = connect(host, inventory.ssh)
    try:
        return dep.read_state(remote, dep.AppLayout.from_vars(host.vars), journal=20)
    finally:
        remote.close()


def served_version(address: str) -> str:
    code, body = get(address)
    assert code == 200, body
    return str(json.loads(body)["version"])


def test_01_provision_and_deploy_a_good_release(app_inventory):
    hosts = web_hosts(app_inventory)
    results = run_on_hosts(app_inventory, hosts, provision_work(["app", "nginx"]))
    assert [r.error for r in results] == [None] * len(hosts)
    first = run(app_inventory, "deploy", "--ref", "v2", "--batch", "2")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "watch" not in first.stdout  # app_watch: 0 by default


def test_02_a_bad_watch_value_changes_nothing(app_inventory):
    bad = run(app_inventory, "deploy", "--ref", "v3", "--watch", "soon")
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert "--watch: 'soon'" in bad.stderr
    for h in web_hosts(app_inventory):
        assert served_version(h.address) == "2.0.0"


def test_03_a_good_release_watched_is_kept_and_alerts_are_held_during_the_switch(
    app_inventory, lab_spec
):
    hosts = web_hosts(app_inventory)
    names = [h.name for h in hosts]
    with Load([h.address for h in hosts]) as load:
        time.sleep(3)  # a baseline of the live release
        with HoldWatcher(lab_spec, names) as holds:
            started = time.time()
            out = run(app_inventory, "deploy", "--ref", "v3", "--batch", "2", "--watch", "20s")
            ended = time.time()
        time.sleep(0.5)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("baseline before the switch") == len(hosts), out.stdout
    assert out.stdout.count("watch done after") >= len(hosts), out.stdout
    assert "watch: " in out.stdout and "5xx of" in out.stdout  # progress lines
    assert 200 in load.codes and 500 not in load.codes
    for h in hosts:
        assert served_version(h.address) == "3.0.0"
        s = state(app_inventory, h.name)
        seen = holds.seen[h.name]
        assert seen, f"{h.name}: no hold file seen during the switch"
        hold = seen[0][1]
        assert hold["reason"].startswith("deploy ") and s.current in hold["reason"]
        assert started < hold["until"] - 60 and hold["until"] < ended + 600
        # gone after the switch: the watch (20 s) ran without it
        assert seen[-1][0] < ended - 15, seen
        assert exec_in(lab_spec, h.name, ["test", "-e", HOLD_FILE]).returncode == 1


def test_04_a_flaky_release_is_rolled_back_by_the_watch(app_inventory, lab_spec):
    hosts = web_hosts(app_inventory)
    slack_before = len(labsvc.read_inbox(lab_spec, "slack"))
    with Load([h.address for h in hosts]) as load:
        started = time.monotonic()
        out = run(app_inventory, "deploy", "--ref", "flaky", "--batch", "2", "--watch", "2m")
        seconds = time.monotonic() - started
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert "rolled back automatically" in text and "over the critical line" in text, text
    assert seconds < 100, text  # decided long before the 2 minutes are over
    assert 500 in load.codes  # the flaky release served some requests
    for h in hosts:
        assert served_version(h.address) == "3.0.0"
        s = state(app_inventory, h.name)
        flaky = next(r for r in s.releases if r.label == "flaky")
        assert s.current != flaky.name
        assert flaky.bad is not None and "post-deploy watch" in flaky.bad["reason"]
        last = s.journal[-1]
        assert last["action"] == "rollback" and last["result"] == "ok", last
        assert "automatic rollback by the post-deploy watch" in last["message"], last
        assert "error rate" in last["message"] or "another host" in last["message"], last
        assert exec_in(lab_spec, h.name, ["test", "-e", HOLD_FILE]).returncode == 1
    posted = [
        i["payload"].get("text", "")
        for i in labsvc.read_inbox(lab_spec, "slack")[slack_before:]
        if "post-deploy watch" in i["payload"].get("text", "")
    ]
    assert len(posted) == len(hosts), posted


def test_05_ctrl_c_ends_the_watch_and_keeps_the_release(app_inventory):
    hosts = web_hosts(app_inventory)
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", "deploy", "--ref", "v2", "--batch", "2", "--watch", "5m"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "OPSKIT_INVENTORY": str(app_inventory.path)},
        # Ctrl-C as at a terminal even when this suite was started in the background, where the
        # shell hands SIGINT down ignored (and Python then installs no KeyboardInterrupt).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # until every host watches
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if sum(" watching " in ln for ln in lines) == len(hosts):
            break
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    text = "".join(lines) + rest
    assert proc.returncode == 130, text
    assert "the watch ended without rolling back" in text, text
    assert text.count("watch ended by Ctrl-C") >= len(hosts), text
    for h in hosts:
        assert served_version(h.address) == "2.0.0"
        assert state(app_inventory, h.name).journal[-1]["action"] == "deploy"
