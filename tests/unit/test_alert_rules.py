"""Alert rules as code: the rule engine of the health check (pure: state + samples + clock ->
notifications), the alert hold, the notifiers against local stand-ins, and the inventory's
`alerts` section checked at load (exit 2, file and key named) and compiled per host."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from opskit.core.errors import ConfigError
from opskit.core.inventory import load_inventory
from opskit.core.runner import role_resources
from opskit.hostside import healthcheck as hc
from opskit.monitoring.spec import TARGETS_FILE
from roles.healthcheck.role import build_config

T0 = 1_700_000_000.0


def rule(**over: Any) -> hc.RuleConfig:
    r: hc.RuleConfig = {
        "name": "spike",
        "metric": "m",
        "op": ">",
        "value": 0,
        "for_seconds": 120,
        "severity": "critical",
        "notify": ["eng", "pd"],
    }
    r.update(over)  # type: ignore[typeddict-item]
    return r


def run(rules, timeline, *, state=None, held=(), remind=3600.0):
    """Evaluate `rules` at each (seconds after T0, value) and mark every notification as sent;
    -> [(seconds, kind, target)]."""
    state = {} if state is None else state
    out = []
    for t, value in timeline:
        now = T0 + t
        samples = {} if value is None else {"m": value}
        for n in hc.evaluate(rules, samples, state, now, held=t in held, remind=remind):
            hc.mark_sent(state, n, now, "pagerduty" if n["target"] == "pd" else "slack")
            out.append((t, n["kind"], n["target"]))
    return out


def every(seconds, until, value):
    return [(t, value) for t in range(0, until, seconds)]


def test_a_one_minute_spike_does_not_fire_a_for_2m_rule():
    timeline = [*every(30, 61, 1), *[(t, 0) for t in range(90, 400, 30)]]
    assert run([rule()], timeline) == []


def test_a_three_minute_spike_fires_once_per_target_then_resolves_both():
    timeline = [*every(30, 181, 1), (210, 0), (240, 0)]
    assert run([rule()], timeline) == [
        (120, "trigger", "eng"),
        (120, "trigger", "pd"),
        (210, "resolve", "eng"),
        (210, "resolve", "pd"),
    ]


def test_the_condition_must_hold_continuously():
    # bad 0-90, good at 100, bad again from 110: the clock restarts at 110 (fires at 230)
    timeline = [(0, 1), (60, 1), (90, 1), (100, 0), (110, 1), (170, 1), (229, 1), (230, 1)]
    assert run([rule(notify=["eng"])], timeline) == [(230, "trigger", "eng")]


def test_for_zero_fires_on_the_first_sample_and_operators_compare():
    assert run([rule(for_seconds=0, op="<=", value=5, notify=["eng"])], [(0, 5)]) == [
        (0, "trigger", "eng")
    ]
    assert run([rule(for_seconds=0, op="<", value=5, notify=["eng"])], [(0, 5)]) == []


def test_reminders_go_to_slack_every_remind_seconds_but_not_to_pagerduty():
    timeline = every(60, 60 * 9, 1)
    sent = run([rule(for_seconds=0)], timeline, remind=240)
    assert sent == [
        (0, "trigger", "eng"),
        (0, "trigger", "pd"),
        (240, "reminder", "eng"),
        (480, "reminder", "eng"),
    ]


def test_no_sample_leaves_the_rule_as_it_was():
    # a metric that could not be measured neither fires, resolves nor restarts the clock
    timeline = [(0, 1), (60, None), (120, 1), (150, None), (180, 0)]
    assert run([rule(notify=["eng"])], timeline) == [
        (120, "trigger", "eng"),
        (180, "resolve", "eng"),
    ]


def test_a_failed_send_is_retried_on_the_next_run():
    state: dict[str, Any] = {}
    first = hc.evaluate([rule(for_seconds=0)], {"m": 1}, state, T0)
    assert [n["target"] for n in first] == ["eng", "pd"]
    hc.mark_sent(state, first[0], T0, "slack")  # pd failed
    again = hc.evaluate([rule(for_seconds=0)], {"m": 1}, state, T0 + 60)
    assert [(n["kind"], n["target"]) for n in again] == [("trigger", "pd")]


def test_a_removed_rule_is_forgotten():
    state: dict[str, Any] = {}
    run([rule(for_seconds=0)], [(0, 1)], state=state)
    assert hc.evaluate([], {"m": 1}, state, T0 + 60) == []
    assert state[hc.RULES_KEY] == {}


# --- the hold --------------------------------------------------------------------------------


def test_a_held_rule_measures_but_sends_nothing_and_alerts_after_the_hold_if_still_bad():
    held = set(range(0, 300, 30))
    timeline = every(30, 330, 1)
    state: dict[str, Any] = {}
    sent = run([rule()], timeline, state=state, held=held)
    # the condition held since 0: the first run after the hold (300) alerts at once
    assert sent == [(300, "trigger", "eng"), (300, "trigger", "pd")]


def test_a_condition_that_recovered_during_the_hold_sends_nothing():
    held = set(range(0, 400, 30))
    timeline = [*every(30, 181, 1), *[(t, 0) for t in range(210, 500, 30)]]
    assert run([rule()], timeline, held=held) == []


def test_a_rule_firing_before_the_hold_that_cleared_during_it_resolves_after_it():
    state: dict[str, Any] = {}
    assert run([rule(notify=["eng"])], every(60, 181, 1), state=state) == [(120, "trigger", "eng")]
    timeline = [(240, 0), (270, 0), (300, 0)]
    assert run([rule(notify=["eng"])], timeline, state=state, held={240, 270}) == [
        (300, "resolve", "eng")
    ]


def write(path: Path, data: Any) -> str:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_the_hold_file(tmp_path):
    p = tmp_path / hc.HOLD_NAME
    assert hc.read_hold(str(p), T0) == {"held": False}
    write(p, {"until": T0 + 600, "reason": "deploy of r42"})
    assert hc.read_hold(str(p), T0) == {"held": True, "until": T0 + 600, "reason": "deploy of r42"}
    stale = hc.read_hold(str(p), T0 + 601)
    assert not stale["held"] and "hold ended" in stale["note"]
    for garbled in ("", "[]", '{"until": "tomorrow"}', '{"until": true}', "{"):
        write(p, garbled)
        got = hc.read_hold(str(p), T0)
        assert not got["held"] and "garbled" in got["note"], garbled
    write(p, {"until": T0 + 3 * 86400, "reason": "forgotten"})
    far = hc.read_hold(str(p), T0)
    assert not far["held"] and "ahead" in far["note"]


def test_the_hold_path_is_the_contract():
    assert hc.HOLD_FILE == "/var/lib/opskit/healthcheck/hold.json"


def config(tmp_path: Path, **over: Any) -> hc.Config:
    c: hc.Config = {
        "host": "web1",
        "remind_minutes": 60,
        "timeout": 5,
        "state_dir": str(tmp_path),
        "slack_webhook_file": write(tmp_path / "hook", "http://127.0.0.1:9/services/T1/B1/x"),
        "checks": {},
        "hints": {},
        "hint_vars": {},
    }
    c.update(over)  # type: ignore[typeddict-item]
    return c


def test_a_held_run_records_the_status_and_sends_nothing(tmp_path):
    """check_and_alert with a hold: the rules are measured (a command metric), the status says
    held, and nothing is sent: the targets point at a closed port and no error is reported."""
    flag = write(tmp_path / "flag", "7")
    cfg = config(
        tmp_path,
        metrics={"spike": {"kind": "command", "command": f"cat {flag}"}},
        rules=[rule(metric="spike", for_seconds=0, notify=["eng"])],
        targets={"eng": {"kind": "slack"}},
        targets_file=write(tmp_path / "t.json", {"eng": {"url": "http://127.0.0.1:9/x"}}),
        checks={"disk": {"paths": ["/"], "warning": 0, "critical": 0}},
    )
    write(tmp_path / hc.HOLD_NAME, {"until": time.time() + 600, "reason": "deploy"})
    state: dict[str, Any] = {}
    status = hc.check_and_alert(cfg, state, alert=True)
    assert status[hc.Key.HOLD]["held"] and status[hc.Key.HOLD]["reason"] == "deploy"
    assert status[hc.Key.ALERT] == {hc.Key.SENT: None, hc.Key.ERROR: None}
    assert status[hc.Key.RULES]["samples"]["spike"] == 7.0
    assert status[hc.Key.RULES]["firing"] == ["spike"] and status[hc.Key.RULES]["sent"] == []
    assert state.get(hc.StateKey.NOTIFIED, {}) == {}  # the disk check's alert was held too
    # the hold ends: the next run alerts (and fails here, at the closed port, so says so)
    (tmp_path / hc.HOLD_NAME).unlink()
    status = hc.check_and_alert(cfg, state, alert=True)
    assert status[hc.Key.RULES]["failed"] and "spike -> eng" in status[hc.Key.RULES]["failed"][0]
    assert "http://127.0.0.1:9/x" not in json.dumps(status)


def test_custom_metrics_measure_and_say_why_not(tmp_path):
    ok = {"kind": "command", "command": "echo 12.5"}
    bad = {"kind": "command", "command": "echo nope"}
    failing = {"kind": "command", "command": "exit 3"}
    values, errors = hc.custom_samples({"a": ok, "b": bad, "c": failing}, 5)
    assert values == {"a": 12.5}
    assert set(errors) == {"b", "c"} and "exit 3" in errors["c"]


# --- the inventory's `alerts` ----------------------------------------------------------------

INV = """
ssh: {known_hosts: known_hosts}
vars:
  healthcheck_slack_webhook_url: {secret: SLACK_WEBHOOK_URL}
alerts:
  targets:
    engineering-alerts: {slack: {secret: SLACK_ENG}}
    pagerduty: {pagerduty: {secret: PD_KEY}}
    oncall: {email: [oncall@example.com], smtp_host: smtp.example.com, smtp_port: 587,
             from: opskit@example.com, starttls: true, username: opskit,
             password: {secret: SMTP_PASSWORD}}
  metrics:
    failed_payments: {sql: "select count(*) from payments where failed", database: shop}
    queue: {http_json: "http://127.0.0.1:3000/metrics", field: queue.depth}
  rules:
    - {name: High error rate, when: error_rate > 5, for: 5m, severity: critical,
       notify: [engineering-alerts, pagerduty, oncall]}
    - {name: Failed payments, when: failed_payments > 10, for: 15m, severity: high,
       notify: [engineering-alerts]}
    - {name: Queue, when: queue >= 100, severity: warning, notify: [engineering-alerts]}
groups:
  web:
    roles: [healthcheck]
    vars: {healthcheck_access_log: /var/log/nginx/access.log}
    hosts:
      web1: {address: 10.0.0.1}
  db:
    roles: [postgresql, healthcheck]
    hosts:
      db1: {address: 10.0.0.3}
"""
ENV = {
    "SLACK_WEBHOOK_URL": "https://hooks.test/services/T1/B1/x",
    "SLACK_ENG": "https://hooks.test/services/T1/B2/engsecret",
    "PD_KEY": "0123456789abcdef0123456789abcdef",
    "SMTP_PASSWORD": "smtp-secret-pw",
    "POSTGRES_APP_PASSWORD": "pw",
}


def load(tmp_path: Path, text: str = INV):
    path = tmp_path / "inv.yml"
    path.write_text(text)
    return load_inventory(path, environ=ENV)


def test_each_host_runs_the_rules_it_can_measure_and_no_secret_is_in_its_config(tmp_path):
    inventory = load(tmp_path)
    web, db = inventory.host("web1"), inventory.host("db1")
    wc, dc = build_config(web.vars), build_config(db.vars)
    assert [r["name"] for r in wc.get("rules", [])] == ["High error rate", "Queue"]
    assert [r["name"] for r in dc.get("rules", [])] == ["Failed payments", "Queue"]
    high = wc.get("rules", [])[0]
    assert (high["metric"], high["op"], high["value"], high["for_seconds"]) == (
        "error_rate",
        ">",
        5.0,
        300,
    )
    assert set(wc.get("targets", {})) == {"engineering-alerts", "pagerduty", "oncall"}
    assert set(dc.get("targets", {})) == {"engineering-alerts"}
    assert dc.get("metrics", {})["failed_payments"]["database"] == "shop"
    text = json.dumps(wc) + json.dumps(dc)
    for secret in ("engsecret", ENV["PD_KEY"], ENV["SMTP_PASSWORD"]):
        assert secret not in text
    [targets] = [r for r in role_resources(web, web.roles) if r.id == f"file:{TARGETS_FILE}"]
    assert stat.S_IMODE(targets.mode) == 0o600 and targets.sensitive
    stored = json.loads(targets.content)
    assert stored["pagerduty"] == {"routing_key": ENV["PD_KEY"]}
    assert stored["oncall"] == {"password": ENV["SMTP_PASSWORD"]}


def test_without_alerts_nothing_changes(tmp_path):
    text = INV[: INV.index("alerts:")] + INV[INV.index("groups:") :]
    inventory = load(tmp_path, text)
    web = inventory.host("web1")
    assert "rules" not in build_config(web.vars)
    ids = [r.id for r in role_resources(web, web.roles)]
    assert f"file:{TARGETS_FILE}" not in ids and f"absent:{TARGETS_FILE}" in ids


@pytest.mark.parametrize(
    ("old", "new", "where", "why"),
    [
        ("for: 5m", "for: 5 minutes", "alerts.rules[0].for", "duration"),
        ("when: error_rate > 5", "when: eror_rate > 5", "alerts.rules[0].when", "eror_rate"),
        ("when: error_rate > 5", "when: error_rate above 5", "alerts.rules[0].when", "METRIC OP"),
        ("oncall]}", "on-call]}", "alerts.rules[0].notify[2]", "unknown target 'on-call'"),
        ("severity: high", "severity: urgent", "alerts.rules[1].severity", "critical"),
        ("{slack: {secret: SLACK_ENG}}", '{slack: "https://x/y"}', "slack", "secret"),
        ("{pagerduty: {secret: PD_KEY}}", "{email: [a@b.example]}", "pagerduty.smtp_host", ""),
        ("field: queue.depth", "field: queue.depth, command: x", "metrics.queue", "exactly one"),
        ("      db1:", "      db1:", "", ""),  # the good inventory loads (the control)
    ],
)
def test_bad_rules_are_refused_at_load_naming_file_and_key(tmp_path, old, new, where, why):
    assert old in INV
    text = INV.replace(old, new, 1)
    if not where:
        load(tmp_path, text)
        return
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text)
    message = str(err.value)
    assert str(tmp_path / "inv.yml") in message and where in message and why in message, message
    for secret in ("engsecret", ENV["PD_KEY"], ENV["SMTP_PASSWORD"]):
        assert secret not in message


def test_a_rule_name_given_twice_and_the_section_with_the_variable_are_refused(tmp_path):
    twice = INV.replace("name: Queue", "name: Failed payments")
    with pytest.raises(ConfigError, match=r"alerts.rules\[2\].name: 'Failed payments'"):
        load(tmp_path, twice)
    both = INV.replace("vars:\n", "vars:\n  healthcheck_alerts: null\n", 1)
    with pytest.raises(ConfigError, match=r"give either `alerts:` or vars\.healthcheck_alerts"):
        load(tmp_path, both)
