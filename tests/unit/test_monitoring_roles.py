"""The healthcheck and papertrail roles (pure), and the health check itself (a host program
imported like any module), run locally against small HTTP servers standing in for the app and
Slack."""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from opskit.core.errors import ConfigError
from opskit.core.roles import available_roles, check_host_vars
from opskit.core.secrets import Secret
from opskit.hostside import healthcheck as hc
from opskit.monitoring.spec import SCRIPT, WEBHOOK_FILE
from opskit.resources import File
from opskit.resources.files import host_program_source

HOOK = Secret("https://hooks.test/services/T1/B1/verysecret")


def role(name):
    return available_roles()[name].module()


def hc_vars(**over):
    v = dict(available_roles()["healthcheck"].defaults)
    v.update({"healthcheck_slack_webhook_url": HOOK, **over})
    return v


# --- healthcheck role --------------------------------------------------------------------------


def test_config_follows_the_app_role_and_the_runbook_thresholds():
    v = hc_vars(
        app_port=3000,
        app_health_path="/health",
        app_user="app",
        app_name="shop",
        nginx_server_names=["_"],
    )
    config = role("healthcheck").build_config(v)
    checks = config["checks"]
    assert checks["http"] == {
        "url": "http://127.0.0.1:3000/health",
        "keyword": "healthy",
        "warning_ms": 500,
        "critical_ms": 2000,
    }
    assert checks["disk"]["warning"] == 70 and checks["disk"]["critical"] == 90
    assert checks["memory"] == {"warning": 70, "critical": 90}
    assert checks["cpu"]["critical"] == 90
    assert checks["pm2"]["user"] == "app" and checks["pm2"]["apps"] == ["shop"]
    assert checks["pm2"]["home"] == "/home/app/.pm2"
    assert checks["access_log"]["error_rate_warning"] == 1
    assert checks["access_log"]["error_rate_critical"] == 5
    assert checks["access_log"]["p95_critical_ms"] == 2000
    assert "database" not in checks  # no postgresql role, no database host given
    assert str(HOOK) not in json.dumps(config)


def test_a_host_without_the_app_checks_only_what_it_has():
    checks = role("healthcheck").build_config(hc_vars(postgresql_version=15))["checks"]
    assert sorted(checks) == ["cpu", "database", "disk", "memory"]
    assert checks["database"] == {"host": "127.0.0.1", "port": 5432}


def test_thresholds_are_checked():
    with pytest.raises(ConfigError, match="healthcheck_disk_warning \\(95\\) is above"):
        role("healthcheck").build_config(hc_vars(healthcheck_disk_warning=95))
    # Refused at load (roles/healthcheck/schema.yml), as check_host_vars does here:
    with pytest.raises(ConfigError, match="healthcheck_memory_critical: expected a number 0-100"):
        check_host_vars(
            available_roles(), ["healthcheck"], hc_vars(healthcheck_memory_critical=120)
        )
    with pytest.raises(ConfigError, match="healthcheck_checks"):
        check_host_vars(available_roles(), ["healthcheck"], hc_vars(healthcheck_checks=["dsk"]))


def test_webhook_must_be_a_secret_and_goes_only_to_a_0600_file():
    with pytest.raises(ConfigError, match="healthcheck_slack_webhook_url: required"):
        check_host_vars(
            available_roles(), ["healthcheck"], hc_vars(healthcheck_slack_webhook_url="")
        )
    with pytest.raises(ConfigError, match="must be a secret reference") as info:
        plain = hc_vars(healthcheck_slack_webhook_url=str(HOOK))
        check_host_vars(available_roles(), ["healthcheck"], plain)
    assert "verysecret" not in str(info.value)
    resources = role("healthcheck").resources(hc_vars())
    files = {r.path: r for r in resources if isinstance(r, File)}
    hook = files["/etc/opskit/healthcheck-slack-webhook"]
    assert hook.mode == 0o600 and hook.sensitive and hook.content == f"{HOOK}\n"
    assert str(HOOK) not in files["/usr/local/bin/opskit-healthcheck"].content
    assert str(HOOK) not in files["/etc/opskit/healthcheck.json"].content
    cron = files["/etc/cron.d/opskit-healthcheck"].content
    assert "*/5 * * * * root /usr/local/bin/opskit-healthcheck --quiet" in cron


def test_the_role_installs_the_host_program_verbatim_and_its_config_as_json():
    v = hc_vars(
        app_port=3000,
        app_user="app",
        app_name="shop",
        nginx_server_names=["_"],
        postgresql_version=16,
    )
    files = {r.path: r for r in role("healthcheck").resources(v) if isinstance(r, File)}
    program = files[SCRIPT]
    assert program.content == host_program_source("healthcheck", "healthcheck")
    assert program.mode == 0o755 and program.validate and "ast.parse" in program.validate
    assert program.content.startswith("#!/usr/bin/python3\n# Managed by opskit, role healthcheck")
    config = json.loads(files[hc.CONFIG_PATH].content)
    assert config == role("healthcheck").build_config(v)
    assert config["state_dir"] == hc.STATE_DIR and config["slack_webhook_file"] == WEBHOOK_FILE
    # Every section is one the program runs, and every check name one it reports.
    assert set(config["checks"]) == set(hc.ChecksConfig.__annotations__)
    assert set(v["healthcheck_checks"]) == set(hc.CHECKS)
    assert config["checks"]["pm2"]["current"] == "/srv/shop/current"


def test_bad_schedule_is_refused():
    with pytest.raises(ConfigError, match="cron schedule"):
        role("healthcheck").resources(hc_vars(healthcheck_schedule="*/5 * * *"))


# --- the health check (opskit/hostside/healthcheck.py), run here against local servers -------


class Servers:
    """An app answering /health (up or down) and a Slack webhook keeping what it gets."""

    def __init__(self) -> None:
        self.up = True
        self.slack: list[dict] = []
        self.slack_status = [200]
        outer = self

        class App(BaseHTTPRequestHandler):
            def log_message(self, *a): ...

            def do_GET(self):
                status = 200 if outer.up else 503
                body = json.dumps({"status": "healthy" if outer.up else "down"}).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        class Slack(BaseHTTPRequestHandler):
            def log_message(self, *a): ...

            def do_POST(self):
                data = self.rfile.read(int(self.headers["Content-Length"]))
                status = outer.slack_status.pop(0) if len(outer.slack_status) > 1 else 200
                if status == 200:
                    outer.slack.append(json.loads(data))
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self.servers = [ThreadingHTTPServer(("127.0.0.1", 0), h) for h in (App, Slack)]
        for s in self.servers:
            threading.Thread(target=s.serve_forever, daemon=True).start()
        self.app_url = f"http://127.0.0.1:{self.servers[0].server_port}/health"
        self.slack_url = f"http://127.0.0.1:{self.servers[1].server_port}/services/T1/B1/x"

    def close(self) -> None:
        for s in self.servers:
            s.shutdown()


@pytest.fixture
def servers():
    s = Servers()
    yield s
    s.close()


def write_config(tmp_path: Path, servers: Servers, **checks) -> Path:
    hook = tmp_path / "hook"
    hook.write_text(servers.slack_url + "\n")
    config = {
        "host": "web1",
        "remind_minutes": 60,
        "timeout": 5,
        "state_dir": str(tmp_path / "state"),
        "slack_webhook_file": str(hook),
        "checks": {
            "http": {
                "url": servers.app_url,
                "keyword": "healthy",
                "warning_ms": 500,
                "critical_ms": 2000,
            },
            **checks,
        },
        "hints": {},
        "hint_vars": {"pm2_unit": "pm2-app", "pm2_user": "app", "pm2_home": "/home/app/.pm2"},
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def test_one_alert_when_the_app_goes_down_none_after_then_recovery(tmp_path, servers, capsys):
    config = str(write_config(tmp_path, servers))
    assert hc.main(["--config", config]) == 0 and servers.slack == []
    servers.up = False
    assert hc.main(["--config", config]) == 2
    assert len(servers.slack) == 1
    alert = servers.slack[0]
    assert alert["text"] == ":red_circle: CRITICAL web1: http critical"
    assert "HTTP 503" in alert["attachments"][0]["fields"][0]["value"]
    assert alert["attachments"][0]["text"].startswith("What to do first: Check the app:")
    assert hc.main(["--config", config]) == 2 and len(servers.slack) == 1  # no spam
    servers.up = True
    assert hc.main(["--config", config]) == 0
    assert len(servers.slack) == 2 and "RECOVERED web1" in servers.slack[1]["text"]
    status = json.loads((tmp_path / "state" / "status.json").read_text())
    assert status["level"] == "ok" and status["alert"]["sent"] == "recovered"
    assert oct(os.stat(tmp_path / "state" / "state.json").st_mode & 0o777) == "0o600"
    assert servers.slack_url not in capsys.readouterr().out


def test_reminder_after_remind_minutes_and_escalation_at_once(tmp_path, servers):
    config = write_config(tmp_path, servers, disk={"paths": ["/"], "warning": 0, "critical": 100})
    assert hc.main(["--config", str(config)]) == 1
    assert servers.slack[-1]["text"].startswith(":warning: WARNING web1: disk warning")
    servers.up = False  # a new problem: alerted at once, as a change
    assert hc.main(["--config", str(config)]) == 2
    assert "(changed)" in servers.slack[-1]["text"] and len(servers.slack) == 2
    state_file = tmp_path / "state" / "state.json"
    state = json.loads(state_file.read_text())
    state["last_sent"] -= 3601
    state_file.write_text(json.dumps(state))
    assert hc.main(["--config", str(config)]) == 2
    assert "(still failing)" in servers.slack[-1]["text"] and len(servers.slack) == 3


def test_slack_failure_is_retried_on_the_next_run_and_429_at_once(tmp_path, servers, capsys):
    config = str(write_config(tmp_path, servers))
    servers.up = False
    servers.slack_status = [429, 200, 200]  # a 429 is retried within the run
    assert hc.main(["--config", config]) == 2 and len(servers.slack) == 1
    servers.up = True
    servers.slack_status = [500, 200]  # fails for this run: kept for the next
    assert hc.main(["--config", config]) == 0 and len(servers.slack) == 1
    err = capsys.readouterr().err
    assert "could not alert Slack (recovered): Slack answered HTTP 500" in err
    assert servers.slack_url not in err
    assert hc.main(["--config", config]) == 0
    assert "RECOVERED" in servers.slack[-1]["text"]


def test_missing_webhook_file_is_reported_not_crashing(tmp_path, servers, capsys):
    config = write_config(tmp_path, servers)
    (tmp_path / "hook").unlink()
    servers.up = False
    assert hc.main(["--config", str(config)]) == 2
    assert "cannot read the webhook file" in capsys.readouterr().err


def test_access_log_error_rate_and_p95(tmp_path):
    now = datetime.now(UTC)
    stamp = now.strftime("%d/%b/%Y:%H:%M:%S +0000")
    old = (now - timedelta(minutes=30)).strftime("%d/%b/%Y:%H:%M:%S +0000")
    lines = [f'1.2.3.4 - - [{old}] "GET / HTTP/1.1" 500 1 "-" "ua" 9.000']
    lines += [f'1.2.3.4 - - [{stamp}] "GET / HTTP/1.1" 200 1 "-" "ua" 0.100'] * 90
    lines += [f'1.2.3.4 - - [{stamp}] "GET / HTTP/1.1" 502 1 "-" "ua" 3.000'] * 10
    log = tmp_path / "access.log"
    log.write_text("\n".join(lines) + "\n")
    c = {
        "path": str(log),
        "window_minutes": 5,
        "min_requests": 20,
        "error_rate_warning": 1,
        "error_rate_critical": 5,
        "p95_warning_ms": 500,
        "p95_critical_ms": 2000,
    }
    rate, p95 = hc.check_access_log(c, now)
    assert rate["level"] == "critical" and rate["percent"] == 10.0
    assert p95["level"] == "critical" and p95["ms"] == 3000


def test_pm2_missing_is_reported_as_such(tmp_path):
    state: dict = {}
    [r] = hc.check_pm2({"user": "app", "home": str(tmp_path), "bin": "/nonexistent/pm2"}, state, 5)
    assert r["level"] == "warning" and "pm2 is not installed" in r["summary"]


def test_pm2_daemon_not_running_is_critical_without_starting_one(tmp_path):
    fake = tmp_path / "pm2"
    fake.write_text("#!/bin/sh\ntouch " + str(tmp_path / "started") + "\n")
    fake.chmod(0o755)
    [r] = hc.check_pm2({"user": "app", "home": str(tmp_path), "bin": str(fake)}, {}, 5)
    assert r["level"] == "critical" and "not running" in r["summary"]
    assert not (tmp_path / "started").exists()


def test_decide():
    now = time.time()
    assert hc.decide({}, {}, "ok", now, 3600) is None
    assert hc.decide({}, {"http": "critical"}, "critical", now, 3600) == "alert"
    sent = {"notified": {"http": "critical"}, "last_sent": now - 60}
    assert hc.decide(sent, {"http": "critical"}, "critical", now, 3600) is None
    assert hc.decide(sent, {"http": "critical"}, "critical", now + 3600, 3600) == "reminder"
    assert hc.decide(sent, {"http": "warning"}, "warning", now, 3600) == "changed"
    assert hc.decide(sent, {}, "ok", now, 3600) == "recovered"


# --- papertrail role ---------------------------------------------------------------------------


def pt_vars(tmp_path, **over):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    v = dict(available_roles()["papertrail"].defaults)
    v.update(
        {
            "papertrail_host": "logs5.papertrailapp.com",
            "papertrail_port": 12345,
            "papertrail_ca_file": str(ca),
            **over,
        }
    )
    return v


def test_papertrail_forwards_over_verified_tls(tmp_path):
    resources = role("papertrail").resources(pt_vars(tmp_path, app_name="shop"))
    files = {r.path: r for r in resources if isinstance(r, File)}
    conf = files["/etc/rsyslog.d/90-opskit-papertrail.conf"]
    assert conf.check_after == "rsyslogd -N1"
    text = conf.content
    for needle in (
        'Target="logs5.papertrailapp.com"',
        'Port="12345"',
        'StreamDriver="gtls"',
        'StreamDriverMode="1"',
        'StreamDriverAuthMode="x509/name"',
        'StreamDriverPermittedPeers="*.papertrailapp.com"',
        'StreamDriver.CAFile="/etc/ssl/opskit/papertrail-ca.pem"',
        "call opskit_papertrail",
        'File="/var/log/shop/out.log" Tag="shop"',
        'File="/var/log/shop/error.log" Tag="shop-error"',
    ):
        assert needle in text, needle
    assert "BEGIN CERTIFICATE" in files["/etc/ssl/opskit/papertrail-ca.pem"].content
    [service] = [r for r in resources if r.id == "service:rsyslog"]
    assert set(service.restart_on) == {f"file:{p}" for p in files}


def test_papertrail_without_ca_file_uses_papertrails_own_bundle(tmp_path):
    """As Papertrail's setup documents it: its bundle (papertrail-bundle.pem), not every CA."""
    resources = role("papertrail").resources(pt_vars(tmp_path, papertrail_ca_file=""))
    conf = next(r for r in resources if r.id.endswith("papertrail.conf"))
    assert 'StreamDriver.CAFile="/etc/ssl/opskit/papertrail-bundle.pem"' in conf.content
    assert "imfile" not in conf.content  # no app on this host
    [fetch] = [r for r in resources if r.id == "command:papertrail CA bundle"]
    assert "https://papertrailapp.com/tools/papertrail-bundle.pem" in fetch.command
    assert "--proto =https" in fetch.command and "BEGIN CERTIFICATE" in fetch.command
    assert fetch.creates == "/etc/ssl/opskit/papertrail-bundle.pem"
    [service] = [r for r in resources if r.id == "service:rsyslog"]
    assert fetch.id in service.restart_on


def test_papertrail_with_neither_uses_the_system_store_only_when_asked(tmp_path):
    v = pt_vars(tmp_path, papertrail_ca_file="", papertrail_ca_url="")
    resources = role("papertrail").resources(v)
    conf = next(r for r in resources if r.id.endswith("papertrail.conf"))
    assert 'StreamDriver.CAFile="/etc/ssl/certs/ca-certificates.crt"' in conf.content
    assert not [r for r in resources if r.id.startswith("command:")]


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"papertrail_host": ""}, "papertrail_host: required"),
        ({"papertrail_port": None}, "papertrail_port: required"),
        ({"papertrail_ca_file": "/nonexistent/ca.pem"}, "papertrail_ca_file: cannot read"),
        ({"papertrail_app_logs": [{"path": "relative.log", "tag": "x"}]}, "an absolute path"),
        ({"papertrail_system_logs": False}, "nothing to forward"),
    ],
)
def test_papertrail_bad_input(tmp_path, over, message):
    with pytest.raises(ConfigError, match=message):
        check_host_vars(available_roles(), ["papertrail"], pt_vars(tmp_path, **over))  # at load
        role("papertrail").resources(pt_vars(tmp_path, **over))
