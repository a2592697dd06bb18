"""Contract tests: the requests opskit builds, checked against the vendors' documented schemas
and examples stored in tests/contract/examples/ (each file names its source), independent of
the lab's stand-ins. A stand-in that agrees with a wrong client cannot make these pass."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import responses

from opskit.clients.sentry import SentryClient, next_page
from opskit.clients.uptimerobot import UptimeRobotClient
from opskit.hostside import backup
from opskit.hostside import healthcheck as hc
from opskit.monitoring.monitors import MonitorSpec, UptimeRobotSettings, plan_monitors
from opskit.monitoring.rules import plan_rules
from tests.unit.test_monitoring import KEY, SENTRY, TOKEN, UR, sentry_settings

EXAMPLES = Path(__file__).resolve().parents[1] / "contract" / "examples"


def example(name: str) -> dict[str, Any]:
    data = json.loads((EXAMPLES / name).read_text())
    assert data["source"], f"{name} names no source"
    return data


def test_every_example_names_a_vendor_source():
    for path in EXAMPLES.glob("*.json"):
        sources = json.loads(path.read_text())["source"]
        assert all(s.startswith("https://") for s in sources), path.name


# --- Sentry ------------------------------------------------------------------------------------


def check_rule_body(body: dict[str, Any], schema: dict[str, Any]) -> None:
    allowed = set(schema["required"]) | set(schema["optional"])
    assert set(schema["required"]) <= set(body), body
    assert set(body) <= allowed, set(body) - allowed
    assert 0 < len(body["name"]) <= schema["name_max_length"]
    assert schema["frequency"]["min"] <= body["frequency"] <= schema["frequency"]["max"]
    for key, choices in schema["choices"].items():
        if key in body:
            assert body[key] in choices
    for node in body["conditions"] + body["actions"] + body.get("filters", []):
        spec = schema["nodes"][node["id"]]["fields"]
        for field, value in node.items():
            if field == "id":
                continue
            assert field in spec, f"{node['id']}: {field} is not documented"
            if isinstance(spec[field], list):
                assert value in spec[field], (field, value)
            else:
                assert isinstance(value, int) and not isinstance(value, bool)
        assert "name" not in node and "uuid" not in node  # server-side, never sent


def test_the_sentry_rules_opskit_creates_are_what_sentry_documents():
    schema = example("sentry_issue_alert_rule_request.json")
    for want in sentry_settings().rules:
        body = {k: v for k, v in want.items() if not (k == "environment" and v is None)}
        check_rule_body(body, schema)
    for action in plan_rules(sentry_settings(), []):
        assert action.kind == "create"
        check_rule_body(dict(action.body or {}), schema)


def test_a_rule_listed_as_sentry_serializes_it_plans_nothing_when_declared_alike():
    """The documented list answer (labels, uuid, owner, ...) against a declaration of the same
    rule: opskit compares what it declares only."""
    listed = example("sentry_list_rules_response.json")["response"][0]
    declared = {
        k: listed[k] for k in ("frequency", "actionMatch", "filterMatch", "environment")
    } | {
        "name": "high number",  # sentry_settings() adds the prefix "opskit: "
        "conditions": [{k: v for k, v in c.items() if k != "name"} for c in listed["conditions"]],
        "filters": [{k: v for k, v in f.items() if k != "name"} for f in listed["filters"]],
        "actions": [
            {k: v for k, v in a.items() if k not in ("name", "uuid")} for a in listed["actions"]
        ],
    }
    settings = sentry_settings(rules=[declared])
    mine = {**listed, "name": "opskit: high number"}
    assert [a.kind for a in plan_rules(settings, [mine])] == ["ok"]
    # The same rule under another name: Sentry would refuse a copy; it is adopted.
    [adopt] = plan_rules(settings, [listed])
    assert adopt.kind == "ok" and adopt.detail.startswith("adopted")


@responses.activate
def test_the_client_follows_the_documented_link_header():
    listed = example("sentry_list_rules_response.json")
    assert next_page(listed["link_first_page"]).endswith("cursor=0:100:0")
    assert next_page(listed["link_last_page"]) is None
    base = "https://sentry.io/api/0/projects/acme/app/rules/"
    responses.get(
        base,
        match=[responses.matchers.query_param_matcher({})],
        json=listed["response"],
        headers={"Link": listed["link_first_page"]},
    )
    responses.get(
        base,
        match=[responses.matchers.query_param_matcher({"cursor": "0:100:0"})],
        json=[{**listed["response"][0], "id": "2"}],
        headers={"Link": listed["link_last_page"]},
    )
    rules = SentryClient(TOKEN, "acme", "app", base_url="https://sentry.io").rules()
    assert [r["id"] for r in rules] == ["3", "2"]


@responses.activate
def test_release_and_deploy_requests_are_as_documented():
    doc = example("sentry_release_deploy_request.json")
    org = f"{SENTRY}/api/0/organizations/acme/releases/"
    responses.post(org, status=201, json={"version": "v1"})
    responses.post(f"{org}v1/deploys/", status=201, json={"id": "1"})
    client = SentryClient(TOKEN, "acme", "app", base_url=SENTRY)
    client.create_release("v1", ref="abc", url="https://x.example/")
    client.create_deploy("v1", "production", name="d", started="2026-01-01T00:00:00Z")
    for call, spec in zip(responses.calls, (doc["release"], doc["deploy"]), strict=True):
        body = json.loads(call.request.body)
        assert set(spec["required"]) <= set(body) <= set(spec["required"]) | set(spec["optional"])


# --- UptimeRobot -------------------------------------------------------------------------------

MONITORS = (
    MonitorSpec("app homepage", "HTTP", "https://app.example.com/", 300),
    MonitorSpec(
        "app health",
        "KEYWORD",
        "https://app.example.com/health",
        300,
        keyword="healthy",
        keyword_type="ALERT_NOT_EXISTS",
    ),
    MonitorSpec("app backups", "HEARTBEAT", interval=21600, grace_period=3600),
)
TYPES = {"str": str, "int": int, "bool": bool, "list": list, "dict": dict}


def check_monitor_body(body: dict[str, Any], doc: dict[str, Any], *, create: bool) -> None:
    if create:
        assert set(doc["required_on_create"]) <= set(body)
    for key, value in body.items():
        assert key in doc["fields"], f"{key} is not a documented monitor field"
        kind = doc["fields"][key]
        if isinstance(kind, list):
            assert value in kind
        elif kind != "any":
            assert isinstance(value, TYPES[kind]), (key, value)
            assert not (kind == "int" and isinstance(value, bool))
    for contact in body.get("assignedAlertContacts", []):
        assert set(contact) <= set(doc["alert_contact_fields"])
        assert isinstance(contact["alertContactId"], str)


def test_the_monitors_opskit_sends_are_what_uptimerobot_documents():
    doc = example("uptimerobot_monitor_request.json")
    settings = UptimeRobotSettings(UR, KEY, "opskit", ("ops",), MONITORS)
    actions = plan_monitors(settings, [], ["100001"])
    assert [a.kind for a in actions] == ["create"] * 3
    for a in actions:
        check_monitor_body(dict(a.body or {}), doc, create=True)
    # An update (PATCH) sends documented fields only, never the type.
    have = [{**dict(actions[0].body or {}), "id": 1, "interval": 60, "tags": [{"name": "opskit"}]}]
    have[0].pop("tagNames")
    [update] = [a for a in plan_monitors(settings, have, ["100001"]) if a.kind == "update"]
    check_monitor_body(dict(update.body or {}), doc, create=False)
    assert "type" not in (update.body or {})


@responses.activate
def test_the_documented_list_and_rate_limit_headers_are_understood():
    doc = example("uptimerobot_monitor_request.json")
    page = doc["list_response_example"]
    headers = {**doc["rate_limit_headers"], "X-RateLimit-Reset": "1000030"}
    headers.pop("Retry-After")
    responses.get(
        f"{UR}/monitors",
        match=[responses.matchers.query_param_matcher({})],
        json={**page, "nextLink": f"{UR}/monitors?cursor=800001"},
        headers=headers,
    )
    responses.get(
        f"{UR}/monitors",
        match=[responses.matchers.query_param_matcher({"cursor": "800001"})],
        json={"data": [], "nextLink": None},
    )
    slept: list[float] = []
    client = UptimeRobotClient(KEY, base_url=UR, sleep=slept.append, clock=lambda: 1_000_000.0)
    assert [m["id"] for m in client.monitors()] == [800001]
    assert slept == [30.0] and client.api.limit == doc["free_plan_requests_per_minute"]


# --- Slack -------------------------------------------------------------------------------------


def check_slack_payload(payload: dict[str, Any], doc: dict[str, Any]) -> None:
    assert set(payload) <= set(doc["top_level"])
    assert payload.get("text") or payload.get("attachments") or payload.get("blocks")
    texts = [payload.get("text", "")]
    for a in payload.get("attachments", []):
        assert set(a) <= set(doc["attachment_fields"]), set(a) - set(doc["attachment_fields"])
        texts += [a.get(k, "") for k in ("fallback", "pretext", "title", "text", "footer")]
        for f in a.get("fields", []):
            assert set(f) <= set(doc["field_fields"])
            texts += [f["title"], f["value"]]
    assert len(payload.get("attachments", [])) <= doc["max_attachments"]
    for t in texts:
        assert "<" not in t and ">" not in t, t  # opskit sends no control sequences
        rest = t
        for entity in doc["escape"].values():
            rest = rest.replace(entity, "")
        assert "&" not in rest, t  # every & is an entity


@pytest.mark.parametrize("kind", ["alert", "changed", "reminder", "recovered"])
def test_health_check_alerts_are_slack_payloads_with_escaped_text(kind):
    doc = example("slack_incoming_webhook.json")
    bad = hc.result(hc.HTTP, "critical", "http://x/health answered 200: <!channel> & <b>")
    config: hc.Config = {
        "host": "web1 <&>",
        "remind_minutes": 60,
        "timeout": 5,
        "state_dir": "/nonexistent",
        "slack_webhook_file": "/nonexistent",
        "checks": {},
        "hints": {"http": "Look at <this> & that."},
        "hint_vars": {},
    }
    msg = hc.message(config, kind, "critical", hc.problems_of([bad]), [bad], None, ["disk"])
    check_slack_payload(msg, doc)


def test_backup_alerts_are_slack_payloads_with_escaped_text(tmp_path, monkeypatch):
    from tests.unit.test_hostside_backup import config

    doc = example("slack_incoming_webhook.json")
    cfg = backup.parse_config(json.dumps({**config(tmp_path), "slack_webhook": "http://x/h"}))
    sent: list[bytes] = []
    monkeypatch.setattr(backup, "http", lambda url, data, timeout: sent.append(data) or 200)
    backup.alert(cfg, "upload s3://b/k: <Error> & more", backup.Reporter([]))
    check_slack_payload(json.loads(sent[0]), doc)


# --- S3 ----------------------------------------------------------------------------------------


def test_part_boundaries_come_from_the_documented_get_object_attributes_answer(tmp_path):
    doc = example("s3_get_object_attributes_response.json")
    pages = list(doc["response_pages"])
    calls: list[dict[str, Any]] = []

    class Client:
        def get_object_attributes(self, **kwargs: Any) -> dict[str, Any]:
            calls.append(kwargs)
            assert set(kwargs["ObjectAttributes"]) <= set(doc["request"]["ObjectAttributes"])
            return pages.pop(0)

    kind, sizes = backup.object_parts(Client(), "b", "k", 10)
    assert (kind, sizes) == ("COMPOSITE", [4, 4, 2])
    assert calls[1]["PartNumberMarker"] == 2  # the second page asked for by its marker
    data = b"abcdefghij"
    (tmp_path / "f").write_bytes(data)
    parts = [hashlib.sha256(data[i : i + n]).digest() for i, n in ((0, 4), (4, 4), (8, 2))]
    want = base64.b64encode(hashlib.sha256(b"".join(parts)).digest()).decode() + "-3"
    assert backup.expected_s3_sha256(str(tmp_path / "f"), kind, sizes) == want
