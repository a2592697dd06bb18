"""The lab itself, for real: hosts booted with systemd-nspawn, reached over SSH, torn down.

Uses the session fixture `lab_spec` (tests/integration/conftest.py: `lifecycle.up(fresh=True)`
once, `lifecycle.down` at the end). Tests that take the lab down bring it back up; at the end of
this module every host is rebooted fresh, so the modules after this one get untouched hosts.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from opskit.lab import lifecycle
from opskit.lab.apt import machine_mirror_hosts
from opskit.lab.network import netns_name
from opskit.lab.nspawn import exec_in
from opskit.lab.services import service_status
from opskit.lab.spec import LabError, LabHost, LabSpec, gateway_ip, lab_network

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def _fresh_hosts_afterwards(lab_spec: LabSpec) -> Iterator[None]:
    yield
    lifecycle.up(lab_spec, fresh=True)


def ssh(
    spec: LabSpec,
    host: LabHost,
    command: str,
    *,
    user: str | None = None,
    known_hosts: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `command` on a lab host with OpenSSH, host keys checked strictly."""
    return subprocess.run(
        [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(spec.identity),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={known_hosts or spec.known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=10",
            f"{user or spec.deploy_user}@{host.address}",
            command,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def checked(spec: LabSpec, name: str, argv: list[str]) -> str:
    """exec_in that must succeed; returns stdout."""
    result = exec_in(spec, name, argv)
    assert result.returncode == 0, f"{name}: {argv} -> {result.returncode}\n{result.stderr}"
    return result.stdout


def test_every_host_runs_with_ssh_ready(lab_spec: LabSpec) -> None:
    statuses = lifecycle.status(lab_spec)
    assert [(s.name, s.state, s.ssh_ready) for s in statuses] == [
        (h.name, "running", True) for h in lab_spec.hosts
    ]
    assert all(s.pid for s in statuses)


def test_hosts_reach_ssh_with_strict_host_keys_as_deploy_with_sudo(lab_spec: LabSpec) -> None:
    for host in lab_spec.hosts:
        result = ssh(lab_spec, host, "sudo -n true && hostname && systemctl is-system-running")
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == [host.name, "running"]


def test_root_login_uses_the_same_key(lab_spec: LabSpec) -> None:
    host = lab_spec.hosts[0]
    result = ssh(lab_spec, host, "id -u", user="root")
    assert (result.returncode, result.stdout.strip()) == (0, "0"), result.stderr


def test_paramiko_accepts_the_written_host_keys_and_rejects_unknown_hosts(
    lab_spec: LabSpec,
) -> None:
    for host in lab_spec.hosts:
        client = paramiko.SSHClient()
        client.load_host_keys(str(lab_spec.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(
                host.address,
                username=lab_spec.deploy_user,
                key_filename=str(lab_spec.identity),
                look_for_keys=False,
                allow_agent=False,
                timeout=10,
            )
            _, stdout, _ = client.exec_command("hostname")
            assert stdout.read().decode().strip() == host.name
        finally:
            client.close()


def test_a_wrong_host_key_is_refused(lab_spec: LabSpec, tmp_path: Path) -> None:
    web1, other = lab_spec.hosts[0], lab_spec.hosts[1]
    lines = lab_spec.known_hosts.read_text().splitlines()
    other_key = next(line for line in lines if line.startswith(f"{other.address} "))
    wrong = tmp_path / "known_hosts"
    wrong.write_text(other_key.replace(other.address, web1.address, 1) + "\n")
    result = ssh(lab_spec, web1, "true", known_hosts=wrong)
    assert result.returncode == 255
    assert "Host key verification failed" in result.stderr


def test_known_hosts_has_exactly_one_line_per_lab_host(lab_spec: LabSpec) -> None:
    addresses = [line.split()[0] for line in lab_spec.known_hosts.read_text().splitlines()]
    for host in lab_spec.hosts:
        assert addresses.count(host.address) == 1


def test_exec_in_runs_as_root_inside_the_host(lab_spec: LabSpec) -> None:
    name = lab_spec.hosts[0].name
    assert checked(lab_spec, name, ["hostname"]).strip() == name
    assert checked(lab_spec, name, ["id", "-u"]).strip() == "0"
    assert checked(lab_spec, name, ["cat"]) == ""
    assert exec_in(lab_spec, name, ["cat"], input="hello\n").stdout == "hello\n"
    assert exec_in(lab_spec, name, ["sh", "-c", "exit 3"]).returncode == 3
    with pytest.raises(LabError, match="no lab host named 'nope'"):
        exec_in(lab_spec, "nope", ["true"])


def test_hosts_see_their_own_files_only(lab_spec: LabSpec) -> None:
    a, b = lab_spec.hosts[0].name, lab_spec.hosts[1].name
    checked(lab_spec, a, ["sh", "-c", "echo mine > /root/only-on-a"])
    assert exec_in(lab_spec, b, ["test", "-e", "/root/only-on-a"]).returncode == 1
    checked(lab_spec, a, ["rm", "/root/only-on-a"])


def test_hosts_do_not_share_service_cgroups(lab_spec: LabSpec) -> None:
    # Stopping a unit on one host must not kill the same unit's processes on another host.
    a, b = lab_spec.hosts[0].name, lab_spec.hosts[1].name
    checked(lab_spec, a, ["systemctl", "stop", "cron"])
    try:
        assert checked(lab_spec, b, ["systemctl", "is-active", "cron"]).strip() == "active"
        assert exec_in(lab_spec, b, ["pgrep", "-x", "cron"]).returncode == 0
    finally:
        checked(lab_spec, a, ["systemctl", "start", "cron"])


def test_hosts_reach_each_other_but_nothing_outside(lab_spec: LabSpec) -> None:
    web1, db1 = lab_spec.hosts[0], lab_spec.hosts[-1]
    probe = (
        "import socket, sys\n"
        "try:\n"
        "    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)\n"
        "    print(s.recv(8).decode())\n"
        "except OSError as e:\n"
        "    print('error', e); sys.exit(1)\n"
    )
    ok = exec_in(lab_spec, web1.name, ["python3", "-c", probe, db1.address, "22"])
    assert (ok.returncode, ok.stdout[:8]) == (0, "SSH-2.0-"), ok.stdout + ok.stderr
    out = exec_in(lab_spec, web1.name, ["python3", "-c", probe, "1.1.1.1", "80"])
    assert out.returncode == 1, out.stdout
    # No DNS either: names resolve only through /etc/hosts.
    assert exec_in(lab_spec, web1.name, ["getent", "hosts", "deb.debian.org"]).returncode == 2
    hosts = checked(lab_spec, web1.name, ["getent", "hosts", db1.name])
    assert hosts.split()[0] == db1.address


def test_a_host_installs_a_small_package_through_the_apt_proxy(lab_spec: LabSpec) -> None:
    host = lab_spec.hosts[-1]
    command = (
        "export DEBIAN_FRONTEND=noninteractive; sudo -E apt-get update -q >/dev/null "
        "&& sudo -E apt-get install -y -q sl >/dev/null && test -x /usr/games/sl && echo ok"
    )
    result = ssh(lab_spec, host, command)
    assert (result.returncode, result.stdout.strip()) == (0, "ok"), result.stderr
    proxy_log = (lab_spec.state_dir / "services" / "aptproxy.log").read_text()
    assert f'{host.address} "GET http://' in proxy_log and "/sl_" in proxy_log


def test_services_listen_only_on_the_gateway_or_loopback(lab_spec: LabSpec) -> None:
    gateway = gateway_ip(lab_spec)
    services = service_status(lab_spec)
    assert services and all(s.pid and s.listening for s in services), services
    listening = subprocess.run(
        ["ss", "-H", "-ltnup"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    for service in services:
        mine = [line.split() for line in listening if f"pid={service.pid}," in line]
        assert mine, f"{service.name}: no listening socket for pid {service.pid}"
        for fields in mine:
            host = fields[4].rsplit(":", 1)[0]
            assert host in (gateway, "127.0.0.1"), f"{service.name} listens on {fields[4]}"


def test_apt_proxy_forwards_mirrors_only(lab_spec: LabSpec) -> None:
    gateway = gateway_ip(lab_spec)
    mirror = machine_mirror_hosts()[0]

    def ask(method: str, target: str) -> int:
        conn = http.client.HTTPConnection(gateway, 3142, timeout=30)
        try:
            conn.request(method, target)
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    assert ask("HEAD", f"http://{mirror}/debian/dists/bookworm/InRelease") == 200
    assert ask("GET", "http://example.com/") == 403
    assert ask("CONNECT", f"{mirror}:443") == 405
    assert ask("GET", "/debian/dists/bookworm/InRelease") == 400


def test_up_twice_is_a_noop(lab_spec: LabSpec) -> None:
    before = lifecycle.status(lab_spec)
    marker = ["sh", "-c", "echo kept > /root/up-twice"]
    checked(lab_spec, lab_spec.hosts[0].name, marker)
    known_hosts = lab_spec.known_hosts.read_text()
    started = time.monotonic()
    again = lifecycle.up(lab_spec)
    assert time.monotonic() - started < 10
    assert [(s.name, s.pid, s.state) for s in again] == [(s.name, s.pid, s.state) for s in before]
    assert lab_spec.known_hosts.read_text() == known_hosts
    assert checked(lab_spec, lab_spec.hosts[0].name, ["cat", "/root/up-twice"]) == "kept\n"


@pytest.mark.destructive
def test_reset_host_gives_a_fresh_host_with_new_keys(lab_spec: LabSpec) -> None:
    host = lab_spec.hosts[1]
    checked(lab_spec, host.name, ["sh", "-c", "echo dirty > /root/dirty && rm /usr/bin/less"])
    old_line = next(
        line
        for line in lab_spec.known_hosts.read_text().splitlines()
        if line.startswith(f"{host.address} ")
    )
    others = {s.name: s.pid for s in lifecycle.status(lab_spec) if s.name != host.name}
    fresh = lifecycle.reset_host(lab_spec, host.name)
    assert (fresh.state, fresh.ssh_ready) == ("running", True)
    assert exec_in(lab_spec, host.name, ["test", "-e", "/root/dirty"]).returncode == 1
    assert exec_in(lab_spec, host.name, ["test", "-x", "/usr/bin/less"]).returncode == 0
    assert old_line not in lab_spec.known_hosts.read_text()  # new host keys
    result = ssh(lab_spec, host, "sudo -n hostname")
    assert (result.returncode, result.stdout.strip()) == (0, host.name), result.stderr
    assert {s.name: s.pid for s in lifecycle.status(lab_spec) if s.name != host.name} == others


@pytest.mark.destructive
def test_after_down_lab_addresses_are_unreachable_not_routed_out(lab_spec: LabSpec) -> None:
    lifecycle.down(lab_spec)
    try:
        assert [s.state for s in lifecycle.status(lab_spec)] == ["stopped"] * len(lab_spec.hosts)
        net = str(lab_network(lab_spec))
        routes = subprocess.run(
            ["ip", "route", "show", net], capture_output=True, text=True, check=True
        ).stdout
        assert f"unreachable {net} metric 4000" in routes
        for host in lab_spec.hosts:
            probe = subprocess.run(
                ["ip", "route", "get", host.address], capture_output=True, text=True
            )
            assert probe.returncode != 0, f"{host.address} routes: {probe.stdout}"
            assert "No route to host" in probe.stderr or "unreachable" in probe.stderr
        assert not Path(f"/sys/class/net/{lab_spec.bridge}").exists()
        for host in lab_spec.hosts:  # (another lab, from another inventory, may be running)
            assert not Path("/run/netns", netns_name(host.name)).exists()
        assert f"{lab_spec.state_dir}/" not in Path("/proc/self/mountinfo").read_text()
        assert all(s.pid is None for s in service_status(lab_spec))
        lifecycle.down(lab_spec)  # twice is fine
    finally:
        lifecycle.up(lab_spec)
    assert [s.state for s in lifecycle.status(lab_spec)] == ["running"] * len(lab_spec.hosts)


@pytest.mark.destructive
def test_down_cleans_up_after_a_killed_host(lab_spec: LabSpec) -> None:
    victim = next(s for s in lifecycle.status(lab_spec) if s.name == lab_spec.hosts[1].name)
    assert victim.pid is not None  # status verified it is this host's systemd-nspawn
    os.kill(victim.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while (
        state := lifecycle.status(lab_spec)[1]
    ).state == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert state.state == "broken"
    assert "orphaned container process" in state.detail  # its systemd outlived systemd-nspawn
    try:
        lifecycle.down(lab_spec)
        after = lifecycle.status(lab_spec)
        assert [(s.state, s.detail) for s in after] == [("stopped", "")] * len(after)
    finally:
        lifecycle.up(lab_spec)
    assert all(s.ssh_ready for s in lifecycle.status(lab_spec))
