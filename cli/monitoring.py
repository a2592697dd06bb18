"""monitoring.sync|check|status."""

from __future__ import annotations

import sys

from invoke.exceptions import Exit

from cli import common as cli
from cli.common import H, task
from opskit.core.errors import ConfigError, ExitStatus

# --- monitoring ------------------------------------------------------------------------------


@task(
    help=H(
        "inventory",
        "json",
        hosts="take the declarations of these hosts only (default: every host with the "
        "healthcheck role)",
        apply="carry the plan out (default: show it and change nothing)",
        verbose="also list monitors and rules that are already right",
        detailed_exitcode="without --apply: exit 3 when changes are pending (drift check in CI)",
    )
)
def monitoring_sync(
    c,
    inventory=None,
    hosts=None,
    apply=False,
    json=False,
    verbose=False,
    detailed_exitcode=False,
):
    """UptimeRobot monitors and Sentry alert rules as the inventory declares (plan; --apply)."""
    from opskit.clients import ApiError
    from opskit.monitoring.declared import declared
    from opskit.monitoring.sync import format_sync, sync, sync_json

    inv, selected = cli.load(inventory, hosts)
    try:
        decl = declared(inv, selected)
        result = sync(decl, apply=apply)
    except ConfigError as exc:
        raise cli.usage_error(exc) from None
    except ApiError as exc:
        raise Exit(f"error: {exc}", code=ExitStatus.HOST_FAILED) from None
    if json:
        print(sync_json(result), end="")
    else:
        print(format_sync(result, verbose=verbose), end="")
        for line in result.done:
            print(line)
    if result.conflicts:
        raise Exit(code=ExitStatus.HOST_FAILED)
    if detailed_exitcode and not apply and result.pending:
        raise Exit(code=ExitStatus.CHANGES_PENDING)


def _print_health(rows, json_out):
    import json as jsonlib

    from opskit.monitoring.health import format_status

    if json_out:
        print(
            jsonlib.dumps(
                [{"host": r.host, "status": r.status, "error": r.error} for r in rows], indent=2
            )
        )
    for r in rows:
        if r.status is not None and not json_out:
            print(format_status(r.host, r.status), end="")
        if r.error:
            print(f"[{r.host}] FAILED   {r.error}", file=sys.stderr)
    if any(r.error for r in rows):
        raise Exit(code=ExitStatus.HOST_FAILED)


@task(
    help=H(
        "inventory",
        "hosts",
        "json",
        no_alert="check only: send nothing to Slack and keep no alert state",
    )
)
def monitoring_check(c, inventory=None, hosts=None, json=False, no_alert=False):
    """Run the health check on the hosts now, as cron does (alerts Slack on a change)."""
    from opskit.monitoring.health import health_hosts

    inv, selected = cli.load(inventory, hosts)
    _print_health(health_hosts(inv, selected, run=True, alert=not no_alert), json)


@task(help=H("inventory", "hosts", "json"))
def monitoring_status(c, inventory=None, hosts=None, json=False):
    """Show each host's last health-check result (its status file); runs nothing."""
    from opskit.monitoring.health import health_hosts

    inv, selected = cli.load(inventory, hosts)
    _print_health(health_hosts(inv, selected, run=False), json)
