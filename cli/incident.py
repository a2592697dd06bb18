"""incident.open|update|resolve: the guides' incident workflow, recorded in incident_dir."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

from invoke.exceptions import Exit

from cli import common as cli
from cli.common import H, task
from opskit.core.errors import ConfigError, ExitStatus

INCIDENT_HELP = H(
    "inventory",
    "ask_sudo_pass",
    hosts="hosts whose timeline is read (default: every host)",
    incident="which incident (its file name or a unique part of it; default: the newest open one)",
)


def _dir(selected) -> Path:
    return Path(str(selected[0].vars.get("incident_dir") or "incidents"))


def _webhook(selected):
    from opskit.report.data import settings_for

    return settings_for(selected).slack_webhook


def _post(selected, text: str) -> bool:
    """Post to the incident channel (the report's webhook, else the health check's)."""
    from opskit.clients import ApiError
    from opskit.report.publish import post_slack

    webhook = _webhook(selected)
    if webhook is None:
        print("slack: no webhook configured, nothing sent")
        return True
    try:
        post_slack(text, webhook)
    except ApiError as exc:
        print(f"slack: NOT sent: {exc}", file=sys.stderr)
        return False
    print("slack: sent")
    return True


@task(
    help=dict(
        {k: v for k, v in INCIDENT_HELP.items() if k != "incident"},
        severity="critical, high, medium or low",
        title="what is wrong, as users see it",
        impact="who or what is affected (the alert's Impact line)",
    )
)
def incident_open(
    c, severity="", title="", impact="", inventory=None, hosts=None, ask_sudo_pass=False
):
    """Open an incident: alert Slack, write incidents/<date>-<slug>.md with the known timeline.

    The timeline: health-check alerts and state, deploys, rollbacks, toggles (the deploy
    journals), backups and certificates of the last incident_lookback_hours, read over one SSH
    connection per host. Exit: 0 written and sent, 1 a host or Slack not reached (the record is
    still written), 2 bad input.
    """
    from opskit.app.release import operator
    from opskit.incident import record, timeline

    inv, selected = cli.load(inventory, hosts)
    now = dt.datetime.now(dt.UTC)
    try:
        record.severity(severity or "")
        if not title.strip():
            raise ConfigError("--title: give the incident a title (what users see)")
        hours = float(selected[0].vars.get("incident_lookback_hours") or 24)
        directory = _dir(selected)
        _webhook(selected)
        events, errors = timeline.gather(
            inv,
            selected,
            now - dt.timedelta(hours=hours),
            now,
            sudo_password=cli.ask_sudo_password(ask_sudo_pass),
        )
        meta = record.new_meta(
            title,
            severity,
            operator(),
            now,
            hosts=[h.name for h in selected],
            window=f"the last {hours:g} h",
            timeline=[e.to_dict() for e in events],
            not_read=errors,
            impact=impact,
        )
    except ConfigError as exc:
        raise cli.usage_error(exc) from None
    path = record.new_path(directory, now, title)
    _write(record, path, meta)
    print(f"opened {path} ({meta['severity']}): {len(events)} timeline event(s)")
    for source, err in sorted(errors.items()):
        print(f"  not read: {source}: {err.splitlines()[0] if err else ''}")
    sent = _post(selected, record.open_message(meta, path))
    if errors or not sent:
        raise Exit(code=ExitStatus.HOST_FAILED)


def _write(record, path, meta):
    try:
        record.write_record(path, meta)
    except record.IncidentError as exc:
        raise Exit(f"error: {exc}", code=ExitStatus.HOST_FAILED) from None


@task(
    help=dict(
        {k: v for k, v in INCIDENT_HELP.items() if k != "ask_sudo_pass"},
        message="what happened or was done (a timeline line, also sent to Slack)",
        action="also add this follow-up to the action items",
    )
)
def incident_update(c, message="", action="", incident=None, inventory=None, hosts=None):
    """Add a line to an open incident's timeline (and an action item) and post it to Slack."""
    from opskit.app.release import operator
    from opskit.incident import record

    _, selected = cli.load(inventory, hosts)
    try:
        path = record.find(_dir(selected), incident)
        meta = record.load(path)
        record.add_update(meta, dt.datetime.now(dt.UTC), operator(), message)
        if action.strip():
            meta["action_items"].append(action.strip())
    except ConfigError as exc:
        raise cli.usage_error(exc) from None
    _write(record, path, meta)
    print(f"updated {path}: {len(meta['timeline'])} timeline line(s)")
    if not _post(selected, record.update_message(meta, message)):
        raise Exit(code=ExitStatus.HOST_FAILED)


@task(
    help=dict(
        {k: v for k, v in INCIDENT_HELP.items() if k != "ask_sudo_pass"},
        root_cause="why it happened (asked for when missing and stdin is a terminal)",
        resolution="what ended it",
        prevention="what keeps it from happening again",
    )
)
def incident_resolve(
    c, root_cause="", resolution="", prevention="", incident=None, inventory=None, hosts=None
):
    """Resolve an incident: root cause, resolution, prevention; set the status, post a summary.

    Without stdin (no terminal) every one of the three must be given: else exit 2 naming the
    missing ones, nothing changed.
    """
    from opskit.app.release import operator
    from opskit.incident import record

    _, selected = cli.load(inventory, hosts)
    given = {"root_cause": root_cause, "resolution": resolution, "prevention": prevention}
    try:
        path = record.find(_dir(selected), incident)
        meta = record.load(path)
        if meta.get("status") == "resolved":
            raise ConfigError(f"{path.name}: already resolved at {meta.get('resolved_at')}")
        if sys.stdin.isatty():
            for key, value in given.items():
                while not value.strip():
                    value = input(f"{key.replace('_', ' ')}: ")
                given[key] = value
        record.resolve(meta, dt.datetime.now(dt.UTC), operator(), given)
    except ConfigError as exc:
        raise cli.usage_error(exc) from None
    _write(record, path, meta)
    print(f"resolved {path} after {record.human_duration(_duration(meta))}")
    if not _post(selected, record.resolve_message(meta)):
        raise Exit(code=ExitStatus.HOST_FAILED)


def _duration(meta):
    from opskit.report.incidents import duration_s

    return duration_s(meta, dt.datetime.now(dt.UTC))
