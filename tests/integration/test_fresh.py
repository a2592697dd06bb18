"""A bare server as a provider hands it over, provisioned from nothing in ONE run.

A lab of its own next to the default one (its own bridge, subnet, state and host names) whose
hosts boot from the bare image: a minimal Debian (systemd, openssh-server, sudo, python3),
none of the roles' packages. One web host and one db host get every role of their group; the
packages come through the lab's apt proxy, as on a real server they come from its mirror.

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
from opskit.lab import lifecycle
from opskit.lab.nspawn import exec_in
from opskit.lab.spec import LabSpec, gateway_ip, load_lab_spec
from tests.integration.conftest import LAB_INVENTORY

TIMEOUT = 1800  # a first provision of a bare host installs PostgreSQL, nginx, Node.js...


def bare_inventory(base: Path, target: Path) -> Path:
    """The default lab's inventory as a lab of bare hosts: subnet +100, `-bare` paths, one web
    host and one db host renamed with a `b` prefix, `lab.image: bare`."""
    spec = load_lab_spec(base)
    old = gateway_ip(spec).rsplit(".", 1)[0] + "."
    a, b, c = old.rstrip(".").split(".")
    new = f"{a}.{b}.{(int(c) + 100) % 256}."
    text = base.read_text().replace(old, new)
    text = text.replace(str(spec.state_dir), f"{spec.state_dir}-bare")
    text = re.sub(rf"\bbridge: {re.escape(spec.bridge)}\b", f"bridge: {spec.bridge[:12]}b", text)
    data = yaml.safe_load(text)
    keep = {"web": None, "db": None}
    for group, entry in data["groups"].items():
        hosts = entry.get("hosts") or {}
        if group in keep and hosts:
            name, host = next(iter(hosts.items()))
            entry["hosts"] = {f"b{name}"[:32]: host}
        else:
            entry["hosts"] = {}
        vars_ = entry.get("vars") or {}
        if vars_.get("app_repo") == "..":
            vars_["app_repo"] = str(REPO)
    data["lab"]["image"] = "bare"
    data["lab"].pop("hosts", None)
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
    for host in spec.hosts:
        assert host.image == "bare"
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
    assert len(rounds) == 2 and all(changed > 0 for changed, _ in rounds.values())
    # probe, install the packages, probe again, change (+ the base role's fresh-login check)
    assert all(commands <= 5 for _, commands in rounds.values()), rounds

    again = run_inv(bare_lab, "provision")
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-2000:]
    assert summaries(again.stdout) == dict.fromkeys(rounds, (0, 1))


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
    web = next(h for h in inventory.hosts if "nginx" in h.roles)
    enabled = exec_in(spec, web.name, ["ls", "/etc/nginx/sites-enabled"]).stdout.split()
    assert "default" not in enabled
    crons = exec_in(spec, web.name, ["ls", "/etc/cron.d"]).stdout.split()
    assert "certbot" not in crons
