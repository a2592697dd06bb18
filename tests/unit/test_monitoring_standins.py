"""The lab's stand-ins for UptimeRobot, Sentry and Papertrail, run in-process on loopback and
spoken to with opskit's own clients: they validate as the real services do."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from http.server import ThreadingHTTPServer

import pytest
import requests

from opskit.clients import ApiError
from opskit.clients.sentry import SentryClient
from opskit.clients.uptimerobot import UptimeRobotClient
from opskit.core.secrets import Secret
from opskit.lab.standins import sentry as sentry_svc
from opskit.lab.standins import syslog as syslog_svc
from opskit.lab.standins import uptimerobot as ur_svc

KEY = Secret("u0000000-labkey")


def serve(server):
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def uptimerobot(tmp_path):
    store = ur_svc.Store(tmp_path, "http://127.0.0.1:8026", rate=1000)
    server = serve(
        ThreadingHTTPServer(("127.0.0.1", 0), ur_svc.make_handler(store, KEY, page_size=2))
    )
    yield f"http://127.0.0.1:{server.server_port}/v3", tmp_path
    server.shutdown()


def test_uptimerobot_stand_in_pages_validates_and_keeps(uptimerobot):
    url, directory = uptimerobot
    client = UptimeRobotClient(KEY, base_url=url)
    for i in range(5):
        client.create_monitor(
            {
                "friendlyName": f"m{i}",
                "type": "HTTP",
                "url": f"https://e.example/{i}",
                "interval": 300,
                "tagNames": ["opskit"],
            }
        )
    assert [m["friendlyName"] for m in client.monitors()] == ["m0", "m1", "m2", "m3", "m4"]
    with pytest.raises(ApiError, match="HTTP 400 keywordType must be one of"):
        client.create_monitor(
            {"friendlyName": "k", "type": "KEYWORD", "url": "https://e.example/", "interval": 300}
        )
    first = client.monitors()[0]["id"]
    with pytest.raises(ApiError, match="type cannot be changed"):
        client.update_monitor(first, {"type": "PING"})
    with pytest.raises(ApiError, match="unknown alert contact"):
        client.update_monitor(first, {"assignedAlertContacts": [{"alertContactId": "1"}]})
    with pytest.raises(ApiError, match="HTTP 401"):
        UptimeRobotClient(Secret("wrong"), base_url=url).monitors()
    beat = client.create_monitor({"friendlyName": "b", "type": "HEARTBEAT", "interval": 300})
    assert beat["url"].startswith("http://127.0.0.1:8026/m")
    kept = [json.loads(x) for x in (directory / "inbox.jsonl").read_text().splitlines()]
    assert [k["action"] for k in kept] == ["create"] * 6


def test_uptimerobot_stand_in_rate_limits_with_retry_after(uptimerobot):
    url, directory = uptimerobot
    (directory / "faults.json").write_text(
        json.dumps({"status": 429, "count": 1, "retry_after": 1})
    )
    resp = requests.get(f"{url}/monitors", headers={"Authorization": f"Bearer {KEY}"}, timeout=5)
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "1"
    delays: list[float] = []
    (directory / "faults.json").write_text(json.dumps({"status": 429, "count": 1}))
    assert UptimeRobotClient(KEY, base_url=url, sleep=delays.append).monitors() == []
    assert delays == [1.0]


@pytest.fixture
def sentry(tmp_path):
    store = sentry_svc.Store(tmp_path, "acme", "app")
    handler = sentry_svc.make_handler(store, "tok", "publickey")
    server = serve(ThreadingHTTPServer(("127.0.0.1", 0), handler))
    yield f"http://127.0.0.1:{server.server_port}", tmp_path
    server.shutdown()


def test_sentry_stand_in_releases_deploys_and_rules(sentry):
    url, _ = sentry
    client = SentryClient(Secret("tok"), "acme", "app", base_url=url)
    assert client.create_release("v1")[0] is True
    assert client.create_release("v1")[0] is False
    assert client.create_deploy("v1", "production")["environment"] == "production"
    with pytest.raises(ApiError, match="HTTP 404"):
        client.create_deploy("v2", "production")
    with pytest.raises(ApiError, match="frequency"):
        client.create_rule(
            {
                "name": "x",
                "frequency": 1,
                "actionMatch": "all",
                "conditions": [],
                "actions": [{"id": "a"}],
            }
        )
    rule = client.create_rule(
        {
            "name": "x",
            "frequency": 30,
            "actionMatch": "all",
            "conditions": [{"id": "c"}],
            "actions": [{"id": "a"}],
        }
    )
    assert [r["id"] for r in client.rules()] == [rule["id"]]
    client.delete_rule(rule["id"])
    assert client.rules() == []
    with pytest.raises(ApiError, match="HTTP 401"):
        SentryClient(Secret("nope"), "acme", "app", base_url=url).rules()
    with pytest.raises(ApiError, match="HTTP 404"):
        SentryClient(Secret("tok"), "other", "app", base_url=url).rules()


def test_sentry_stand_in_ingests_events_with_the_dsn_key(sentry):
    url, directory = sentry
    envelope = b'{"event_id":"e1"}\n{"type":"event"}\n{"message":"boom","level":"error"}\n'
    ok = requests.post(
        f"{url}/api/1/envelope/",
        data=envelope,
        timeout=5,
        headers={"X-Sentry-Auth": "Sentry sentry_key=publickey, sentry_version=7"},
    )
    assert ok.status_code == 200 and ok.json() == {"id": "e1"}
    bad = requests.post(f"{url}/api/1/envelope/?sentry_key=wrong", data=envelope, timeout=5)
    assert bad.status_code == 403 and bad.headers["X-Sentry-Error"]
    kept = [json.loads(x) for x in (directory / "inbox.jsonl").read_text().splitlines()]
    assert [(k["kind"], k["message"]) for k in kept] == [("event", "boom")]


def test_syslog_receiver_keeps_tls_lines_and_reports_refused_handshakes(tmp_path):
    pki = syslog_svc.ensure_pki(tmp_path / "pki", ca_name="test CA", address="127.0.0.1")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki / "server.pem", pki / "server.key")
    receiver = syslog_svc.Receiver(tmp_path)
    server = serve(syslog_svc.Server(("127.0.0.1", 0), syslog_svc.make_handler(receiver, context)))
    port = server.server_address[1]
    client = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    with (
        socket.create_connection(("127.0.0.1", port)) as raw,
        client.wrap_socket(raw, server_hostname=syslog_svc.SERVER_NAME) as tls,
    ):
        tls.sendall(b"<134>1 2026-01-01T00:00:00Z web1 app - - - hello\n")
    untrusting = ssl.create_default_context()  # the system CAs: ours is not among them
    with socket.create_connection(("127.0.0.1", port)) as raw, pytest.raises(ssl.SSLError):
        untrusting.wrap_socket(raw, server_hostname=syslog_svc.SERVER_NAME)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not (tmp_path / "errors.jsonl").exists():
        time.sleep(0.05)
    server.shutdown()
    [line] = [json.loads(x) for x in (tmp_path / "inbox.jsonl").read_text().splitlines()]
    assert (line["host"], line["app"], line["msg"]) == ("web1", "app", "hello")
    assert (tmp_path / "errors.jsonl").read_text().strip()


# --- as the vendors behave (issue 15) ----------------------------------------------------------


def test_uptimerobot_stand_in_enforces_the_free_plan_by_default_with_real_headers(tmp_path):
    store = ur_svc.Store(tmp_path, "http://127.0.0.1:8026", rate=10)
    assert store.limits() == (10, 60.0)  # the free plan: 10 requests a minute
    server = serve(ThreadingHTTPServer(("127.0.0.1", 0), ur_svc.make_handler(store, KEY, 50)))
    url = f"http://127.0.0.1:{server.server_port}/v3/monitors"
    auth = {"Authorization": f"Bearer {KEY}"}
    got = [requests.get(url, headers=auth, timeout=5) for _ in range(11)]
    server.shutdown()
    assert [r.status_code for r in got] == [200] * 10 + [429]
    assert [r.headers["X-RateLimit-Remaining"] for r in got[:10]] == [
        str(n) for n in range(9, -1, -1)
    ]
    assert all(r.headers["X-RateLimit-Limit"] == "10" for r in got)
    reset = int(got[0].headers["X-RateLimit-Reset"])
    assert time.time() + 55 < reset <= time.time() + 61
    assert 55 <= int(got[10].headers["Retry-After"]) <= 60


def test_a_paced_client_never_gets_a_429_from_the_stand_in(tmp_path):
    (tmp_path / "limits.json").write_text(json.dumps({"rate": 3, "window": 2}))
    store = ur_svc.Store(tmp_path, "http://127.0.0.1:8026", rate=10)
    server = serve(ThreadingHTTPServer(("127.0.0.1", 0), ur_svc.make_handler(store, KEY, 2)))
    client = UptimeRobotClient(KEY, base_url=f"http://127.0.0.1:{server.server_port}/v3")
    started = time.monotonic()
    for i in range(7):
        client.create_monitor(
            {"friendlyName": f"m{i}", "type": "HTTP", "url": "https://e.example/", "interval": 300}
        )
    server.shutdown()
    assert time.monotonic() - started >= 2.0  # two windows used up: it waited for the resets
    assert client.api.retries == 0 and len(client.api.waits) == 2  # paced, never refused
    assert all(why.startswith("rate limit of 3 requests") for _, why in client.api.waits)


def test_sentry_stand_in_labels_pages_and_refuses_exact_duplicates(sentry):
    url, _ = sentry
    client = SentryClient(Secret("tok"), "acme", "app", base_url=url)
    body = {
        "name": "opskit: more",
        "frequency": 30,
        "actionMatch": "all",
        "conditions": [
            {
                "id": "sentry.rules.conditions.event_frequency.EventFrequencyCondition",
                "value": 10,
                "interval": "5m",
            }
        ],
        "actions": [{"id": "sentry.mail.actions.NotifyEmailAction", "targetType": "IssueOwners"}],
    }
    made = client.create_rule(body)
    assert made["conditions"][0]["name"] == "The issue is seen more than 10 times in 5m"
    assert made["actions"][0]["name"] and made["actions"][0]["uuid"]
    with pytest.raises(
        ApiError, match="HTTP 400 name: This rule is an exact duplicate of 'opskit: more'"
    ):
        client.create_rule({**body, "name": "another name"})
    for i in range(7):  # more than two pages of 3
        client.create_rule({**body, "name": f"filler {i}", "frequency": 40 + i})
    page1 = requests.get(
        f"{url}/api/0/projects/acme/app/rules/", headers={"Authorization": "Bearer tok"}, timeout=5
    )
    assert len(page1.json()) == 3 and 'rel="next"; results="true"' in page1.headers["Link"]
    rules = client.rules()
    assert len(rules) == 8 and rules[-1]["id"] == made["id"]  # newest first: ours on page 3
    # Renaming to a duplicate of another rule is refused too; the same rule may be PUT again.
    client.update_rule(made["id"], body)
    with pytest.raises(ApiError, match="exact duplicate of 'filler 0'"):
        client.update_rule(made["id"], {**body, "frequency": 40})


def test_uptimerobot_stand_in_answers_uptime_stats_as_the_v3_openapi_describes(uptimerobot):
    """`GET /monitors/{id}/stats/uptime?from&to`: uptime in percent over the monitored part of
    the range, downtime seconds, incidents, MTBF; at most 90 days; `to` after `from`."""
    url, directory = uptimerobot
    client = UptimeRobotClient(KEY, base_url=url)
    m = client.create_monitor(
        {"friendlyName": "u", "type": "HTTP", "url": "https://e.example/", "interval": 300}
    )
    now = time.time()
    iso = lambda t: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))  # noqa: E731
    full = client.uptime_stats(m["id"], iso(now - 30 * 86400), iso(now))
    assert (full["uptime"], full["incident_count"], full["mtbf"]) == (100.0, 0, None)
    (directory / "downtime.json").write_text(
        json.dumps({str(m["id"]): [[iso(now + 100), iso(now + 400)]]})
    )
    # the monitor was created just now: the range counts from then on
    window = client.uptime_stats(m["id"], iso(now - 3000), iso(now + 600))
    assert window["total_downtime_seconds"] == 300 and window["incident_count"] == 1
    assert 0 < window["uptime"] < 100 and set(window) == {
        "uptime",
        "total_downtime_seconds",
        "incident_count",
        "mtbf",
        "from",
        "to",
    }
    with pytest.raises(ApiError, match="at most 90 days"):
        client.uptime_stats(m["id"], iso(now - 91 * 86400), iso(now))
    with pytest.raises(ApiError, match="to must be after from"):
        client.uptime_stats(m["id"], iso(now), iso(now - 60))
