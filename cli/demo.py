"""lab.demo: the main job on the lab, end to end."""

from __future__ import annotations

import json
import time

from invoke.exceptions import Exit

from cli import common as cli
from cli.app import deploy, releases
from cli.audit import audit
from cli.backup import backup_drill, backup_list, backup_run
from cli.certs import certs_renew, certs_status
from cli.common import H, task
from cli.core import provision, verify
from cli.lab import lab_inbox, lab_up
from cli.monitoring import monitoring_check, monitoring_sync
from cli.report import report_daily
from cli.status import status
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


@task(help=H("inventory", fresh="start from freshly booted hosts"))
def lab_demo(c, inventory=None, fresh=False):
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
        ("deploy the sample app (health-gated)", lambda: deploy(c, inventory=inventory)),
        ("releases", lambda: releases(c, inventory=inventory)),
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
