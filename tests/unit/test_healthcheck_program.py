"""The health check's pure parts (opskit/hostside/healthcheck.py, imported like any module):
threshold judgement, the alert state over runs (alert on change, hourly reminder, recovery),
the Slack texts, and that the installed text runs on its own, without opskit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opskit.checks.levels import level_of
from opskit.hostside import healthcheck as hc
from opskit.monitoring.health import check_script, format_status, parse_status
from opskit.monitoring.spec import SCRIPT
from opskit.resources.files import host_program_source

HOUR = 3600.0
T0 = 1_700_000_000.0


def config(**over: Any) -> hc.Config:
    c: hc.Config = {
        "host": "web1",
        "remind_minutes": 60,
        "timeout": 5,
        "state_dir": "/nonexistent",
        "slack_webhook_file": "/nonexistent",
        "checks": {},
        "hints": {},
        "hint_vars": {
            "pm2_unit": "pm2-app",
            "pm2_user": "app",
            "pm2_home": "/home/app/.pm2",
            "disk_path": "/",
        },
    }
    c.update(over)
    return c


# --- threshold judgement -------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 69.9, 70, 70.1, 89, 90, 100, 250])
@pytest.mark.parametrize("thresholds", [(70, 90), (0, 100), (90, 90), (None, 90), (70, None)])
def test_grade_is_the_checks_layers_rule(value, thresholds):
    """The host cannot import opskit.checks: its copy of the rule must say the same."""
    assert hc.grade(value, *thresholds) == level_of(value, *thresholds)


def test_worst_and_problems_count_skipped_as_ok():
    results = [
        hc.result(hc.DISK, "warning", "", path="/var"),
        hc.result(hc.ERROR_RATE, "skipped", "no log"),
        hc.result(hc.PM2, "critical", "", app="shop"),
        hc.result(hc.CPU, "ok", ""),
    ]
    assert hc.worst(results) == "critical" and hc.worst(results[1:2]) == "ok"
    assert hc.problems_of(results) == {"disk /var": "warning", "pm2 shop": "critical"}


# --- the alert state over runs -------------------------------------------------------------------


class Runs:
    """check_and_alert with the checks, Slack and the clock played by the test."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.results: list[hc.Result] = []
        self.sent: list[dict[str, Any]] = []
        self.slack_error: str | None = None
        self.now = T0
        self.state: dict[str, Any] = {}
        monkeypatch.setattr(hc, "run_checks", lambda config, state: list(self.results))
        monkeypatch.setattr(hc, "post_slack", self._post)
        monkeypatch.setattr(hc.time, "time", lambda: self.now)

    def _post(self, config: hc.Config, payload: dict[str, Any]) -> str | None:
        if self.slack_error:
            return self.slack_error
        self.sent.append(payload)
        return None

    def run(self, *results: hc.Result, after: float = 0.0) -> dict[str, Any]:
        self.now += after
        self.results = list(results)
        return hc.check_and_alert(config(), self.state, alert=True)


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Runs]:
    yield Runs(monkeypatch)


DOWN = hc.result(hc.HTTP, "critical", "http://127.0.0.1:3000/health is unreachable (refused)")
DISK = hc.result(hc.DISK, "warning", "/ 75.0% used", path="/")
OK = hc.result(hc.HTTP, "ok", "http://127.0.0.1:3000/health healthy in 3 ms")


def test_alert_once_then_an_hourly_reminder_then_recovery(runs):
    assert runs.run(OK)[hc.Key.ALERT] == {"sent": None, "error": None} and runs.sent == []
    status = runs.run(DOWN, after=300)
    assert status[hc.Key.ALERT][hc.Key.SENT] == "alert" and status[hc.Key.LEVEL] == "critical"
    assert runs.sent[-1]["text"] == ":red_circle: CRITICAL web1: http critical"
    assert runs.state[hc.StateKey.NOTIFIED] == {"http": "critical"}
    assert runs.state[hc.StateKey.SINCE] == T0 + 300
    for _ in range(11):  # every 5 minutes for 55 minutes: no spam
        assert runs.run(DOWN, after=300)[hc.Key.ALERT][hc.Key.SENT] is None
    assert runs.run(DOWN, after=300)[hc.Key.ALERT][hc.Key.SENT] == "reminder"
    assert runs.sent[-1]["text"] == ":red_circle: CRITICAL web1 (still failing): http critical"
    assert runs.run(DOWN, after=300)[hc.Key.ALERT][hc.Key.SENT] is None
    back = runs.run(OK, after=300)
    assert back[hc.Key.ALERT][hc.Key.SENT] == "recovered" and back[hc.Key.LEVEL] == "ok"
    assert runs.sent[-1]["text"] == (
        ":white_check_mark: RECOVERED web1: all checks OK after 70 min (was: http)"
    )
    assert hc.StateKey.SINCE not in runs.state and runs.state[hc.StateKey.NOTIFIED] == {}
    assert runs.run(OK, after=HOUR)[hc.Key.ALERT][hc.Key.SENT] is None
    assert len(runs.sent) == 3


def test_a_change_is_sent_at_once_and_names_what_recovered(runs):
    runs.run(DOWN, DISK)
    runs.run(DISK, after=30)
    assert runs.sent[-1]["text"] == ":warning: WARNING web1 (changed): disk warning"
    fields = runs.sent[-1]["attachments"][0]["fields"]
    assert fields[-1] == {"title": "recovered", "value": "http", "short": False}
    worse = hc.result(hc.DISK, "critical", "/ 95.0% used", path="/")
    runs.run(worse, after=30)  # escalation: at once too
    assert runs.sent[-1]["text"] == ":red_circle: CRITICAL web1 (changed): disk critical"
    runs.run(after=30)
    assert runs.sent[-1]["text"].endswith("all checks OK after 90 s (was: disk /)")


def test_a_failed_slack_call_is_sent_on_the_next_run(runs):
    runs.slack_error = "Slack answered HTTP 500 oops"
    status = runs.run(DOWN)
    assert status[hc.Key.ALERT] == {"sent": None, "error": "Slack answered HTTP 500 oops"}
    assert hc.StateKey.NOTIFIED not in runs.state  # Slack does not know yet
    runs.slack_error = None
    assert runs.run(DOWN, after=300)[hc.Key.ALERT][hc.Key.SENT] == "alert"


def test_decide():
    sent = {"notified": {"http": "critical"}, "last_sent": T0}
    assert hc.decide({}, {}, "ok", T0, HOUR) is None
    assert hc.decide({}, {"http": "critical"}, "critical", T0, HOUR) == "alert"
    assert hc.decide(sent, {"http": "critical"}, "critical", T0 + HOUR - 1, HOUR) is None
    assert hc.decide(sent, {"http": "critical"}, "critical", T0 + HOUR, HOUR) == "reminder"
    assert hc.decide(sent, {"http": "warning"}, "warning", T0, HOUR) == "changed"
    assert hc.decide(sent, {}, "ok", T0, HOUR) == "recovered"


# --- the Slack texts -----------------------------------------------------------------------------


def test_alert_message_has_a_field_per_problem_and_what_to_do_first():
    problems = hc.problems_of([DOWN, DISK])
    cpu = hc.result(hc.CPU, "ok", "CPU 3.0% busy")
    msg = hc.message(config(), "alert", "critical", problems, [DOWN, DISK, cpu], None, [])
    assert msg["text"] == ":red_circle: CRITICAL web1: http critical, disk warning"
    [attachment] = msg["attachments"]
    assert attachment["color"] == "danger" and attachment["title"] == (
        "web1: http critical, disk warning"
    )
    assert [f["title"] for f in attachment["fields"]] == ["http (critical)", "disk (warning)"]
    assert attachment["text"].startswith("What to do first: Check the app: `systemctl status ")
    assert "pm2-app" in attachment["text"] and "{" not in attachment["text"]


def test_a_hint_of_the_inventory_replaces_the_built_in_one():
    c = config(hints={"disk": "Call {who}."}, hint_vars={"who": "Ana"})
    msg = hc.message(c, "alert", "warning", hc.problems_of([DISK]), [DISK], None, [])
    assert msg["attachments"][0]["text"] == "What to do first: Call Ana."
    assert msg["attachments"][0]["color"] == "warning"


# --- the installed program -----------------------------------------------------------------------


def test_the_installed_text_runs_alone_with_crons_path(tmp_path):
    program = tmp_path / "opskit-healthcheck"
    program.write_text(host_program_source("healthcheck", "healthcheck"))
    cfg = config(
        state_dir=str(tmp_path / "state"),
        checks={"disk": {"paths": ["/"], "warning": 100, "critical": 100}},
    )
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    argv = [sys.executable, "-I", str(program), "--config", str(tmp_path / "config.json")]
    env = {"PATH": "/usr/bin:/bin"}  # as cron; -I: no opskit on the path
    done = subprocess.run([*argv, "--json"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert done.returncode == hc.ExitCode.OK, done.stderr
    status = parse_status(done.stdout)
    assert set(status) == {
        hc.Key.HOST,
        hc.Key.LEVEL,
        hc.Key.CHECKED_AT,
        hc.Key.SECONDS,
        hc.Key.RESULTS,
        hc.Key.ALERT,
        hc.Key.HOLD,
        hc.Key.RULES,
    }
    assert json.loads((tmp_path / "state" / hc.STATUS_NAME).read_text()) == status
    assert oct((tmp_path / "state" / hc.STATE_NAME).stat().st_mode & 0o777) == "0o600"
    assert "web1" in format_status("web1", status) and "OK       disk" in format_status("w", status)
    (tmp_path / "config.json").write_text("{not json")
    broken = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, env=env)
    assert broken.returncode == hc.ExitCode.NOT_RUN and "cannot read" in broken.stderr


def test_importing_it_leaves_the_environment_alone():
    code = (
        "import os; before = dict(os.environ); import opskit.hostside.healthcheck; "
        "assert dict(os.environ) == before"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, env=dict(os.environ)
    )
    assert done.returncode == 0, done.stderr


def test_the_laptop_runs_what_the_role_installs():
    script = check_script(alert=False)
    assert f"{SCRIPT} --json --no-alert" in script and "exit 4" in script
    assert tuple(hc.ExitCode) == (0, 1, 2, 3)


def test_a_health_body_with_slack_control_characters_arrives_escaped():
    """A health endpoint answering `<!channel> & <b>`: the alert quotes it, escaped as Slack
    asks, so the Slack stand-in (which parses text as Slack does) shows it and pings nobody."""
    import http.server
    import threading

    from opskit.lab.standins.inbox import render_slack, slack_texts

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<!channel> & <b>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/health"
        got = hc.check_http({"url": url, "keyword": "healthy"}, 5)  # type: ignore[typeddict-item]
    finally:
        server.shutdown()
    assert got[hc.Key.LEVEL] == "critical" and "<!channel> & <b>" in got[hc.Key.SUMMARY]
    msg = hc.message(config(), "alert", "critical", hc.problems_of([got]), [got], None, [])
    sent = json.dumps(msg)
    assert "<!channel>" not in sent and "&lt;!channel&gt; &amp; &lt;b&gt;" in sent
    [field] = msg["attachments"][0]["fields"]
    shown, mentions = render_slack(field["value"])
    assert "<!channel> & <b>" in shown and mentions == []
    assert all(render_slack(t)[1] == [] for t in slack_texts(msg))
    # Unescaped, the same text would have pinged the channel: the stand-in sees that too.
    assert render_slack("<!channel> & <b>")[1] == ["@channel"]
