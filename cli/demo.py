"""lab.demo: the main job on the lab, end to end."""

from __future__ import annotations

import time

from invoke.exceptions import Exit

from cli.app import deploy, killswitch, releases, toggle
from cli.audit import audit
from cli.backup import backup_drill, backup_list, backup_run
from cli.certs import certs_renew, certs_status
from cli.common import H, task
from cli.core import provision, verify
from cli.incident import incident_open, incident_resolve, incident_update
from cli.lab import lab_inbox, lab_up
from cli.monitoring import monitoring_check, monitoring_sync
from cli.report import report_daily, report_monthly
from cli.status import status


def _shown(check, c, inventory):
    """Run a check task; its warnings (exit 4) are the demo's to show, not to stop at."""
    try:
        check(c, inventory=inventory)
    except Exit as exc:
        if exc.code != 4:
            raise
        print("(exit 4: warnings, shown above)")


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


@task(help=H("inventory", fresh="start from freshly booted hosts"))
def lab_demo(c, inventory=None, fresh=False):
    """The main job on the lab, end to end: converge, deploy, back up, certify, monitor, verify."""
    steps = [
        (
            "lab up: hosts and stand-ins for S3, ACME, Slack, UptimeRobot, Sentry, Papertrail",
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
