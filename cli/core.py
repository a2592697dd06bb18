"""provision, verify, hosts.trust and ad-hoc commands."""

from __future__ import annotations

import sys

from invoke.exceptions import Exit

from cli import common as cli
from cli.common import H, task
from opskit.core.errors import ExitStatus, OpsError
from opskit.core.inventory import describe_roles
from opskit.core.runner import check_role_names, provision_work, run_on_hosts


@task(
    help=H(
        "inventory",
        "hosts",
        "workers",
        "json",
        "ask_sudo_pass",
        check="plan only: show what would change, change nothing",
        diff="show the diff of every changed file",
        roles="only these roles, comma-separated (default: every role of each host's groups)",
        detailed_exitcode="with --check: exit 3 when changes are pending (drift check in CI)",
        verbose="also list resources that are already right; full diffs",
    ),
)
def provision(
    c,
    inventory=None,
    hosts=None,
    roles=None,
    check=False,
    diff=False,
    workers=32,
    json=False,
    detailed_exitcode=False,
    verbose=False,
    ask_sudo_pass=False,
):
    """Converge the selected hosts to their roles (idempotent; --check to preview)."""
    inv, selected = cli.load(inventory, hosts)
    only = [r.strip() for r in roles.split(",")] if roles else None
    check_role_names(only)
    password = cli.ask_sudo_password(ask_sudo_pass)
    if not json:
        mode = "checking (no changes)" if check else "converging"
        print(f"{mode} {len(selected)} host(s) of {inv.path.name}, {workers} at a time")
        if check or verbose:  # where each host's roles come from (the implicit base role too)
            for h in selected:
                print(f"  {h.name}: roles {describe_roles(h)}")
    emit = cli.printer(json_out=json, show_diff=diff or check, verbose=verbose)
    results = run_on_hosts(
        inv,
        selected,
        provision_work(only),
        workers=workers,
        dry_run=check,
        sudo_password=password,
        on_result=emit,
    )
    cli.finish(results, json_out=json, dry_run=check, detailed_exitcode=detailed_exitcode)


@task(
    help=H(
        "inventory",
        "hosts",
        pytest_args="extra pytest arguments, e.g. '-k sshd'",
        roles="only the specs of these roles, comma-separated (default: every role)",
    )
)
def verify(c, inventory=None, hosts=None, pytest_args="", roles=None):
    """Prove the hosts are right: the testinfra specs of tests/infra (strict host keys)."""
    from opskit.fleet.verify import run_verify

    inv, selected = cli.load(inventory, hosts)
    code = run_verify(
        inv,
        selected,
        pytest_args.split(),
        [r.strip() for r in roles.split(",")] if roles else None,
    )
    if code != 0:
        raise Exit(code=ExitStatus.HOST_FAILED)


@task(
    help=H(
        "inventory",
        "hosts",
        yes="record new keys without asking (after reading the fingerprints)",
        replace="replace a recorded key that CHANGED (only after checking out of band)",
    )
)
def trust(c, inventory=None, hosts=None, yes=False, replace=False):
    """Show each host's SSH key fingerprint and record it in the inventory's known_hosts."""
    from opskit.fleet.trust import check_host_key, record

    inv, selected = cli.load(inventory, hosts)
    failed = False
    for host in selected:
        try:
            found = check_host_key(host, inv.ssh)
        except OpsError as exc:
            print(f"[{host.name}] UNREACHABLE {exc}", file=sys.stderr)
            failed = True
            continue
        key = f"{found.key.get_name()} {found.fingerprint}"
        if found.state == "trusted":
            print(f"[{host.name}] trusted   {key}")
            continue
        if found.state == "changed" and not replace:
            print(
                f"[{host.name}] CHANGED   offers {key}, known_hosts has {found.recorded}; "
                "not recorded (check out of band, then --replace)",
                file=sys.stderr,
            )
            failed = True
            continue
        if not yes:
            if not sys.stdin.isatty():
                raise Exit(
                    f"[{host.name}] new key {key}: confirm with --yes", code=ExitStatus.USAGE
                )
            if input(f"[{host.name}] {found.state} key {key}. Record it? [y/N] ").lower() != "y":
                continue
        record(found, inv.ssh.known_hosts)
        print(f"[{host.name}] recorded  {key} in {inv.ssh.known_hosts}")
    if failed:
        raise Exit(code=ExitStatus.HOST_FAILED)


# --- ad-hoc commands -----------------------------------------------------------------------


@task(
    help=H(
        "inventory",
        "hosts",
        "workers",
        "json",
        "ask_sudo_pass",
        command="the shell command (bash) to run on every selected host",
        sudo="run it as root (sudo) instead of as the login user",
        timeout="seconds to wait for the command on a host (default: no limit)",
    ),
)
def run(
    c,
    command="",
    inventory=None,
    hosts=None,
    sudo=False,
    workers=32,
    json=False,
    timeout=0,
    ask_sudo_pass=False,
):
    """Run one shell command on the selected hosts (one remote command per host)."""
    from opskit.fleet import adhoc

    inv, selected = cli.load(inventory, hosts)
    password = cli.ask_sudo_password(ask_sudo_pass)
    emit = None if json else (lambda r: print(adhoc.format_result(r), end="", flush=True))
    results = adhoc.run_command(
        inv,
        selected,
        command,
        sudo=sudo,
        workers=workers,
        timeout=timeout or None,
        sudo_password=password,
        on_result=emit,
    )
    print(adhoc.to_json(results) if json else adhoc.summary(results), end="")
    if not all(r.ok for r in results):
        raise Exit(code=ExitStatus.HOST_FAILED)
