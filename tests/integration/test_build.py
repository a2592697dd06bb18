"""Builds on the hosts' platform (opskit/app/build.py): the app's install scripts and
app_build_command run under the hosts' node, from an operator whose platform differs.

The app is made here: a git repo whose package.json depends on a local package (a tarball in
vendor/) whose `install` script records the platform it ran on, and on a dev dependency that
only its build script uses. Tests run in file order and build on each other.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from opskit.core.inventory import Inventory, load_inventory
from opskit.core.remote import connect
from opskit.core.roles import REPO
from tests.integration.conftest import inv, write_inventory

FORCED = "darwin-arm64"  # the operator's platform as the deploys are told to see it
TIMINGS: dict[str, float] = {}

RECORD_JS = """const fs = require("fs"), os = require("os");
let id = "";
try { id = (fs.readFileSync("/etc/os-release", "utf8").match(/^ID=(.*)$/m) || [])[1] || ""; }
catch (e) {}
fs.writeFileSync(__dirname + "/platform.json", JSON.stringify({platform: process.platform,
  arch: process.arch, modules: process.versions.modules, node: process.version,
  os_id: id.replace(/"/g, ""), release: os.release()}) + "\\n");
"""
SERVER_JS = """const http = require("http");
http.createServer((req, res) => {
  res.setHeader("Content-Type", "application/json");
  res.end(JSON.stringify({status: "healthy", node: process.version}));
}).listen(Number(process.env.PORT || 3000), process.env.HOST || "127.0.0.1");
"""
BUILD_JS = """const fs = require("fs");
require("dev-tool");  // a dev dependency: present while the build runs
fs.writeFileSync("built.json", JSON.stringify({node: process.version}) + "\\n");
"""


def _sh(cwd: Path, *argv: str) -> None:
    subprocess.run(argv, cwd=cwd, check=True, capture_output=True, text=True)


def _pack(tmp: Path, name: str, package: dict[str, Any], files: dict[str, str]) -> str:
    src = tmp / f"src-{name}"
    src.mkdir()
    (src / "package.json").write_text(json.dumps(package))
    for fname, text in files.items():
        (src / fname).write_text(text)
    _sh(src, "npm", "pack", "--silent", "--pack-destination", str(tmp / "app" / "vendor"))
    return f"file:vendor/{name}-1.0.0.tgz"


@pytest.fixture(scope="module")
def build_inventory(lab_spec: Any, tmp_path_factory: pytest.TempPathFactory) -> Inventory:
    tmp = tmp_path_factory.mktemp("build")
    app = tmp / "app"
    (app / "vendor").mkdir(parents=True)
    probe = _pack(
        tmp,
        "platform-probe",
        {"name": "platform-probe", "version": "1.0.0", "scripts": {"install": "node record.js"}},
        {"record.js": RECORD_JS},
    )
    tool = _pack(tmp, "dev-tool", {"name": "dev-tool", "version": "1.0.0"}, {"index.js": ""})
    package = {
        "name": "build-probe-app",
        "version": "1.0.0",
        "private": True,
        "dependencies": {"platform-probe": probe},
        "devDependencies": {"dev-tool": tool},
        "scripts": {"build": "node build.js", "build-broken": "echo BUILD-OUTPUT-MARK; exit 7"},
    }
    (app / "package.json").write_text(json.dumps(package, indent=2))
    (app / "server.js").write_text(SERVER_JS)
    (app / "build.js").write_text(BUILD_JS)
    _sh(app, "npm", "install", "--package-lock-only", "--ignore-scripts", "--no-audit")
    _sh(app, "git", "init", "-q")
    _sh(app, "git", "add", "-A")
    _sh(app, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "v1")

    def change(data: dict[str, Any]) -> None:
        data["groups"]["web"]["vars"].update(
            app_repo=str(app),
            app_repo_path=".",
            app_build_command="npm run build",
            app_migrate_command="",  # this app has no database: test_migrate.py migrates
            app_schema_version_command="",
        )

    return load_inventory(write_inventory(tmp, change))


def run(
    inventory: Inventory, *args: str, cache: Path, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    env = {
        "OPSKIT_INVENTORY": str(inventory.path),
        "OPSKIT_OPERATOR_PLATFORM": FORCED,
        "OPSKIT_CACHE_DIR": str(cache),
    }
    if timeout == 600:
        return inv(*args, env=env)
    return subprocess.run(  # inv() with a longer timeout: the first node upload is ~57 MB a host
        [sys.executable, "-m", "invoke", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **env},
    )


def on_host(inventory: Inventory, name: str, script: str) -> str:
    remote = connect(inventory.host(name), inventory.ssh)
    try:
        return remote.run(script).stdout
    finally:
        remote.close()


def web(inventory: Inventory) -> list[str]:
    return sorted(inventory.groups["web"])


def current_of(inventory: Inventory, name: str) -> str:
    return on_host(inventory, name, "readlink /srv/sample/current || true").strip()


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("opskit-cache")  # a cold build cache for this module


def test_01_provision_installs_the_official_node(build_inventory, cache):
    t0 = time.monotonic()
    r = run(
        build_inventory, "provision", "--hosts", "web", "--roles", "app", cache=cache, timeout=1800
    )
    TIMINGS["first_provision_app_role_s"] = round(time.monotonic() - t0, 1)
    assert r.returncode == 0, r.stdout + r.stderr
    version = build_inventory.host(web(build_inventory)[0]).vars["app_node_version"]
    for name in web(build_inventory):
        out = on_host(build_inventory, name, f"/opt/opskit/node-{version}/bin/node --version")
        assert out.strip() == f"v{version}"


def test_02_install_scripts_and_build_run_on_the_hosts_platform(build_inventory, cache):
    hosts = web(build_inventory)
    version = build_inventory.host(hosts[0]).vars["app_node_version"]
    t0 = time.monotonic()
    r = run(build_inventory, "deploy", "--ref", "HEAD", cache=cache)
    TIMINGS["cold_deploy_s"] = round(time.monotonic() - t0, 1)
    assert r.returncode == 0, r.stdout + r.stderr
    # built on the build host (the first app host by name), not on this machine
    assert f"on {hosts[0]} (" in r.stdout, r.stdout
    node = f"/opt/opskit/node-{version}/bin/node"
    for name in hosts:
        want_abi = on_host(build_inventory, name, f"{node} -p process.versions.modules").strip()
        rel = "/srv/sample/current"
        rec = json.loads(
            on_host(build_inventory, name, f"cat {rel}/node_modules/platform-probe/platform.json")
        )
        assert rec["platform"] == "linux" and rec["arch"] == "x64", rec
        assert rec["modules"] == want_abi and rec["node"] == f"v{version}", rec
        assert rec["os_id"] == "debian", rec
        built = json.loads(on_host(build_inventory, name, f"cat {rel}/built.json"))
        assert built == {"node": f"v{version}"}  # app_build_command ran under the hosts' node
        left = on_host(build_inventory, name, f"ls {rel}/node_modules").split()
        assert "dev-tool" not in left and "platform-probe" in left  # pruned to production
        # the app's processes run the official binary
        exes = on_host(
            build_inventory,
            name,
            "for p in $(pgrep -u app -f /srv/sample/current/server.js); do "
            "readlink /proc/$p/exe; done",
        ).split()
        assert exes and set(exes) == {node}, exes


def test_03_a_second_deploy_is_a_cache_hit(build_inventory, cache):
    t0 = time.monotonic()
    r = run(build_inventory, "deploy", "--ref", "HEAD", cache=cache)
    TIMINGS["warm_deploy_s"] = round(time.monotonic() - t0, 1)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "from the build cache" in r.stdout, r.stdout
    assert "dependencies linked from" in r.stdout and "code linked from" in r.stdout, r.stdout
    print(f"deploy wall times on {len(web(build_inventory))} app hosts: {TIMINGS}")


def test_04_a_failed_build_stops_before_any_host_changes(build_inventory, cache, tmp_path):
    before = {n: current_of(build_inventory, n) for n in web(build_inventory)}
    listing = {n: on_host(build_inventory, n, "ls /srv/sample/releases") for n in before}

    def change(data: dict[str, Any]) -> None:
        data["groups"]["web"]["vars"].update(
            app_repo=str(build_inventory.host(web(build_inventory)[0]).vars["app_repo"]),
            app_repo_path=".",
            app_build_command="npm run build-broken",
        )

    broken = load_inventory(write_inventory(tmp_path, change))
    r = run(broken, "deploy", "--ref", "HEAD", cache=cache)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "BUILD-OUTPUT-MARK" in r.stderr and "failed (exit" in r.stderr, r.stderr
    for name, cur in before.items():
        assert current_of(build_inventory, name) == cur
        assert on_host(build_inventory, name, "ls /srv/sample/releases") == listing[name]
