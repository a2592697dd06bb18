"""audit."""

from __future__ import annotations

import os
import sys

from invoke.exceptions import Exit

from cli import common as cli
from cli.common import H, task
from opskit.core.errors import ConfigError, ExitStatus
from opskit.core.output import use_color


@task(
    help=H(
        "inventory",
        "hosts",
        "json",
        "ask_sudo_pass",
        workers="hosts at once (default 8)",
        since_hours="count failed SSH logins over this many hours (default: audit_since_hours, 24)",
        summary="print the summary line only (findings still set the exit code)",
    )
)
def audit(
    c,
    inventory=None,
    hosts=None,
    json=False,
    workers=8,
    since_hours=None,
    summary=False,
    ask_sudo_pass=False,
):
    """Security audit: exposed files, HSTS, certificates, SSH logins, keys, open ports.

    From this machine, for hosts with the nginx role: /.env, /.git and directory listings not
    served, no server version, HSTS, HTTP to HTTPS, certificates. On each host (one read-only
    command): failed SSH logins by source and fail2ban bans, authorized_keys against the
    inventory's keys, listening ports against the roles', sshd settings. Exit code: 5 a high or
    critical finding, else 1 a host could not be read, else 4 low or medium findings, else 0.
    """
    from opskit.audit.output import format_host, format_report, report_json
    from opskit.audit.reader import run

    inv, selected = cli.load(inventory, hosts)
    try:
        hours = float(since_hours) if since_hours not in (None, "") else None
    except ValueError:
        raise Exit(
            f"error: --since-hours: not a number: {since_hours!r}", code=ExitStatus.USAGE
        ) from None
    colour = use_color(sys.stdout.isatty(), os.environ)

    def emit(h):
        if not json and not summary:
            print(format_host(h, colour=colour), end="", flush=True)

    try:
        report = run(
            inv,
            selected,
            workers=workers,
            since_hours=hours,
            sudo_password=cli.ask_sudo_password(ask_sudo_pass),
            on_result=emit,
        )
    except ConfigError as exc:
        raise cli.usage_error(exc) from None
    except KeyboardInterrupt:
        raise Exit("interrupted", code=ExitStatus.INTERRUPTED) from None
    if json:
        print(report_json(report), end="")
    else:
        print(format_report(report, colour=colour, hosts=False), end="")
    if report.exit_code:
        raise Exit(code=int(report.exit_code))
