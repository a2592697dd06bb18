"""`inv audit` on lab hosts: a clean web host, then problems made on purpose and found, each put
back (by `inv provision` where opskit manages the file, by hand otherwise).

Other modules share the lab session before and after this one, so nothing here assumes fresh
hosts, whatever a test breaks it repairs in a `finally`, and hosts this module had to converge
are rebooted fresh at its end (fixture `ready`). Made on purpose: a served `/.env`
(an exact-match location in the app's nginx site), a TLS site without its HSTS header, an
unknown key in the deploy user's authorized_keys, and a burst of failed SSH logins. The burst
comes from the second web host, never from this machine: fail2ban bans after 5 failures and
ignores only 127.0.0.1, and a banned bridge address would cut the rest of the run off.

The lab's pebble makes a new CA at each start and does not publish its root (its management
interface is off), so served chains cannot verify against this machine's CAs. The `trusted`
inventory names the issuing intermediates, read from the hosts' chain.pem, in
audit_tls_ca_file; test_02 shows the finding without it.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opskit.audit import http as audit_http
from opskit.audit import output, reader
from opskit.certs.spec import declared_certificates, tls_site_paths
from opskit.checks.levels import Severity
from opskit.core.inventory import Host, Inventory, load_inventory
from opskit.core.runner import provision_work, run_on_hosts
from opskit.lab import lifecycle
from opskit.lab.nspawn import exec_in
from opskit.lab.spec import LabSpec, lab_network
from tests.integration.conftest import inv, write_inventory

TIMINGS: dict[str, Any] = {}
ENV_FILE = "/var/www/opskit-audit-test.env"
ENV_SECRET = "hunter2-not-for-output"


def run_inv(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return inv(*args, env={"OPSKIT_INVENTORY": str(path)})


def sh(spec: LabSpec, host: str, script: str, stdin: str | None = None) -> str:
    done = exec_in(spec, host, ["bash", "-c", script], input=stdin, timeout=120)
    assert done.returncode == 0, f"{host}: {script}\n{done.stdout}{done.stderr}"
    return done.stdout


def wait_for(what: str, check: Any, timeout: float = 15.0, times: int = 5) -> None:
    """nginx reloads asynchronously: old workers may still take new connections for a moment,
    so one good answer is not enough; `times` in a row are."""
    deadline = time.monotonic() + timeout
    good = 0
    while good < times:
        good = good + 1 if check() else 0
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        if good < times:
            time.sleep(0.2)


def host_audit(inventory: Inventory, host: Host) -> reader.HostAudit:
    """Audit `host` with the variables `inventory` gives it."""
    [got] = reader.run(inventory, [inventory.host(host.name)]).hosts
    assert got.error is None, got.error
    return got


def titles(h: reader.HostAudit, check: str) -> list[str]:
    return [f.title for f in h.findings if f.check == check]


@pytest.fixture(scope="module")
def web(lab_inventory: Inventory) -> list[Host]:
    hosts = [h for h in lab_inventory.hosts if {"nginx", "certbot", "base"} <= set(h.roles)]
    if len(hosts) < 2 or not all(declared_certificates(h.vars) for h in hosts):
        pytest.fail(
            f"{lab_inventory.path}: needs two web hosts with nginx, certbot and certificates "
            "(inventories/lab.yml's web group has them)"
        )
    return hosts


@pytest.fixture(scope="module")
def ready(lab_spec: LabSpec, lab_inventory: Inventory, web: list[Host]) -> Iterator[None]:
    """Every host converged and the app serving, for the module; afterwards the hosts are put
    back as they were: if this module had to converge them (fresh hosts: it runs first in file
    order), they are rebooted fresh, so that the modules after it (test_certs issues the first
    certificates and checks that it did) find the hosts they expect."""
    done = run_on_hosts(lab_inventory, lab_inventory.hosts, provision_work(None))
    assert [r.error for r in done] == [None] * len(done)
    converged_here = any(c.changed for r in done for c in r.changes)
    if any(audit_http.get(h.address, h.address, "/health").status != 200 for h in web):
        names = ",".join(h.name for h in web)
        out = run_inv(lab_inventory.path, "deploy", "--ref", "HEAD", "--hosts", names)
        assert out.returncode == 0, out.stdout + out.stderr
        converged_here = True
    yield
    if converged_here:
        lifecycle.up(lab_spec, fresh=True)


@pytest.fixture(scope="module")
def trusted(
    lab_spec: LabSpec,
    lab_inventory: Inventory,
    web: list[Host],
    ready: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Inventory:
    """The lab inventory (its audit_tls_ca_file is the root pebble made at its start, saved by
    `lab.up`) with a failed-login threshold the burst below reaches."""
    ca = lab_inventory.host(web[0].name).vars["audit_tls_ca_file"]
    assert "BEGIN CERTIFICATE" in Path(ca).read_text(), ca

    def change(data: dict[str, Any]) -> None:
        data.setdefault("vars", {}).update(audit_failed_login_threshold=5)

    return load_inventory(write_inventory(tmp_path_factory.mktemp("audit"), change))


# --- a clean host ------------------------------------------------------------------------------


def test_01_clean_web_hosts_have_no_high_finding(trusted: Inventory, web: list[Host]) -> None:
    started = time.monotonic()
    report = reader.run(trusted, [trusted.host(h.name) for h in web])
    TIMINGS["audit of the web hosts (library)"] = round(time.monotonic() - started, 2)
    for h in report.hosts:
        assert h.error is None and not h.unreachable, h.error
        assert h.commands == 1  # everything inside is one remote command
        assert {
            "exposed-files",
            "directory-listing",
            "server-header",
            "hsts",
            "https-redirect",
            "certificate",
            "failed-logins",
            "fail2ban",
            "authorized-keys",
            "ports",
            "sshd-config",
        } <= set(h.checks)
        bad = [f for f in h.findings if f.severity >= Severity.HIGH]
        assert bad == [], output.format_host(h)
        # What remains on the lab's web hosts, and why: the lab's base image bakes PostgreSQL
        # into every host (low: a stray local service), and nginx_hsts has no
        # includeSubDomains (info).
        left = {(f.check, f.severity.label) for f in h.findings}
        assert left <= {("ports", "low"), ("hsts", "info"), ("failed-logins", "info")}, left
    print("\n" + output.format_report(report))
    started = time.monotonic()
    out = run_inv(trusted.path, "audit", "--hosts", ",".join(h.name for h in web), "--json")
    TIMINGS["inv audit --json, web hosts"] = round(time.monotonic() - started, 2)
    assert out.returncode in (0, 4), out.stdout + out.stderr
    data = json.loads(out.stdout)
    assert data["worst"] in ("ok", "low", "medium") and data["since_hours"] == 24
    assert data["generated_at"].endswith("Z")
    for h in data["hosts"]:
        assert {
            "host",
            "address",
            "error",
            "unreachable",
            "checks",
            "findings",
            "failed_logins",
            "bans",
        } <= set(h)
        assert set(h["failed_logins"]) >= {"total", "by_source"}
        assert set(h["bans"]) >= {"current", "total"}
    text = run_inv(trusted.path, "audit")
    assert text.returncode in (0, 4), text.stdout + text.stderr
    assert "\x1b[" not in text.stdout  # piped: no colour
    assert text.stdout.count("failed SSH logins:") == len(trusted.hosts)


def test_02_without_the_ca_file_the_lab_chain_is_not_trusted(
    lab_inventory: Inventory, web: list[Host], ready: None, tmp_path: Path
) -> None:
    def change(data: dict[str, Any]) -> None:
        data.setdefault("vars", {})["audit_tls_ca_file"] = ""  # this machine's CAs

    h = host_audit(load_inventory(write_inventory(tmp_path, change)), web[0])
    [f] = [f for f in h.findings if f.check == "certificate"]
    assert f.severity is Severity.HIGH and "is not trusted" in f.title
    assert "audit_tls_ca_file" in f.fix and "Pebble Intermediate CA" in f.detail


# --- problems made on purpose ------------------------------------------------------------------


def test_03_a_served_env_file_is_critical_and_provision_repairs_it(
    lab_spec: LabSpec, trusted: Inventory, web: list[Host]
) -> None:
    h = web[0]
    site = f"/etc/nginx/conf.d/opskit-{h.vars['app_name']}.conf"
    url = f"http://{h.address}/.env"
    try:
        sh(
            lab_spec,
            h.name,
            f"mkdir -p /var/www && cat > {ENV_FILE}",
            stdin=f"DB_PASSWORD={ENV_SECRET}\nSTRIPE_KEY=sk_live_{ENV_SECRET}\n",
        )
        # An exact-match location wins over the site's regex that denies dot-files.
        sh(
            lab_spec,
            h.name,
            f"sed -i '0,/^server {{/s||server {{\\n    location = /.env {{ alias {ENV_FILE}; "
            f"default_type text/plain; }}|' {site} && nginx -t -q && systemctl reload nginx",
        )
        wait_for(
            "/.env served", lambda: audit_http.get(h.address, h.address, "/.env").status == 200
        )
        got = host_audit(trusted, h)
        [f] = [f for f in got.findings if f.check == "exposed-files"]
        assert (f.severity, f.title) == (Severity.CRITICAL, f"/.env is served on {url}")
        assert "DB_PASSWORD, STRIPE_KEY (values not shown)" in f.detail
        assert f"inv provision --hosts {h.name} --roles nginx" in f.fix
        cli = run_inv(trusted.path, "audit", "--hosts", h.name)
        assert cli.returncode == 5, cli.stdout + cli.stderr
        assert f"critical  exposed-files     /.env is served on {url}" in cli.stdout
        js = run_inv(trusted.path, "audit", "--hosts", h.name, "--json")
        for out in (cli, js):
            assert ENV_SECRET not in out.stdout + out.stderr  # never the values
        fixed = run_inv(trusted.path, "provision", "--hosts", h.name, "--roles", "nginx")
        assert fixed.returncode == 0 and f"file:{site}" in fixed.stdout, fixed.stdout
        wait_for(
            "/.env denied", lambda: audit_http.get(h.address, h.address, "/.env").status == 404
        )
        assert titles(host_audit(trusted, h), "exposed-files") == []
    finally:
        exec_in(lab_spec, h.name, ["rm", "-f", ENV_FILE])
        run_on_hosts(trusted, [h], provision_work(["nginx"]))


def test_04_a_missing_hsts_header_is_found_and_provision_repairs_it(
    lab_spec: LabSpec, trusted: Inventory, web: list[Host]
) -> None:
    h = web[0]
    cert = declared_certificates(h.vars)[0]
    available, _ = tls_site_paths(h.vars, cert)
    name = cert.domains[0]

    def hsts() -> str | None:
        return audit_http.get(h.address, name, "/", scheme="https").header(
            "strict-transport-security"
        )

    try:
        sh(
            lab_spec,
            h.name,
            f"sed -i '/Strict-Transport-Security/d' {available} && "
            "nginx -t -q && systemctl reload nginx",
        )
        wait_for("HSTS gone", lambda: hsts() is None)
        got = host_audit(trusted, h)
        found = [f for f in got.findings if f.check == "hsts"]
        assert [(f.severity, f.title) for f in found] == [
            (Severity.HIGH, f"no HSTS header on https://{name}/")
        ], output.format_host(got)
        assert "nginx_hsts" in found[0].fix and f"--hosts {h.name} --roles nginx" in found[0].fix
        assert all(d in found[0].detail for d in cert.domains[1:])  # one finding for the names
        fixed = run_inv(trusted.path, "provision", "--hosts", h.name, "--roles", "nginx")
        assert fixed.returncode == 0 and f"file:{available}" in fixed.stdout, fixed.stdout
        wait_for("HSTS back", lambda: hsts() is not None)
        after = host_audit(trusted, h)
        assert [f.severity.label for f in after.findings if f.check == "hsts"] == ["info"]
    finally:
        run_on_hosts(trusted, [h], provision_work(["nginx"]))


def test_05_an_unknown_key_in_authorized_keys_is_found(
    lab_spec: LabSpec, trusted: Inventory, web: list[Host], tmp_path: Path
) -> None:
    h = web[0]
    user = h.vars["base_deploy_user"]
    path = f"/home/{user}/.ssh/authorized_keys"
    key = tmp_path / "intruder"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "intruder@somewhere", "-f", str(key)],
        check=True,
    )
    pub = key.with_name("intruder.pub").read_text()
    fingerprint = subprocess.run(
        ["ssh-keygen", "-lf", str(key) + ".pub"], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    before = sh(lab_spec, h.name, f"cat {path}")
    try:
        sh(lab_spec, h.name, f"cat >> {path}", stdin=pub)
        got = host_audit(trusted, h)
        [f] = [f for f in got.findings if f.check == "authorized-keys"]
        assert (f.severity, f.title) == (Severity.HIGH, f"unknown key in {path}")
        assert fingerprint in f.detail and "intruder@somewhere" in f.detail
        assert path in f.fix and "base_deploy_authorized_keys" in f.fix

        # The same key with another comment is still the same key: allowed once declared.
        def allow(data: dict[str, Any]) -> None:
            data["vars"]["audit_allowed_keys"] = [pub.replace("intruder@somewhere", "renamed")]

        allowed = load_inventory(write_inventory(tmp_path, allow, "allowed.yml"))
        assert titles(host_audit(allowed, allowed.host(h.name)), "authorized-keys") == []
    finally:
        sh(lab_spec, h.name, f"cat > {path}", stdin=before)
    assert titles(host_audit(trusted, h), "authorized-keys") == []


def test_06_a_burst_of_failed_logins_is_counted_by_source_and_banned(
    lab_spec: LabSpec, trusted: Inventory, web: list[Host]
) -> None:
    target, source = web[0], web[1]
    unban = f"fail2ban-client set sshd unbanip {source.address} >/dev/null 2>&1 || true"
    before = host_audit(trusted, target).failed_logins["by_source"].get(source.address, 0)
    try:
        sh(lab_spec, target.name, unban)
        out = sh(
            lab_spec,
            source.name,
            "for i in 1 2 3 4 5 6 7 8; do timeout 10 ssh -o BatchMode=yes "
            "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=3 "
            f"nosuchuser@{target.address} true 2>&1 | tail -n 1; done; true",
        )
        # Attempts that reached sshd; once the ban blocks (when fail2ban's action works), the
        # last ones time out instead.
        made = out.count("Permission denied")
        assert made >= 5, out

        def state() -> reader.HostAudit:
            return host_audit(trusted, target)

        deadline = time.monotonic() + 20
        got = state()
        while source.address not in got.bans.current and time.monotonic() < deadline:
            time.sleep(1)  # fail2ban reads the journal on its own schedule
            got = state()
        assert got.failed_logins["by_source"][source.address] == before + made
        assert source.address in got.bans.current
        [f] = [f for f in got.findings if f.check == "failed-logins"]
        assert f.title.startswith(f"{before + made} failed SSH logins from {source.address}")
        assert "nosuchuser" in f.detail and "banned now" in f.detail
        assert f.severity is Severity.INFO  # fail2ban dealt with it
        if got.bans.failed_actions:  # the ban was recorded but its firewall action failed
            assert "fail2ban's bans block nothing" in titles(got, "fail2ban")
        cli = run_inv(trusted.path, "audit", "--hosts", target.name, "--json")
        [h] = json.loads(cli.stdout)["hosts"]
        assert h["failed_logins"]["by_source"][source.address] == before + made
        assert source.address in h["bans"]["current"] and h["bans"]["total"] >= 1
    finally:
        sh(lab_spec, target.name, unban)
    assert source.address not in host_audit(trusted, target).bans.current


# --- what goes wrong ---------------------------------------------------------------------------


def test_07_unreachable_host_and_bad_input(
    lab_spec: LabSpec, trusted: Inventory, web: list[Host], tmp_path: Path
) -> None:
    ghost = str(lab_network(lab_spec).network_address + 99)

    def add_ghost(data: dict[str, Any]) -> None:
        data["groups"]["ghosts"] = {"hosts": {"ghost1": {"address": ghost}}}

    path = write_inventory(tmp_path, add_ghost, "ghost.yml")
    started = time.monotonic()
    out = run_inv(path, "audit", "--hosts", f"ghost1,{web[1].name}")
    TIMINGS["inv audit with an unreachable host"] = round(time.monotonic() - started, 2)
    assert out.returncode in (1, 5), out.stdout + out.stderr
    assert "[ghost1] UNREACHABLE" in out.stdout and f"[{web[1].name}] " in out.stdout

    def bad_ports(data: dict[str, Any]) -> None:
        data["vars"]["audit_ports"] = ["ssh"]

    bad = run_inv(write_inventory(tmp_path, bad_ports, "bad.yml"), "audit")
    assert bad.returncode == 2 and "audit_ports: 'ssh'" in bad.stderr, bad.stdout + bad.stderr
    assert bad.stdout == ""
    nohost = run_inv(trusted.path, "audit", "--hosts", "nosuch")
    assert nohost.returncode == 2 and "matches no host" in nohost.stderr
    print("\nmeasured:", json.dumps(TIMINGS, indent=2))
