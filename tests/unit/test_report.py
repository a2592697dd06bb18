"""opskit.report and its charts without hosts: views, Markdown, HTML, Slack text and charts
rendered from dicts shaped as opskit.status / opskit.audit / the host pass give them."""

from __future__ import annotations

import copy
import datetime as dt
import gzip
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import responses

from opskit.clients import ApiError
from opskit.core.errors import ConfigError, ExitStatus
from opskit.core.inventory import Host
from opskit.core.secrets import Secret
from opskit.hostside import report_history
from opskit.report import charts, gather, history, judge, publish, render
from opskit.report import data as report_data
from opskit.report.view import build_view

NOW = dt.datetime(2026, 11, 23, 6, 0, tzinfo=dt.UTC)


def metric(name, value, unit="", level="ok", warning=None, critical=None, detail=""):
    return {
        "name": name,
        "label": name.replace("_", " ").replace(":", " "),
        "value": value,
        "unit": unit,
        "level": level,
        "detail": detail,
        "warning": warning,
        "critical": critical,
    }


def fixture_report(kind: str = "daily") -> dict[str, Any]:
    """A report as gather() writes it: two web hosts and a db host, with distinct numbers."""
    since = NOW - report_data.KINDS[kind]
    hour = "2026-11-23T05:00Z" if kind == "daily" else "2026-11-23"
    return {
        "kind": kind,
        "generated_at": "2026-11-23T06:00:00Z",
        "since": report_data.iso_time(since),
        "until": "2026-11-23T06:00:00Z",
        "inventory": "inventories/test.yml",
        "hosts": ["web1", "db1"],
        "status": {
            "generated_at": "2026-11-23T06:00:00Z",
            "worst": "critical",
            "hosts": [
                {
                    "host": "web1",
                    "address": "10.0.0.11",
                    "roles": ["app", "nginx"],
                    "level": "critical",
                    "error": None,
                    "unreachable": False,
                    "metrics": [
                        metric("health", 200),
                        metric("latency_p50", 41.7, "ms", warning=500, critical=2000),
                        metric("latency_p95", 612.4, "ms", "warning", 500, 2000),
                        metric("cpu", 33.0, "%", warning=70, critical=90),
                        metric("memory", 55.5, "%", warning=70, critical=90),
                        metric("disk:/", 93.4, "%", "critical", 70, 90, "3.1 GiB free"),
                        metric("pm2_restarts", 7, "", "critical", 1, 5),
                        metric("cert:shop.example.com", 12, "days", "warning", 30, 7),
                        metric("release", "20261122T101010Z-abc1234"),
                    ],
                    "samples": {"health_ms": [41.2, 39.9, 612.4, 44.0, 40.1]},
                },
                {
                    "host": "db1",
                    "address": "10.0.0.21",
                    "roles": ["postgresql", "backup"],
                    "level": "ok",
                    "error": None,
                    "unreachable": False,
                    "metrics": [metric("db_connections", 12, "%", warning=70, critical=90)],
                    "samples": {},
                },
            ],
        },
        "audit": {
            "generated_at": "2026-11-23T06:00:00Z",
            "since_hours": 24,
            "worst": "high",
            "hosts": [
                {
                    "host": "web1",
                    "address": "10.0.0.11",
                    "error": None,
                    "unreachable": False,
                    "checks": ["dotfiles"],
                    "findings": [
                        {
                            "check": "dotfiles",
                            "severity": "high",
                            "title": "/.env is served <script>alert(1)</script>",
                            "detail": "200 OK",
                            "fix": "deny dot-files | in nginx",
                        },
                        {
                            "check": "hsts",
                            "severity": "low",
                            "title": "HSTS max-age short",
                            "detail": "",
                            "fix": "raise it",
                        },
                    ],
                    "failed_logins": {
                        "total": 321,
                        "by_source": {"203.0.113.9": 300, "198.51.100.7": 21},
                    },
                    "bans": {"current": ["203.0.113.9"], "total": 4},
                }
            ],
        },
        "certs": {
            "worst": "warning",
            "hosts": [
                {
                    "host": "web1",
                    "error": None,
                    "certificates": [
                        {
                            "name": "shop.example.com",
                            "days_left": 12,
                            "not_after": "2026-12-05T00:00:00+00:00",
                            "issuer": "R3",
                            "state": "warning",
                            "served": "same",
                            "problems": ["expires in 12 days (warning below 30)"],
                        }
                    ],
                }
            ],
        },
        "backups": [
            {
                "host": "db1",
                "database": "app",
                "location": "s3://b/db1/app/",
                "backups": [
                    {
                        "key": "db1/app/app-20261123T000000Z.dump",
                        "size": 7340032,
                        "last_modified": "2026-11-23T00:00:05+00:00",
                        "checksum_state": "verified 2026-11-23",
                        "sha256": "a" * 64,
                    },
                    {
                        "key": "db1/app/app-20261123T060000Z.dump",
                        "size": 7654321,
                        "last_modified": "2026-11-23T05:50:00+00:00",
                        "checksum_state": "verified 2026-11-23",
                        "sha256": "b" * 64,
                    },
                ],
                "newest_age": 600.0,
                "allowed": 25200.0,
                "stale": False,
                "problem": "",
                "note": "",
                "last_run": {"ok": True, "finished": "2026-11-23T05:50:00Z"},
                "error": "",
                "in_window": 2,
                "window_bytes": 7340032 + 7654321,
                "newest": {
                    "key": "db1/app/app-20261123T060000Z.dump",
                    "size": 7654321,
                    "checksum_state": "verified 2026-11-23",
                },
                "newest_verified": True,
            }
        ],
        "releases": [
            {
                "host": "web1",
                "current": "20261122T101010Z-abc1234",
                "current_label": "v1.4.2",
                "deployed_at": "2026-11-22T10:10:10Z",
                "releases": 3,
                "bad": ["20261123T020000Z-bad0000"],
                "events": [
                    {
                        "time": "2026-11-23T02:00:10Z",
                        "action": "deploy",
                        "result": "failed",
                        "release": "20261123T020000Z-bad0000",
                        "from": "20261122T101010Z-abc1234",
                        "operator": "ann@laptop",
                        "ref": "v1.5.0",
                        "seconds": 12.5,
                        "detail": "health gate: 503",
                    }
                ],
            }
        ],
        "history": {
            "web1": {
                "nginx": {
                    "path": "/var/log/nginx/access.log",
                    "files": ["/var/log/nginx/access.log"],
                    "buckets": {
                        hour: {
                            "requests": 1234,
                            "4xx": 56,
                            "5xx": 78,
                            "p50_ms": 12.0,
                            "p95_ms": 345.0,
                            "timed": 1234,
                        }
                    },
                    "unparsed": 0,
                    "with_times": 1234,
                    "top_5xx_paths": [["/api/orders", 70]],
                },
                "alerts": {
                    "source": "journal",
                    "runs": [
                        {
                            "time": "2026-11-23T04:00:01+00:00",
                            "problems": [["critical", "disk", "disk / 93.4% used"]],
                            "sent": "alert",
                            "slack_error": None,
                            "other": [],
                        },
                        {
                            "time": "2026-11-23T04:05:01+00:00",
                            "problems": [["critical", "disk", "disk / 93.5% used"]],
                            "sent": None,
                            "slack_error": None,
                            "other": [],
                        },
                    ],
                },
            },
            "db1": {"nginx": None, "alerts": {"source": "none", "runs": []}},
        },
        "errors": {},
        "unreadable": [],
        "previous": [],
        "seconds": {"status": 1.5, "audit": 2.0, "hosts": 1.2, "total": 2.1},
        "settings": {
            "failed_logins_warning": 20,
            "error_rate_warning": 1.0,
            "error_rate_critical": 5.0,
            "max_items": 30,
        },
    }


def text_of(html: str) -> str:
    """The visible text of the HTML page (tags dropped), for assertions on numbers."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def svgs(html: str) -> list[str]:
    return re.findall(r"<svg.*?</svg>", html, flags=re.S)


# --- numbers appear -----------------------------------------------------------------------------


def test_daily_numbers_appear_in_markdown_html_and_json() -> None:
    r = render.render(fixture_report())
    md, html = r.markdown, r.html
    page = text_of(html)
    for expected in (
        "612 ms",  # p95 from status
        "93 %",  # disk
        "1234",  # requests from the access log
        "78",  # 5xx
        "12",  # certificate days left
        "7.3 MiB",  # newest backup size (7654321 bytes)
        "20261122T101010Z-abc1234",  # current release
        "321",  # failed logins
        "203.0.113.9",  # top source
    ):
        assert expected in md, expected
        assert expected in page, expected
    assert "# Daily review 2026-11-23 — CRITICAL" in md
    data = json.loads(r.json)
    assert data["numbers"]["requests"] == 1234
    assert data["numbers"]["errors_5xx"] == 78
    assert data["numbers"]["cert_min_days"] == 12
    assert data["numbers"]["backups_in_window"] == 2
    assert data["numbers"]["failed_logins"] == 321
    assert data["numbers"]["failed_releases"] == 1
    assert data["numbers"]["alerts_sent"] == 1


def test_action_items_most_severe_first_with_what_to_do() -> None:
    acts = judge.action_items(fixture_report())
    levels = [a["level"] for a in acts]
    assert levels == sorted(levels, key=["critical", "unknown", "warning", "info"].index)
    whats = " ".join(a["what"] for a in acts)
    assert "disk / 93 %" in whats
    assert "6.32 % of 1234 requests answered 5xx" in whats  # 78 / 1234
    assert "/.env is served" in whats
    assert "deploy of 20261123T020000Z-bad0000 failed" in whats
    assert "health-check alert open since 2026-11-23T04:00:01+00:00: disk" in whats
    assert any("321 failed SSH logins" in a["what"] for a in acts)
    assert all(a["todo"] for a in acts)


def test_escaping_markdown_html_and_slack() -> None:
    data = fixture_report()
    data["hosts"].append("evil|<b>")
    data["errors"]["history:evil|<b>"] = "boom <img src=x> | *bold*"
    r = render.render(data)
    assert "<script>" not in r.html and "&lt;script&gt;" in r.html
    assert "<img src=x>" not in r.html
    assert "deny dot-files \\| in nginx" in r.markdown
    assert "<script>" not in r.markdown
    assert "\\*bold\\*" in r.markdown
    assert "<script>" not in r.slack


def test_charts_in_the_page_are_valid_svg() -> None:
    html = render.render(fixture_report()).html
    found = svgs(html)
    assert len(found) >= 4  # latency, usage bars, traffic, backup sizes
    for svg in found:
        root = ET.fromstring(svg)
        assert root.tag.endswith("svg")
        assert root.find("{http://www.w3.org/2000/svg}title") is not None
    assert "<script" not in html.split("</style>")[1].replace("&lt;script", "")
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")  # nothing fetched


@pytest.mark.parametrize(
    "svg",
    [
        charts.sparkline([], title="none"),
        charts.sparkline([5.0], title="one", warning=500, critical=2000),
        charts.sparkline([1.0, 2.0, 3000.0], title="a <b> & c", unit=" ms", warning=500),
        charts.gauge_bars([], title="none"),
        charts.gauge_bars([("disk <x>", 95.0, 70, 90), ("cpu", None, None, None)], title="t"),
        charts.columns([], title="none"),
        charts.columns([("00", 0, 0)], title="zero"),
        charts.columns([("00", 10, 2), ("01", 0, 0), ("02", 5, 5)], title="t", label_every=2),
    ],
)
def test_chart_is_valid_xml(svg: str) -> None:
    root = ET.fromstring(svg)
    assert root.attrib["width"].isdigit()


def test_empty_report_renders_and_says_what_was_not_read() -> None:
    data = {
        "kind": "daily",
        "generated_at": "2026-11-23T06:00:00Z",
        "since": "2026-11-22T06:00:00Z",
        "until": "2026-11-23T06:00:00Z",
        "inventory": "x.yml",
        "hosts": ["web1"],
        "status": None,
        "audit": None,
        "certs": None,
        "backups": [],
        "releases": [],
        "history": {},
        "errors": {
            "status": "opskit.status is not available: nope",
            "host:web1": "unreachable",
        },
        "unreadable": ["web1"],
        "previous": [],
        "seconds": {},
        "settings": {},
    }
    r = render.render(data)
    assert "Fleet status was not read" in r.markdown
    assert "opskit.status is not available" in r.markdown
    assert "**Not read:** web1" in r.markdown
    assert "NOT READ" in r.html
    assert judge.overall_level(data) == "unknown"
    assert judge.exit_code(data) == 1
    for kind in ("weekly",):
        render.render({**data, "kind": kind})


def test_exit_codes() -> None:
    data = fixture_report()
    assert judge.exit_code(data) == 0
    assert judge.exit_code(data, "critical") == 5
    assert judge.exit_code(data, "warning") == 5
    calm = copy.deepcopy(data)
    calm["status"]["worst"] = "warning"
    calm["audit"]["worst"] = "low"
    assert judge.exit_code(calm, "critical") == 0
    assert judge.exit_code(calm, "warning") == 4
    with pytest.raises(ConfigError, match="--fail-on"):
        judge.exit_code(data, "sometimes")


def test_levels_and_exit_codes_follow_the_checks_model() -> None:
    """opskit.checks.levels: audit severities map as Severity.level (low and medium warning,
    high and critical critical); exit codes 5 critical, else 1 unreadable, else 4 warning."""
    quiet = {"kind": "daily", "status": {"worst": "ok"}, "audit": {"worst": "ok"}}
    assert judge.overall_level(quiet) == "ok"
    assert judge.exit_code(quiet, "warning") == ExitStatus.OK
    for worst, level in (("low", "warning"), ("medium", "warning"), ("high", "critical")):
        assert judge.overall_level({**quiet, "audit": {"worst": worst}}) == level
    assert judge.overall_level({**quiet, "status": {"worst": "bogus"}}) == "unknown"
    warned = {**quiet, "audit": {"worst": "low"}}
    assert judge.exit_code(warned, "warning") == ExitStatus.WARNING
    assert judge.exit_code(warned, "critical") == ExitStatus.OK
    assert judge.exit_code({**warned, "errors": {"history:web1": "?"}}, "warning") == 1
    unread = {**quiet, "unreadable": ["web1"]}
    assert judge.overall_level(unread) == "unknown"
    assert judge.exit_code(unread, "warning") == ExitStatus.HOST_FAILED
    critical = {**unread, "backups": [{"host": "db1", "error": "S3 said no"}]}
    assert judge.exit_code(critical, "critical") == ExitStatus.CRITICAL
    assert judge.exit_code(critical) == ExitStatus.HOST_FAILED  # no --fail-on: written, not read
    findings = [
        {"severity": sev, "title": sev, "fix": "x"} for sev in ("info", "low", "critical", "odd")
    ]
    audited = {
        **quiet,
        "audit": {"worst": "critical", "hosts": [{"host": "h", "findings": findings}]},
    }
    acts = [(a["level"], a["what"]) for a in judge.action_items(audited)]
    assert acts == [
        ("critical", "[critical] critical"),
        ("warning", "[low] low"),
        ("warning", "[odd] odd"),
    ]
    view = build_view({**fixture_report(), "audit": audited["audit"]})
    assert [f["severity"] for f in view["findings"]] == ["critical", "low", "info", "odd"]


def test_secrets_never_reach_the_files() -> None:
    data = fixture_report()
    data["errors"]["backups:db1"] = "S3 said no to key AKIAs3cr3tvalue"
    r = render.render(data, secrets=["AKIAs3cr3tvalue"])
    for text in (r.markdown, r.html, r.json, r.slack):
        assert "AKIAs3cr3tvalue" not in text


def test_slack_summary_is_short_with_counts_and_link() -> None:
    r = render.render(fixture_report(), link="https://ops.example.com/r/daily-2026-11-23.html")
    lines = r.slack.strip().splitlines()
    assert len(lines) <= 6
    assert "CRITICAL" in lines[0]
    assert "requests 1234 (78 5xx)" in r.slack
    assert lines[-1] == "Report: https://ops.example.com/r/daily-2026-11-23.html"


def test_weekly_has_trends_and_reads_the_weeks_dailies(tmp_path: Path) -> None:
    since, until = NOW - dt.timedelta(days=7), NOW
    for day, days_left in ((20, 15), (21, 14), (22, 13)):
        (tmp_path / f"daily-2026-11-{day}.json").write_text(
            json.dumps(
                {
                    "generated_at": f"2026-11-{day}T06:00:00Z",
                    "numbers": {"worst": "warning", "cert_min_days": days_left, "pm2_restarts": 2},
                }
            )
        )
    (tmp_path / "daily-2026-10-01.json").write_text(
        json.dumps({"generated_at": "2026-10-01T06:00:00Z", "numbers": {"worst": "ok"}})
    )
    (tmp_path / "daily-broken.json").write_text("{")
    previous = gather.previous_reports(tmp_path, since, until)
    assert [p["cert_min_days"] for p in previous] == [15, 14, 13]
    data = fixture_report("weekly")
    data["previous"] = previous
    r = render.render(data)
    assert "# Weekly review 2026-11-23" in r.markdown
    assert "## To do this week" in r.markdown
    assert "`inv backup.drill`" in r.markdown
    assert "| 2026-11-23 | 1234 | 78 |" in r.markdown  # requests and 5xx per day
    assert "From the daily reports of the week (3)" in r.markdown
    assert "certificate days left" in r.html
    for svg in svgs(r.html):
        ET.fromstring(svg)


def test_weekly_without_dailies_says_how_to_get_trends() -> None:
    md = render.render(fixture_report("weekly")).markdown
    assert "No daily reports of this week" in md


def test_incidents_open_and_closed() -> None:
    hist = fixture_report()["history"]["web1"]
    [inc] = judge.incidents(hist)
    assert inc["open"] and inc["checks"] == ["disk"] and inc["runs"] == 2


# --- settings -------------------------------------------------------------------------------------


def host(**v: Any) -> Host:
    base = {
        "report_dir": "reports",
        "report_slack_webhook_url": "",
        "report_link_base": "",
        "report_max_items": 30,
        "report_audit": True,
        "report_access_log": None,
        "report_failed_logins_warning": 20,
        "report_error_rate_warning": 1,
        "report_error_rate_critical": 5,
    }
    return Host("h1", "10.0.0.1", 22, "root", (), ("nginx",), {**base, **v})


def test_settings_refuse_a_plain_webhook_and_fall_back_to_the_health_checks() -> None:
    with pytest.raises(ConfigError, match="secret"):
        report_data.settings_for([host(report_slack_webhook_url="https://hooks.slack.com/x")])
    s = report_data.settings_for([host(healthcheck_slack_webhook_url=Secret("https://h/x"))], "out")
    assert s.slack_webhook == "https://h/x" and s.out_dir == Path("out")
    with pytest.raises(ConfigError, match="report_max_items"):
        report_data.settings_for([host(report_max_items="many")])
    with pytest.raises(ConfigError, match="unknown report kind"):
        gather.gather(None, [host()], "monthly")  # type: ignore[arg-type]


def test_access_log_of() -> None:
    assert history.access_log_of(host()) == "/var/log/nginx/access.log"
    assert history.access_log_of(host(report_access_log="/x.log")) == "/x.log"


@responses.activate
def test_post_slack_sends_text_and_hides_the_url() -> None:
    url = "http://127.0.0.1:9/services/T1/B1/s3cr3ttoken"
    responses.add(responses.POST, url, body="ok", status=200)
    publish.post_slack("hello", Secret(url))
    assert json.loads(responses.calls[0].request.body) == {"text": "hello"}
    responses.replace(responses.POST, url, body="no_text", status=400)
    with pytest.raises(ApiError) as err:
        publish.post_slack("hello", Secret(url))
    assert "s3cr3ttoken" not in str(err.value)


# --- the history program (opskit/hostside/report_history.py) ------------------------------------


def log_line(t: dt.datetime, status: int, path: str = "/", rt: str | None = "0.120") -> str:
    stamp = t.strftime("%d/%b/%Y:%H:%M:%S +0000")
    line = f'10.0.0.1 - - [{stamp}] "GET {path} HTTP/1.1" {status} 12 "-" "curl/8"'
    return line + (f" {rt}" if rt else "") + "\n"


def test_history_command_runs_the_program_as_sent_to_hosts(tmp_path: Path) -> None:
    """The report's one command, run here by a shell: the module's source on python3's stdin."""
    log = tmp_path / "access.log"
    t0 = NOW - dt.timedelta(hours=2)
    log.write_text(
        log_line(t0, 200)
        + log_line(t0, 502, "/api?x=1", rt="2.500")
        + log_line(t0, 404, rt=None)  # the combined format without $request_time
        + "garbage\n"
    )
    (tmp_path / "access.log.1").write_text(log_line(t0 - dt.timedelta(hours=1), 200))
    with gzip.open(tmp_path / "access.log.2.gz", "wt") as f:
        f.write(log_line(t0 - dt.timedelta(hours=3), 500, "/api"))
        f.write(log_line(NOW - dt.timedelta(days=3), 200))  # before the window
    h = host(report_access_log=str(log))
    params = history.params_for(
        h, "daily", (NOW - dt.timedelta(hours=24)).timestamp(), NOW.timestamp()
    )
    assert params["bucket"] == report_history.HOUR
    command = history.history_command(params)
    assert command.startswith("python3 - ")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    out = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=60, check=True, env=env
    ).stdout
    result = history.parse_history(out)
    nginx = result["nginx"]
    assert judge.nginx_totals(result) == {"requests": 5, "4xx": 1, "5xx": 2}
    assert len(nginx["files"]) == 3 and nginx["unparsed"] == 1
    b = nginx["buckets"][t0.strftime(report_history.HOUR_FORMAT)]
    assert (b["requests"], b["5xx"], b["timed"], b["p95_ms"]) == (3, 1, 2, 2500.0)
    assert nginx["top_5xx_paths"][0] == ["/api", 2]
    assert result["alerts"]["source"] in ("journal", "syslog", "none")


def test_history_program_refuses_bad_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    assert report_history.main(["-"]) == 2
    assert report_history.main(["-", '{"since": 0, "until": 1, "bucket": "week"}']) == 2
    assert report_history.main(["-", '{"since": "then", "until": 1, "bucket": "day"}']) == 2
    err = capsys.readouterr().err
    assert "bad parameters" in err and "week" in err and "since/until" in err


def test_history_program_prints_one_json_object(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(report_history, "journal_lines", lambda since, until: None)
    monkeypatch.setattr(report_history, "syslog_lines", lambda since, until: [])
    params = {"since": 0, "until": 1, "bucket": "day", "access_log": str(tmp_path / "none.log")}
    assert report_history.main(["-", json.dumps(params)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["nginx"] == {"path": str(tmp_path / "none.log"), "error": "no such file"}
    assert printed["alerts"]["source"] == "none" and printed["alerts"]["runs"] == []


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (log_line(NOW, 200), (NOW.timestamp(), 200, "/", 0.12)),
        (log_line(NOW, 503, "/api/x?id=3", rt="1.250"), (NOW.timestamp(), 503, "/api/x", 1.25)),
        (log_line(NOW, 404, rt=None), (NOW.timestamp(), 404, "/", None)),
        (log_line(NOW, 200, rt="rt=0.004"), (NOW.timestamp(), 200, "/", 0.004)),
        (
            '1.2.3.4 - - [23/Nov/2026:07:00:00 +0100] "-" 400 0 "-" "-"',
            (NOW.timestamp(), 400, "?", None),  # no request line; the zone is honoured
        ),
        ('1.2.3.4 - - [23/Nov/2026:99:00:00 +0000] "GET / HTTP/1.1" 200 1 "-" "-"', None),
        ("garbage", None),
        ("", None),
    ],
)
def test_access_log_line_parsing(line: str, expected: tuple[Any, ...] | None) -> None:
    req = report_history.parse_line(line)
    got = None if req is None else (req.ts, req.status, req.path, req.seconds)
    assert got == expected


def test_per_hour_aggregation_counts_the_window_only() -> None:
    t = NOW - dt.timedelta(hours=3)
    lines = [
        log_line(t, 200, rt="0.100"),
        log_line(t + dt.timedelta(minutes=59, seconds=59), 200, rt="0.300"),
        log_line(t + dt.timedelta(minutes=60), 404, rt=None),  # the next hour
        log_line(t + dt.timedelta(minutes=61), 500, "/a?q=1", rt="0.200"),
        log_line(t + dt.timedelta(minutes=62), 502, "/a", rt="0.400"),
        log_line(t + dt.timedelta(minutes=63), 500, "/b", rt="0.900"),
        log_line(NOW + dt.timedelta(seconds=1), 200),  # after the window
        log_line(t - dt.timedelta(seconds=1), 200),  # before it
        "not a log line\n",
    ]
    traffic = report_history.aggregate(lines, t.timestamp(), NOW.timestamp(), "hour")
    counts = traffic.counts()
    first, second = (
        t.strftime("%Y-%m-%dT%H:00Z"),
        (t + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:00Z"),
    )
    assert list(counts) == [first, second]
    assert counts[first] == {
        "requests": 2,
        "4xx": 0,
        "5xx": 0,
        "p50_ms": 100.0,
        "p95_ms": 300.0,
        "timed": 2,
    }
    assert counts[second] == {
        "requests": 4,
        "4xx": 1,
        "5xx": 3,
        "p50_ms": 400.0,
        "p95_ms": 900.0,
        "timed": 3,
    }
    assert traffic.unparsed == 1 and traffic.with_times == 5
    assert traffic.top_5xx_paths() == [("/a", 2), ("/b", 1)]
    by_day = report_history.aggregate(lines, t.timestamp(), NOW.timestamp(), "day").counts()
    assert list(by_day) == [NOW.strftime(report_history.DAY_FORMAT)]
    assert by_day[NOW.strftime(report_history.DAY_FORMAT)]["requests"] == 6


def test_rotated_logs_plain_and_gzipped_old_ones_left_out(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    t0 = NOW - dt.timedelta(hours=1)
    log.write_text(log_line(t0, 200))
    (tmp_path / "access.log.1").write_text(log_line(t0, 404))
    with gzip.open(tmp_path / "access.log.2.gz", "wt") as f:
        f.write(log_line(t0, 500, "/gz"))
    with gzip.open(tmp_path / "access.log.9.gz", "wt") as f:
        f.write(log_line(t0, 500, "/old"))
    (tmp_path / "other.log.1.gz").write_bytes(b"")  # not one of this log's files
    old = (NOW - dt.timedelta(days=30)).timestamp()
    os.utime(tmp_path / "access.log.9.gz", (old, old))  # rotated before the window
    since = (NOW - dt.timedelta(hours=24)).timestamp()
    files = report_history.log_files(str(log), since)
    assert sorted(Path(f).name for f in files) == ["access.log", "access.log.1", "access.log.2.gz"]
    assert list(report_history.read_lines(str(tmp_path / "access.log.2.gz"))) == [
        log_line(t0, 500, "/gz")
    ]
    result = report_history.nginx(str(log), since, NOW.timestamp(), "hour")
    assert result is not None and "error" not in result
    assert [c["requests"] for c in result["buckets"].values()] == [3]
    assert result["top_5xx_paths"] == [("/gz", 1)]
    (tmp_path / "access.log.2.gz").write_bytes(b"not gzip")
    broken = report_history.nginx(str(log), since, NOW.timestamp(), "hour")
    assert broken is not None and broken.get("error", "").startswith(str(tmp_path))
    assert report_history.nginx(None, since, NOW.timestamp(), "hour") is None


def test_health_check_runs_from_syslog_files(tmp_path: Path) -> None:
    t = NOW - dt.timedelta(hours=1)
    stamp = t.isoformat()
    tag = report_history.HEALTHCHECK_TAG
    (tmp_path / "syslog").write_text(
        f"{stamp} web1 {tag}[42]: CRITICAL disk disk / 95% used\n"
        f"{stamp} web1 {tag}[42]: slack: sent alert\n"
        f"{stamp} web1 cron[1]: unrelated\n"
    )
    with gzip.open(tmp_path / "syslog.2.gz", "wt") as f:
        old = (NOW - dt.timedelta(days=3)).isoformat()
        f.write(f"{old} web1 {tag}[7]: WARNING http slow\n")  # before the window
        f.write(f"{(t - dt.timedelta(minutes=5)).isoformat()} web1 {tag}[9]: recovered?\n")
    lines = report_history.syslog_lines(
        (NOW - dt.timedelta(hours=24)).timestamp(), NOW.timestamp(), str(tmp_path / "syslog*")
    )
    assert [(pid, msg) for _, pid, msg in lines] == [
        ("9", "recovered?"),
        ("42", "CRITICAL disk disk / 95% used"),
        ("42", "slack: sent alert"),
    ]
    runs = report_history.group_runs(lines)
    assert [(r["problems"], r["sent"], r["other"]) for r in runs] == [
        ([], None, ["recovered?"]),
        ([["critical", "disk", "disk / 95% used"]], "alert", []),
    ]
    assert runs[1]["time"] == t.isoformat(timespec="seconds")


def test_history_program_source_is_sent_verbatim_and_stands_alone() -> None:
    source = history.HISTORY_PROGRAM.read_text()
    assert source in history.history_command(
        {"since": 0, "until": 1, "bucket": "hour", "access_log": None}
    )
    assert "import opskit" not in source and "from opskit" not in source
