"""What the papertrail role promises (roles/papertrail/README.md), checked on the host itself."""

from __future__ import annotations

ROLE = "papertrail"
CONF = "/etc/rsyslog.d/90-opskit-papertrail.conf"


def test_rsyslog_with_tls(host, hostvars):
    for name in hostvars["papertrail_packages"]:
        assert host.package(name).is_installed, name
    assert host.service("rsyslog").is_running and host.service("rsyslog").is_enabled
    assert host.run("rsyslogd -N1").rc == 0


def test_forwarding_is_tls_with_a_verified_certificate(host, hostvars):
    conf = host.file(CONF).content_string
    assert f'Target="{hostvars["papertrail_host"]}"' in conf
    assert f'Port="{hostvars["papertrail_port"]}"' in conf
    assert 'StreamDriver="gtls"' in conf and 'StreamDriverMode="1"' in conf
    assert 'StreamDriverAuthMode="x509/name"' in conf
    assert f'StreamDriverPermittedPeers="{hostvars["papertrail_permitted_peer"]}"' in conf
    ca = conf.split('StreamDriver.CAFile="', 1)[1].split('"', 1)[0]
    assert host.file(ca).exists
    assert "BEGIN CERTIFICATE" in host.file(ca).content_string


def test_app_logs_followed(host, hostvars):
    conf = host.file(CONF).content_string
    for f in hostvars["papertrail_app_logs"] or []:
        assert f'File="{f["path"]}"' in conf and f'Tag="{f["tag"]}"' in conf


def test_rsyslog_connected_to_the_destination(host, hostvars):
    # rsyslog connects when it has something to send: send a line, then look for the connection.
    port = hostvars["papertrail_port"]
    host.run("logger -t opskit-verify 'papertrail connection check'")
    out = host.run(
        "for i in 1 2 3 4 5 6 7 8 9 10; do "
        f"ss -Htn state established '( dport = :{port} )' | grep -q . && exit 0; sleep 1; "
        "done; exit 1"
    )
    assert out.rc == 0, f"rsyslog has no connection to port {port}"
