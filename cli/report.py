"""report.daily|weekly: the runbooks' daily and weekly reviews, filled in from the fleet."""

from __future__ import annotations

import sys

from invoke.exceptions import Exit

from cli import common as cli
from cli.common import H, task
from opskit.core.errors import ConfigError, ExitStatus

REPORT_HELP = H(
    "inventory",
    "hosts",
    "ask_sudo_pass",
    out="directory for <kind>-<date>.md/.html/.json (default: report_dir, reports/)",
    slack="also post a short summary to Slack (report_slack_webhook_url, else the health "
    "check's webhook)",
    fail_on="exit 5 when the report is critical (warning: else 1 when something could not be "
    "read, else 4 when it is warning); the report is written either way",
    no_audit="leave the security audit out (faster; no findings, logins or bans)",
    workers="hosts read at once (default 8)",
)


def _report(kind, inventory, hosts, out, slack, fail_on, no_audit, workers, ask_sudo_pass):
    from opskit.clients import ApiError
    from opskit.report.data import ReportError, settings_for
    from opskit.report.gather import gather
    from opskit.report.judge import check_fail_on, exit_code
    from opskit.report.publish import file_stem, post_slack, summary_lines, write
    from opskit.report.render import render

    inv, selected = cli.load(inventory, hosts)
    try:
        settings = settings_for(selected, out or None)
        check_fail_on(fail_on or "")
        if slack and settings.slack_webhook is None:
            raise ConfigError(
                "--slack: no webhook: set report_slack_webhook_url (or "
                "healthcheck_slack_webhook_url) to {secret: NAME}"
            )
        data = gather(
            inv,
            selected,
            kind,
            out_dir=settings.out_dir,
            workers=workers,
            sudo_password=cli.ask_sudo_password(ask_sudo_pass),
            skip_audit=no_audit,
        ).to_dict()
    except ConfigError as exc:
        raise cli.usage_error(exc) from None
    except KeyboardInterrupt:
        raise Exit("interrupted: no report written", code=ExitStatus.INTERRUPTED) from None
    secrets = [s for h in selected for s in h.secrets]
    stem = file_stem(data)
    link = f"{settings.link_base}{stem}.html" if settings.link_base else ""
    try:
        rendered = render(
            data, link=link or str((settings.out_dir / f"{stem}.html").resolve()), secrets=secrets
        )
        paths = write(rendered, settings.out_dir, stem)
    except ReportError as exc:
        raise Exit(f"error: {exc}", code=ExitStatus.HOST_FAILED) from None
    print(summary_lines(data, paths), end="")
    code = exit_code(data, fail_on or "")
    if slack:
        try:
            post_slack(rendered.slack, settings.slack_webhook)
            print("slack: summary sent")
        except ApiError as exc:
            print(f"slack: NOT sent: {exc}", file=sys.stderr)
            code = code or ExitStatus.HOST_FAILED
    if code:
        raise Exit(code=int(code))


@task(help=REPORT_HELP)
def report_daily(
    c,
    inventory=None,
    hosts=None,
    out="",
    slack=False,
    fail_on="",
    no_audit=False,
    workers=8,
    ask_sudo_pass=False,
):
    """Daily review: health now, alerts, backups, certificates, releases, audit of the last 24 h.

    Writes reports/daily-<date>.md, .html (charts) and .json. Exit code: 0 written, 1 a host or
    a source could not be read (the report is still written, marked), 2 bad input, 4/5 with
    --fail-on.
    """
    _report("daily", inventory, hosts, out, slack, fail_on, no_audit, workers, ask_sudo_pass)


@task(help=REPORT_HELP)
def report_weekly(
    c,
    inventory=None,
    hosts=None,
    out="",
    slack=False,
    fail_on="",
    no_audit=False,
    workers=8,
    ask_sudo_pass=False,
):
    """Weekly review: the daily's sections over 7 days, trends per day, a to-do for the week.

    Writes reports/weekly-<date>.md, .html and .json; reads the week's daily JSONs from the same
    directory for trends when present. Exit codes as report.daily.
    """
    _report("weekly", inventory, hosts, out, slack, fail_on, no_audit, workers, ask_sudo_pass)


@task(help={k: v for k, v in REPORT_HELP.items() if k != "no_audit"})
def report_monthly(
    c, inventory=None, hosts=None, out="", slack=False, fail_on="", workers=8, ask_sudo_pass=False
):
    """Monthly review: slowest queries, sequential scans, sizes, the 30-day success criteria.

    Action items first; uptime from UptimeRobot (> 99.9 %), error rate (< 1 %) and p95 (< 500 ms)
    from nginx's access logs. Writes reports/monthly-<date>.md, .html (charts) and .json. Exit
    code: 0 written, 1 a host or source not read (still written), 2 bad input, 5 with
    --fail-on critical|warning when a criterion was missed (4: only warnings, with warning).
    """
    from opskit.clients import ApiError
    from opskit.report import monthly
    from opskit.report.data import ReportError, settings_for
    from opskit.report.publish import post_slack, write

    inv, selected = cli.load(inventory, hosts)
    try:
        settings = settings_for(selected, out or None)
        if fail_on not in ("", "critical", "warning"):
            raise ConfigError(f"--fail-on: expected critical or warning, got {fail_on!r}")
        if slack and settings.slack_webhook is None:
            raise ConfigError("--slack: no webhook: set report_slack_webhook_url to {secret: NAME}")
        report = monthly.gather(
            inv,
            selected,
            workers=workers,
            sudo_password=cli.ask_sudo_password(ask_sudo_pass),
        )
    except ConfigError as exc:
        raise cli.usage_error(exc) from None
    except KeyboardInterrupt:
        raise Exit("interrupted: no report written", code=ExitStatus.INTERRUPTED) from None
    secrets = [s for h in selected for s in h.secrets]
    try:
        rendered = monthly.render(report, secrets=secrets)
        paths = write(rendered, settings.out_dir, f"monthly-{report['until'][:10]}")
    except ReportError as exc:
        raise Exit(f"error: {exc}", code=ExitStatus.HOST_FAILED) from None
    for p in paths.values():
        print(f"wrote {p}")
    print(rendered.slack, end="")
    for source, err in sorted(report["errors"].items()):
        print(f"  not read: {source}: {err.splitlines()[0] if err else ''}")
    code = ExitStatus.HOST_FAILED if report["errors"] else 0
    if slack:
        try:
            post_slack(rendered.slack, settings.slack_webhook)
            print("slack: summary sent")
        except ApiError as exc:
            print(f"slack: NOT sent: {exc}", file=sys.stderr)
            code = ExitStatus.HOST_FAILED
    levels = {a["level"] for a in report["actions"]}
    if fail_on and "critical" in levels:
        code = 5
    elif fail_on == "warning" and "warning" in levels:
        code = 4
    if code:
        raise Exit(code=int(code))
