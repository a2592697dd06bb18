"""`inv status` (opskit/status/): settings and thresholds, judging a host's probe output,
the screen (colour or plain) and JSON; the probe's pure helpers (opskit/hostside/status_probe.py)
and the remote command itself run locally against a small HTTP server and a temporary backup
directory."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import shlex
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from opskit.checks.levels import Pair
from opskit.core.errors import ConfigError, ExitStatus
from opskit.core.inventory import Host, load_inventory
from opskit.core.output import use_color
from opskit.hostside import status_probe
from opskit.status import command, output, settings
from opskit.status.command import Raw
from opskit.status.fleet import FleetStatus, HostStatus
from opskit.status.judge import Metric, evaluate
from tests.fakes import LocalRemote

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
ESC = re.compile(r"\x1b\[[0-9;]*m")


def inventory(tmp_path: Path, **host_vars: Any) -> dict[str, Host]:
    """A two-host inventory (web: app with health checks, db: PostgreSQL with backups)."""
    data = {
        "ssh": {"known_hosts": str(tmp_path / "known_hosts")},
        "vars": {"healthcheck_slack_webhook_url": {"secret": "SLACK_WEBHOOK_URL"}},
        "groups": {
            "web": {
                "roles": ["app", "healthcheck"],
                "vars": {"app_name": "shop"},
                "hosts": {"web1": {"address": "10.0.0.11"}},
            },
            "db": {
                "roles": ["postgresql", "backup", "healthcheck"],
                "vars": {"backup_s3_bucket": "opskit-test-backups"},
                "hosts": {"db1": {"address": "10.0.0.21"}},
            },
            "bare": {"hosts": {"x1": {"address": "10.0.0.31"}}},
        },
    }
    for name, value in host_vars.items():
        host, _, key = name.partition("__")
        for g in data["groups"].values():  # type: ignore[attr-defined]
            if host in g["hosts"]:
                g["hosts"][host].setdefault("vars", {})[key] = value
    path = tmp_path / "inv.yml"
    path.write_text(yaml.safe_dump(data))
    env = {"SLACK_WEBHOOK_URL": "https://hooks.example/x"}
    return {h.name: h for h in load_inventory(path, environ=env).hosts}


# --- settings ------------------------------------------------------------------------------------


def test_thresholds_follow_the_healthcheck_role_else_the_runbook(tmp_path):
    hosts = inventory(
        tmp_path,
        web1__healthcheck_disk_warning=60,
        web1__healthcheck_response_time_critical_ms=1500,
        x1__status_disk_critical=95,
    )
    web = settings.settings_for(hosts["web1"])
    assert web.disk == Pair(60, 90)  # the health check's value, set once
    assert web.latency == Pair(500, 1500)
    assert web.memory == Pair(70, 90) and web.cpu == Pair(70, 90)
    assert web.pm2_restarts == Pair(1, 5)
    assert web.health_url == "http://127.0.0.1:3000/health" and web.health_keyword == "healthy"
    assert web.db is None and web.backup is None and web.cert_specs is None
    assert web.pm2_user == "app" and web.pm2_apps == ("shop",)
    assert web.healthcheck == Pair(15, 60)  # 3 and 12 times the */5 schedule
    bare = settings.settings_for(hosts["x1"])
    assert bare.disk == Pair(70, 95)  # no healthcheck role: runbook default, status_ override
    assert bare.health_url == "" and bare.pm2_user == "" and bare.healthcheck is None
    assert bare.disk_paths == ("/",)


def test_status_variables_win_over_the_healthcheck_ones(tmp_path):
    hosts = inventory(
        tmp_path,
        web1__healthcheck_disk_warning=60,
        web1__status_disk_warning=50,
        web1__status_disk_paths=["/", "/srv"],
        web1__status_latency_warning_ms=100,
    )
    s = settings.settings_for(hosts["web1"])
    assert s.disk == Pair(50, 90) and s.disk_paths == ("/", "/srv")
    assert s.latency == Pair(100, 2000)


def test_database_and_backup_thresholds(tmp_path):
    s = settings.settings_for(inventory(tmp_path)["db1"])
    assert s.db == Pair(80, 95)
    assert s.backup is not None
    # "0 */6 * * *" and 60 min grace: 7 h as inv backup.list, critical after two gaps + grace
    assert (s.backup.warning_hours, s.backup.critical_hours) == (7, 13)
    assert s.backup.local_dir == "/var/backups/postgresql" and s.backup.database == "app"
    assert s.health_url == ""  # no app here: no health endpoint


def test_ungraded_defaults_to_the_checks_the_health_check_leaves_out(tmp_path):
    hosts = inventory(
        tmp_path, web1__healthcheck_checks=["http", "disk", "memory", "pm2", "database"]
    )
    assert settings.settings_for(hosts["web1"]).ungraded == {"cpu"}
    assert settings.settings_for(hosts["x1"]).ungraded == frozenset()
    hosts = inventory(tmp_path, web1__status_ungraded=["disk"])
    assert settings.settings_for(hosts["web1"]).ungraded == {"disk"}


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("status_disk_warning", "high", "web1: status_disk_warning: expected a number 0-100"),
        ("status_disk_warning", 95, "status_disk_warning (95) is above healthcheck_disk_critical"),
        ("status_cpu_critical", 150, "status_cpu_critical: expected a number 0-100"),
        ("status_samples", 0, "status_samples: expected a whole number 1-50"),
        ("status_samples", True, "status_samples: expected a whole number 1-50"),
        ("status_disk_paths", ["var"], "status_disk_paths: a list of absolute paths"),
        ("status_ungraded", ["bogus"], "status_ungraded: a list of health"),
        ("status_health_url", "ftp://x", "status_health_url: expected an http(s) URL"),
        ("status_timeout", 0, "status_timeout: expected a number 0.1-300"),
        ("status_backup_warning_hours", 5, None),  # web1 has no backup role: not read
        ("healthcheck_memory_warning", -1, "healthcheck_memory_warning: expected a number"),
    ],
)
def test_invalid_settings_name_the_host_and_key(tmp_path, key, value, message):
    # The inventory refuses most of these at load (the schema); status' own parsing, here.
    hosts = inventory(tmp_path)
    hosts["web1"] = dataclasses.replace(hosts["web1"], vars={**hosts["web1"].vars, key: value})
    if message is None:
        settings.settings_for(hosts["web1"])
        return
    with pytest.raises(ConfigError) as exc:
        settings.check_hosts(list(hosts.values()))
    assert message in str(exc.value)


def test_samples_argument_is_checked(tmp_path):
    hosts = inventory(tmp_path)
    assert settings.settings_for(hosts["web1"], samples=12).samples == 12
    with pytest.raises(ConfigError, match="--samples"):
        settings.settings_for(hosts["web1"], samples=99)


def test_backup_warning_above_critical_is_refused(tmp_path):
    hosts = inventory(
        tmp_path, db1__status_backup_warning_hours=20, db1__status_backup_critical_hours=10
    )
    with pytest.raises(ConfigError, match="db1: status_backup_warning_hours"):
        settings.settings_for(hosts["db1"])


# --- judging -------------------------------------------------------------------------------------

HOST_NOW = NOW.timestamp()


def web_probe(**over: Any) -> dict[str, Any]:
    probe: dict[str, Any] = {
        "now": HOST_NOW,
        "cpu": {"percent": 12.0},
        "memory": {"percent": 40.0, "total_kib": 4096 * 1024, "available_kib": 2457 * 1024},
        "disks": [
            {
                "path": "/",
                "percent": 30.0,
                "used_bytes": 3 * 2**30,
                "avail_bytes": 7 * 2**30,
                "size_bytes": 10 * 2**30,
            }
        ],
        "system": {
            "os": "Debian GNU/Linux 13 (trixie)",
            "version_id": "13",
            "reboot_required": False,
            "reboot_packages": [],
            "updates": 4,
            "security_updates": 0,
            "security_packages": [],
        },
        "health": [{"status": 200, "healthy": True, "ms": ms} for ms in (4, 6, 5, 30, 5)],
        "node": {"version": "26.12.1"},
        "pm2": {
            "processes": [
                {
                    "name": "shop",
                    "status": "online",
                    "restarts": 3,
                    "started_ms": 1000 * (HOST_NOW - 600),
                },
                {
                    "name": "shop",
                    "status": "online",
                    "restarts": 2,
                    "started_ms": 1000 * (HOST_NOW - 90),
                },
            ]
        },
        "healthcheck": {
            "level": "ok",
            "checked_at": "2026-11-23T11:57:00+00:00",
            "age_seconds": 180,
            "results": [{"name": "http", "level": "ok", "summary": "healthy"}],
            "pm2_restarts": {"shop": 5},
        },
    }
    probe.update(over)
    return probe


RELEASE = (
    "@@current /srv/shop/releases/20261123T100000Z-abcdef1\n"
    "@@release 20261123T100000Z-abcdef1\n"
    '{"describe": "v1.2", "deployed_at": "2026-11-23T10:00:00Z", "deployed_by": "ann"}\n'
    "@@activating inactive\n"
)


def judge(host: Host, probe: dict[str, Any], **raw: Any) -> HostStatus:
    s = settings.settings_for(host)
    metrics, samples = evaluate(host, s, Raw(probe, **raw), NOW)
    return HostStatus(host.name, host.address, host.roles, tuple(metrics), samples)


def levels(h: HostStatus) -> dict[str, str]:
    return {m.name: m.level for m in h.metrics}


def test_a_healthy_web_host_is_ok_with_its_numbers(tmp_path):
    h = judge(inventory(tmp_path)["web1"], web_probe(), release=RELEASE)
    assert set(levels(h).values()) == {"ok"}, h.metrics
    assert [m.name for m in h.metrics] == [
        "health",
        "latency_p50",
        "latency_p95",
        "cpu",
        "memory",
        "disk:/",
        "os",
        "security_updates",
        "reboot",
        "pm2",
        "pm2_restarts",
        "pm2_uptime",
        "node",
        "healthcheck",
        "healthcheck_age",
        "release",
    ]
    assert h.metric("node").value == "26.12.1"  # the app's Node.js, shown (not graded)
    assert h.metric("latency_p50").value == 5 and h.metric("latency_p95").value == 30
    assert h.samples == {"health_ms": [4, 6, 5, 30, 5]}
    assert h.metric("pm2").value == 2
    assert h.metric("pm2_restarts").value == 0  # 5 in all, 5 at the last health check
    assert h.metric("pm2_uptime").value == 90  # the youngest process
    assert h.metric("release").value == "20261123T100000Z-abcdef1"
    assert "v1.2 deployed 2026-11-23T10:00:00Z by ann" in h.metric("release").detail
    assert h.metric("healthcheck_age").value == 3.0
    fleet = FleetStatus(NOW, (h,))
    assert fleet.worst == "ok" and fleet.exit_code is ExitStatus.OK


@pytest.mark.parametrize(
    ("change", "metric", "level", "exit_code"),
    [
        ({"cpu": {"percent": 75.0}}, "cpu", "warning", ExitStatus.WARNING),
        ({"memory": {"percent": 91.0}}, "memory", "critical", ExitStatus.CRITICAL),
        (
            {
                "disks": [
                    {
                        "path": "/",
                        "percent": 70.0,
                        "used_bytes": 7,
                        "avail_bytes": 3,
                        "size_bytes": 10,
                    }
                ]
            },
            "disk:/",
            "warning",
            ExitStatus.WARNING,
        ),
        (
            {"disks": [{"path": "/data", "error": "No such file or directory"}]},
            "disk:/data",
            "critical",
            ExitStatus.CRITICAL,
        ),
        ({"cpu": {"error": "OSError: boom"}}, "cpu", "unknown", ExitStatus.HOST_FAILED),
        (
            {
                "system": {
                    "os": "Debian GNU/Linux 12 (bookworm)",
                    "reboot_required": True,
                    "reboot_packages": ["linux-image-amd64"],
                    "updates": 0,
                    "security_updates": 0,
                    "security_packages": [],
                }
            },
            "reboot",
            "warning",
            ExitStatus.WARNING,
        ),
        (
            {"system": {"os": "Debian", "reboot_required": False, "updates_error": "E: lock"}},
            "security_updates",
            "unknown",
            ExitStatus.HOST_FAILED,
        ),
    ],
)
def test_thresholds_make_levels_and_exit_codes(tmp_path, change, metric, level, exit_code):
    h = judge(inventory(tmp_path)["web1"], web_probe(**change), release=RELEASE)
    assert h.metric(metric).level == level
    assert FleetStatus(NOW, (h,)).exit_code is exit_code


def test_a_stopped_app_is_critical_in_health_and_pm2(tmp_path):
    probe = web_probe(
        health=[{"error": "[Errno 111] Connection refused", "ms": 0.4}] * 5,
        pm2={"error": "the PM2 daemon of app is not running (no live pid)", "down": True},
    )
    h = judge(inventory(tmp_path)["web1"], probe, release=RELEASE)
    assert h.metric("health").level == "critical"
    assert "0/5 healthy" in h.metric("health").detail
    assert "Connection refused" in h.metric("health").detail
    assert h.metric("pm2").level == "critical"
    assert h.metric("latency_p95").value is None
    assert h.samples == {"health_ms": []}
    assert FleetStatus(NOW, (h,)).exit_code is ExitStatus.CRITICAL


def test_health_some_failed_samples_warn_and_bad_answers_are_named(tmp_path):
    web = inventory(tmp_path)["web1"]
    flaky = [{"status": 200, "healthy": True, "ms": 5}] * 4 + [
        {"status": 502, "healthy": False, "ms": 3, "body": "bad gateway"}
    ]
    h = judge(web, web_probe(health=flaky), release=RELEASE)
    assert h.metric("health").level == "warning"
    assert "4/5 healthy" in h.metric("health").detail and "HTTP 502" in h.metric("health").detail
    slow = [{"status": 200, "healthy": True, "ms": ms} for ms in (100, 120, 600, 2500, 110)]
    h = judge(web, web_probe(health=slow), release=RELEASE)
    assert h.metric("latency_p50").level == "ok" and h.metric("latency_p95").level == "critical"


def test_pm2_processes_not_online_and_restarts_since_the_last_check(tmp_path):
    web = inventory(tmp_path)["web1"]
    procs = [
        {"name": "shop", "status": "errored", "restarts": 15, "started_ms": None},
        {"name": "shop", "status": "online", "restarts": 2, "started_ms": 1000 * HOST_NOW},
    ]
    h = judge(web, web_probe(pm2={"processes": procs}), release=RELEASE)
    assert h.metric("pm2").level == "critical" and "errored" in h.metric("pm2").detail
    assert h.metric("pm2_restarts").value == 12 and h.metric("pm2_restarts").level == "critical"
    h = judge(web, web_probe(pm2={"processes": []}), release=RELEASE)
    assert "no process named 'shop'" in h.metric("pm2").detail
    no_baseline = web_probe()
    no_baseline["healthcheck"]["pm2_restarts"] = None
    h = judge(web, no_baseline, release=RELEASE)
    assert h.metric("pm2_restarts").value == 5 and h.metric("pm2_restarts").level == "ok"
    assert "not graded" in h.metric("pm2_restarts").detail


def test_database_connections_and_a_stopped_database(tmp_path):
    db = inventory(tmp_path)["db1"]
    base = web_probe()
    del base["health"], base["pm2"]
    backup = {"count": 3, "age_seconds": 3600, "last_run": {"ok": True}}
    h = judge(db, {**base, "database": {"used": 85, "max": 100}, "backup": backup})
    m = h.metric("db_connections")
    assert (m.value, m.level, m.detail) == (85.0, "warning", "85 of max_connections 100")
    down = {"error": "psql: error: connection to server failed", "down": True}
    h = judge(db, {**base, "database": down, "backup": backup})
    assert h.metric("db_connections").level == "critical"
    assert "PostgreSQL: psql: error" in h.metric("db_connections").detail
    assert FleetStatus(NOW, (h,)).exit_code is ExitStatus.CRITICAL


@pytest.mark.parametrize(
    ("backup", "level", "text"),
    [
        (
            {"count": 2, "age_seconds": 2 * 3600, "last_run": {"ok": True}},
            "ok",
            "newest verified 2 h 0 min ago",
        ),
        ({"count": 2, "age_seconds": 8 * 3600, "last_run": {"ok": True}}, "warning", "8 h"),
        ({"count": 2, "age_seconds": 14 * 3600, "last_run": None}, "critical", "14 h"),
        (
            {
                "count": 2,
                "age_seconds": 3600,
                "last_run": {"ok": False, "failed_step": "upload", "error": "S3 down"},
            },
            "warning",
            "LAST RUN FAILED at upload",
        ),
        ({"count": 0, "last_run": None}, "critical", "no verified backup on record"),
    ],
)
def test_backup_age(tmp_path, backup, level, text):
    db = inventory(tmp_path)["db1"]
    probe = {"now": HOST_NOW, "database": {"used": 1, "max": 100}, "backup": backup}
    m = judge(db, probe).metric("backup_age")
    assert m.level == level and text in m.detail
    assert (m.warning, m.critical) == (7, 13)


def test_health_check_result_missing_stale_or_failing(tmp_path):
    web = inventory(tmp_path)["web1"]
    h = judge(web, web_probe(healthcheck={"missing": True}), release=RELEASE)
    assert (
        h.metric("healthcheck").level == "warning"
        and "no result yet" in h.metric("healthcheck").detail
    )
    stale = web_probe()
    stale["healthcheck"]["age_seconds"] = 20 * 60
    assert judge(web, stale, release=RELEASE).metric("healthcheck_age").level == "warning"
    failing = web_probe()
    failing["healthcheck"].update(
        level="critical", results=[{"name": "disk", "level": "critical", "summary": "/ 95% used"}]
    )
    m = judge(web, failing, release=RELEASE).metric("healthcheck")
    assert (m.value, m.level) == (
        "critical",
        "critical",
    ) and "disk critical: / 95% used" in m.detail


def test_release_states(tmp_path):
    web = inventory(tmp_path)["web1"]
    bad = RELEASE.replace("@@activating", '@@bad\n{"reason": "health gate failed"}\n@@activating')
    m = judge(web, web_probe(), release=bad).metric("release")
    assert m.level == "warning" and "marked BAD: health gate failed" in m.detail
    m = judge(web, web_probe(), release="@@current \n").metric("release")
    assert m.level == "critical" and m.detail == "no current release"
    m = judge(web, web_probe(), release="@@unprovisioned\n", release_exit=78).metric("release")
    assert m.level == "critical" and "not provisioned" in m.detail


def test_ungraded_metrics_show_their_value_without_a_verdict(tmp_path):
    web = inventory(tmp_path, web1__status_ungraded=["cpu"])["web1"]
    m = judge(web, web_probe(cpu={"percent": 99.0}), release=RELEASE).metric("cpu")
    assert (m.value, m.level, m.warning) == (99.0, "ok", None)
    assert "would be critical" in m.detail


def test_worst_state_and_exit_code_order():
    def host(name: str, level: str, **kw: Any) -> HostStatus:
        return HostStatus(name, "10.0.0.1", (), (Metric("cpu", "cpu", 1.0, "%", level),), **kw)

    assert FleetStatus(NOW, (host("a", "ok"), host("b", "warning"))).exit_code == 4
    down = HostStatus("c", "10.0.0.3", (), error="unreachable", unreachable=True)
    fleet = FleetStatus(NOW, (host("a", "warning"), down))
    assert fleet.worst == "unknown" and fleet.exit_code == 1
    fleet = FleetStatus(NOW, (host("a", "critical"), down))
    assert fleet.worst == "critical" and fleet.exit_code == 5


# --- output --------------------------------------------------------------------------------------


def fleet_of(tmp_path) -> FleetStatus:
    web = inventory(tmp_path)["web1"]
    ok = judge(web, web_probe(), release=RELEASE)
    bad = judge(web, web_probe(memory={"percent": 95.0}), release=RELEASE)
    bad = HostStatus("web2", "10.0.0.12", bad.roles, bad.metrics, bad.samples)
    down = HostStatus(
        "web3", "10.0.0.13", ("app",), error="web3: unreachable (timed out)", unreachable=True
    )
    return FleetStatus(NOW, (ok, bad, down))


def test_the_screen_is_plain_when_not_colored_and_worst_first(tmp_path):
    text = output.format_fleet(fleet_of(tmp_path), color=False)
    assert not ESC.search(text)
    heads = [
        line.split()[1]
        for line in text.splitlines()
        if line.strip() and not line.startswith(" ") and "host" not in line.split()[0]
    ]
    assert heads[:3] == ["web2", "web3", "web1"]  # critical, unknown, ok
    assert "    critical  memory" in text
    assert "UNREACHABLE  web3: unreachable (timed out)" in text
    assert "[warn >=70, crit >=90]" in text
    assert (
        text.rstrip()
        .splitlines()[-1]
        .startswith(
            "3 hosts: 1 critical, 1 unknown (1 unreachable), 0 warning, 1 ok; "
            "worst critical (exit 5)"
        )
    )
    assert len(text.splitlines()) < 40  # one screen


def test_the_screen_colors_levels_on_a_terminal(tmp_path):
    text = output.format_fleet(fleet_of(tmp_path), color=True)
    assert "\x1b[1;31mcritical" in text and "\x1b[32mok" in text
    assert ESC.sub("", text) == output.format_fleet(fleet_of(tmp_path), color=False)


@pytest.mark.parametrize(
    ("isatty", "env", "expected"),
    [
        (True, {}, True),
        (False, {}, False),
        (True, {"NO_COLOR": "1"}, False),
        (True, {"NO_COLOR": ""}, True),
    ],
)
def test_use_color(isatty, env, expected):
    assert use_color(isatty, env) is expected


def test_json_shape_for_the_reports(tmp_path):
    data = json.loads(output.to_json(fleet_of(tmp_path)))
    assert data["generated_at"] == "2026-11-23T12:00:00Z"
    assert data["worst"] == "critical"
    host = data["hosts"][0]
    assert {
        "host",
        "address",
        "roles",
        "level",
        "error",
        "unreachable",
        "metrics",
        "samples",
    } <= set(host)
    assert host["roles"] == ["base", "app", "healthcheck"] and host["samples"]["health_ms"] == [
        4,
        6,
        5,
        30,
        5,
    ]
    metric = host["metrics"][0]
    assert set(metric) == {
        "name",
        "label",
        "value",
        "unit",
        "level",
        "detail",
        "warning",
        "critical",
    }
    assert data["hosts"][2]["unreachable"] is True and data["hosts"][2]["level"] == "unknown"
    assert data["hosts"][2]["metrics"] == []


# --- the remote probe, run locally ---------------------------------------------------------------


@pytest.fixture
def health_server() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a: Any) -> None:
            pass

        def do_GET(self) -> None:
            body = json.dumps({"status": "healthy"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/health"
    server.shutdown()


def test_the_probe_reads_this_machine_in_one_command(tmp_path, health_server):
    backups = tmp_path / "backups"
    backups.mkdir()
    created = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    for i, uploaded in enumerate((True, True, False)):  # the newest was never uploaded
        when = (created + dt.timedelta(minutes=30 * i)).strftime("%Y%m%dT%H%M%SZ")
        (backups / f"app-{when}.dump.json").write_text(
            json.dumps(
                {
                    "created": (created + dt.timedelta(minutes=30 * i)).isoformat(),
                    "uploaded": uploaded,
                    "key": f"k{i}",
                }
            )
        )
    (backups / "last-run.json").write_text(
        json.dumps({"ok": False, "failed_step": "upload", "error": "x"})
    )
    hosts = inventory(
        tmp_path,
        db1__status_disk_paths=[str(tmp_path), "/no/such/dir"],
        db1__status_health_url=health_server,
        db1__status_samples=3,
        db1__status_cpu_sample_seconds=0.2,
        db1__backup_local_dir=str(backups),
    )
    host = hosts["db1"]
    s = settings.settings_for(host)
    s = settings.Settings(**{**s.__dict__, "db": None, "healthcheck": None})  # no PostgreSQL here
    remote = LocalRemote(host)
    started = time.monotonic()
    raw = command.read_host(remote, s)
    assert remote.commands == 1
    assert time.monotonic() - started < 30  # one quick command, even on a busy 2-core machine
    metrics, samples = evaluate(host, s, raw, dt.datetime.now(dt.UTC))
    by = {m.name: m for m in metrics}
    assert by["health"].level == "ok" and by["health"].detail.startswith("3/3 healthy")
    assert len(samples["health_ms"]) == 3
    assert 0 <= by["cpu"].value <= 100 and 0 < by["memory"].value < 100
    assert by[f"disk:{tmp_path}"].level in ("ok", "warning", "critical")
    assert by["disk:/no/such/dir"].level == "critical"
    b = by["backup_age"]
    assert b.value == 1.5 and b.level == "warning" and "LAST RUN FAILED at upload" in b.detail
    assert "2 local" in b.detail


# --- the probe's own helpers (opskit/hostside/status_probe.py) -----------------------------------


def probe_config(tmp_path: Path, **over: Any) -> status_probe.ProbeConfig:
    cfg: status_probe.ProbeConfig = {
        "timeout": 1.0,
        "cpu_seconds": 0.05,
        "disk_paths": [str(tmp_path)],
        "samples": 1,
        "health_url": "",
        "health_keyword": "healthy",
        "db": False,
        "pm2_user": "",
        "app_current": None,
        "healthcheck": False,
        "backup": None,
        "updates": False,
    }
    cfg.update(over)  # type: ignore[typeddict-item]
    return cfg


def test_the_command_carries_the_probe_module_verbatim_and_its_config_as_json(tmp_path):
    s = settings.settings_for(inventory(tmp_path)["db1"])
    script = command.remote_script(s)
    assert status_probe.MARK == "@@@opskit-status"
    assert Path(status_probe.__file__).read_text() == command.PROBE_SOURCE
    assert command.HEREDOC not in command.PROBE_SOURCE.splitlines()  # it would end the source
    head, _, rest = script.partition(f"<<'{command.HEREDOC}'\n")
    source, _, tail = rest.rpartition(f"\n{command.HEREDOC}")
    assert source == command.PROBE_SOURCE.rstrip() and tail == "\n"
    python = head.splitlines()[-1]
    argv = shlex.split(python)
    assert argv[:2] == ["python3", "-"]
    assert json.loads(argv[2]) == command.probe_config(s)
    assert json.loads(argv[2])["backup"] == {
        "local_dir": "/var/backups/postgresql",
        "database": "app",
    }
    assert head.count("python3 - ") == 1 and script.count(f"<<'{command.HEREDOC}'") == 1


def test_probe_helpers_parse_what_the_host_shows():
    assert status_probe.cpu_percent((100, 80), (200, 130)) == 50.0
    assert status_probe.cpu_times("cpu  1 2 3 4") == (10, 4)  # no iowait column
    mem = status_probe.memory_of("MemTotal:  2000 kB\nMemFree:  500 kB\nHugePages_Total:  0\n")
    assert mem == {"percent": 75.0, "total_kib": 2000, "available_kib": 500}  # no MemAvailable
    assert status_probe.disk_of("/x", 0, 0, 0, 4096)["percent"] == 0.0
    disk = status_probe.disk_of("/x", 1000, 250, 200, 4096)
    assert (disk["used_bytes"], disk["avail_bytes"], disk["size_bytes"]) == (
        750 * 4096,
        200 * 4096,
        1000 * 4096,
    )
    assert disk["percent"] == round(100 * 750 / 950, 1)
    assert status_probe.is_healthy(200, '{"status": "degraded"}', "healthy") is False
    assert status_probe.is_healthy(200, "<html>healthy</html>", "healthy") is True
    assert status_probe.is_healthy(301, '{"status": "healthy"}', "healthy") is False
    assert status_probe.connections_of(" 3|200 \n") == {"used": 3, "max": 200}
    with pytest.raises(ValueError):
        status_probe.connections_of("")
    with pytest.raises(ValueError, match="no list"):
        status_probe.pm2_processes("PM2 is not running")
    with pytest.raises(ValueError):  # JSON errors are ValueErrors: the part reports them
        status_probe.pm2_processes("[PM2] Spawning PM2 daemon")
    [proc] = status_probe.pm2_processes('[{"name": "shop"}]')
    assert proc == {
        "name": "shop",
        "status": None,
        "restarts": 0,
        "unstable_restarts": 0,
        "started_ms": None,
        "memory": None,
    }


def test_probe_health_check_baseline_stays_while_the_release_does():
    result = {"level": "warning", "checked_at": "2026-11-23T11:57:00+00:00", "results": []}
    state = {"pm2_restarts": {"shop": 4}, "pm2_release": "/srv/shop/releases/a"}
    kept = status_probe.healthcheck_of(result, state, "/srv/shop/releases/a", HOST_NOW)
    assert kept["pm2_restarts"] == {"shop": 4} and "pm2_baseline" not in kept
    assert kept["age_seconds"] == 180.0 and kept["level"] == "warning"
    no_app = status_probe.healthcheck_of(result, state, None, HOST_NOW)
    assert no_app["pm2_restarts"] == {"shop": 4}
    moved = status_probe.healthcheck_of(result, state, "/srv/shop/releases/b", HOST_NOW)
    assert moved["pm2_restarts"] is None and "release changed" in moved["pm2_baseline"]


def test_probe_counts_only_verified_backups():
    manifests = [
        {"created": "2026-11-23T08:00:00+00:00", "uploaded": True, "key": "a"},
        {"created": "2026-11-23T10:00:00+00:00", "uploaded": True, "key": "b"},
        {"created": "2026-11-23T11:00:00+00:00", "key": "c"},  # not uploaded (yet)
    ]
    found = status_probe.backups_of(manifests, None, HOST_NOW)
    assert (found["count"], found["newest"], found["age_seconds"]) == (2, "b", 7200.0)
    assert found["last_run"] is None
    none = status_probe.backups_of(manifests[2:], ["not", "a", "dict"], HOST_NOW)
    assert none == {"count": 0, "last_run": None}
    assert status_probe.is_manifest("app-x.dump.json", "app")
    assert not status_probe.is_manifest("application-x.dump.json", "app.x")
    assert not status_probe.is_manifest("app-x.dump", "app")


def test_probe_reads_only_the_parts_asked_for(tmp_path):
    keys = [k for k, _ in status_probe.parts(probe_config(tmp_path))]
    assert keys == ["cpu", "memory", "disks", "system"]
    every = probe_config(
        tmp_path,
        health_url="http://127.0.0.1:9/health",
        db=True,
        pm2_user="app",
        healthcheck=True,
        backup={"local_dir": str(tmp_path), "database": "app"},
    )
    assert [k for k, _ in status_probe.parts(every)] == [
        "cpu",
        "memory",
        "disks",
        "system",
        "health",
        "database",
        "pm2",
        "healthcheck",
        "backup",
    ]


def test_a_part_that_fails_is_reported_and_the_others_still_run(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    cfg = probe_config(tmp_path, backup={"local_dir": str(not_a_dir), "database": "app"})
    out = status_probe.probe(cfg)
    assert out["backup"]["error"].startswith("NotADirectoryError: ")
    assert 0 <= out["cpu"]["percent"] <= 100 and out["disks"][0]["path"] == str(tmp_path)
    assert abs(out["now"] - time.time()) < 10


def test_probe_main_prints_one_json_object_or_refuses_bad_arguments(tmp_path, capsys):
    assert status_probe.main([json.dumps(probe_config(tmp_path))]) == 0
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1 and set(json.loads(printed)) == {
        "now",
        "cpu",
        "memory",
        "disks",
        "system",
    }
    assert status_probe.main([]) == 2
    assert status_probe.main(["{not json"]) == 2
    assert status_probe.main(["[1, 2]"]) == 2
    err = capsys.readouterr()
    assert err.out == "" and "not JSON" in err.err and "not a JSON object" in err.err


def test_the_system_shows_the_release_and_pending_security_updates_by_name(tmp_path):
    web = inventory(tmp_path)["web1"]
    system = {
        "os": "Debian GNU/Linux 12 (bookworm)",
        "version_id": "12",
        "reboot_required": False,
        "reboot_packages": [],
        "updates": 17,
        "security_updates": 12,
        "security_packages": [f"lib{i}" for i in range(10)],
    }
    by = {m.name: m for m in judge(web, web_probe(system=system), release=RELEASE).metrics}
    assert (by["os"].value, by["os"].level) == ("Debian 12", "ok")
    assert by["os"].detail == "Debian GNU/Linux 12 (bookworm)"
    updates = by["security_updates"]
    assert (updates.value, updates.level) == (12, "ok")
    assert updates.detail.startswith("pending: lib0, lib1") and updates.detail.endswith("2 more")
    assert (by["reboot"].value, by["reboot"].level) == ("not needed", "ok")


def test_the_probe_reads_this_machines_release_and_updates(tmp_path):
    part = status_probe.system(probe_config(tmp_path, updates=True))
    assert part["os"] and isinstance(part["reboot_required"], bool)
    assert "updates_error" in part or part["security_updates"] <= part["updates"]
