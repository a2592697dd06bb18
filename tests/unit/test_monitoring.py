"""Monitoring from the laptop: sync plans (pure), the API clients (HTTP mocked with `responses`),
what the inventory declares, and Sentry releases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import responses

from opskit.clients import ApiError
from opskit.clients.sentry import SentryClient
from opskit.clients.uptimerobot import UptimeRobotClient
from opskit.core.errors import ConfigError
from opskit.core.inventory import load_inventory
from opskit.core.secrets import Secret
from opskit.monitoring.declared import declared
from opskit.monitoring.monitors import MonitorSpec, UptimeRobotSettings, plan_monitors
from opskit.monitoring.releases import sentry_release
from opskit.monitoring.rules import SentrySettings, default_rules, normalize_rule, plan_rules
from opskit.monitoring.sync import format_sync, sync

KEY = Secret("u123-supersecretkey")
TOKEN = Secret("sntryu_supersecrettoken")
UR = "https://ur.test/v3"
SENTRY = "https://sentry.test"
HOME = MonitorSpec("app homepage", "HTTP", "https://app.example.com/", 300)
HEALTH = MonitorSpec(
    "app API health",
    "KEYWORD",
    "https://app.example.com/health",
    300,
    keyword="healthy",
    keyword_type="ALERT_NOT_EXISTS",
)
BEAT = MonitorSpec("app backups heartbeat", "HEARTBEAT", interval=21600, grace_period=3600)


def settings(*monitors, contacts=()):
    return UptimeRobotSettings(UR, KEY, "opskit", tuple(contacts), tuple(monitors))


def existing(spec, ident, *, tag="opskit", contacts=("7",), **override):
    body = spec.body(tag, list(contacts))
    m = {k: v for k, v in body.items() if k != "tagNames"}
    m.update(id=ident, tags=[{"id": 1, "name": tag}], status="UP", **override)
    if spec.type == "HEARTBEAT":
        m["url"] = "https://heartbeat.example/abc"
    return m


def kinds(actions):
    return [(a.kind, a.what) for a in actions]


# --- plans -------------------------------------------------------------------------------------


def test_plan_creates_what_is_missing():
    actions = plan_monitors(settings(HOME, HEALTH, BEAT), [], ["7"])
    assert [a.kind for a in actions] == ["create"] * 3
    body = actions[1].body
    assert body["keywordType"] == "ALERT_NOT_EXISTS" and body["keywordValue"] == "healthy"
    assert body["tagNames"] == ["opskit"]
    assert body["assignedAlertContacts"] == [
        {"alertContactId": "7", "threshold": 0, "recurrence": 0}
    ]
    assert "url" not in actions[2].body and actions[2].body["gracePeriod"] == 3600


def test_plan_is_empty_when_everything_matches():
    have = [existing(HOME, 1), existing(HEALTH, 2), existing(BEAT, 3)]
    assert [a.kind for a in plan_monitors(settings(HOME, HEALTH, BEAT), have, ["7"])] == ["ok"] * 3


def test_plan_updates_changed_fields_only_of_ours():
    have = [existing(HOME, 1, interval=60), existing(HEALTH, 2, contacts=("8",))]
    actions = plan_monitors(settings(HOME, HEALTH), have, ["7"])
    assert kinds(actions) == [
        ("update", "monitor 'app homepage'"),
        ("update", "monitor 'app API health'"),
    ]
    assert actions[0].detail == "interval 60 -> 300" and actions[0].ident == "1"
    assert "type" not in actions[0].body  # the type cannot change through PATCH
    assert "alertContacts ['8'] -> ['7']" in actions[1].detail


def test_plan_replaces_a_monitor_whose_type_changed():
    have = [existing(MonitorSpec("app homepage", "PING", "app.example.com", 300), 1)]
    [a] = plan_monitors(settings(HOME), have, [])
    assert a.kind == "replace" and a.ident == "1" and "PING -> HTTP" in a.detail


def test_plan_deletes_only_undeclared_monitors_of_ours():
    old = existing(MonitorSpec("app old", "HTTP", "https://old.example.com/", 300), 5)
    theirs = existing(
        MonitorSpec("status page", "HTTP", "https://status.example/", 60), 6, tag="manual"
    )
    untagged = dict(existing(MonitorSpec("x", "HTTP", "https://x.example/", 60), 9), tags=[])
    actions = plan_monitors(settings(HOME), [existing(HOME, 1), old, theirs, untagged], ["7"])
    assert kinds(actions) == [("ok", "monitor 'app homepage'"), ("delete", "monitor 'app old'")]
    assert actions[1].ident == "5"


def test_same_name_without_our_tag_is_a_conflict_not_a_duplicate():
    theirs = existing(HOME, 4, tag="manual")
    [a] = plan_monitors(settings(HOME), [theirs], ["7"])
    assert a.kind == "conflict" and not a.changes and "not the tag 'opskit'" in a.detail


def test_duplicates_of_ours_are_removed():
    actions = plan_monitors(settings(HOME), [existing(HOME, 1), existing(HOME, 2)], ["7"])
    assert sorted(kinds(actions)) == [
        ("delete", "monitor 'app homepage'"),
        ("ok", "monitor 'app homepage'"),
    ]


def sentry_settings(rules=None):
    v = {
        "healthcheck_sentry_event_threshold": 10,
        "healthcheck_sentry_event_interval": "5m",
        "healthcheck_sentry_action_interval_minutes": 30,
    }
    rules = rules if rules is not None else default_rules(v)
    rules = tuple(normalize_rule({**r, "name": "opskit: " + r["name"]}) for r in rules)
    return SentrySettings(SENTRY, TOKEN, "acme", "app", "opskit: ", rules)


def test_default_rules_are_the_runbooks():
    s = sentry_settings()
    names = [r["name"] for r in s.rules]
    assert names == ["opskit: new issue", "opskit: more than 10 events in 5m"]
    freq = s.rules[1]["conditions"][0]
    assert freq["id"].endswith("EventFrequencyCondition") and freq["value"] == 10
    assert freq["interval"] == "5m"
    with pytest.raises(ConfigError, match="healthcheck_sentry_event_interval"):
        default_rules(
            {
                "healthcheck_sentry_event_threshold": 10,
                "healthcheck_sentry_event_interval": "7m",
                "healthcheck_sentry_action_interval_minutes": 30,
            }
        )


def test_rules_plan_create_update_delete_and_leave_others():
    s = sentry_settings()
    new_issue = {**s.rules[0], "id": "1"}
    stale = {**s.rules[1], "id": "2", "frequency": 60}
    gone = {**s.rules[1], "id": "3", "name": "opskit: old rule"}
    theirs = {**s.rules[1], "id": "4", "name": "team rule"}
    actions = plan_rules(s, [new_issue, stale, gone, theirs])
    assert [(a.kind, a.ident) for a in actions] == [("ok", "1"), ("update", "2"), ("delete", "3")]
    assert actions[1].detail == "changed: frequency"


def test_format_sync_counts_and_says_what_to_do():
    result = sync.__globals__["SyncResult"](plan_monitors(settings(HOME), [], []), False)
    text = format_sync(result)
    assert "[uptimerobot] create   monitor 'app homepage'" in text
    assert text.endswith("monitoring: 1 create; planned (apply with --apply)\n")


# --- clients -----------------------------------------------------------------------------------


def no_sleep(delays):
    return {"sleep": delays.append, "backoff": 0.01}


@responses.activate
def test_uptimerobot_pages_through_next_links_with_bearer_auth():
    responses.get(
        f"{UR}/monitors",
        match=[responses.matchers.query_param_matcher({})],
        json={"data": [{"id": 1}], "nextLink": f"{UR}/monitors?cursor=1"},
    )
    responses.get(
        f"{UR}/monitors",
        match=[responses.matchers.query_param_matcher({"cursor": "1"})],
        json={"data": [{"id": 2}], "nextLink": None},
    )
    client = UptimeRobotClient(KEY, base_url=UR)
    assert [m["id"] for m in client.monitors()] == [1, 2]
    assert responses.calls[0].request.headers["Authorization"] == f"Bearer {KEY}"


@responses.activate
def test_429_is_retried_after_retry_after():
    responses.get(f"{UR}/user/alert-contacts", status=429, headers={"Retry-After": "3"})
    responses.get(f"{UR}/user/alert-contacts", status=429, headers={"Retry-After": "2"})
    responses.get(f"{UR}/user/alert-contacts", json=[{"id": 7, "friendlyName": "ops"}])
    delays: list[float] = []
    client = UptimeRobotClient(KEY, base_url=UR, **no_sleep(delays))
    assert client.alert_contacts() == [{"id": 7, "friendlyName": "ops"}]
    assert delays == [3.0, 2.0] and client.api.retries == 2


@responses.activate
def test_429_of_a_post_is_retried_but_a_500_is_not():
    responses.post(f"{UR}/monitors", status=429, headers={"Retry-After": "1"})
    responses.post(f"{UR}/monitors", status=201, json={"id": 5})
    delays: list[float] = []
    client = UptimeRobotClient(KEY, base_url=UR, **no_sleep(delays))
    assert client.create_monitor({"friendlyName": "x"}) == {"id": 5}
    responses.post(f"{UR}/monitors", status=500, json={"message": "boom"})
    with pytest.raises(ApiError, match="HTTP 500 boom"):
        client.create_monitor({"friendlyName": "y"})
    assert len(responses.calls) == 3


@responses.activate
def test_a_long_retry_after_is_an_error_that_says_so():
    responses.get(f"{UR}/monitors", status=429, headers={"Retry-After": "3600"})
    with pytest.raises(ApiError, match="waiting 3600 s more would exceed the wait budget"):
        UptimeRobotClient(KEY, base_url=UR, sleep=lambda s: None).monitors()


@responses.activate
def test_errors_never_carry_the_key():
    responses.get(f"{UR}/monitors", status=401, json={"message": f"bad key {KEY}"})
    with pytest.raises(ApiError) as info:
        UptimeRobotClient(KEY, base_url=UR).monitors()
    assert "HTTP 401" in str(info.value) and str(KEY) not in str(info.value)
    assert "***" in str(info.value)


def test_unreachable_api_is_a_clear_error():
    client = UptimeRobotClient(
        KEY, base_url="http://127.0.0.1:9/v3", attempts=2, sleep=lambda s: None
    )
    with pytest.raises(ApiError, match=r"cannot connect to http://127\.0\.0\.1:9/v3"):
        client.monitors()


@responses.activate
def test_delete_of_a_monitor_already_gone_is_fine():
    responses.delete(f"{UR}/monitors/4", status=404, json={"message": "not found"})
    UptimeRobotClient(KEY, base_url=UR).delete_monitor(4)


@responses.activate
def test_sentry_release_created_or_existing():
    url = f"{SENTRY}/api/0/organizations/acme/releases/"
    responses.post(url, status=201, json={"version": "abc"})
    responses.post(url, status=208, json={"version": "abc"})
    client = SentryClient(TOKEN, "acme", "app", base_url=SENTRY)
    assert client.create_release("abc")[0] is True
    assert client.create_release("abc")[0] is False
    assert json.loads(responses.calls[0].request.body) == {"version": "abc", "projects": ["app"]}


# --- the inventory -------------------------------------------------------------------------------

INV = """
ssh: {known_hosts: known_hosts}
vars:
  healthcheck_slack_webhook_url: {secret: SLACK_WEBHOOK_URL}
  healthcheck_uptimerobot_api_url: https://ur.test/v3
  healthcheck_uptimerobot_api_key: {secret: UPTIMEROBOT_API_KEY}
  healthcheck_uptimerobot_alert_contacts: [ops]
  healthcheck_sentry_api_url: https://sentry.test
  healthcheck_sentry_auth_token: {secret: SENTRY_AUTH_TOKEN}
  healthcheck_sentry_org: acme
  healthcheck_sentry_project: app
groups:
  web:
    roles: [healthcheck]
    vars: {healthcheck_public_url: "https://app.example.com", healthcheck_monitor_prefix: shop}
    hosts:
      web1: {address: 10.0.0.1}
      web2: {address: 10.0.0.2}
  db:
    roles: [healthcheck]
    hosts:
      db1: {address: 10.0.0.3}
"""
ENV = {
    "SLACK_WEBHOOK_URL": "https://hooks.test/services/T1/B1/x",
    "UPTIMEROBOT_API_KEY": str(KEY),
    "SENTRY_AUTH_TOKEN": str(TOKEN),
}


def load(tmp_path: Path, text: str = INV):
    path = tmp_path / "inv.yml"
    path.write_text(text)
    return load_inventory(path, environ=ENV)


def test_declared_monitors_come_once_from_the_web_hosts(tmp_path):
    d = declared(load(tmp_path))
    assert d.uptimerobot is not None and d.sentry is not None
    assert [m.name for m in d.uptimerobot.monitors] == [
        "shop homepage",
        "shop API health",
        "shop admin",
        "shop port 443",
        "shop backups heartbeat",
    ]
    assert d.uptimerobot.contacts == ("ops",) and isinstance(d.uptimerobot.api_key, Secret)


def test_hosts_that_disagree_are_an_error(tmp_path):
    text = INV.replace(
        "      web2: {address: 10.0.0.2}",
        "      web2: {address: 10.0.0.2, vars: {healthcheck_uptimerobot_tag: x}}",
    )
    with pytest.raises(ConfigError, match=r"healthcheck_uptimerobot_tag: hosts web1 and web2"):
        declared(load(tmp_path, text))


def test_a_plain_api_key_is_refused_without_echo(tmp_path):
    text = INV.replace("{secret: UPTIMEROBOT_API_KEY}", "plainkey123")
    with pytest.raises(ConfigError, match="must be a secret reference") as info:
        declared(load(tmp_path, text))
    assert "plainkey123" not in str(info.value)


@responses.activate
def test_sync_applies_then_unknown_contact_is_a_config_error(tmp_path):
    decl = declared(load(tmp_path))
    responses.get(f"{UR}/user/alert-contacts", json=[{"id": 7, "friendlyName": "ops"}])
    responses.get(f"{UR}/monitors", json={"data": [], "nextLink": None})
    responses.post(f"{UR}/monitors", status=201, json={"id": 1, "type": "HTTP"})
    rules = f"{SENTRY}/api/0/projects/acme/app/rules/"
    responses.get(rules, json=[])
    responses.post(rules, status=201, json={"id": "9"})
    result = sync(decl, apply=True)
    assert (
        len(result.done) == 7
        and result.done[0] == "[uptimerobot] created monitor 'shop homepage' (id 1)"
    )
    posted = [json.loads(c.request.body) for c in responses.calls if c.request.method == "POST"]
    assert all(b.get("tagNames") == ["opskit"] for b in posted[:5])
    responses.replace(responses.GET, f"{UR}/user/alert-contacts", json=[])
    with pytest.raises(ConfigError, match="'ops' not found in UptimeRobot"):
        sync(decl)


@responses.activate
def test_sentry_release_and_deploy_for_inv_deploy(tmp_path):
    inventory = load(tmp_path)
    responses.post(f"{SENTRY}/api/0/organizations/acme/releases/", status=201, json={})
    responses.post(
        f"{SENTRY}/api/0/organizations/acme/releases/abc123/deploys/",
        status=201,
        json={"id": "42", "environment": "production"},
    )
    made = sentry_release(inventory, "abc123", ref="abc123")
    assert made is not None and made.created and made.deploy_id == "42"
    assert made.environment == "production"
    deploy = json.loads(responses.calls[1].request.body)
    assert deploy["environment"] == "production" and "dateFinished" in deploy
    assert responses.calls[0].request.headers["Authorization"] == f"Bearer {TOKEN}"


def test_sentry_release_is_none_without_sentry(tmp_path):
    text = INV.replace("{secret: SENTRY_AUTH_TOKEN}", '""')
    assert sentry_release(load(tmp_path, text), "abc") is None


# --- as the real services answer (issue 15) ----------------------------------------------------


def labelled(rule, rule_id):
    """A rule as real Sentry answers it: a "name" label on every node, a "uuid" on actions, and
    fields opskit never sends (src/sentry/api/serializers/models/rule.py)."""
    return {
        **rule,
        "id": rule_id,
        "conditions": [{**c, "name": "label"} for c in rule["conditions"]],
        "actions": [{**a, "name": "label", "uuid": "u-1"} for a in rule["actions"]],
        "filters": [],
        "environment": None,
        "owner": None,
        "createdBy": None,
        "dateCreated": "2026-01-01T00:00:00Z",
        "projects": ["app"],
        "status": "active",
        "snooze": False,
    }


def test_rules_as_sentry_answers_them_plan_nothing():
    s = sentry_settings()
    have = [labelled(s.rules[0], "1"), labelled(s.rules[1], "2")]
    assert [(a.kind, a.detail) for a in plan_rules(s, have)] == [("ok", ""), ("ok", "")]
    # A string where opskit sent a number (a form value) is the same value.
    cond = {**have[1]["conditions"][0], "value": "10"}
    assert [a.kind for a in plan_rules(s, [have[0], {**have[1], "conditions": [cond]}])] == [
        "ok",
        "ok",
    ]
    cond = {**cond, "value": "11"}
    [_, changed] = plan_rules(s, [have[0], {**have[1], "conditions": [cond]}])
    assert (changed.kind, changed.detail) == ("update", "changed: conditions")


def test_an_identical_rule_of_someone_else_is_adopted_and_one_of_ours_renamed():
    s = sentry_settings()
    theirs = labelled({**s.rules[0], "name": "Send a notification for new issues"}, "7")
    ours_old = labelled({**s.rules[1], "name": "opskit: old name"}, "8")
    actions = plan_rules(s, [theirs, ours_old])
    assert [(a.kind, a.ident) for a in actions] == [("ok", "7"), ("update", "8")]
    assert actions[0].detail.startswith("adopted: identical to rule 'Send a notification")
    assert actions[1].body["name"] == "opskit: more than 10 events in 5m"
    assert "adopted" in format_sync(sync.__globals__["SyncResult"](actions, False))


@responses.activate
def test_sentry_rules_follow_link_pagination():
    base = f"{SENTRY}/api/0/projects/acme/app/rules/"

    def link(cursor, more):
        return (
            f'<{base}?&cursor=0:0:1>; rel="previous"; results="false"; cursor="0:0:1", '
            f'<{base}?&cursor={cursor}>; rel="next"; results="{more}"; cursor="{cursor}"'
        )

    responses.get(
        base,
        match=[responses.matchers.query_param_matcher({})],
        json=[{"id": "3"}],
        headers={"Link": link("0:1:0", "true")},
    )
    responses.get(
        base,
        match=[responses.matchers.query_param_matcher({"cursor": "0:1:0"})],
        json=[{"id": "2"}],
        headers={"Link": link("0:2:0", "true")},
    )
    responses.get(
        base,
        match=[responses.matchers.query_param_matcher({"cursor": "0:2:0"})],
        json=[{"id": "1"}],
        headers={"Link": link("0:3:0", "false")},
    )
    client = SentryClient(TOKEN, "acme", "app", base_url=SENTRY)
    assert [r["id"] for r in client.rules()] == ["3", "2", "1"]
    assert all(c.request.headers["Authorization"] == f"Bearer {TOKEN}" for c in responses.calls)


class Clock:
    def __init__(self):
        self.now, self.slept = 1_000_000.0, []

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


@responses.activate
def test_uptimerobot_paces_itself_by_the_rate_limit_headers():
    clock = Clock()
    used_up = {
        "X-RateLimit-Limit": "10",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": str(int(clock.now) + 42),
    }
    responses.get(f"{UR}/user/alert-contacts", json=[], headers=used_up)
    responses.get(f"{UR}/monitors", json={"data": [], "nextLink": None})
    client = UptimeRobotClient(KEY, base_url=UR, sleep=clock.sleep, clock=lambda: clock.now)
    client.alert_contacts()
    assert clock.slept == []
    client.monitors()  # waits for the window's reset first: never refused
    assert clock.slept == [42.0] and client.api.limit == 10
    assert client.api.waits == [(42.0, "rate limit of 10 requests a window used up")]


@responses.activate
def test_uptimerobot_waits_out_429s_within_a_budget_then_says_so():
    clock = Clock()
    for _ in range(6):  # more 429s than the attempts of other errors
        responses.get(f"{UR}/monitors", status=429, headers={"Retry-After": "20"})
    responses.get(f"{UR}/monitors", json={"data": [{"id": 1}], "nextLink": None})
    client = UptimeRobotClient(KEY, base_url=UR, sleep=clock.sleep, clock=lambda: clock.now)
    assert client.monitors() == [{"id": 1}] and clock.slept == [20.0] * 6
    responses.get(f"{UR}/user/alert-contacts", status=429, headers={"Retry-After": "60"})
    small = UptimeRobotClient(
        KEY, base_url=UR, sleep=clock.sleep, clock=lambda: clock.now, wait_budget=100
    )
    with pytest.raises(ApiError, match="would exceed the wait budget of 100 s") as info:
        for _ in range(3):
            small.alert_contacts()
    assert str(KEY) not in str(info.value)


@responses.activate
def test_a_paced_sync_says_how_long_it_waited(tmp_path):
    clock = Clock()
    s = settings(HOME)
    headers = {
        "X-RateLimit-Limit": "10",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": str(int(clock.now) + 7),
    }
    responses.get(f"{UR}/user/alert-contacts", json=[], headers=headers)
    responses.get(f"{UR}/monitors", json={"data": [], "nextLink": None})
    decl = sync.__globals__["Declared"](s, None)
    result = sync(decl, retry={"sleep": clock.sleep, "clock": lambda: clock.now})
    assert "UptimeRobot: paced by its rate limit (10 requests a window): waited 1 time(s), " in (
        format_sync(result)
    )
