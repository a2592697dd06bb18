"""status: one screen for the fleet."""

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
        "ask_sudo_pass",
        json="print the status as JSON on stdout (the shape `inv report.*` reads)",
        workers="hosts read at once (default 8)",
        samples="GETs of the health endpoint per host for latency p50/p95 (default: "
        "status_samples, 5)",
    )
)
def status(c, inventory=None, hosts=None, json=False, workers=8, samples=0, ask_sudo_pass=False):
    """One screen for the fleet: health, latency, CPU, memory, disk, DB, PM2, certs, backups.

    Per host, what applies to its roles, read in one SSH command and judged against the
    status_* thresholds (opskit/core/defaults/status.yml; null = the host's healthcheck_* value,
    else the runbook's). Worst host first; colour on a terminal (not when piped or NO_COLOR is set).
    Exit code: 5 something is critical, else 1 a host or a metric could not be read, else
    4 something is a warning, else 0; 2 bad input (nothing was read), 130 interrupted.
    """
    from opskit.status import fleet as st
    from opskit.status.output import format_fleet, to_json

    inv, selected = cli.load(inventory, hosts)
    try:
        fleet = st.collect(
            inv,
            selected,
            workers=workers,
            samples=samples or None,
            sudo_password=cli.ask_sudo_password(ask_sudo_pass),
        )
    except ConfigError as exc:
        raise cli.usage_error(exc) from None
    except KeyboardInterrupt:
        raise Exit("interrupted", code=ExitStatus.INTERRUPTED) from None
    if json:
        print(to_json(fleet), end="")
    else:
        color = use_color(sys.stdout.isatty(), os.environ)
        print(format_fleet(fleet, color=color), end="")
    if fleet.exit_code:
        raise Exit(code=int(fleet.exit_code))
