"""The post-deploy watch's decisions (pure), its host-side sampler and the alert hold's lines."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from opskit.app import hold
from opskit.app.deploy import AppLayout, activate_command
from opskit.app.watch import Observed, Rules, Window, _Progress, decide, parse_duration
from opskit.core.errors import ConfigError
from opskit.hostside import watch_probe

RULES = Rules(duration=60, min_requests=20)
QUIET = Window(200, 0, 20)  # before the deploy: no errors, p95 20 ms


def seen(requests=100, errors=0, p95_ms=30, health_failures=0, restarts=0):
    return Observed(Window(requests, errors, p95_ms), health_failures, "HTTP 503: x", restarts)


def test_a_healthy_release_is_kept():
    assert decide(RULES, QUIET, seen()) is None
    assert decide(RULES, None, seen()) is None


def test_not_operational_health_fails_in_a_row():
    assert decide(RULES, QUIET, seen(health_failures=2)) is None
    why = decide(RULES, QUIET, seen(health_failures=3))
    assert why is not None and why.startswith("not operational") and "3 samples" in why
    # even with too few requests to judge a rate
    assert decide(RULES, QUIET, seen(requests=0, health_failures=3)) is not None


def test_not_operational_pm2_restarts():
    assert decide(RULES, QUIET, seen(restarts=2)) is None
    assert "PM2 restarted the app 3 times" in (decide(RULES, QUIET, seen(restarts=3)) or "")


def test_over_the_critical_error_rate_even_without_a_baseline():
    why = decide(RULES, None, seen(errors=6))
    assert why == "error rate 6.0% (6 of 100 requests) is over the critical line of 5%"
    assert decide(RULES, None, seen(errors=5)) is None  # at the line is not over it


def test_over_the_critical_p95():
    assert "p95 1001 ms is over the critical line" in (decide(RULES, None, seen(p95_ms=1001)) or "")


def test_worse_than_before_by_a_margin():
    # 3 % is under the critical line but 3 points worse than a clean baseline (margin 2)
    why = decide(RULES, QUIET, seen(errors=3))
    assert why is not None and "worse than before the deploy (0.0%)" in why
    # the same 3 % when the old release already had 2 %: within the margin
    assert decide(RULES, Window(200, 4, 20), seen(errors=3)) is None
    why = decide(RULES, QUIET, seen(p95_ms=600))
    assert why is not None and "p95 600 ms is worse than before the deploy (20 ms)" in why
    assert decide(RULES, Window(200, 0, 300), seen(p95_ms=600)) is None


def test_too_few_requests_judge_no_rate_and_a_thin_baseline_no_margin():
    assert decide(RULES, QUIET, seen(requests=19, errors=19)) is None
    assert decide(RULES, Window(5, 0, 10), seen(errors=3)) is None  # baseline too thin


def test_progress_counts_health_failures_in_a_row_and_restarts_since_the_first_sample():
    p = _Progress()
    ok: watch_probe.Health = {"ok": True, "detail": "HTTP 200"}
    bad: watch_probe.Health = {"ok": False, "detail": "HTTP 503: down"}

    def sample(health, restarts, online=2):
        return {
            "offset": 0,
            "requests": 10,
            "errors": 1,
            "times_ms": [5, 7],
            "health": health,
            "pm2": {"restarts": restarts, "online": online, "processes": 2},
        }

    p.add(sample(ok, 4))  # the reload's restarts are before the mark
    p.add(sample(bad, 4))
    p.add(sample(bad, 5))
    o = p.observed()
    assert (o.health_failures, o.restarts, o.since.requests, o.since.errors) == (2, 1, 30, 3)
    p.add(sample(ok, 5, online=1))  # healthy endpoint but a process down: not operational
    assert p.observed().health_failures == 3 and "1 of 2 PM2" in p.observed().health_detail
    p.add(sample(ok, 5))
    assert p.observed().health_failures == 0


@pytest.mark.parametrize(
    ("flag", "app_watch", "seconds"),
    [(None, 0, 0.0), (None, "10m", 600.0), ("30s", "10m", 30.0), ("0", "10m", 0.0)],
)
def test_the_flag_overrides_app_watch(flag, app_watch, seconds):
    assert Rules.from_vars({"app_watch": app_watch}, flag).duration == seconds


def test_a_bad_duration_names_its_source():
    with pytest.raises(ConfigError, match=r"^--watch: 'soon'"):
        Rules.from_vars({}, "soon")
    with pytest.raises(ConfigError, match=r"^app_watch: '5 min'"):
        Rules.from_vars({"app_watch": "5 min"})
    assert parse_duration(" 2m ") == 120.0


LINE = '10.0.0.1 - - [{t}] "GET / HTTP/1.1" {code} 12 "-" "curl" {rt}\n'


def stamp(ago: float = 0) -> str:
    return time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(time.time() - ago))


def test_probe_reads_the_log_since_its_mark_and_a_rotated_log_from_its_start(tmp_path):
    log = tmp_path / "access.log"
    log.write_text(LINE.format(t=stamp(), code=200, rt="0.010"))
    mark = watch_probe.read_log(str(log), -1, None)
    assert (mark["requests"], mark["offset"]) == (0, log.stat().st_size)  # the mark only
    with log.open("a") as f:
        f.write(LINE.format(t=stamp(), code=502, rt="0.250"))
        f.write(LINE.format(t=stamp(), code=200, rt="0.004"))
        f.write('10.0.0.1 - - [partial "GET')  # nginx still writing: read next time
    s = watch_probe.read_log(str(log), mark["offset"], None)
    assert (s["requests"], s["errors"], s["times_ms"]) == (2, 1, [250, 4])
    assert s["offset"] < log.stat().st_size
    log.write_text(LINE.format(t=stamp(), code=500, rt="0.001"))  # rotated: shorter
    r = watch_probe.read_log(str(log), s["offset"], None)
    assert (r["requests"], r["errors"]) == (1, 1)


def test_probe_baseline_reads_only_the_last_minutes(tmp_path):
    log = tmp_path / "access.log"
    log.write_text(
        LINE.format(t=stamp(600), code=500, rt="0.9")
        + LINE.format(t=stamp(30), code=200, rt="0.02")
    )
    s = watch_probe.read_log(str(log), -1, 5)
    assert (s["requests"], s["errors"], s["times_ms"]) == (1, 0, [20])
    missing = watch_probe.read_log(str(tmp_path / "none.log"), -1, 5)
    assert "none.log" in missing.get("log_error", "")


def test_probe_program_prints_one_json_line(tmp_path):
    log = tmp_path / "access.log"
    log.write_text(LINE.format(t=stamp(), code=200, rt="0.010"))
    params = {"log": str(log), "offset": 0}
    out = subprocess.run(
        ["python3", "-", json.dumps(params)],
        input=Path(watch_probe.__file__).read_text(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(out.splitlines()[-1])["requests"] == 1


def test_the_hold_is_written_then_removed_by_bash(tmp_path):
    path = str(tmp_path / "hc" / "hold.json")
    subprocess.run(["bash", "-c", hold.hold_script(90, 'deploy "r1"', path)], check=True)
    held = json.loads(Path(path).read_text())
    assert held["reason"] == 'deploy "r1"' and abs(held["until"] - (time.time() + 90)) < 5
    subprocess.run(["bash", "-c", hold.release_script(path)], check=True)
    assert not (tmp_path / "hc" / "hold.json").exists()


def test_the_activation_command_holds_alerts_only_when_asked():
    layout = AppLayout("sample", "app", 3000)
    params = {"TARGET": "r1"}
    lines = (hold.hold_script(100, "deploy r1"), hold.release_script())
    held = activate_command(layout, params, wait=10, hold_lines=lines)
    assert held.index(lines[0]) < held.index("systemd-run") < held.index(lines[1])
    assert held.index(lines[1]) < held.index('echo "@@result"')
    assert hold.HOLD_FILE not in activate_command(layout, params, wait=10)
