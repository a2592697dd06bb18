"""Alert rules as code on the lab: a rule `for: 2m` ignores a 1-minute spike and fires on a
3-minute one, routed by severity to the stand-ins (two Slack channels, PagerDuty trigger then
resolve with one dedup_key, e-mail), and a held host sends nothing until its hold ends.

The three spikes run at once, one per host, on a custom `command` metric that reads a file the
test flips; the test runs the health check itself every 30 s (cron is set to a date that never
comes), so the whole timeline takes about four minutes.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

from opskit.core.inventory import load_inventory
from opskit.core.runner import provision_work, run_on_hosts
from opskit.hostside.healthcheck import HOLD_FILE, STATUS_FILE
from opskit.lab import registry as labsvc
from opskit.lab.nspawn import exec_in
from opskit.lab.spec import gateway_ip
from opskit.monitoring.spec import SCRIPT
from tests.integration.conftest import LAB_INVENTORY, write_inventory

RUN = uuid.uuid4().hex[:6]
CRITICAL, HIGH = f"Spike critical {RUN}", f"Spike high {RUN}"
FLAG = "/run/opskit-test-spike"
STEP = 30.0  # seconds between two runs of the check
STANDINS = ("slack", "pagerduty", "smtp")


def alerts(spec):
    gateway = gateway_ip(spec)
    return {
        "targets": {
            "engineering-alerts": {"slack": {"secret": "SLACK_ENGINEERING_WEBHOOK_URL"}},
            "devops": {"slack": {"secret": "SLACK_DEVOPS_WEBHOOK_URL"}},
            "pagerduty": {
                "pagerduty": {"secret": "PAGERDUTY_ROUTING_KEY"},
                "url": f"http://{gateway}:{labsvc.find_service('pagerduty').port}/v2/enqueue",
            },
            "oncall-email": {
                "email": ["oncall@sample.opskit.lab"],
                "smtp_host": gateway,
                "smtp_port": labsvc.find_service("smtp").port,
                "from": "opskit@sample.opskit.lab",
            },
        },
        "metrics": {"spike": {"command": f"cat {FLAG} 2>/dev/null || echo 0"}},
        "rules": [
            {
                "name": CRITICAL,
                "when": "spike > 0",
                "for": "2m",
                "severity": "critical",
                "notify": ["engineering-alerts", "pagerduty", "oncall-email"],
            },
            {
                "name": HIGH,
                "when": "spike > 0",
                "for": "2m",
                "severity": "high",
                "notify": ["devops"],
            },
        ],
    }


@pytest.fixture(scope="module")
def lab(tmp_path_factory, lab_spec, request):
    """(spec, inventory) with the spike rules on every host; afterwards the files are gone and
    the health check is as the lab's own inventory declares it."""

    def change(data):
        data["alerts"] = alerts(lab_spec)
        data["vars"]["healthcheck_schedule"] = "17 3 1 1 *"  # only the test runs the check
        data["vars"]["healthcheck_checks"] = ["disk"]

    path = write_inventory(tmp_path_factory.mktemp("alerts"), change)
    inventory = load_inventory(path)

    def restore():
        for h in inventory.hosts:
            exec_in(lab_spec, h.name, ["rm", "-f", FLAG, HOLD_FILE])
        own = load_inventory(LAB_INVENTORY)
        results = run_on_hosts(own, own.hosts, provision_work(["healthcheck"]))
        assert [r.error for r in results] == [None] * len(results)

    request.addfinalizer(restore)
    results = run_on_hosts(inventory, inventory.hosts, provision_work(["healthcheck"]))
    assert [r.error for r in results] == [None] * len(results), [r.error for r in results]
    return lab_spec, inventory


def received(spec, since):
    return {name: labsvc.read_inbox(spec, name)[since[name] :] for name in STANDINS}


def test_for_2m_ignores_a_1_minute_spike_fires_on_a_3_minute_one_routed_and_held(lab):
    spec, inventory = lab
    web = list(inventory.groups["web"])
    short, long_ = inventory.host(web[0]), inventory.host(web[1])
    held = inventory.host(next(iter(inventory.groups["db"])))
    hosts = [short, long_, held]
    since = {name: len(labsvc.read_inbox(spec, name)) for name in STANDINS}
    held_status = None

    def sh(host, script):
        done = exec_in(spec, host.name, ["sh", "-c", script])
        assert done.returncode == 0, (host.name, script, done.stderr)
        return done.stdout

    for h in hosts:
        sh(h, f"rm -f {HOLD_FILE} /var/lib/opskit/healthcheck/state.json; echo 1 > {FLAG}")
    until = time.time() + 200  # the db host is held until after the 3-minute spike ended
    sh(held, f"echo '{json.dumps({'until': until, 'reason': 'test deploy'})}' > {HOLD_FILE}")
    start = time.monotonic()
    for step in range(9):  # t = 0, 30, ..., 240
        time.sleep(max(0.0, start + step * STEP - time.monotonic()))
        t = step * STEP
        if t == 60:
            sh(short, f"echo 0 > {FLAG}")  # the 1-minute spike is over
        if t == 180:
            sh(long_, f"echo 0 > {FLAG}")  # the 3-minute spike is over
        if t == 240:
            sh(held, f"echo 0 > {FLAG}")  # the held host's condition clears after its hold
        for h in hosts:
            sh(h, f"{SCRIPT} --quiet >/dev/null 2>&1 || true")
        if t == 180:
            held_status = json.loads(sh(held, f"cat {STATUS_FILE}"))
    got = received(spec, since)

    def slack(host, channel):
        return [
            m["payload"]["text"]
            for m in got["slack"]
            if m["from"] == host.address and m["webhook"].endswith(channel)
        ]

    def pagerduty(host):
        return [e for e in got["pagerduty"] if e["from"] == host.address]

    def mail(host):
        return [m for m in got["smtp"] if m["from"] == host.address]

    # the 1-minute spike: nothing anywhere
    rules = (CRITICAL, HIGH)
    assert not [m for m in got["slack"] if m["from"] == short.address and RUN in str(m)]
    assert pagerduty(short) == [] and mail(short) == []
    # the 3-minute spike: critical -> engineering-alerts, PagerDuty, e-mail; high -> devops
    eng, devops = slack(long_, "/B0ENGALERT"), slack(long_, "/B0DEVOPS")
    assert len(eng) == 2 and CRITICAL in eng[0] and "RESOLVED" in eng[1] and CRITICAL in eng[1]
    assert len(devops) == 2 and HIGH in devops[0] and "RESOLVED" in devops[1], devops
    assert not [t for t in eng if HIGH in t] and not [t for t in devops if CRITICAL in t]
    events = pagerduty(long_)
    assert [e["event_action"] for e in events] == ["trigger", "resolve"], events
    trigger, resolve = events
    assert trigger["dedup_key"] == resolve["dedup_key"] and CRITICAL in trigger["dedup_key"]
    assert trigger["severity"] == "critical" and CRITICAL in trigger["summary"]
    assert all(e["routing_key_ok"] and not e["dropped"] for e in events)
    mails = mail(long_)
    assert [m["rcpt_tos"] for m in mails] == [["oncall@sample.opskit.lab"]] * 2
    assert CRITICAL in mails[0]["subject"] and mails[1]["subject"].startswith("RESOLVED")
    # the held host: measured and recorded while held, nothing sent; after the hold the
    # condition still held, so it alerted, and resolved when it cleared
    assert held_status is not None and held_status["hold"]["held"], held_status
    assert held_status["hold"]["reason"] == "test deploy"
    assert held_status["rules"]["firing"] == sorted(rules) and held_status["rules"]["sent"] == []
    first = min(
        [m["time"] for m in got["slack"] if m["from"] == held.address and RUN in str(m)]
        + [e["time"] for e in pagerduty(held)]
        + [m["time"] for m in mail(held)]
    )
    assert first >= until, "the held host sent something during its hold"
    assert [e["event_action"] for e in pagerduty(held)] == ["trigger", "resolve"]
    assert len(slack(held, "/B0DEVOPS")) == 2 and len(mail(held)) == 2
