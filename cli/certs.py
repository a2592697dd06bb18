"""certs.status|renew."""

from __future__ import annotations

from invoke.exceptions import Exit

from cli import common as cli
from cli.common import H, task
from opskit.core.errors import ConfigError, ExitStatus

# --- certs ---------------------------------------------------------------------------------


def _cert_hosts(inventory, hosts):
    from opskit.certs.read import cert_hosts

    inv, selected = cli.load(inventory, hosts)
    try:
        return inv, cert_hosts(inv, selected, explicit=bool(hosts))
    except ConfigError as exc:
        raise cli.usage_error(exc) from None


CERTS_HELP = H(
    "inventory",
    "json",
    "ask_sudo_pass",
    hosts="hosts: names, groups or globs, comma-separated (default: every host with the certbot "
    "role)",
    workers="hosts at once (default 8)",
)


@task(help=CERTS_HELP)
def certs_status(c, inventory=None, hosts=None, json=False, workers=8, ask_sudo_pass=False):
    """Per host and certificate: names, not-after, days left, issuer, served = on disk?

    Exit code: 5 a certificate is critical (fewer than certbot_critical_days left, expired,
    declared but missing, or nginx serves another one), else 1 a host could not be read, else
    4 one is in the warning window (certbot_warning_days), else 0.
    """
    from opskit.certs import judge

    inv, selected = _cert_hosts(inventory, hosts)
    try:
        report = judge.status(
            inv, selected, workers=workers, sudo_password=cli.ask_sudo_password(ask_sudo_pass)
        )
    except ConfigError as exc:
        raise cli.usage_error(exc) from None
    print(judge.status_json(report) if json else judge.format_status(report), end="")
    if report.exit_code:
        raise Exit(code=int(report.exit_code))


@task(
    help=dict(
        CERTS_HELP,
        force="renew even if not due (certbot --force-renewal)",
        dry_run="ask the ACME server for a renewal but save nothing and run no hook "
        "(certbot --dry-run)",
        cert="only this certificate (certbot's lineage name, e.g. shop.example.com)",
    )
)
def certs_renew(
    c,
    inventory=None,
    hosts=None,
    force=False,
    dry_run=False,
    cert=None,
    json=False,
    workers=8,
    ask_sudo_pass=False,
):
    """Renew certificates now, then prove nginx serves the renewed ones (the deploy hook ran)."""
    from opskit.certs import renew

    inv, selected = _cert_hosts(inventory, hosts)
    if force and dry_run:
        raise Exit("error: --force and --dry-run exclude each other", code=ExitStatus.USAGE)
    opts = renew.RenewOptions(force=force, dry_run=dry_run, cert=cert or None)
    emit = None if json else (lambda r: print(renew.format_renew_host(r), end="", flush=True))
    try:
        results = renew.renew(
            inv,
            selected,
            opts,
            workers=workers,
            on_result=emit,
            sudo_password=cli.ask_sudo_password(ask_sudo_pass),
        )
    except ConfigError as exc:
        raise cli.usage_error(exc) from None
    except KeyboardInterrupt:
        raise Exit(
            "interrupted: hosts not started were skipped", code=ExitStatus.INTERRUPTED
        ) from None
    print(renew.renew_json(results, opts) if json else renew.renew_summary(results), end="")
    if any(r.failed for r in results):
        raise Exit(code=ExitStatus.HOST_FAILED)
