"""`inv provision` with the base role on a lab of 3 real hosts (issue 2's proofs)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

from opskit.core.inventory import load_inventory
from opskit.core.roles import REPO
from opskit.core.runner import provision_work, run_on_hosts
from opskit.fleet.verify import run_verify
from opskit.lab.nspawn import exec_in
from tests.integration.conftest import LAB_INVENTORY, inv, write_inventory


def provision(inventory, hosts=None, *, dry_run=False):
    return run_on_hosts(inventory, inventory.select(hosts), provision_work(None), dry_run=dry_run)


def changed(results):
    return {r.host: [c.resource for c in r.changes if c.changed] for r in results}


def test_01_first_provision_converges_every_host(lab_spec, lab_inventory):
    hardening = "/etc/ssh/sshd_config.d/10-opskit-hardening.conf"
    for host in lab_inventory.hosts:  # as before any provision, whatever ran on the lab before
        exec_in(lab_spec, host.name, ["rm", "-f", hardening])
    results = provision(lab_inventory)
    assert [r.error for r in results] == [None, None, None]
    for r in results:
        assert f"file:{hardening}" in changed([r])[r.host]
        assert "ssh: a fresh login works after the sshd change" in r.notes


def test_02_second_provision_changes_nothing_in_one_round_trip(lab_inventory):
    results = provision(lab_inventory)
    assert all(not c for c in changed(results).values()) and len(results) == 3
    assert all(r.error is None for r in results)
    # One remote command per host reads all state; nothing else is sent on a no-op run.
    assert [r.commands for r in results] == [1, 1, 1]


def test_03_verify_passes(lab_inventory):
    assert run_verify(lab_inventory, lab_inventory.hosts) == 0


def test_04_check_reports_drift_and_changes_nothing(lab_spec, lab_inventory):
    web2 = lab_inventory.hosts[1].name
    exec_in(lab_spec, web2, ["sh", "-c", "echo Europe/Paris > /etc/timezone"])
    [result] = provision(lab_inventory, [web2], dry_run=True)
    [drift] = [c for c in result.changes if c.changed]
    assert drift.resource == "file:/etc/timezone" and "-Europe/Paris\n+UTC\n" in drift.diff
    assert exec_in(lab_spec, web2, ["cat", "/etc/timezone"]).stdout == "Europe/Paris\n"
    # The CLI says the same with a distinct exit code for drift checks.
    cli = inv("provision", "--hosts", web2, "--check", "--detailed-exitcode")
    assert cli.returncode == 3, cli.stdout + cli.stderr
    assert "changed  file:/etc/timezone" in cli.stdout
    assert provision(lab_inventory, [web2])[0].changed_count == 1
    assert exec_in(lab_spec, web2, ["cat", "/etc/timezone"]).stdout == "UTC\n"


def test_05_changed_host_key_is_refused_while_others_converge(tmp_path, lab_inventory):
    known = lab_inventory.ssh.known_hosts.read_text().splitlines()
    addr2, addr3 = lab_inventory.hosts[1].address, lab_inventory.hosts[2].address
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True
    )
    other = (tmp_path / "k.pub").read_text().split()[1]
    lines = [
        f"{addr2} ssh-ed25519 {other}" if ln.startswith(f"{addr2} ") else ln
        for ln in known
        if not ln.startswith(f"{addr3} ")
    ]
    kh = tmp_path / "known_hosts"
    kh.write_text("\n".join(lines) + "\n")

    def change(data):
        data["ssh"]["known_hosts"] = str(kh)

    inventory = load_inventory(write_inventory(tmp_path, change))
    web1, web2, db1 = provision(inventory)
    assert web1.error is None and not web1.unreachable
    assert web2.unreachable and "CHANGED" in web2.error and "SHA256:" in web2.error
    assert db1.unreachable and "unknown host key" in db1.error
    assert f"inv hosts.trust --hosts {db1.host}" in db1.error


def test_06_unreachable_host_is_reported_while_others_converge(tmp_path):
    def change(data):
        data["ssh"]["connect_timeout"] = 3
        prefix = data["lab"]["gateway"].rsplit(".", 1)[0]
        data["groups"]["web"]["hosts"]["ghost"] = {"address": f"{prefix}.99"}

    path = write_inventory(tmp_path, change)
    cli = inv("provision", "-i", str(path), "--json")
    assert cli.returncode == 1, cli.stderr
    report = {h["host"]: h for h in json.loads(cli.stdout)["hosts"]}
    assert report["ghost"]["unreachable"] is True and "unreachable" in report["ghost"]["error"]
    assert [h for h, r in report.items() if r["error"]] == ["ghost"]


def test_07_bad_input_is_a_clear_error_and_touches_nothing(tmp_path, lab_spec, lab_inventory):
    web1 = lab_inventory.hosts[0].name
    before = exec_in(lab_spec, web1, ["stat", "-c", "%Y", "/etc/timezone"]).stdout

    def unknown_var(data):
        data["vars"]["base_timezon"] = "Europe/Paris"

    def missing_secret(data):
        data["ssh"]["sudo_password"] = {"secret": "OPSKIT_TEST_SUDO"}

    cases = {
        "malformed": (lambda p: p.write_text("groups: [web1\n"), r"invalid YAML"),
        "unknown": (
            unknown_var,
            "vars.base_timezon: unknown variable (did you mean 'base_timezone'?)",
        ),
        "secret": (missing_secret, "ssh.sudo_password: secret OPSKIT_TEST_SUDO is not set"),
    }
    for name, (change, message) in cases.items():
        path = write_inventory(tmp_path, None if name == "malformed" else change, f"{name}.yml")
        if name == "malformed":
            change(path)
        cli = inv("provision", "-i", str(path))
        assert cli.returncode == 2, (name, cli.stdout, cli.stderr)
        assert str(path) in cli.stderr and (message in cli.stderr or name == "malformed"), (
            cli.stderr
        )
        assert "Traceback" not in cli.stderr
    assert exec_in(lab_spec, web1, ["stat", "-c", "%Y", "/etc/timezone"]).stdout == before


def test_08_broken_sshd_setting_is_refused_and_old_config_kept(tmp_path, lab_inventory):
    db1 = lab_inventory.hosts[2].name
    # The schema refuses "lots" at load; a setting sshd rejects that no schema can know about
    # must still be caught on the host by `sshd -t` before it takes effect.
    host = lab_inventory.host(db1)
    broken = dataclasses.replace(host, vars={**host.vars, "base_ssh_max_auth_tries": "lots"})
    [result] = run_on_hosts(lab_inventory, [broken], provision_work(None))
    assert result.failed and "sshd -t failed" in result.error, result.error
    # The previous drop-in is back: a provision with the real inventory has nothing to do.
    [again] = provision(lab_inventory, [db1])
    assert again.error is None and again.changed_count == 0


def test_09_trust_records_fingerprints(tmp_path, lab_inventory):
    kh = tmp_path / "known_hosts"

    def change(data):
        data["ssh"]["known_hosts"] = str(kh)

    path = write_inventory(tmp_path, change)
    refused = inv("hosts.trust", "-i", str(path))
    assert refused.returncode == 2 and "confirm with --yes" in refused.stderr
    cli = inv("hosts.trust", "-i", str(path), "--yes")
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.count("recorded") == 3 and "SHA256:" in cli.stdout
    assert sorted(kh.read_text().splitlines()) == sorted(
        ln
        for ln in lab_inventory.ssh.known_hosts.read_text().splitlines()
        if ln.split(" ")[0] in {h.address for h in lab_inventory.hosts}
    )
    again = inv("hosts.trust", "-i", str(path))
    assert again.returncode == 0 and again.stdout.count("trusted") == 3


def test_10_root_login_is_supported(tmp_path, lab_inventory):
    db1 = lab_inventory.hosts[2].name

    def change(data):
        data["groups"]["db"]["hosts"][db1]["user"] = "root"

    inventory = load_inventory(write_inventory(tmp_path, change))
    [result] = provision(inventory, [db1])
    assert result.error is None and result.changed_count == 0


def test_11_inventory_file_is_the_lab_default():
    assert load_inventory(LAB_INVENTORY).ssh.known_hosts.name == "known_hosts"


def test_12_sudo_with_a_password_from_a_secret(tmp_path, lab_spec, lab_inventory):
    db1 = lab_inventory.hosts[2]
    setup = (
        "id ops2 >/dev/null 2>&1 || useradd -m -s /bin/bash ops2; echo 'ops2:pw-12345' | chpasswd;"
        " install -d -m 700 -o ops2 -g ops2 /home/ops2/.ssh;"
        " install -m 600 -o ops2 -g ops2 /home/deploy/.ssh/authorized_keys /home/ops2/.ssh/;"
        " echo 'ops2 ALL=(ALL:ALL) ALL' > /etc/sudoers.d/ops2; chmod 440 /etc/sudoers.d/ops2"
    )
    exec_in(lab_spec, db1.name, ["sh", "-c", setup])

    def change(data):
        data["groups"]["db"]["hosts"][db1.name]["user"] = "ops2"
        data["ssh"]["sudo_password"] = {"secret": "OPSKIT_TEST_SUDO"}

    path = write_inventory(tmp_path, change)
    try:
        good = inv(
            "provision",
            "-i",
            str(path),
            "--hosts",
            db1.name,
            "--verbose",
            env={"OPSKIT_TEST_SUDO": "pw-12345"},
        )
        assert good.returncode == 0, good.stdout + good.stderr
        assert "ok=" in good.stdout and "pw-12345" not in good.stdout + good.stderr
        bad = inv(
            "provision",
            "-i",
            str(path),
            "--hosts",
            db1.name,
            env={"OPSKIT_TEST_SUDO": "wrong-pw-999"},
        )
        assert bad.returncode == 1 and "sudo password was refused" in bad.stdout
        assert "wrong-pw-999" not in bad.stdout + bad.stderr
    finally:
        exec_in(lab_spec, db1.name, ["sh", "-c", "rm -f /etc/sudoers.d/ops2; userdel -r ops2"])


def test_13_a_stray_broken_nginx_file_fails_provision_naming_it(lab_spec, lab_inventory):
    """Issue 16: a file opskit does not manage breaks `nginx -t`; provision must not say ok."""
    web1 = lab_inventory.hosts[0].name
    stray = "/etc/nginx/conf.d/zz-stray.conf"
    try:
        exec_in(lab_spec, web1, ["sh", "-c", f"echo 'bogus_directive on;' > {stray}"])
        cli = inv("provision", "--hosts", web1)
        assert cli.returncode == 1, cli.stdout + cli.stderr
        assert f"[{web1}] FAILED   a config check fails (opskit changed nothing here)" in cli.stdout
        assert "nginx -t fails" in cli.stdout and stray in cli.stdout, cli.stdout
        assert "changed=0 failed=1" in cli.stdout and "Traceback" not in cli.stderr
        check = inv("provision", "--hosts", web1, "--check")
        assert check.returncode == 1 and stray in check.stdout, check.stdout
    finally:
        exec_in(lab_spec, web1, ["rm", "-f", stray])
    [again] = provision(lab_inventory, [web1])
    assert again.error is None and again.changed_count == 0 and again.commands == 1


def test_14_sshd_killed_mid_provision_is_a_lost_connection_without_traceback(
    lab_spec, lab_inventory
):
    """Issue 16: the session's sshd dies while the probe runs (held there by a slow `nginx`)."""
    web1 = lab_inventory.hosts[0].name
    started = "/run/opskit-test-probe-started"
    wrapper = f'#!/bin/sh\ntouch {started}\nsleep 6\nexec /usr/sbin/nginx "$@"\n'
    setup = f"cat > /usr/local/sbin/nginx && chmod 755 /usr/local/sbin/nginx && rm -f {started}"
    exec_in(lab_spec, web1, ["sh", "-c", setup], input=wrapper)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "invoke", "provision", "--hosts", web1],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "OPSKIT_INVENTORY": str(LAB_INVENTORY)},
        )
        deadline = time.monotonic() + 60
        while exec_in(lab_spec, web1, ["test", "-e", started]).returncode != 0:
            assert time.monotonic() < deadline and proc.poll() is None, "the probe never ran"
            time.sleep(0.2)
        # The sshd processes of this run's session, by id (the listener stays: the lab lives on).
        pids = exec_in(lab_spec, web1, ["pgrep", "-f", "^sshd(-session)?: deploy"]).stdout.split()
        assert pids
        exec_in(lab_spec, web1, ["kill", "-KILL", *pids])
        out, err = proc.communicate(timeout=120)
    finally:
        exec_in(lab_spec, web1, ["rm", "-f", "/usr/local/sbin/nginx", started])
    assert proc.returncode == 1, out + err
    assert f"[{web1}] LOST     connection lost during read state" in out, out
    assert "lost=1" in out and "1 lost (connection lost)" in out
    assert "Traceback" not in out + err and "Socket is closed" not in out + err
    time.sleep(6)  # the orphaned probe ends; the next run works as usual
    [again] = provision(lab_inventory, [web1])
    assert again.error is None and again.changed_count == 0
