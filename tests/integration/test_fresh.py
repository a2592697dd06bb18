"""Bare servers as a provider hands them over, Debian 12 and 13, converged from nothing in ONE run.

A lab of its own next to the default one (its own bridge, subnet, state and host names) whose
hosts boot from the bare images: a minimal Debian (systemd, openssh-server, sudo, python3),
none of the roles' packages. A web host and a db host of each release get every role of their
group; the packages come through the lab's apt proxy, as on a real server from its mirror.
The roles adapt to the release they find (PostgreSQL 15 on Debian 12, 17 on Debian 13).

What failed before the engine staged package installs: nginx's package ships
sites-enabled/default after the probe said it was absent (`nginx -t`: duplicate default server),
certbot's package adds /etc/cron.d/certbot, rsyslog and fail2ban start with the package's config
and were never restarted with opskit's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from opskit.core.inventory import Inventory, load_inventory
from opskit.core.roles import REPO
from opskit.lab import lifecycle, registry
from opskit.lab.nspawn import exec_in
from opskit.lab.spec import LabSpec, gateway_ip, load_lab_spec
from tests.integration.conftest import LAB_INVENTORY

TIMEOUT = 1800  # a first provision of a bare host installs PostgreSQL, nginx, Node.js...


def bare_inventory(base: Path, target: Path) -> Path:
    """The default lab's inventory as a lab of bare hosts: subnet +100, `-bare` paths, of the
    web and the db group's first host two copies: `b<name>` on Debian 12, `t<name>` on 13."""
    spec = load_lab_spec(base)
    old = gateway_ip(spec).rsplit(".", 1)[0] + "."
    a, b, c = old.rstrip(".").split(".")
    new = f"{a}.{b}.{(int(c) + 100) % 256}."
    text = base.read_text().replace(old, new)
    text = text.replace(str(spec.state_dir), f"{spec.state_dir}-bare")
    text = re.sub(rf"\bbridge: {re.escape(spec.bridge)}\b", f"bridge: {spec.bridge[:12]}b", text)
    data = yaml.safe_load(text)
    releases: dict[str, str] = {}
    for group, entry in data["groups"].items():
        hosts = entry.get("hosts") or {}
        if group in ("web", "db") and hosts:
            name, host = next(iter(hosts.items()))
            address = host["address"]
            twin = f"{address.rsplit('.', 1)[0]}.{int(address.rsplit('.', 1)[1]) + 100}"
            entry["hosts"] = {f"b{name}"[:32]: host, f"t{name}"[:32]: {**host, "address": twin}}
            releases[f"t{name}"[:32]] = "trixie"
        else:
            entry["hosts"] = {}
        vars_ = entry.get("vars") or {}
        if vars_.get("app_repo") == "..":
            vars_["app_repo"] = str(REPO)
    data["lab"]["image"] = "bare"
    data["lab"]["hosts"] = {name: {"suite": suite} for name, suite in releases.items()}
    target.write_text(yaml.safe_dump(data, sort_keys=False))
    return target


@pytest.fixture(scope="module")
def bare_lab(tmp_path_factory: pytest.TempPathFactory, lab_spec: LabSpec) -> Iterator[Path]:
    # lab_spec: the default lab's fixture checked the prerequisites (root, tools).
    path = bare_inventory(LAB_INVENTORY, tmp_path_factory.mktemp("bare") / "bare.yml")
    spec = load_lab_spec(path)
    lifecycle.up(spec, fresh=True, progress=lambda m: print(f"bare lab: {m}", file=sys.stderr))
    try:
        yield path
    finally:
        lifecycle.down(spec)


def run_inv(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args, "-i", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "OPSKIT_INVENTORY": str(path)},
    )


def summaries(out: str) -> dict[str, tuple[int, int]]:
    """host -> (changed, remote commands) from provision's summary lines."""
    found = {}
    for m in re.finditer(r"^(\S+)\s+ok=\d+ changed=(\d+) .*\((\d+) remote commands?", out, re.M):
        found[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    return found


def test_bare_hosts_have_none_of_the_roles_packages(bare_lab: Path) -> None:
    spec = load_lab_spec(bare_lab)
    assert sorted(h.suite for h in spec.hosts) == ["bookworm", "bookworm", "trixie", "trixie"]
    for host in spec.hosts:
        assert host.image == "bare"
        release = exec_in(spec, host.name, ["cat", "/etc/debian_version"]).stdout
        assert release.startswith("12." if host.suite == "bookworm" else "13.")
        out = exec_in(spec, host.name, ["dpkg-query", "-W", "-f=${Package}\\n"]).stdout.split()
        assert not {"nginx", "postgresql", "certbot", "rsyslog", "fail2ban", "cron"} & set(out)
        assert {"openssh-server", "sudo", "python3", "systemd"} <= set(out)


def test_one_provision_makes_a_bare_server_right(bare_lab: Path) -> None:
    started = time.monotonic()
    first = run_inv(bare_lab, "provision")
    took = time.monotonic() - started
    print(f"first provision of bare hosts: {took:.0f} s\n{first.stdout}", file=sys.stderr)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    rounds = summaries(first.stdout)
    assert len(rounds) == 4 and all(changed > 0 for changed, _ in rounds.values())
    # probe, install the packages, probe again, change; on Debian 13 one more probe first (a
    # host never seen is taken to be Debian 12 until its probe says otherwise).
    assert all(commands <= 5 for _, commands in rounds.values()), rounds

    again = run_inv(bare_lab, "provision")
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-2000:]
    assert summaries(again.stdout) == dict.fromkeys(rounds, (0, 1))

    # The packages went through the lab's apt proxy, which kept them for the next bare host.
    status = run_inv(bare_lab, "lab.status")
    line = next(ln for ln in status.stdout.splitlines() if ln.startswith("apt cache: "))
    print(line, file=sys.stderr)
    counts = registry.read_apt_cache_stats(load_lab_spec(bare_lab)) or {}
    assert counts.get("hits", 0) + counts.get("misses", 0) > 0, line


def test_verify_passes_and_services_run_opskits_config(bare_lab: Path) -> None:
    inventory: Inventory = load_inventory(bare_lab)
    out = run_inv(bare_lab, "verify")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    spec = load_lab_spec(bare_lab)
    for host in inventory.hosts:
        # rsyslog was started by its package with Debian's config; opskit's forwarding config
        # must be the one running: it holds a connection to the syslog receiver's TLS port.
        ss = exec_in(spec, host.name, ["ss", "-Htn", "state", "established"]).stdout
        assert f":{host.vars['papertrail_port']}" in ss, ss
    for web in (h for h in inventory.hosts if "nginx" in h.roles):
        enabled = exec_in(spec, web.name, ["ls", "/etc/nginx/sites-enabled"]).stdout.split()
        assert "default" not in enabled
        crons = exec_in(spec, web.name, ["ls", "/etc/cron.d"]).stdout.split()
        assert "certbot" not in crons
    for db in (h for h in inventory.hosts if "postgresql" in h.roles):
        clusters = exec_in(spec, db.name, ["pg_lsclusters", "-h"]).stdout.split()
        assert clusters[:4] == ["17" if db.name.startswith("t") else "15", "main", "5432", "online"]


def test_an_unsupported_release_is_refused_before_anything_changes(bare_lab: Path) -> None:
    spec = load_lab_spec(bare_lab)
    db = next(h for h in load_inventory(bare_lab).hosts if "postgresql" in h.roles)
    exec_in(spec, db.name, ["sed", "-i", 's/^VERSION_ID=.*/VERSION_ID="11"/', "/etc/os-release"])
    before = exec_in(spec, db.name, ["sh", "-c", "ls -l --time-style=+%s /etc/opskit*"]).stdout
    out = run_inv(bare_lab, "provision", "--hosts", db.name)
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"{db.name}: debian 11" in out.stdout and "is not supported" in out.stdout
    after = exec_in(spec, db.name, ["sh", "-c", "ls -l --time-style=+%s /etc/opskit*"]).stdout
    assert after == before
