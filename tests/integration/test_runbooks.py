"""The runbooks' incident tools on the lab: the killswitch and a toggle through the app's admin
endpoints (every app host, journal, Slack; nginx never exposes them), an incident opened,
updated and resolved (its record filled with what opskit knows, Slack told, the weekly review
counting it), and the monthly review with real pg_stat_statements rows of queries run as the
app's database user, rendered by headless Chromium (test-artifacts/monthly.png)."""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from opskit.clients.uptimerobot import UptimeRobotClient
from opskit.core.inventory import Inventory
from opskit.core.remote import connect
from opskit.core.roles import REPO
from opskit.core.runner import provision_work, run_on_hosts
from opskit.lab import registry as labsvc
from opskit.lab.spec import LabSpec
from tests.integration import test_report as daily
from tests.integration.conftest import inv

RUN = uuid.uuid4().hex[:6]  # the incident records outlive the lab: this run's has its own title
TITLE = f"Checkout answers 503 {RUN}"


def run_inv(inventory: Inventory, *args: str) -> Any:
    return inv(*args, env={"OPSKIT_INVENTORY": str(inventory.path)})


def on_host(inventory: Inventory, name: str, script: str) -> str:
    remote = connect(inventory.host(name), inventory.ssh)
    try:
        return remote.run(script, what="test read").stdout
    finally:
        remote.close()


def http(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def slack_texts(spec: LabSpec) -> list[str]:
    return [str(i.get("payload", {}).get("text", "")) for i in labsvc.read_inbox(spec, "slack")]


@pytest.fixture(scope="module")
def rinv(lab_inventory: Inventory) -> Inventory:
    """The lab, provisioned (every role) and the app deployed."""
    results = run_on_hosts(lab_inventory, lab_inventory.hosts, provision_work(None))
    assert [r.error for r in results] == [None] * len(results)
    deployed = run_inv(lab_inventory, "deploy", "-i", str(lab_inventory.path))
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    return lab_inventory


def apps(rinv: Inventory) -> list[str]:
    return [h.name for h in rinv.hosts if "app" in h.roles]


def test_01_killswitch_and_toggle_on_every_app_host(rinv: Inventory, lab_spec: LabSpec) -> None:
    web = [rinv.host(n).address for n in apps(rinv)]
    assert all(http(f"http://{a}/")[0] == 200 for a in web)
    try:
        on = run_inv(rinv, "app.killswitch", "on", "--message", "5xx storm on checkout")
        assert on.returncode == 0, on.stdout + on.stderr
        assert on.stdout.count("killswitch on (journaled)") == len(web), on.stdout
        for a in web:
            code, body = http(f"http://{a}/")
            assert code == 503 and json.loads(body)["error"] == "killswitch"
            health = http(f"http://{a}/health")  # the health check is never switched off
            assert health[0] == 200 and json.loads(health[1])["status"] == "healthy", health
            assert http(f"http://{a}/ops/state")[0] == 404  # nginx never passes app_admin_path
            assert json.loads(http(f"http://{a}/admin")[1])["error"] == "killswitch"  # the app's
        assert any("*killswitch on* by" in t and "5xx storm" in t for t in slack_texts(lab_spec))
        sent = len(slack_texts(lab_spec))
        again = run_inv(rinv, "app.killswitch", "on")
        assert again.returncode == 0 and "already so on every host" in again.stdout, again.stdout
        assert len(slack_texts(lab_spec)) == sent  # nothing changed, nothing sent
        # Persisted for every worker and across a restart of the app.
        first = apps(rinv)[0]
        on_host(rinv, first, "systemctl restart pm2-app && sleep 3")
        for _ in range(20):
            code, _body = http(f"http://{web[0]}/")
            if code != 502:
                break
            time.sleep(1)
        assert code == 503
        toggled = run_inv(rinv, "app.toggle", "new-checkout", "on")
        assert toggled.returncode == 0 and "toggle new-checkout on (journaled)" in toggled.stdout
        state = json.loads(on_host(rinv, first, "cat /srv/sample/shared/admin-state.json"))
        assert state["killswitch"] is True and state["toggles"] == {"new-checkout": True}
        journal = run_inv(rinv, "releases", "--journal", "5")
        assert journal.stdout.count("killswitch") >= len(web) and "toggle" in journal.stdout
    finally:  # never leave the fleet switched off for the modules after this one
        off = run_inv(rinv, "app.killswitch", "off")
        run_inv(rinv, "app.toggle", "new-checkout", "off")
    assert off.returncode == 0 and all(http(f"http://{a}/")[0] == 200 for a in web)
    bad = run_inv(rinv, "app.toggle", "new checkout", "on")
    assert bad.returncode == 2 and "NAME: 'new checkout'" in bad.stderr


def test_02_an_incident_opened_updated_resolved(rinv: Inventory, lab_spec: LabSpec) -> None:
    directory = Path(str(rinv.hosts[0].vars["incident_dir"]))
    before = set(directory.glob("*.md")) if directory.exists() else set()
    opened = run_inv(rinv, "incident.open", "--severity", "high", "--title", TITLE)
    assert opened.returncode in (0, 1), opened.stdout + opened.stderr
    (path,) = set(directory.glob("*.md")) - before
    text = path.read_text()
    assert path.name.endswith(f"-checkout-answers-503-{RUN}.md")
    assert "deploy: deploy ok" in text and "killswitch on by" in text  # the deploy journals
    assert "healthcheck" in text or "backup" in text or "certificate" in text
    assert any(f"*INCIDENT [HIGH]: {TITLE}*" in t for t in slack_texts(lab_spec))
    upd = run_inv(
        rinv, "incident.update", "--incident", RUN, "--message", "killswitch on, rollback prepared"
    )
    assert upd.returncode == 0 and "killswitch on, rollback prepared" in path.read_text()
    refused = run_inv(rinv, "incident.resolve", "--incident", RUN, "--root-cause", "bad release")
    assert refused.returncode == 2
    assert "missing --resolution, --prevention" in refused.stderr
    assert "**open**" in path.read_text()  # nothing changed
    done = run_inv(
        rinv,
        "incident.resolve",
        "--incident",
        RUN,
        "--root-cause",
        "release r2 broke checkout",
        "--resolution",
        "rolled back",
        "--prevention",
        "post-deploy watch",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    text = path.read_text()
    assert "**resolved**" in text and "release r2 broke checkout" in text
    assert any(f"*RESOLVED [HIGH]: {TITLE}*" in t for t in slack_texts(lab_spec))


def test_03_monthly_review_with_real_queries(
    rinv: Inventory, lab_spec: LabSpec, tmp_path: Path
) -> None:
    db = next(h for h in rinv.hosts if "postgresql" in h.roles)
    password = str(db.vars["postgresql_app_password"])
    # Real statements as the app's user over TCP: a table without an index on what is queried.
    sql = (
        "CREATE TABLE IF NOT EXISTS orders (id serial PRIMARY KEY, note text, total int);"
        "INSERT INTO orders (note, total) SELECT md5(g::text), g FROM generate_series(1, 5000) g;"
        + "SELECT count(*) FROM orders WHERE note LIKE '%ab%';" * 30
        + "SELECT sum(total) FROM orders WHERE id = 7;" * 2  # index scans, 15 times fewer
    )
    on_host(
        rinv,
        db.name,
        f"PGPASSWORD='{password}' psql -X -q -h 127.0.0.1 -U app -d app -c \"{sql}\" >/dev/null",
    )
    # One of opskit's UptimeRobot monitors, down for its first 2 s.
    key = rinv.hosts[0].vars["healthcheck_uptimerobot_api_key"]
    client = UptimeRobotClient(key, base_url=labsvc.service_url(lab_spec, "uptimerobot") + "/v3")
    monitor = client.create_monitor(
        {
            "friendlyName": "runbooks test",
            "type": "HTTP",
            "url": "http://10.0.0.1/",
            "interval": 300,
            "tagNames": ["opskit"],
        }
    )
    created = dt.datetime.fromisoformat(monitor["createDateTime"].replace("Z", "+00:00"))
    down = [[created.isoformat(), (created + dt.timedelta(seconds=2)).isoformat()]]
    (labsvc.inbox_dir(lab_spec, "uptimerobot") / "downtime.json").write_text(
        json.dumps({str(monitor["id"]): down})
    )
    time.sleep(4)
    proc = run_inv(rinv, "report.monthly", "--out", str(tmp_path))
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    (jfile,) = tmp_path.glob("monthly-*.json")
    data = json.loads(jfile.read_text())
    (review,) = data["databases"]
    q = next(q for q in review["slow_queries"] if "LIKE" in q["query"] and "orders" in q["query"])
    assert q["role"] == "app" and q["calls"] >= 30 and q["max_ms"] >= q["mean_ms"] > 0
    assert any(t["table"] == "orders" and t["seq_scan"] >= 30 for t in review["seq_heavy"])
    assert any(t["table"] == "orders" and t["total_bytes"] > 0 for t in review["tables"])
    assert any(i["index"] == "orders_pkey" for i in review["indexes"])
    crit = {c["name"]: c for c in data["criteria"]}
    assert crit["uptime"]["met"] is False and 0 < crit["uptime"]["value"] < 99.9
    t = data["traffic"]
    assert t["requests"] > 0 and crit["error rate"]["value"] == round(
        100.0 * t["5xx"] / t["requests"], 3
    )
    md = jfile.with_suffix(".md").read_text()
    assert md.index("## Action items") < md.index("## 30-day success criteria")
    assert "uptime" in data["actions"][0]["what"] and data["actions"][0]["level"] == "critical"
    png = REPO / "test-artifacts" / "monthly.png"
    daily.screenshot(jfile.with_suffix(".html"), png, 2200)
    width, height, ink = daily.png_facts(png)
    assert (width, height) == (1280, 2200) and ink > 0.01


def test_04_the_weekly_review_counts_the_incident(rinv: Inventory, tmp_path: Path) -> None:
    proc = run_inv(rinv, "report.weekly", "--no-audit", "--out", str(tmp_path))
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    (jfile,) = tmp_path.glob("weekly-*.json")
    incidents = json.loads(jfile.read_text())["incidents"]
    assert incidents["count"] >= 1 and incidents["by_severity"]["high"] >= 1
    assert "## Incidents of the week" in jfile.with_suffix(".md").read_text()
