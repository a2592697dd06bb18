"""TLS certificates on lab hosts, from the lab's ACME server (Debian's pebble on the bridge):
the certbot role, nginx's TLS sites, `inv certs.status` and `inv certs.renew`.

The web hosts of the lab inventory have the certbot role with `certbot_certificates`. Certificates
are read two ways: by opskit (on the host) and here, from the operator's machine, with a real
TLS handshake to <host>:443 naming the certificate's main name (SNI). Tests run in file order
and build on each other; each leaves the hosts serving a valid certificate.

A certificate close to expiry is made by hand: bookworm's pebble issues certificates of one
lifetime for all (the lab sets 90 days), so the test re-signs a lineage's certificate with its
own key for N days with openssl (a self-signed certificate with the same names, put where
certbot keeps it) and reloads nginx; certbot sees it as due and renews it for real.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest

from opskit.certs.read import CertInfo, parse_certificate
from opskit.certs.spec import CertSpec, declared_certificates, tls_site_paths
from opskit.core.inventory import Inventory, load_inventory
from opskit.core.runner import provision_work, run_on_hosts
from opskit.fleet.verify import run_verify
from opskit.lab import lifecycle
from opskit.lab.nspawn import exec_in
from opskit.lab.spec import LabSpec
from tests.integration.conftest import inv, write_inventory

ROLES = ["nginx", "certbot"]
TIMINGS: dict[str, Any] = {}
BROKEN = "/etc/nginx/conf.d/zz-opskit-test-broken.conf"


@pytest.fixture(scope="module")
def web(lab_inventory: Inventory) -> list[Any]:
    hosts = [h for h in lab_inventory.hosts if "certbot" in h.roles]
    if len(hosts) < 2 or not all(declared_certificates(h.vars) for h in hosts):
        pytest.fail(
            f"{lab_inventory.path}: needs two hosts with the certbot role and certbot_certificates"
            " (inventories/lab.yml's web group has them)"
        )
    return hosts


def main_cert(host: Any) -> CertSpec:
    return declared_certificates(host.vars)[0]


def served(address: str, sni: str) -> CertInfo:
    """The certificate a TLS client gets from address:443 for `sni` (operator side)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((address, 443), timeout=10) as sock,
        ctx.wrap_socket(sock, server_hostname=sni) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return parse_certificate(ssl.DER_cert_to_PEM_cert(der).encode())


def http_head(address: str, host_header: str, path: str = "/", port: int = 80) -> str:
    with socket.create_connection((address, port), timeout=10) as s:
        s.sendall(
            f"HEAD {path} HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return data.decode(errors="replace")


def run(inventory_path: Any, *args: str) -> Any:
    return inv(*args, env={"OPSKIT_INVENTORY": str(inventory_path)})


def status_json(inventory: Inventory, *hosts: str) -> tuple[int, dict[str, Any]]:
    args = ["certs.status", "--json"] + (["--hosts", ",".join(hosts)] if hosts else [])
    out = run(inventory.path, *args)
    assert out.stdout.startswith("{"), out.stdout + out.stderr
    return out.returncode, json.loads(out.stdout)


def cert_entry(data: dict[str, Any], host: str, name: str) -> dict[str, Any]:
    [h] = [h for h in data["hosts"] if h["host"] == host]
    [c] = [c for c in h["certificates"] if c["name"] == name]
    return c


def snapshot(spec: LabSpec, host: str) -> str:
    """Every file under /etc/letsencrypt and /etc/nginx: path, size, mode, mtime, checksum."""
    script = (
        "find /etc/letsencrypt /etc/nginx /var/lib/opskit/certbot -xdev "
        "-printf '%p %s %m %T@ %l\\n' | sort; "
        "find /etc/letsencrypt /etc/nginx -xdev -type f -exec sha256sum {} + | sort"
    )
    return exec_in(spec, host, ["bash", "-c", script]).stdout


def make_expiring(spec: LabSpec, host: str, cert: CertSpec, days: int) -> None:
    """Re-sign the lineage's certificate with its own key, valid for `days` from now."""
    sans = ",".join(f"DNS:{d}" for d in cert.domains)
    script = f"""set -e
live=/etc/letsencrypt/live/{cert.name}
c=$(readlink -f "$live/cert.pem"); f=$(readlink -f "$live/fullchain.pem")
openssl req -x509 -key "$live/privkey.pem" -days {days} -subj "/CN={cert.domains[0]}" \\
  -addext "subjectAltName={sans}" -out "$c" 2>/dev/null
cp "$c" "$f"
nginx -t 2>/dev/null && systemctl reload nginx
"""
    done = exec_in(spec, host, ["bash", "-c", script])
    assert done.returncode == 0, done.stderr


def wait_served(address: str, cert: CertSpec, fingerprint: str) -> None:
    deadline = time.monotonic() + 15
    while served(address, cert.domains[0]).fingerprint != fingerprint:
        assert time.monotonic() < deadline, "nginx did not pick up the certificate"
        time.sleep(0.3)


def disk_fingerprint(spec: LabSpec, host: str, cert: CertSpec) -> str:
    pem = exec_in(spec, host, ["cat", f"/etc/letsencrypt/live/{cert.name}/cert.pem"]).stdout
    return parse_certificate(pem.encode()).fingerprint


# --- issue, converge, verify -----------------------------------------------------------------


def test_01_first_provision_issues_the_certificates_and_serves_https(lab_inventory, web):
    started = time.monotonic()
    first = run_on_hosts(lab_inventory, web, provision_work(ROLES))
    TIMINGS["first provision (issue)"] = round(time.monotonic() - started, 1)
    assert [r.error for r in first] == [None] * len(web)
    for r, h in zip(first, web, strict=True):
        cert = main_cert(h)
        made = {c.resource: c.summary for c in r.changes if c.changed}
        assert made[f"certificate:{cert.name}"].startswith("issue for ")
        _, enabled = tls_site_paths(h.vars, cert)
        assert made[f"symlink:{enabled}"] == "enable"
        got = served(h.address, cert.domains[0])
        assert set(cert.domains) <= set(got.names)
        assert got.issuer.startswith("Pebble Intermediate CA"), got.issuer
        assert 85 <= got.days_left(got.not_before) <= 90  # the lab's pebble: 90 days
        # HTTP for the names goes to HTTPS, except the ACME challenges. (nginx's reload is
        # asynchronous: old workers may answer for a moment with the previous configuration.)
        deadline = time.monotonic() + 15
        while (
            not (head := http_head(h.address, cert.domains[0], "/shop?x=1")).startswith(
                "HTTP/1.1 301"
            )
            and time.monotonic() < deadline
        ):
            time.sleep(0.3)
        assert head.startswith("HTTP/1.1 301") and (
            f"Location: https://{cert.domains[0]}/shop?x=1" in head
        )
        acme = http_head(h.address, cert.domains[0], "/.well-known/acme-challenge/absent")
        assert acme.startswith("HTTP/1.1 404"), acme
        # The address itself (the default server) still serves plain HTTP as before.
        assert not http_head(h.address, h.address).startswith("HTTP/1.1 301")


def test_02_second_provision_changes_nothing(lab_inventory, web):
    again = run_on_hosts(lab_inventory, web, provision_work(ROLES))
    assert [[c.resource for c in r.changes if c.changed] for r in again] == [[]] * len(web)
    assert [r.commands for r in again] == [1] * len(web)  # one remote command: all probes
    check = run(
        lab_inventory.path,
        "provision",
        "--roles",
        ",".join(ROLES),
        "--hosts",
        ",".join(h.name for h in web),
        "--check",
        "--detailed-exitcode",
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_03_testinfra_specs_pass(lab_inventory, web):
    assert run_verify(lab_inventory, web, ["-k", "test_certbot or test_nginx"]) == 0


def test_04_status_reports_days_left_issuer_and_served_equals_disk(lab_inventory, web):
    code, data = status_json(lab_inventory)
    assert code == 0 and data["worst"] == "ok", json.dumps(data, indent=2)
    for h in web:
        c = cert_entry(data, h.name, main_cert(h).name)
        assert c["state"] == "ok" and c["served_matches_disk"] is True
        assert 88 <= c["days_left"] <= 90
        assert c["issuer"].startswith("Pebble Intermediate CA")
        assert (
            c["disk"]["fingerprint_sha256"]
            == served(h.address, main_cert(h).domains[0]).fingerprint
        )
        assert c["server"] == h.vars["certbot_acme_server"]
    text = run(lab_inventory.path, "certs.status")
    assert text.returncode == 0 and text.stdout.count("served=disk") == len(web), text.stdout
    assert "days left" in text.stdout and "certbot.timer enabled, active" in text.stdout


# --- renewals ----------------------------------------------------------------------------


def test_05_forced_renewal_changes_the_served_certificate(lab_inventory, web):
    h, cert = web[0], main_cert(web[0])
    before = served(h.address, cert.domains[0])
    started = time.monotonic()
    out = run(lab_inventory.path, "certs.renew", "--force", "--hosts", h.name, "--json")
    TIMINGS["forced renewal, proven"] = round(time.monotonic() - started, 1)
    assert out.returncode == 0, out.stdout + out.stderr
    [c] = json.loads(out.stdout)["hosts"][0]["certificates"]
    assert c["outcome"] == "renewed" and c["served_changed"] is True
    assert [x["result"] for x in c["deploy_hook"]] == ["reloaded"]
    after = served(h.address, cert.domains[0])  # what a client gets now
    assert after.fingerprint != before.fingerprint
    assert after.fingerprint == c["after"]["fingerprint_sha256"]
    text = run(lab_inventory.path, "certs.renew", "--hosts", h.name)  # not due: nothing to do
    assert text.returncode == 0 and f"[{h.name}] ok       {cert.name}  not due" in text.stdout


def test_06_dry_run_changes_nothing(lab_spec, lab_inventory, web):
    h, cert = web[1], main_cert(web[1])
    before = snapshot(lab_spec, h.name)
    out = run(lab_inventory.path, "certs.renew", "--dry-run", "--hosts", h.name)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"[{h.name}] dry-run  {cert.name}  simulated renewal from " in out.stdout
    assert h.vars["certbot_acme_server"] in out.stdout  # pebble, not Let's Encrypt's staging
    after = snapshot(lab_spec, h.name)
    # certbot --dry-run saves no certificate: the lineage and nginx are as they were.
    live = [ln for ln in before.splitlines() if "/live/" in ln or "/archive/" in ln]
    assert live == [ln for ln in after.splitlines() if "/live/" in ln or "/archive/" in ln]


def test_07_close_to_expiry_is_warning_then_critical_and_renew_fixes_it(
    lab_spec, lab_inventory, web
):
    h, cert = web[1], main_cert(web[1])
    for days, state, code in ((20, "warning", 4), (5, "critical", 5)):
        make_expiring(lab_spec, h.name, cert, days)
        wait_served(h.address, cert, disk_fingerprint(lab_spec, h.name, cert))
        got, data = status_json(lab_inventory)
        c = cert_entry(data, h.name, cert.name)
        assert (got, c["state"], c["days_left"]) == (code, state, days - 1), c
        assert c["served_matches_disk"] is True
        assert data["worst"] == state
    text = run(lab_inventory.path, "certs.status", "--hosts", h.name)
    assert text.returncode == 5 and "expires in 4 day(s) (critical below 7)" in text.stdout
    # A plain renewal (not forced) renews it: it is due.
    out = run(lab_inventory.path, "certs.renew", "--hosts", h.name)
    assert out.returncode == 0 and f"[{h.name}] renewed  {cert.name}" in out.stdout, out.stdout
    got, data = status_json(lab_inventory, h.name)
    c = cert_entry(data, h.name, cert.name)
    assert got == 0 and c["state"] == "ok" and c["days_left"] >= 88


def test_08_broken_nginx_config_keeps_the_old_certificate_serving(lab_spec, lab_inventory, web):
    h, cert = web[0], main_cert(web[0])
    before = served(h.address, cert.domains[0])
    exec_in(lab_spec, h.name, ["bash", "-c", f"echo 'this is not nginx;' > {BROKEN}"])
    try:
        out = run(lab_inventory.path, "certs.renew", "--force", "--hosts", h.name)
        assert out.returncode == 1, out.stdout + out.stderr
        assert f"[{h.name}] FAILED   {cert.name}  renewed on disk" in out.stdout
        assert "still serves" in out.stdout and "nginx -t failed, nginx NOT reloaded" in out.stdout
        assert BROKEN in out.stdout  # nginx's own error names the file
        assert served(h.address, cert.domains[0]).fingerprint == before.fingerprint
        code, data = status_json(lab_inventory, h.name)
        c = cert_entry(data, h.name, cert.name)
        assert code == 5 and c["served"] == "different" and c["state"] == "critical"
        assert c["last_deploy_hook"]["result"] == "failed"
        journal = exec_in(lab_spec, h.name, ["journalctl", "-t", "opskit-certbot-hook"])
        assert "nginx -t failed" in journal.stdout
    finally:
        exec_in(lab_spec, h.name, ["bash", "-c", f"rm -f {BROKEN} && systemctl reload nginx"])
    wait_served(h.address, cert, disk_fingerprint(lab_spec, h.name, cert))
    assert status_json(lab_inventory, h.name)[0] == 0


def test_09_a_duplicate_renewal_cron_is_removed(lab_spec, lab_inventory, web):
    h = web[0]
    exec_in(
        lab_spec,
        h.name,
        [
            "bash",
            "-c",
            "echo '0 3 * * * root certbot renew --quiet' > /etc/cron.d/runbook-certbot && "
            "printf '@daily certbot renew\\n@hourly true\\n' | crontab -",
        ],
    )
    [r] = run_on_hosts(lab_inventory, [h], provision_work(["certbot"]))
    [fix] = [c for c in r.changes if c.changed]
    assert fix.resource.startswith("cron:") and "/etc/cron.d/runbook-certbot" in fix.summary
    assert "root's crontab" in fix.summary
    assert exec_in(lab_spec, h.name, ["crontab", "-l"]).stdout.strip().endswith("@hourly true")
    assert exec_in(lab_spec, h.name, ["test", "-e", "/etc/cron.d/runbook-certbot"]).returncode
    [again] = run_on_hosts(lab_inventory, [h], provision_work(["certbot"]))
    assert [c.resource for c in again.changes if c.changed] == []


# --- what goes wrong -----------------------------------------------------------------------


def _pebble_pid(spec: LabSpec) -> int:
    pid = int((spec.state_dir / "services" / "pebble.pid").read_text())
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    assert b"OPSKIT_LAB_SERVICE=pebble" in environ  # the lab's own pebble, nothing else
    return pid


def test_10_acme_unreachable_is_a_clear_error_and_changes_nothing(
    lab_spec, lab_inventory, web, tmp_path
):
    h, cert = web[0], main_cert(web[0])
    pid = _pebble_pid(lab_spec)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        before, serving = snapshot(lab_spec, h.name), served(h.address, cert.domains[0])
        out = run(lab_inventory.path, "certs.renew", "--force", "--hosts", h.name)
        assert out.returncode == 1
        assert f"the ACME server {h.vars['certbot_acme_server']} does not answer" in out.stdout
        assert "certbot was not run and nothing was changed" in out.stdout

        # A new certificate cannot be issued either: the run stops before anything changes
        # (not even nginx's TLS site for it, nor the names of its port-80 server).
        def more(data: dict[str, Any]) -> None:
            data["groups"]["web"]["vars"]["certbot_certificates"].append(
                {"domains": [f"api.{cert.domains[0]}"]}
            )

        bigger = load_inventory(write_inventory(tmp_path, more))
        [r] = run_on_hosts(bigger, [bigger.host(h.name)], provision_work(ROLES))
        assert r.error and f"certificate:api.{cert.domains[0]}: the ACME server" in r.error
        assert "nothing was changed" in r.error and r.changes == ()
        assert snapshot(lab_spec, h.name) == before
        assert served(h.address, cert.domains[0]).fingerprint == serving.fingerprint
    finally:
        # starts the stopped pebble again (a new one: it forgot its accounts)
        lifecycle.up(lab_spec)
    # The host's ACME account is gone with the old pebble: the wrapper registers a new one.
    out = run(lab_inventory.path, "certs.renew", "--force", "--hosts", h.name)
    assert out.returncode == 0 and f"[{h.name}] renewed  {cert.name}" in out.stdout, out.stdout
    assert "a new one was registered" in out.stdout
    assert served(h.address, cert.domains[0]).fingerprint != serving.fingerprint


def test_11_bad_input_is_refused_before_any_host_is_touched(lab_spec, lab_inventory, web, tmp_path):
    h = web[0]
    before = snapshot(lab_spec, h.name)

    def wildcard(data: dict[str, Any]) -> None:
        data["groups"]["web"]["vars"]["certbot_certificates"] = [{"domains": ["*.lab.test"]}]

    bad = write_inventory(tmp_path, wildcard, "wild.yml")
    out = run(bad, "provision", "--roles", ",".join(ROLES), "--hosts", h.name)
    # Refused at load, before any host is contacted.
    assert out.returncode == 2 and "certbot_certificates[0].domains: '*.lab.test'" in out.stderr
    status = run(bad, "certs.status", "--hosts", h.name)
    assert status.returncode == 2 and "wildcards need a DNS-01 challenge" in status.stderr
    missing = run(lab_inventory.path, "certs.renew", "--cert", "nope.example", "--hosts", h.name)
    assert missing.returncode == 1 and "no certificate 'nope.example' to renew" in missing.stdout
    assert snapshot(lab_spec, h.name) == before


def test_12_everything_is_still_converged(lab_inventory, web):
    again = run_on_hosts(lab_inventory, web, provision_work(ROLES))
    assert [[c.resource for c in r.changes if c.changed] for r in again] == [[]] * len(web)
    assert status_json(lab_inventory)[0] == 0
    print("\nmeasured:", json.dumps(TIMINGS, indent=2))
