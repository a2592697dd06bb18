"""lab.demo: the main job on the lab, end to end."""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml
from invoke.exceptions import Exit

from cli import common as cli
from cli.app import deploy, killswitch, releases, rollback, toggle
from cli.audit import audit
from cli.backup import backup_drill, backup_list, backup_run
from cli.certs import certs_renew, certs_status
from cli.common import H, inventory_path, load, task
from cli.core import provision, run, verify
from cli.incident import incident_open, incident_resolve, incident_update
from cli.lab import lab_inbox, lab_up
from cli.monitoring import monitoring_check, monitoring_sync
from cli.report import report_daily, report_monthly
from cli.status import status
from opskit.core.roles import REPO
from opskit.core.runner import role_resources
from opskit.hostside.healthcheck import CONFIG_PATH
from opskit.lab import registry
from opskit.lab.spec import load_lab_spec


def _shown(check, c, inventory):
    """Run a check task; its warnings (exit 4) are the demo's to show, not to stop at."""
    try:
        check(c, inventory=inventory)
    except Exit as exc:
        if exc.code != 4:
            raise
        print("(exit 4: warnings, shown above)")


def _load_on(addresses, stop):
    """GET / over HTTPS on each address every 50 ms until `stop` (at most 3 minutes): traffic for
    the watch to judge. The lab's certificate is for its names, not the addresses: unverified."""
    tls = ssl.create_default_context()
    tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
    deadline = time.monotonic() + 180
    while not stop.is_set() and time.monotonic() < deadline:
        for address in addresses:
            with contextlib.suppress(urllib.error.URLError, OSError):  # a 500 is traffic too
                urllib.request.urlopen(f"https://{address}/", timeout=3, context=tls).close()
        time.sleep(0.05)


def _watch_demo(c, inventory):
    """The post-deploy watch under load: the live app's release watched 20 s is kept; the demo
    repo's `flaky` release (healthy, but 30 % of requests answer 500) is rolled back by it."""
    from opskit.core.roles import REPO

    path = inventory_path(inventory)
    _, selected = load(inventory, None)
    apps = [h for h in selected if "app" in h.roles]
    tmp = Path(tempfile.mkdtemp(prefix="opskit-demo-watch-"))
    subprocess.run(
        [str(REPO / "app/sample/make-demo-repo"), str(tmp / "app")], check=True, capture_output=True
    )
    data = yaml.safe_load(path.read_text())
    for group in data.get("groups", {}).values():
        if "app" in (group.get("roles") or []):
            group.setdefault("vars", {}).update(app_repo=str(tmp / "app"), app_repo_path=".")
    demo_inventory = tmp / path.name
    demo_inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    stop = threading.Event()
    load_thread = threading.Thread(target=_load_on, args=([h.address for h in apps], stop))
    load_thread.start()
    try:
        time.sleep(3)  # a baseline for the watch
        deploy(c, inventory=inventory, batch=len(apps), watch="20s")
        try:
            deploy(c, inventory=str(demo_inventory), ref="flaky", batch=len(apps), watch="2m")
        except Exit as exc:
            if exc.code != 1:
                raise
            print("(exit 1: the watch rolled the flaky release back, as it should)")
        else:
            raise Exit("the flaky release was kept: the watch should have rolled it back", 1)
    finally:
        stop.set()
        load_thread.join()
    releases(c, inventory=inventory, journal=2)  # the bad mark and the journal say why


def _migrations(c, inventory):
    """Migrations: a newer release of the sample app (make-demo-repo's v2) migrates again after a
    verified backup; a rollback across that migration is refused and names the backup; a release
    whose migration fails (badmigration) leaves every host on the release it had."""
    inv, _ = cli.load(inventory, None)
    tmp = Path(tempfile.mkdtemp(prefix="opskit-demo-"))
    repo = tmp / "sample-app"
    subprocess.run(
        [str(REPO / "app/sample/make-demo-repo"), str(repo)], check=True, capture_output=True
    )
    data = yaml.safe_load(inv.path.read_text())
    for group in (data.get("groups") or {}).values():
        if "app" in (group.get("roles") or []):
            group.setdefault("vars", {}).update(app_repo=str(repo), app_repo_path=".")
    path = tmp / "inventory.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    print(f"(the sample app's demo repo {repo}: v2 brings migration 2)", flush=True)
    deploy(c, inventory=str(path), ref="v2", message="migration 2")
    releases(c, inventory=str(path), journal=2)
    other = str(path)
    for title, refused in (
        ("rollback across the migration, without --force", lambda: rollback(c, inventory=other)),
        ("deploy badmigration", lambda: deploy(c, inventory=other, ref="badmigration")),
    ):
        print(f"-- {title}: must be refused", flush=True)
        try:
            refused()
        except Exit as exc:
            print(f"{exc.message or ''}\n(exit {exc.code}, as it should)".lstrip(), flush=True)
        else:
            raise Exit(f"demo: {title} was not refused", code=1)


def _node_lts_and_host_builds(c, inventory):
    """The app on Node LTS, its dependencies built on the hosts' platform: a deploy from an
    operator whose platform differs (a macOS laptop, simulated) still ships host-built
    dependencies (the lock did not change: the build cache answers), and the app's processes run
    the official node binary."""
    from opskit.app.build import FORCE_ENV

    before = os.environ.get(FORCE_ENV)
    os.environ[FORCE_ENV] = "darwin-arm64"
    try:
        deploy(c, inventory=inventory, message="from a darwin-arm64 laptop (simulated)")
    finally:
        if before is None:
            os.environ.pop(FORCE_ENV, None)
        else:
            os.environ[FORCE_ENV] = before
    run(
        c,
        inventory=inventory,
        hosts="web",
        sudo=True,
        command="for p in $(pgrep -u app -f /srv/); do readlink /proc/$p/exe; done | sort | "
        'uniq -c; n=$(readlink -f /srv/*/current/node_modules); echo "node_modules: $n"',
    )


def _alert_rules(c, inventory):
    """The inventory's alert rules as each host runs them, and what each alert target (the
    Slack channels, PagerDuty, e-mail) has received so far."""
    _, hosts = cli.load(inventory, None)
    for host in hosts:
        if "healthcheck" not in host.roles:
            continue
        [cfg] = [r for r in role_resources(host, ["healthcheck"]) if r.id == f"file:{CONFIG_PATH}"]
        config = json.loads(cfg.content)  # the config the role installs on the host
        rules = config.get("rules", [])
        print(f"{host.name}: {len(rules)} rules")
        for r in rules:
            when = f"{r['metric']} {r['op']} {r['value']:g} for {r['for_seconds']:g} s"
            print(f"  {r['severity']:<8} {r['name']}: {when} -> {', '.join(r['notify'])}")
    spec = load_lab_spec(cli.inventory_path(inventory))
    for name in ("slack", "pagerduty", "smtp"):
        counts = registry.inbox_counts(name, registry.read_inbox(spec, name))
        shown = ", ".join(f"{k} {n}" for k, n in counts.items()) or "nothing yet"
        print(f"received by {name}: {shown}")


def _toggles_and_killswitch(c, inventory):
    """Flip a feature toggle and the killswitch on every app host, then back (journal, Slack)."""
    toggle(c, "new-checkout", "on", inventory=inventory, message="demo: dark launch")
    killswitch(c, "on", inventory=inventory, message="demo: stop the bleeding")
    killswitch(c, "on", inventory=inventory)  # a second run changes nothing and says so
    killswitch(c, "off", inventory=inventory, message="demo: recovered")


def _incident(c, inventory):
    """Open an incident (alert, record with the known timeline), update it, resolve it."""
    try:
        incident_open(
            c,
            severity="high",
            title="Demo: checkout answers 503",
            impact="checkout, all users",
            inventory=inventory,
        )
    except Exit as exc:
        if exc.code != 1:
            raise
        print("(exit 1: a source was not read, shown above; the record is written)")
    incident_update(c, message="killswitch on; a rollback is ready", inventory=inventory)
    incident_resolve(
        c,
        root_cause="demo: a release that broke checkout",
        resolution="killswitch, then the previous release",
        prevention="post-deploy watch with automatic rollback",
        inventory=inventory,
    )


def _monthly(c, inventory):
    try:
        report_monthly(c, inventory=inventory)
    except Exit as exc:
        if exc.code != 1:
            raise
        print("(exit 1: a source was not read, shown above; the review is written)")


@task(
    help=H(
        "inventory",
        fresh="start from freshly booted, wiped hosts (the default: the demo's migrations start "
        "from an empty database); --no-fresh keeps the running hosts and what they hold",
    )
)
def lab_demo(c, inventory=None, fresh=True):
    """The main job on the lab, end to end: converge, deploy, back up, certify, monitor, verify."""
    steps = [
        (
            "lab up: hosts and stand-ins for S3, ACME, Slack, UptimeRobot, Sentry, Papertrail, "
            "PagerDuty, SMTP",
            lambda: lab_up(c, inventory=inventory, fresh=fresh),
        ),
        ("provision every role", lambda: provision(c, inventory=inventory)),
        (
            "provision again: must change nothing",
            lambda: provision(c, inventory=inventory, check=True, detailed_exitcode=True),
        ),
        (
            "deploy the sample app: verified backup, migration, health gate",
            lambda: deploy(c, inventory=inventory),
        ),
        (
            "Node LTS on the hosts; a deploy from a laptop of another platform ships host-built "
            "dependencies",
            lambda: _node_lts_and_host_builds(c, inventory),
        ),
        ("releases", lambda: releases(c, inventory=inventory)),
        (
            "migrations: again after a verified backup; rollback across one refused; a failing one",
            lambda: _migrations(c, inventory),
        ),
        ("a verified backup to S3 now", lambda: backup_run(c, inventory=inventory)),
        ("backups per host", lambda: backup_list(c, inventory=inventory)),
        ("restore drill: RPO and RTO", lambda: backup_drill(c, inventory=inventory)),
        (
            "certificates from the lab's ACME server: days left, served = on disk",
            lambda: certs_status(c, inventory=inventory),
        ),
        (
            "forced renewal, proven by the certificate nginx now serves",
            lambda: certs_renew(c, inventory=inventory, force=True),
        ),
        (
            "UptimeRobot monitors and Sentry alert rules: plan, apply, plan again",
            lambda: (
                monitoring_sync(c, inventory=inventory),
                monitoring_sync(c, inventory=inventory, apply=True),
                monitoring_sync(c, inventory=inventory, detailed_exitcode=True),
            ),
        ),
        ("health checks now, as cron runs them", lambda: monitoring_check(c, inventory=inventory)),
        (
            "alert rules as code: each host's rules and routes, what each target received",
            lambda: _alert_rules(c, inventory),
        ),
        ("verify every host with testinfra", lambda: verify(c, inventory=inventory)),
        ("fleet status: one screen, worst state first", lambda: _shown(status, c, inventory)),
        ("security audit, from outside and inside", lambda: _shown(audit, c, inventory)),
        (
            "the daily review: Markdown, HTML with charts, JSON, and a Slack summary",
            lambda: report_daily(c, inventory=inventory, slack=True),
        ),
        (
            "feature toggle and killswitch through the app's admin endpoints, on every app host",
            lambda: _toggles_and_killswitch(c, inventory),
        ),
        (
            "an incident: alert, record with the timeline opskit knows, update, resolve",
            lambda: _incident(c, inventory),
        ),
        (
            "the monthly review: slowest queries, sequential scans, sizes, 30-day criteria",
            lambda: _monthly(c, inventory),
        ),
        (
            # Last but one: the flaky release's 500s would make the status and reports critical.
            "post-deploy watch under load: a good release kept, a flaky one rolled back",
            lambda: _watch_demo(c, inventory),
        ),
        (
            "what the stand-ins received (Slack, heartbeats, monitors, Sentry, logs)",
            lambda: lab_inbox(c, inventory=inventory, last=5),
        ),
    ]
    started = time.monotonic()
    for n, (title, step) in enumerate(steps, 1):
        print(f"\n== {n}/{len(steps)} {title}", flush=True)
        step()
    print(
        f"\nthe lab is converged, deployed, backed up, certified, monitored, verified, audited "
        f"and reported on in {time.monotonic() - started:.0f} s; `inv lab.down` stops it"
    )
