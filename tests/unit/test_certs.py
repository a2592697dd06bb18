"""Certificates (opskit/certs/, roles/certbot, the TLS part of roles/nginx): pure logic, the
role's shell run locally where it touches only paths we give it, and certificates made here
with `cryptography`."""

from __future__ import annotations

import base64
import datetime as dt
import json
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from opskit.certs.judge import (
    CertStatus,
    StatusReport,
    build_report,
    evaluate,
    format_status,
    status_json,
)
from opskit.certs.read import (
    CertInfo,
    HookRun,
    HostCerts,
    Lineage,
    collect_script,
    parse_certificate,
    parse_collect,
)
from opskit.certs.renew import RenewOptions, judge_renewal, renew_script
from opskit.certs.resources import Certificate, NoDuplicateRenewCron, plan_cron_fixes
from opskit.certs.spec import (
    CA_FILE,
    DEPLOY_HOOK,
    ENV_FILE,
    EXIT_ACME_UNREACHABLE,
    WRAPPER,
    CertSpec,
    check_vars,
    declared_certificates,
    read_ca_file,
    register_args,
    tls_site_paths,
)
from opskit.core.errors import ConfigError, ExitStatus, OpsError
from opskit.core.render import render
from opskit.core.roles import available_roles, check_host_vars
from opskit.lab.standins import pebble
from tests.fakes import LocalRemote

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
SERVER = "https://10.213.4.1:14000/dir"
SHOP = CertSpec("shop.example.com", ("shop.example.com", "www.shop.example.com"))


def role(name):
    return available_roles()[name].module()


def host_vars(**over):
    v = {}
    for r in ("app", "nginx", "certbot"):
        v.update(available_roles()[r].defaults)
    v.update(
        app_name="shop",
        certbot_acme_server=SERVER,
        certbot_agree_tos=True,
        certbot_certificates=[{"domains": list(SHOP.domains)}],
    )
    v.update(over)
    return v


def make_pem(names, *, days=90, issuer="Test CA", age_days=1):
    key = ec.generate_private_key(ec.SECP256R1())
    start = NOW - dt.timedelta(days=age_days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def info(names=SHOP.domains, *, days_left=60, issuer="Test CA"):
    return parse_certificate(make_pem(list(names), days=days_left + 10, issuer=issuer, age_days=10))


# --- declarations -------------------------------------------------------------------------------


def test_declared_certificates_default_their_name_to_the_first_domain():
    got = declared_certificates(
        {
            "certbot_certificates": [
                {"domains": ["a.example"]},
                {"name": "b", "domains": ["b.ex.io"]},
            ]
        }
    )
    assert got == (CertSpec("a.example", ("a.example",)), CertSpec("b", ("b.ex.io",)))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"domains": ["*.example.com"]}, "wildcards need a DNS-01 challenge"),
        ({"domains": ["Shop.Example.com"]}, "not a fully qualified DNS name in lower case"),
        ({"domains": ["localhost"]}, "not a fully qualified DNS name"),
        ({"domains": []}, "non-empty list"),
        ({"domain": ["a.example"]}, "expected {domains"),
        ({"domains": ["a.example"], "name": "A B"}, "certbot_certificates[0].name"),
    ],
)
def test_bad_certificate_declarations_name_the_entry(raw, message):
    with pytest.raises(ConfigError, match="certbot_certificates\\[0\\]") as exc:
        declared_certificates({"certbot_certificates": [raw]})
    assert message in str(exc.value)


def test_a_name_in_two_certificates_is_refused():
    with pytest.raises(ConfigError, match=r"'a.example' is already in certbot_certificates\[0\]"):
        declared_certificates(
            {"certbot_certificates": [{"domains": ["a.example"]}, {"domains": ["a.example"]}]}
        )


def test_issuing_needs_the_terms_agreed_an_https_directory_and_nginx():
    with pytest.raises(ConfigError, match="certbot_agree_tos"):
        check_vars(host_vars(certbot_agree_tos=False))
    with pytest.raises(ConfigError, match="certbot_acme_server"):
        check_vars(host_vars(certbot_acme_server="http://ca.example/dir"))
    with pytest.raises(ConfigError, match="certbot_critical_days"):
        check_vars(host_vars(certbot_critical_days=40))
    v = host_vars()
    del v["nginx_server_names"]
    with pytest.raises(ConfigError, match="needs the nginx role"):
        check_vars(v)
    # Without certificates nothing is issued: agreeing is not needed.
    assert check_vars(host_vars(certbot_agree_tos=False, certbot_certificates=[])) == ()


def test_the_ca_file_must_exist_and_hold_a_certificate(tmp_path):
    with pytest.raises(ConfigError, match="certbot_acme_ca_file: cannot read"):
        read_ca_file(str(tmp_path / "nope.pem"), tmp_path)
    (tmp_path / "x.pem").write_text("not a cert")
    with pytest.raises(ConfigError, match="holds no PEM certificate"):
        read_ca_file("x.pem", tmp_path)
    (tmp_path / "ca.pem").write_bytes(make_pem(["ca.example"]))
    assert "BEGIN CERTIFICATE" in read_ca_file("ca.pem", tmp_path)
    assert read_ca_file("", tmp_path) is None


# --- the roles' resources -----------------------------------------------------------------------


def test_nginx_without_certificates_renders_as_before():
    v = host_vars(certbot_certificates=[])
    files = [r for r in role("nginx").resources(v) if hasattr(r, "content")]
    assert [f.path for f in files] == ["/etc/nginx/conf.d/opskit-shop.conf"]
    assert "acme-challenge" not in files[0].content and "443" not in files[0].content


def test_nginx_with_certificates_writes_a_tls_site_and_leaves_port_80_names_to_it():
    v = host_vars(nginx_server_names=["shop.example.com", "admin.example.com"])
    res = role("nginx").resources(v)
    site = next(r for r in res if getattr(r, "path", "") == "/etc/nginx/conf.d/opskit-shop.conf")
    assert "server_name admin.example.com;" in site.content
    assert "location ^~ /.well-known/acme-challenge/ {\n        root /var/www/letsencrypt;" in (
        site.content
    )
    tls = next(r for r in res if getattr(r, "path", "").startswith("/etc/nginx/sites-available/"))
    assert tls.path == "/etc/nginx/sites-available/opskit-shop-tls-shop.example.com.conf"
    assert tls.check_after == "nginx -t"
    text = tls.content
    assert "listen 443 ssl http2;" in text
    assert "ssl_certificate /etc/letsencrypt/live/shop.example.com/fullchain.pem;" in text
    assert 'add_header Strict-Transport-Security "max-age=31536000" always;' in text
    assert "return 301 https://$host$request_uri;" in text
    assert text.index("acme-challenge") < text.index("return 301")
    nginx = next(r for r in res if r.id == "service:nginx")
    assert f"file:{tls.path}" in nginx.reload_on


def test_nginx_refuses_tls_when_the_app_site_is_not_the_default_server():
    with pytest.raises(ConfigError, match="nginx_remove_default_site"):
        role("nginx").resources(host_vars(nginx_remove_default_site=False))
    with pytest.raises(ConfigError, match="nginx_hsts"):  # refused at load: roles/nginx/schema.yml
        check_host_vars(available_roles(), ["nginx"], host_vars(nginx_hsts="max-age=1; evil"))


def test_certbot_issues_before_it_enables_the_site_and_reloads_once(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_bytes(make_pem(["acme.lab"]))
    res = role("certbot").resources(host_vars(certbot_acme_ca_file=str(ca)))
    ids = [r.id for r in res]
    cert = ids.index("certificate:shop.example.com")
    link = ids.index("symlink:/etc/nginx/sites-enabled/opskit-shop-tls-shop.example.com.conf")
    assert ids.index(f"file:{WRAPPER}") < cert < link < ids.index("reload:nginx (certificates)")
    assert ids.index(f"file:{DEPLOY_HOOK}") < cert
    env = next(r for r in res if r.id == f"file:{ENV_FILE}")
    assert f"REQUESTS_CA_BUNDLE={CA_FILE}" in env.content
    assert next(r for r in res if r.id == f"file:{CA_FILE}").content == ca.read_text()
    # Production: no private CA, its file is kept absent, the environment names nothing.
    prod = role("certbot").resources(host_vars())
    assert f"absent:{CA_FILE}" in [r.id for r in prod]
    env = next(r for r in prod if r.id == f"file:{ENV_FILE}")
    assert "REQUESTS_CA_BUNDLE" not in env.content


def test_certbot_without_certificates_issues_nothing():
    res = role("certbot").resources(host_vars(certbot_certificates=[]))
    assert not [r for r in res if isinstance(r, Certificate)]
    assert "service:certbot.timer" in [r.id for r in res]


# --- Certificate: the guard and the ACME check ----------------------------------------------


def cert_res(spec=SHOP, server=SERVER):
    return Certificate(spec, server, "/var/www/letsencrypt", register_args({}))


def test_certificate_plan_issue_reissue_or_nothing():
    c = cert_res()
    want = "sans shop.example.com www.shop.example.com \n"
    web = "webroot /var/www/letsencrypt\n"
    assert c.plan("conf -\nsans \nacme 0 200\n", frozenset()).reasons[0].startswith("issue")
    assert c.plan(f"conf {SERVER}\n{web}{want}", frozenset()).reasons == ()
    more = c.plan(f"conf {SERVER}\n{web}sans shop.example.com \nacme 0 200\n", frozenset())
    assert more.reasons[0].startswith("re-issue: names shop.example.com ->")
    assert not more.data["force"]
    moved = c.plan(f"conf https://old.example/dir\n{web}{want}acme 0 200\n", frozenset())
    assert "re-issue from" in moved.reasons[0] and moved.data["force"]
    # A renewal would write challenges where nginx no longer serves them: re-issue.
    root = c.plan(f"conf {SERVER}\nwebroot /srv/old\n{want}acme 0 200\n", frozenset())
    assert root.reasons == ("re-issue with webroot /var/www/letsencrypt (was /srv/old)",)


def test_certificate_plan_stops_the_run_when_the_acme_server_does_not_answer():
    with pytest.raises(OpsError, match=r"does not answer from this host .*Connection refused"):
        cert_res().plan(
            "conf -\nsans \nacme 7 curl: (7) Failed to connect: Connection refused 000\n",
            frozenset(),
        )
    with pytest.raises(OpsError, match="HTTP 404"):
        cert_res().plan("conf -\nsans \nacme 0 404\n", frozenset())
    # No curl on the host yet (the role installs it): the wrapper checks before certbot runs.
    assert cert_res().plan("conf -\nsans \nacme - no curl\n", frozenset()).reasons


def test_certificate_probe_asks_the_acme_server_only_when_it_must_issue(tmp_path):
    # The probe's shell, run locally: no renewal configuration here, so it asks the server
    # (a closed port on loopback).
    c = cert_res(server="https://127.0.0.1:9/dir")
    out = LocalRemote().run(c.probe()).stdout
    assert out.startswith("conf -\nsans \nacme 7 ")
    with pytest.raises(OpsError, match="does not answer"):
        c.plan(out, frozenset())


def test_certificate_script_goes_through_the_wrapper_with_the_check():
    script = cert_res().script(cert_res().plan("conf -\nsans \nacme 0 200\n", frozenset()))
    assert script.startswith(f"if ! _opskit_out=$({WRAPPER} --check {SERVER} -- certonly ")
    assert "--webroot --webroot-path /var/www/letsencrypt --cert-name shop.example.com" in script
    assert "-d shop.example.com -d www.shop.example.com" in script
    assert "--register-unsafely-without-email" in script and "--force-renewal" not in script


# --- one scheduler ----------------------------------------------------------------------------


DEBIAN_CRON = (
    "SHELL=/bin/sh\nPATH=/usr/bin\n\n0 */12 * * * root test -x /usr/bin/certbot -a \\! -d "
    "/run/systemd/system && perl -e 'sleep int(rand(43200))' && certbot -q renew\n"
)


def test_renew_crons_are_found_and_removed_with_nothing_else(tmp_path):
    crond = tmp_path / "cron.d"
    crond.mkdir()
    (crond / "certbot").write_text(DEBIAN_CRON)
    mixed = crond / "ops"
    mixed.write_text("MAILTO=ops\n0 3 * * * root certbot renew --quiet\n5 4 * * * root /bin/x\n")
    mixed.chmod(0o640)
    crontab = tmp_path / "crontab"
    crontab.write_text("17 * * * * root cd / && run-parts --report /etc/cron.hourly\n")
    state = "".join(
        f"file {p} {base64.b64encode(p.read_bytes()).decode()}\n"
        for p in (crond / "certbot", mixed, crontab)
    )
    r = NoDuplicateRenewCron()
    plan = r.plan(state, frozenset())
    assert plan.reasons == (f"remove {crond / 'certbot'}", f"remove 1 line(s) from {mixed}")
    assert "-0 3 * * * root certbot renew --quiet" in plan.diff
    LocalRemote().run(r.script(plan))
    assert not (crond / "certbot").exists()
    assert mixed.read_text() == "MAILTO=ops\n5 4 * * * root /bin/x\n"
    assert mixed.stat().st_mode & 0o777 == 0o640
    assert r.plan("", frozenset()).reasons == ()


def test_a_users_crontab_keeps_its_other_jobs():
    spool = (
        "# DO NOT EDIT THIS FILE - edit the master and reinstall.\n# (/tmp/x installed)\n"
        "# (Cron version -- $Id$)\n@daily /usr/bin/certbot renew\n@hourly /bin/true\n"
    )
    [fix] = plan_cron_fixes([("user", "root", spool)])
    assert fix.removed == ("@daily /usr/bin/certbot renew",) and fix.new_content == (
        "@hourly /bin/true\n"
    )
    [gone] = plan_cron_fixes([("user", "ops", "0 1 * * * certbot renew\n")])
    assert gone.new_content is None
    script = NoDuplicateRenewCron().script(
        NoDuplicateRenewCron().plan(
            "user ops " + base64.b64encode(b"0 1 * * * certbot renew\n").decode(), frozenset()
        )
    )
    assert script == "crontab -u ops -r"


# --- status ------------------------------------------------------------------------------------


def lineage(disk, served="same", declared=SHOP):
    served_info = disk if served == "same" else served
    return Lineage(SHOP.name, declared, SERVER, disk, served_info, SHOP.domains[0])


@pytest.mark.parametrize(
    ("days", "state", "problem"),
    [
        (60, "ok", None),
        (29, "warning", "expires in 29 days (warning below 30)"),
        (6, "critical", "expires in 6 day(s) (critical below 7)"),
        (-2, "critical", "EXPIRED on"),
    ],
)
def test_expiry_against_the_thresholds(days, state, problem):
    s = evaluate(lineage(info(days_left=days)), NOW, warning_days=30, critical_days=7)
    assert s.state == state and s.served == "same"
    assert (problem is None and not s.problems) or problem in s.problems[0]


def test_a_served_certificate_other_than_the_one_on_disk_is_critical():
    hook = HookRun("2026-11-23T11:00:00Z", SHOP.name, "failed", "nginx -t failed")
    s = evaluate(
        lineage(info(), served=info(days_left=3)),
        NOW,
        warning_days=30,
        critical_days=7,
        last_hook=hook,
    )
    assert s.state == "critical" and s.served == "different"
    assert "has not been reloaded" in s.problems[0] and "nginx -t failed" in s.problems[0]
    none = evaluate(lineage(info(), served=None), NOW, warning_days=30, critical_days=7)
    assert none.served == "none" and none.state == "critical"
    missing = evaluate(lineage(None), NOW, warning_days=30, critical_days=7)
    assert missing.state == "critical" and "not issued" in missing.problems[0]


def test_a_lineage_the_inventory_does_not_declare_is_reported_not_judged_on_serving():
    s = evaluate(lineage(info(), served=None, declared=None), NOW, warning_days=30, critical_days=7)
    assert s.state == "ok" and "not declared" in s.problems[0]


def test_exit_code_is_the_worst_state():
    def report(*states, failed=False):
        hosts = [HostCerts("a")] + ([HostCerts("b", error="unreachable")] if failed else [])
        statuses = tuple(CertStatus("a", lineage(info()), st, 60, "same", ()) for st in states)
        return StatusReport(tuple(hosts), statuses, NOW)

    assert report("ok").exit_code is ExitStatus.OK
    assert report("ok", "warning").exit_code is ExitStatus.WARNING
    assert report("warning", failed=True).exit_code is ExitStatus.HOST_FAILED
    assert report("critical", failed=True).exit_code is ExitStatus.CRITICAL
    assert report().exit_code is ExitStatus.OK and report().worst == "ok"
    # The scheme every judging task shares: 5 critical, else 1 unreadable, else 4 warning.
    assert [int(report(*st).exit_code) for st in (("warning",), ("critical", "warning"))] == [4, 5]
    assert report("warning", "critical", "ok").worst == "critical"
    text = format_status(report("ok", "warning", "critical", "warning"))
    assert "1 ok, 2 warning, 1 critical; 0 host(s) not read (exit 5)" in text
    assert "  warning   shop.example.com" in text


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_collect_output_is_parsed_into_lineages():
    disk = make_pem(list(SHOP.domains), issuer="Pebble Intermediate CA 1a2b3c")
    hook = b"2026-11-23T11:00:00Z\tshop.example.com\treloaded\tnginx -t passed; nginx reloaded\n"
    out = (
        f"@@cert shop.example.com\nserver {SERVER}\ndisk {b64(disk)}\nsni shop.example.com\n"
        f"served {b64(disk)}\n@@cert old.example.com\nserver \n"
        f"@@timer enabled|active\n@@hookcount 7\n@@hook {b64(hook)}\n"
    )
    h = parse_collect("web1", out, [SHOP])
    shop, old = h.lineages
    assert shop.declared == SHOP and shop.disk and shop.disk.issuer.startswith("Pebble")
    assert shop.served == shop.disk and shop.server == SERVER
    assert old.declared is None and old.disk is None
    assert h.timer == "enabled|active" and h.hook_count == 7
    assert h.last_hook("shop.example.com").result == "reloaded"
    report = build_report([h], {"web1": (30, 7)}, NOW)
    text = format_status(report)
    assert "served=disk" in text and "Pebble Intermediate CA 1a2b3c" in text
    data = json.loads(status_json(report))
    [first, _] = data["hosts"][0]["certificates"]
    assert first["served_matches_disk"] is True and first["days_left"] == 89
    assert first["issuer"] == "Pebble Intermediate CA 1a2b3c"


def test_collect_script_is_valid_bash_and_reads_nothing_it_should_not():
    script = collect_script([SHOP])
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    assert "127.0.0.1:443" in script and "rm " not in script and "> " not in script


# --- renew -----------------------------------------------------------------------------------


def host_with(disk, served, hooks=(), count=0):
    return HostCerts(
        "web1", (Lineage(SHOP.name, SHOP, SERVER, disk, served, SHOP.domains[0]),), "", count, hooks
    )


def judge(before, after, opts=None, code=0, output=""):
    opts = opts or RenewOptions()
    return judge_renewal(before, after, [SHOP.name], opts, {SHOP.name: code}, output)[0]


def test_a_renewal_is_proven_by_the_served_certificate():
    old, new = info(days_left=20), info(days_left=89)
    ok = HookRun("t", SHOP.name, "reloaded", "nginx -t passed; nginx reloaded")
    r = judge(host_with(old, old), host_with(new, new, (ok,), 1), RenewOptions(force=True))
    assert r.outcome == "renewed" and "nginx serves it" in r.detail and r.hooks == (ok,)
    bad = HookRun("t", SHOP.name, "failed", "nginx -t failed, nginx NOT reloaded")
    r = judge(host_with(old, old), host_with(new, old, (bad,), 1), RenewOptions(force=True))
    assert r.failed and "renewed on disk" in r.detail and "still serves" in r.detail
    assert "nginx -t failed" in r.detail
    r = judge(host_with(old, old), host_with(new, old), RenewOptions(force=True))
    assert r.failed and "the deploy hook did not run" in r.detail


def test_not_due_unreachable_and_dry_run():
    c = info(days_left=80)
    assert judge(host_with(c, c), host_with(c, c)).outcome == "not due"
    down = "opskit-certbot: the ACME server X does not answer from web1 (refused)\n@@rc 69\n"
    r = judge(host_with(c, c), host_with(c, c), code=EXIT_ACME_UNREACHABLE, output=down)
    assert (
        r.failed
        and r.detail == "opskit-certbot: the ACME server X does not answer from web1 (refused)"
    )
    r = judge(host_with(c, c), host_with(c, c), RenewOptions(dry_run=True))
    assert r.outcome == "simulated"
    out = f"Failed to renew certificate {SHOP.name} with error: boom\n"
    r = judge(host_with(c, c), host_with(c, c), RenewOptions(force=True), code=1, output=out)
    assert r.failed and r.detail == "certbot: boom"


def test_a_dry_run_names_the_server_of_each_lineage():
    script = renew_script(
        [("a", "https://one/dir"), ("b", "https://two/dir")], RenewOptions(dry_run=True)
    )
    lines = script.splitlines()
    assert len(lines) == 2 and "--cert-name b --server https://two/dir --dry-run" in lines[1]


# --- the wrapper and the lab's pebble ----------------------------------------------------------


def test_wrapper_refuses_to_run_certbot_when_the_acme_server_does_not_answer(tmp_path):
    v = {
        "certbot_env_file": str(tmp_path / "env"),
        "certbot_exit_unreachable": EXIT_ACME_UNREACHABLE,
        "certbot_register_args": "--agree-tos",
    }
    wrapper = tmp_path / "opskit-certbot"
    wrapper.write_text(render("certbot/opskit-certbot.j2", v))
    p = subprocess.run(
        ["bash", str(wrapper), "--check", "https://127.0.0.1:9/dir", "--", "--version"],
        capture_output=True,
        text=True,
    )
    assert p.returncode == EXIT_ACME_UNREACHABLE
    assert "does not answer" in p.stderr and "nothing was changed" in p.stderr


def test_pebble_config_and_pki(tmp_path: Path):
    cfg = pebble.config("10.213.4.1", tmp_path)["pebble"]
    assert cfg["listenAddress"] == "10.213.4.1:14000"
    assert cfg["managementListenAddress"] == "10.213.4.1:15000"  # roots.pem for inv audit
    assert cfg["certificateValidityPeriod"] == 90 * 24 * 3600
    pki = pebble.ensure_pki(tmp_path / "pki", "10.213.4.1")
    served = x509.load_pem_x509_certificate((pki / "server.pem").read_bytes())
    san = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["10.213.4.1"]
    first = (pki / "ca.pem").read_bytes()
    pebble.ensure_pki(tmp_path / "pki", "10.213.4.1")
    assert (pki / "ca.pem").read_bytes() == first  # made once
    pebble.ensure_pki(tmp_path / "pki", "10.213.9.1")  # the bridge moved: a new certificate
    assert (pki / "ca.pem").read_bytes() != first


def test_cert_info_days_left():
    c = CertInfo("f", "1", ("a",), NOW, NOW + dt.timedelta(days=4, hours=23), "x")
    assert c.days_left(NOW) == 4


def test_the_lab_inventorys_web_hosts_have_every_resource_once(tmp_path):
    """All roles of inventories/lab.yml's web group together (certbot next to healthcheck,
    papertrail, app, nginx): no resource is declared twice, and the certificate comes after
    the TLS site it enables needs."""
    import yaml

    from opskit.core.inventory import load_inventory
    from opskit.core.roles import REPO
    from opskit.core.runner import role_resources

    data = yaml.safe_load((REPO / "inventories" / "lab.yml").read_text())
    ca = tmp_path / "ca.pem"
    ca.write_bytes(make_pem(["lab.ca"]))
    data["vars"]["papertrail_ca_file"] = str(ca)
    data["groups"]["web"]["vars"]["certbot_acme_ca_file"] = str(ca)
    data["secrets"] = {}
    path = tmp_path / "lab.yml"
    path.write_text(yaml.safe_dump(data))
    env = {
        "SLACK_WEBHOOK_URL": "http://10.213.0.1:8025/services/T0/B0/abc",
        "UPTIMEROBOT_API_KEY": "u0-abc",
        "SENTRY_AUTH_TOKEN": "sntryu_abc",
        "SENTRY_DSN": "http://abc@10.213.0.1:8028/1",
        "POSTGRES_APP_PASSWORD": "abc",
        "APP_ADMIN_TOKEN": "abc",
        "BACKUP_S3_ACCESS_KEY_ID": "LABABC",
        "BACKUP_S3_SECRET_ACCESS_KEY": "abc",
        "SLACK_ENGINEERING_WEBHOOK_URL": "http://10.213.0.1:8025/services/T0/B1/abc",
        "SLACK_DEVOPS_WEBHOOK_URL": "http://10.213.0.1:8025/services/T0/B2/abc",
        "PAGERDUTY_ROUTING_KEY": "0123456789abcdef0123456789abcdef",
    }
    inventory = load_inventory(path, environ=env)
    for host in inventory.select(["web"]):
        assert "certbot" in host.roles
        ids = [r.id for r in role_resources(host, host.roles)]
        assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
        spec = declared_certificates(host.vars)[0]
        available, enabled = tls_site_paths(host.vars, spec)
        assert ids.index(f"file:{available}") < ids.index(f"certificate:{spec.name}")
        assert ids.index(f"certificate:{spec.name}") < ids.index(f"symlink:{enabled}")
