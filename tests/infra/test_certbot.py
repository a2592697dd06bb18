"""What the certbot role promises (roles/certbot/README.md), checked on the host itself."""

from __future__ import annotations

import shlex

ROLE = "certbot"

HOOK = "/etc/letsencrypt/renewal-hooks/deploy/50-opskit-nginx-reload"
CRONTABS = "/etc/crontab /etc/cron.d/* /var/spool/cron/crontabs/*"


def _certificates(hostvars):
    out = []
    for item in hostvars.get("certbot_certificates") or []:
        out.append((item.get("name") or item["domains"][0], list(item["domains"])))
    return out


def test_certbot_installed_and_the_timer_is_the_one_scheduler(host):
    assert host.package("certbot").is_installed
    timer = host.service("certbot.timer")
    assert timer.is_enabled and timer.is_running
    # No crontab runs `certbot renew` next to the timer.
    found = host.run(
        f"grep -hsE '^[^#]*(certbot|letsencrypt)[^#]*[[:space:]]renew' {CRONTABS} || true"
    )
    assert found.stdout.strip() == "", found.stdout


def test_deploy_hook_tests_nginx_before_it_reloads(host):
    hook = host.file(HOOK)
    assert hook.exists and hook.user == "root" and hook.mode & 0o111
    text = hook.content_string
    assert text.index("nginx -t") < text.index("systemctl reload nginx")
    assert host.run(f"bash -n {HOOK}").rc == 0
    assert host.file("/usr/local/sbin/opskit-certbot").mode == 0o755


def test_renewal_timer_gets_the_acme_environment(host, hostvars):
    env = host.run("systemctl show certbot.service -p EnvironmentFiles").stdout
    assert "/etc/opskit/certbot/env" in env
    if hostvars["certbot_acme_ca_file"]:
        assert "REQUESTS_CA_BUNDLE=" in host.file("/etc/opskit/certbot/env").content_string


def test_each_certificate_is_issued_from_the_declared_acme_server(host, hostvars):
    for name, domains in _certificates(hostvars):
        conf = host.file(f"/etc/letsencrypt/renewal/{name}.conf")
        assert conf.exists, name
        assert f"server = {hostvars['certbot_acme_server']}" in conf.content_string
        sans = host.check_output(
            f"openssl x509 -in /etc/letsencrypt/live/{shlex.quote(name)}/cert.pem -noout "
            "-ext subjectAltName"
        )
        for d in domains:
            assert f"DNS:{d}" in sans, (name, d)


def _fingerprint(host, command):
    return host.check_output(f"{command} | openssl x509 -noout -fingerprint -sha256")


def test_nginx_serves_the_certificate_on_disk(host, hostvars):
    for name, domains in _certificates(hostvars):
        disk = _fingerprint(host, f"cat /etc/letsencrypt/live/{shlex.quote(name)}/cert.pem")
        for d in domains:
            served = _fingerprint(
                host,
                f"openssl s_client -connect 127.0.0.1:443 -servername {shlex.quote(d)} "
                "</dev/null 2>/dev/null",
            )
            assert served == disk, f"{d}: nginx serves another certificate than {name}'s"


def test_http_redirects_to_https_except_acme_challenges(host, hostvars):
    for _, domains in _certificates(hostvars):
        d = shlex.quote(domains[0])
        head = host.check_output(f"curl -s -o /dev/null -D - -H 'Host: '{d} http://127.0.0.1/x?y=1")
        assert head.startswith("HTTP/1.1 301") and f"location: https://{domains[0]}/x?y=1" in (
            head.lower()
        )
        # The challenge path is answered from the webroot (nginx's 404 here), not redirected.
        code = host.check_output(
            f"curl -s -o /dev/null -w '%{{http_code}}' -H 'Host: '{d} "
            "http://127.0.0.1/.well-known/acme-challenge/opskit-verify-absent"
        )
        assert code == "404"


def test_https_sends_hsts_and_the_security_headers(host, hostvars):
    for _, domains in _certificates(hostvars):
        d = shlex.quote(domains[0])
        head = host.check_output(
            f"curl -sk -o /dev/null -D - --resolve {d}:443:127.0.0.1 https://{d}/"
        ).lower()
        if hostvars.get("nginx_hsts"):
            assert f"strict-transport-security: {hostvars['nginx_hsts'].lower()}" in head
        for name, value in (hostvars.get("nginx_security_headers") or {}).items():
            if value:
                assert f"{name.lower()}: {value.lower()}" in head
