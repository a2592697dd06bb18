"""Monitoring on the lab: health checks that alert the Slack stand-in, UptimeRobot monitors and
Sentry rules as code against their stand-ins, Papertrail forwarding over TLS, Sentry releases.

The app may not be deployed on the lab: a tiny health server (a systemd unit answering
GET /health with {"status": "healthy"} on 127.0.0.1:3999) plays it, so that a test can stop and
start "the app". Tests run in file order and share the hosts.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
import uuid
from urllib.parse import urlsplit

import pytest

from opskit.clients.sentry import SentryClient
from opskit.clients.uptimerobot import UptimeRobotClient
from opskit.core.inventory import load_inventory
from opskit.core.runner import provision_work, run_on_hosts
from opskit.core.secrets import Secret
from opskit.fleet.verify import run_verify
from opskit.lab import registry as labsvc
from opskit.lab.nspawn import exec_in
from opskit.lab.spec import LabSpec, gateway_ip
from opskit.monitoring.declared import declared
from opskit.monitoring.releases import sentry_release
from opskit.monitoring.rules import default_rules
from opskit.monitoring.sync import sync
from tests.integration.conftest import LAB_INVENTORY, REPO, inv, write_inventory

ROLES = ["healthcheck", "papertrail"]
HEALTH_PORT = 3999
APP_LOG = "/var/log/labapp/out.log"
# The stand-ins keep their state across lab sessions: this run's monitors have names of their own
# (earlier runs' monitors carry the opskit tag and are deleted by the first sync as undeclared).
RUN = uuid.uuid4().hex[:6]
PREFIX = f"lab app {RUN}"
HEALTH_SERVER = f"""\
import http.server, json
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        ok = self.path == "/health"
        body = json.dumps({{"status": "healthy"}}).encode() if ok else b"not found"
        self.send_response(200 if ok else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer(("127.0.0.1", {HEALTH_PORT}), H).serve_forever()
"""
UNIT = """\
[Unit]
Description=stand-in for the app's health endpoint (opskit tests)
[Service]
ExecStart=/usr/bin/python3 /usr/local/lib/opskit-test/health.py
[Install]
WantedBy=multi-user.target
"""


def monitoring_vars(spec: LabSpec) -> dict:
    gateway = gateway_ip(spec)
    return {
        "healthcheck_slack_webhook_url": {"secret": "SLACK_WEBHOOK_URL"},
        # Cron must not run a check in the middle of a test that counts alerts; the schedule
        # itself is proven by the last test.
        "healthcheck_schedule": "17 3 1 1 *",
        "healthcheck_checks": ["http", "database", "disk", "memory", "pm2", "error_rate", "p95"],
        "healthcheck_health_url": f"http://127.0.0.1:{HEALTH_PORT}/health",
        "healthcheck_database_host": "127.0.0.1",
        "healthcheck_pm2_user": "",
        "healthcheck_uptimerobot_api_url": labsvc.service_url(spec, "uptimerobot") + "/v3",
        "healthcheck_uptimerobot_api_key": {"secret": "UPTIMEROBOT_API_KEY"},
        "healthcheck_uptimerobot_alert_contacts": ["ops-slack"],
        "healthcheck_sentry_api_url": labsvc.service_url(spec, "sentry"),
        "healthcheck_sentry_auth_token": {"secret": "SENTRY_AUTH_TOKEN"},
        "healthcheck_sentry_org": "opskit-lab",
        "healthcheck_sentry_project": "app",
        "papertrail_host": gateway,
        "papertrail_port": labsvc.find_service("syslog").port,
        "papertrail_permitted_peer": "syslog.opskit.lab",
        "papertrail_ca_file": str(labsvc.inbox_dir(spec, "syslog") / "pki" / "ca.pem"),
        "papertrail_app_logs": [{"path": APP_LOG, "tag": "labapp"}],
    }


def make_inventory(tmp_path, spec, *, web=None, top=None, name="mon.yml"):
    """A copy of the lab inventory with the monitoring roles on every group and our variables."""

    def change(data):
        data.setdefault("vars", {}).update(monitoring_vars(spec))
        data["vars"].update(top or {})
        for gname, group in data["groups"].items():
            group["roles"] = list(dict.fromkeys([*group.get("roles", []), *ROLES]))
            group.setdefault("vars", {})
            # The other roles' variables stay; only ours are set here.
            group["vars"] = {
                k: v
                for k, v in group["vars"].items()
                if not k.startswith(("healthcheck_", "papertrail_"))
            }
            if gname == "web":
                group["vars"]["healthcheck_public_url"] = f"http://{gateway_ip(spec)}:{HEALTH_PORT}"
                group["vars"]["healthcheck_monitor_prefix"] = PREFIX
                group["vars"].update(web or {})

    return write_inventory(tmp_path, change, name)


def provision(inventory, hosts=None):
    results = run_on_hosts(inventory, inventory.select(hosts), provision_work(ROLES))
    assert [r.error for r in results] == [None] * len(results), [r.error for r in results]
    return results


def slack_from(spec, address):
    """What `address` sent to the health check's own webhook (SLACK_WEBHOOK_URL); the alert
    rules' channels (the inventory's `alerts`) have webhooks of their own."""
    url = labsvc.ensure_lab_secrets(spec)["SLACK_WEBHOOK_URL"]
    hook = urlsplit(url).path.rsplit("/", 1)[0]
    return [
        i
        for i in labsvc.read_inbox(spec, "slack")
        if i.get("from") == address and i.get("webhook") == hook
    ]


def check(path, host):
    return inv("monitoring.check", "-i", str(path), "--hosts", host)


@pytest.fixture(scope="module")
def mon(tmp_path_factory, lab_spec, request):
    """(spec, inventory path, inventory, web host names) with the health server on web hosts and
    a local PostgreSQL on every host for the database check (127.0.0.1: the lab image has it, off
    until a role starts it; hosts without the postgresql role get it stopped again after). The
    lab is left as found: the health server's unit and files are removed after the module, also
    when a test or this setup fails (a later audit would report its port 3999)."""
    tmp = tmp_path_factory.mktemp("monitoring")
    path = make_inventory(tmp, lab_spec)
    inventory = load_inventory(path)
    web = list(inventory.groups["web"])

    def remove_health_server():
        script = (
            "systemctl disable --now opskit-test-health 2>/dev/null; "
            "rm -f /etc/systemd/system/opskit-test-health.service; "
            "rm -rf /usr/local/lib/opskit-test; systemctl daemon-reload; "
            "systemctl reset-failed opskit-test-health 2>/dev/null; true"
        )
        for name in web:
            exec_in(lab_spec, name, ["sh", "-c", script])
            # An error here fails the module's teardown: the lab must be left as found.
            listening = exec_in(lab_spec, name, ["ss", "-Htln", f"sport = :{HEALTH_PORT}"])
            assert listening.stdout.strip() == "", (name, listening.stdout)

    request.addfinalizer(remove_health_server)
    for name in web:
        script = (
            "mkdir -p /usr/local/lib/opskit-test /var/log/labapp && "
            "cat > /usr/local/lib/opskit-test/health.py && "
            f"printf %s {shlex.quote(UNIT)} > /etc/systemd/system/opskit-test-health.service && "
            "systemctl daemon-reload && systemctl enable --now opskit-test-health"
        )
        done = exec_in(lab_spec, name, ["sh", "-c", script], input=HEALTH_SERVER)
        assert done.returncode == 0, done.stderr
    started = []
    for h in inventory.hosts:
        if exec_in(lab_spec, h.name, ["systemctl", "is-active", "-q", "postgresql"]).returncode:
            done = exec_in(lab_spec, h.name, ["systemctl", "start", "postgresql"])
            assert done.returncode == 0, done.stderr
            started.append(h)
    # The UptimeRobot stand-in keeps the free plan's 10 requests and its real headers; only the
    # window is shortened from 60 s to 5 s so that the paced syncs below take seconds.
    limits = labsvc.inbox_dir(lab_spec, "uptimerobot") / "limits.json"
    limits.write_text(json.dumps({"rate": 10, "window": 5}))
    yield lab_spec, path, inventory, web
    # Leave the stand-ins as the lab's own inventory declares them (this run's monitors and rules
    # gone), so that the next `inv lab.demo` finds nothing to change.
    back = inv("monitoring.sync", "--apply")
    assert back.returncode == 0, back.stdout + back.stderr
    limits.unlink(missing_ok=True)
    for h in started:
        if "postgresql" not in h.roles:
            exec_in(lab_spec, h.name, ["systemctl", "stop", "postgresql"])


def test_01_missing_webhook_secret_is_a_clear_error_that_changes_nothing(mon, tmp_path):
    spec, _, inventory, web = mon
    bad = make_inventory(
        tmp_path, spec, top={"healthcheck_slack_webhook_url": {"secret": "OPSKIT_TEST_NO_HOOK"}}
    )
    marks = (
        "for f in /etc/opskit/healthcheck.json /etc/cron.d/opskit-healthcheck; do "
        "stat -c '%n %Y %s' $f 2>/dev/null || echo absent; done"
    )
    before = {h.name: exec_in(spec, h.name, ["sh", "-c", marks]).stdout for h in inventory.hosts}
    done = inv("provision", "-i", str(bad), "--roles", ",".join(ROLES))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "healthcheck_slack_webhook_url" in done.stderr and "OPSKIT_TEST_NO_HOOK" in done.stderr
    assert "is not set" in done.stderr
    after = {h.name: exec_in(spec, h.name, ["sh", "-c", marks]).stdout for h in inventory.hosts}
    assert after == before
    # A plain value where the secret belongs is refused too, without echoing it.
    plain = make_inventory(
        tmp_path,
        spec,
        top={"healthcheck_slack_webhook_url": "https://hooks.example/T1/B1/s3cr3t"},
        name="plain.yml",
    )
    done = inv("provision", "-i", str(plain), "--roles", "healthcheck", "--hosts", web[0])
    assert done.returncode == 2  # refused at load (roles/healthcheck/schema.yml: secret)
    assert "healthcheck_slack_webhook_url" in done.stderr and "secret" in done.stderr
    assert "s3cr3t" not in done.stdout + done.stderr
    assert exec_in(spec, web[0], ["sh", "-c", marks]).stdout == before[web[0]]


def test_02_provision_then_nothing_to_change_then_verify(mon):
    spec, _, inventory, _ = mon
    first = provision(inventory)
    again = provision(inventory)
    assert [r.changed_count for r in again] == [0] * len(again)
    assert [r.commands for r in again] == [1] * len(again)
    secrets = labsvc.ensure_lab_secrets(spec)
    text = json.dumps([[c.diff for c in r.changes] for r in first])
    assert secrets["SLACK_WEBHOOK_URL"] not in text
    specs = ["-k", "test_healthcheck or test_papertrail"]
    assert run_verify(inventory, inventory.hosts, specs) == 0


def test_03_app_down_alerts_once_then_silence_then_recovery(mon):
    spec, path, inventory, web = mon
    host = inventory.host(web[0])
    assert check(path, host.name).returncode == 0  # all OK: nothing sent
    before = len(slack_from(spec, host.address))
    exec_in(spec, host.name, ["systemctl", "stop", "opskit-test-health"])
    try:
        first = check(path, host.name)
        assert "CRITICAL http" in first.stdout and "slack: sent alert" in first.stdout
        alerts = slack_from(spec, host.address)[before:]
        assert len(alerts) == 1
        payload = alerts[0]["payload"]
        assert payload["text"].startswith(":red_circle: CRITICAL") and host.name in payload["text"]
        attachment = payload["attachments"][0]
        assert attachment["color"] == "danger"
        assert "unreachable" in json.dumps(attachment["fields"])
        assert attachment["text"].startswith("What to do first:")
        # The next check: still down, nothing new (a reminder only after remind_minutes).
        second = check(path, host.name)
        assert "CRITICAL http" in second.stdout and "slack: sent" not in second.stdout
        assert len(slack_from(spec, host.address)) == before + 1
    finally:
        exec_in(spec, host.name, ["systemctl", "start", "opskit-test-health"])
    time.sleep(0.5)
    back = check(path, host.name)
    assert "slack: sent recovered" in back.stdout, back.stdout
    recovery = slack_from(spec, host.address)[-1]["payload"]
    assert "RECOVERED" in recovery["text"] and "http" in recovery["text"]
    assert len(slack_from(spec, host.address)) == before + 2
    status = inv("monitoring.status", "-i", str(path), "--hosts", host.name, "--json")
    assert json.loads(status.stdout)[0]["status"]["level"] == "ok"


def test_04_disk_threshold_crossed_gives_a_warning(mon, tmp_path):
    spec, path, _, web = mon
    host = load_inventory(path).host(web[-1])
    low = load_inventory(
        make_inventory(
            tmp_path,
            spec,
            web={"healthcheck_disk_warning": 1, "healthcheck_disk_critical": 100},
        )
    )
    provision(low, [host.name])
    before = len(slack_from(spec, host.address))
    done = check(str(low.path), host.name)
    assert "WARNING  disk" in done.stdout, done.stdout
    [alert] = slack_from(spec, host.address)[before:]
    assert (
        alert["payload"]["text"].startswith(":warning: WARNING")
        and "disk" in alert["payload"]["text"]
    )
    assert alert["payload"]["attachments"][0]["color"] == "warning"
    provision(load_inventory(path), [host.name])
    assert "slack: sent recovered" in check(path, host.name).stdout


def test_05_slack_429_is_retried_by_the_host(mon, tmp_path):
    spec, path, _, web = mon
    host = load_inventory(path).host(web[0])
    before = len(slack_from(spec, host.address))
    exec_in(spec, host.name, ["systemctl", "stop", "opskit-test-health"])
    faults = labsvc.inbox_dir(spec, "slack") / "faults.json"
    faults.write_text(json.dumps({"status": 429, "count": 1, "retry_after": 1}))
    try:
        assert "slack: sent alert" in check(path, host.name).stdout
        assert not faults.exists()
        assert len(slack_from(spec, host.address)) == before + 1
    finally:
        faults.unlink(missing_ok=True)
        exec_in(spec, host.name, ["systemctl", "start", "opskit-test-health"])
    time.sleep(0.5)
    assert "slack: sent recovered" in check(path, host.name).stdout


def _api(spec):
    key = Secret(labsvc.ensure_lab_secrets(spec)["UPTIMEROBOT_API_KEY"])
    return UptimeRobotClient(key, base_url=labsvc.service_url(spec, "uptimerobot") + "/v3")


def test_06_sync_creates_monitors_and_rules_then_plans_nothing(mon):
    spec, path, _, _ = mon
    api = _api(spec)
    other = api.create_monitor(
        {
            "friendlyName": "status page (by hand)",
            "type": "HTTP",
            "url": "https://status.example.com/",
            "interval": 300,
            "tagNames": ["hand-made"],
        }
    )
    plan = inv("monitoring.sync", "-i", str(path))
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert plan.stdout.count(f"[uptimerobot] create   monitor '{PREFIX} ") == 5
    assert "status page" not in plan.stdout
    applied = inv("monitoring.sync", "-i", str(path), "--apply")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    mine = [m for m in api.monitors() if "opskit" in {t["name"] for t in m["tags"]}]
    assert all(m["friendlyName"].startswith(PREFIX) for m in mine)
    kinds = sorted(m["type"] for m in mine)
    assert kinds == ["HEARTBEAT", "HTTP", "HTTP", "KEYWORD", "PORT"]
    keyword = next(m for m in mine if m["type"] == "KEYWORD")
    assert keyword["keywordValue"] == "healthy" and keyword["keywordType"] == "ALERT_NOT_EXISTS"
    assert keyword["url"].endswith("/health")
    assert all(m["assignedAlertContacts"][0]["alertContactId"] == "100001" for m in mine)
    rules = [i for i in labsvc.read_inbox(spec, "sentry") if i.get("kind") == "rule"]
    assert {r["name"] for r in rules} >= {"opskit: new issue", "opskit: more than 10 events in 5m"}
    again = inv("monitoring.sync", "-i", str(path), "--detailed-exitcode")
    assert again.returncode == 0 and "nothing to change" in again.stdout, again.stdout
    assert api.api.json("GET", f"/monitors/{other['id']}") == other


def test_07_sync_changes_only_its_own_monitors(mon, tmp_path):
    spec, path, _, _ = mon
    api = _api(spec)
    before = {m["id"]: m for m in api.monitors()}
    theirs = {i: m for i, m in before.items() if "opskit" not in {t["name"] for t in m["tags"]}}
    # A hand-made monitor with the name of a declared one: a conflict, never touched.
    clash = api.create_monitor(
        {"friendlyName": f"{PREFIX} extra", "type": "PING", "url": "10.0.0.1", "interval": 300}
    )
    theirs[clash["id"]] = clash
    changed = make_inventory(
        tmp_path,
        spec,
        top={"healthcheck_uptimerobot_interval": 600},
        web={
            "healthcheck_uptimerobot_monitors": [
                {
                    "name": f"{PREFIX} homepage",
                    "type": "HTTP",
                    "url": f"http://{gateway_ip(spec)}:{HEALTH_PORT}/",
                },
                {"name": f"{PREFIX} extra", "type": "PING", "url": "10.0.0.1"},
            ]
        },
    )
    plan = inv("monitoring.sync", "-i", str(changed), "--detailed-exitcode")
    assert plan.returncode == 1, plan.stdout  # the conflict
    assert f"CONFLICT monitor '{PREFIX} extra'" in plan.stdout
    assert f"update   monitor '{PREFIX} homepage'" in plan.stdout
    assert "interval 300 -> 600" in plan.stdout
    assert plan.stdout.count("delete   monitor") == 4
    applied = inv("monitoring.sync", "-i", str(changed), "--apply")
    assert applied.returncode == 1
    after = {m["id"]: m for m in api.monitors()}
    for i, m in theirs.items():
        assert after[i] == m, f"monitor {i} that opskit does not manage was changed"
    ours = [m for m in after.values() if "opskit" in {t["name"] for t in m["tags"]}]
    assert [(m["friendlyName"], m["interval"]) for m in ours] == [(f"{PREFIX} homepage", 600)]
    api.delete_monitor(clash["id"])
    assert inv("monitoring.sync", "-i", str(path), "--apply").returncode == 0
    assert "nothing to change" in inv("monitoring.sync", "-i", str(path)).stdout


def test_08_sync_retries_429_after_retry_after(mon):
    spec, path, _, _ = mon
    faults = labsvc.inbox_dir(spec, "uptimerobot") / "faults.json"
    faults.write_text(json.dumps({"status": 429, "count": 2, "retry_after": 1}))
    started = time.monotonic()
    done = inv("monitoring.sync", "-i", str(path))
    assert done.returncode == 0 and "nothing to change" in done.stdout, done.stdout + done.stderr
    assert time.monotonic() - started >= 2.0
    assert not faults.exists()
    # And through the library: two retries counted, the API key in no message.
    faults.write_text(json.dumps({"status": 429, "count": 2, "retry_after": 1}))
    result = sync(declared(load_inventory(path)))
    assert not result.pending and not faults.exists()


def test_09_a_deploy_creates_a_sentry_release(mon):
    spec, _, inventory, _ = mon
    version = uuid.uuid4().hex[:12]
    made = sentry_release(inventory, version, environment="lab", ref=version)
    assert made is not None and made.created and made.environment == "lab"
    again = sentry_release(inventory, version, environment="lab")
    assert again is not None and not again.created
    kept = [i for i in labsvc.read_inbox(spec, "sentry") if i.get("version") == version]
    assert [i["kind"] for i in kept] == ["release", "deploy", "deploy"]
    state = json.loads((labsvc.inbox_dir(spec, "sentry") / "state.json").read_text())
    assert state["releases"][version]["deployCount"] == 2


def test_09b_events_sent_with_the_dsn_reach_the_sentry_stand_in(mon):
    """What the app's SDK does with SENTRY_DSN, done with curl from a web host."""
    spec, _, inventory, web = mon
    dsn = labsvc.ensure_lab_secrets(spec)["SENTRY_DSN"]
    key, _, rest = dsn.removeprefix("http://").partition("@")
    endpoint, _, project = rest.rpartition("/")
    url = f"http://{endpoint}/api/{project}/envelope/"
    event = uuid.uuid4().hex
    envelope = "\n".join(
        [
            json.dumps({"event_id": event, "dsn": dsn}),
            json.dumps({"type": "event"}),
            json.dumps(
                {
                    "event_id": event,
                    "level": "error",
                    "message": f"boom {event}",
                    "environment": "lab",
                    "release": "abc123",
                }
            ),
        ]
    )
    auth = f"X-Sentry-Auth: Sentry sentry_version=7, sentry_key={key}, sentry_client=curl/8"
    curl = [
        "curl",
        "-s",
        "-o",
        "/dev/stderr",
        "-w",
        "%{http_code}",
        "-H",
        auth,
        "-H",
        "Content-Type: application/x-sentry-envelope",
        "--data-binary",
        "@-",
        url,
    ]
    sent = exec_in(spec, web[0], curl, input=envelope)
    assert sent.stdout == "200" and event in sent.stderr
    [kept] = [i for i in labsvc.read_inbox(spec, "sentry") if i.get("event_id") == event]
    assert kept["message"] == f"boom {event}" and kept["release"] == "abc123"
    assert kept["from"] == inventory.host(web[0]).address
    wrong = [x.replace(key, "0" * 32) for x in curl]
    refused = exec_in(spec, web[0], wrong, input=envelope)
    assert refused.stdout == "403"


def _wait_for(spec, service, token, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [i for i in labsvc.read_inbox(spec, service) if token in i.get("msg", "")]
        if found:
            return found
        time.sleep(0.5)
    return []


def test_10_app_log_line_reaches_the_syslog_receiver_over_tls(mon):
    spec, _, inventory, web = mon
    host = inventory.host(web[0])
    token = f"opskit-test-{uuid.uuid4().hex}"
    exec_in(spec, host.name, ["sh", "-c", f"echo 'GET /x 200 {token}' >> {APP_LOG}"])
    [line] = _wait_for(spec, "syslog", token)
    assert line["host"] == host.name and line["app"] == "labapp" and line["from"] == host.address
    system = f"opskit-test-sys-{uuid.uuid4().hex}"
    exec_in(spec, host.name, ["logger", "-t", "opskit-test", system])
    [sys_line] = _wait_for(spec, "syslog", system)
    assert sys_line["app"] == "opskit-test"


def test_11_receiver_with_the_wrong_certificate_gets_nothing(mon, tmp_path):
    spec, path, _, web = mon
    wrong = load_inventory(
        make_inventory(
            tmp_path, spec, top={"papertrail_port": labsvc.find_service("syslog-wrongcert").port}
        )
    )
    host = wrong.host(web[-1])
    errors = labsvc.inbox_dir(spec, "syslog-wrongcert") / "errors.jsonl"
    seen = len(errors.read_text().splitlines()) if errors.exists() else 0
    provision(wrong, [host.name])
    token = f"opskit-test-wrong-{uuid.uuid4().hex}"
    exec_in(spec, host.name, ["sh", "-c", f"echo '{token}' >> {APP_LOG}"])
    assert _wait_for(spec, "syslog-wrongcert", token, timeout=15.0) == []
    assert labsvc.read_inbox(spec, "syslog-wrongcert") == []
    refused = [json.loads(x) for x in errors.read_text().splitlines()[seen:]]
    assert any(r["from"] == host.address for r in refused), refused
    # Back to the right receiver: the queued line is delivered, nothing was lost.
    provision(load_inventory(path), [host.name])
    # rsyslog retries every action.resumeInterval (10 s), longer after many failures.
    assert _wait_for(spec, "syslog", token, timeout=75.0)


def _sentry(spec):
    token = Secret(labsvc.ensure_lab_secrets(spec)["SENTRY_AUTH_TOKEN"])
    return SentryClient(token, "opskit-lab", "app", base_url=labsvc.service_url(spec, "sentry"))


def test_11b_sentry_rules_adopted_paged_and_settled(mon, tmp_path):
    """An identical rule made by hand is adopted (Sentry would refuse a copy), opskit's rules sit
    on later pages of the Link-paginated list, Sentry's labels do not count: the second
    `--apply` plans nothing."""
    spec, path, _, _ = mon
    sentry = _sentry(spec)
    threshold = random.randint(1000, 99999)
    changed = make_inventory(tmp_path, spec, top={"healthcheck_sentry_event_threshold": threshold})
    inventory_vars = {
        "healthcheck_sentry_event_threshold": threshold,
        "healthcheck_sentry_event_interval": "5m",
        "healthcheck_sentry_action_interval_minutes": 30,
    }
    [_, busy] = default_rules(inventory_vars)
    hand = sentry.create_rule({**busy, "name": f"hand-made: busy {threshold}"})
    base = random.randint(100, 40000)
    fillers = [
        sentry.create_rule({**busy, "name": f"filler {i}", "frequency": base + i}) for i in range(7)
    ]
    try:
        first_page = [r["name"] for r in sentry.api.json("GET", sentry._rules)]
        assert not any(n.startswith("opskit: ") for n in first_page)  # ours: page 2 or later
        applied = inv("monitoring.sync", "-i", str(changed), "--apply", "--verbose")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert f"adopted: identical to rule 'hand-made: busy {threshold}'" in applied.stdout
        created = [
            i
            for i in labsvc.read_inbox(spec, "sentry")
            if i.get("kind") == "rule" and str(threshold) in i.get("name", "")
        ]
        assert [i["action"] for i in created] == ["create"]  # only the hand-made one
        again = inv("monitoring.sync", "-i", str(changed), "--apply")
        assert again.returncode == 0 and "nothing to change" in again.stdout, again.stdout
        listed = {r["id"]: r for r in sentry.rules()}
        assert listed[hand["id"]]["name"] == f"hand-made: busy {threshold}"  # untouched
        assert all(c.get("name") for r in listed.values() for c in r["conditions"])
    finally:
        for r in [hand, *fillers]:
            sentry.delete_rule(r["id"])
    assert inv("monitoring.sync", "-i", str(path), "--apply").returncode == 0
    assert "nothing to change" in inv("monitoring.sync", "-i", str(path)).stdout


def test_11c_free_plan_sync_of_two_apps_paced_killed_and_resumed(mon, tmp_path):
    """Two apps' monitors on the free plan's 10 requests a window: the sync waits for the
    limit (and says how long) instead of failing; killed midway and run again, it ends with
    exactly the declared monitors."""
    spec, path, _, _ = mon
    api = _api(spec)
    run = uuid.uuid4().hex[:6]
    declared_monitors = [
        {"name": f"{app} {run} {what}", "type": "HTTP", "url": f"http://{app}.example/{what}"}
        for app in ("shop", "blog")
        for what in ("home", "health", "login", "cart", "search", "about", "admin", "api")
    ]
    # 16 creates and a list: more than one window's 10 requests, so the sync must wait at least
    # once before the last create, however the windows fall; it is killed before it can.
    two_apps = make_inventory(
        tmp_path, spec, web={"healthcheck_uptimerobot_monitors": declared_monitors}
    )
    # A window long enough that the rerun below starts inside the one the killed run used up.
    limits = labsvc.inbox_dir(spec, "uptimerobot") / "limits.json"
    limits.write_text(json.dumps({"rate": 10, "window": 20}))
    command = [sys.executable, "-m", "invoke", "monitoring.sync", "-i", str(two_apps), "--apply"]
    env = {**os.environ, "OPSKIT_INVENTORY": str(LAB_INVENTORY)}
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    made: list[dict] = []
    while time.monotonic() < deadline and proc.poll() is None:
        made = [
            i
            for i in labsvc.read_inbox(spec, "uptimerobot")
            if i.get("action") == "create" and run in i["monitor"]["friendlyName"]
        ]
        if len(made) >= 3:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the sync finished before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert 3 <= len(made) < len(declared_monitors)
    resumed = inv("monitoring.sync", "-i", str(two_apps), "--apply")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "paced by its rate limit (10 requests a window): waited" in resumed.stdout
    assert " s in all" in resumed.stdout
    assert "waiting" in resumed.stderr  # said while it waited, with the seconds
    limits.write_text(json.dumps({"rate": 10, "window": 5}))
    ours = [m for m in api.monitors() if "opskit" in {t["name"] for t in m["tags"]}]
    assert sorted(m["friendlyName"] for m in ours) == sorted(m["name"] for m in declared_monitors)
    again = inv("monitoring.sync", "-i", str(two_apps), "--detailed-exitcode")
    assert again.returncode == 0 and "nothing to change" in again.stdout, again.stdout
    assert inv("monitoring.sync", "-i", str(path), "--apply").returncode == 0


def test_11d_a_health_body_with_slack_control_characters_arrives_escaped(mon, tmp_path):
    spec, path, _, web = mon
    host = load_inventory(path).host(web[0])
    serve = (
        "mkdir -p /run/opskit-test-body && printf '%s' '<!channel> & <b>' "
        "> /run/opskit-test-body/health && systemd-run --unit opskit-test-body "
        "python3 -m http.server 3998 --bind 127.0.0.1 --directory /run/opskit-test-body"
    )
    assert exec_in(spec, host.name, ["sh", "-c", serve]).returncode == 0
    body = load_inventory(
        make_inventory(
            tmp_path, spec, web={"healthcheck_health_url": "http://127.0.0.1:3998/health"}
        )
    )
    try:
        provision(body, [host.name])
        time.sleep(0.5)
        before = len(slack_from(spec, host.address))
        done = check(str(body.path), host.name)
        assert "CRITICAL http" in done.stdout and "slack: sent alert" in done.stdout, done.stdout
        [alert] = slack_from(spec, host.address)[before:]
        sent = json.dumps(alert["payload"])
        assert "&lt;!channel&gt; &amp; &lt;b&gt;" in sent and "<!channel>" not in sent
        assert alert["mentions"] == []  # Slack would ping nobody
    finally:
        exec_in(spec, host.name, ["systemctl", "stop", "opskit-test-body"])
        provision(load_inventory(path), [host.name])
    assert "slack: sent recovered" in check(path, host.name).stdout


def test_12_cron_runs_the_check(mon, tmp_path):
    spec, _, _, web = mon
    every_minute = load_inventory(
        make_inventory(tmp_path, spec, top={"healthcheck_schedule": "* * * * *"})
    )
    host = web[0]
    provision(every_minute, [host])
    read = ["stat", "-c", "%Y", "/var/lib/opskit/healthcheck/status.json"]
    first = exec_in(spec, host, read).stdout.strip()
    deadline = time.monotonic() + 80
    while time.monotonic() < deadline:
        time.sleep(5)
        if exec_in(spec, host, read).stdout.strip() != first:
            break
    else:
        pytest.fail("cron did not run opskit-healthcheck within 80 s")
    log = exec_in(spec, host, ["journalctl", "-t", "CRON", "--no-pager", "-n", "20"]).stdout
    assert "opskit-healthcheck" in log
