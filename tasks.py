"""opskit tasks: `inv --list` shows them, `inv <task> --help` explains each.

Exit codes: 0 ok, 1 a host failed or was unreachable, 2 bad input (nothing touched),
3 changes pending (with --check --detailed-exitcode), 130 interrupted.
"""

from __future__ import annotations

import sys
import time

from invoke import Collection, task
from invoke.exceptions import Exit

from opskit import cli
from opskit import lab as labmod
from opskit.errors import ConfigError, ExitStatus, OpsError
from opskit.runner import check_role_names, provision_work, run_on_hosts



def H(*names: str, **extra: str) -> dict[str, str]:  # noqa: N802
    """Help texts for a task's flags: the shared ones named, plus the task's own."""
    return {**{n: cli.COMMON_HELP[n] for n in names}, **extra}



@task(
    help=H(
        "inventory", "hosts", "workers", "json", "ask_sudo_pass",
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
    workers=8,
    json=False,
    detailed_exitcode=False,
    verbose=False,
    ask_sudo_pass=False,
):
    """Converge the selected hosts to their roles (idempotent; --check to preview)."""
    inv, selected = cli.load(inventory, hosts)
    only = [r.strip() for r in roles.split(",")] if roles else None
    try:
        check_role_names(only)
    except ConfigError as exc:
        raise cli.usage_error(exc) from None
    password = cli.ask_sudo_password(ask_sudo_pass)
    if not json:
        mode = "checking (no changes)" if check else "converging"
        print(f"{mode} {len(selected)} host(s) of {inv.path.name}, {workers} at a time")
    emit = cli.printer(json_out=json, show_diff=diff or check, verbose=verbose)
    try:
        results = run_on_hosts(
            inv,
            selected,
            provision_work(only),
            workers=workers,
            dry_run=check,
            sudo_password=password,
            on_result=emit,
        )
    except KeyboardInterrupt:
        raise Exit(
            "interrupted: hosts not started were skipped; no file is half-written",
            code=ExitStatus.INTERRUPTED,
        ) from None
    cli.finish(results, json_out=json, dry_run=check, detailed_exitcode=detailed_exitcode)


@task(help=H("inventory", "hosts", pytest_args="extra pytest arguments, e.g. '-k sshd'"))
def verify(c, inventory=None, hosts=None, pytest_args=""):
    """Prove the hosts are right: the testinfra specs of tests/infra (strict host keys)."""
    from opskit.verify import run_verify

    inv, selected = cli.load(inventory, hosts)
    code = run_verify(inv, selected, pytest_args.split())
    if code != 0:
        raise Exit(code=ExitStatus.HOST_FAILED)


@task(
    help=H(
        "inventory", "hosts",
        yes="record new keys without asking (after reading the fingerprints)",
        replace="replace a recorded key that CHANGED (only after checking out of band)",
    )
)
def trust(c, inventory=None, hosts=None, yes=False, replace=False):
    """Show each host's SSH key fingerprint and record it in the inventory's known_hosts."""
    from opskit.trust import check_host_key, record

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


# --- the lab -------------------------------------------------------------------------------


def _lab_spec(inventory):
    path = cli.inventory_path(inventory)
    try:
        return labmod.load_lab_spec(path)
    except labmod.LabError as exc:
        raise Exit(f"error: {exc}", code=ExitStatus.USAGE) from None


def _print_status(rows):
    for s in rows:
        ssh = "ssh ready" if s.ssh_ready else "no ssh"
        print(f"{s.name:<8} {s.address:<15} {s.state:<8} {ssh:<9} {s.detail}")


@task(
    help=H(
        "inventory",
        fresh="wipe the hosts and boot them anew",
        hosts="only these lab hosts, comma-separated",
    )
)
def lab_up(c, inventory=None, fresh=False, hosts=None):
    """Boot the lab's hosts (systemd-nspawn) and stand-in services; a no-op when running."""
    spec = _lab_spec(inventory)
    started = time.monotonic()
    try:
        rows = labmod.up(
            spec,
            fresh=fresh,
            hosts=hosts.split(",") if hosts else None,
            progress=lambda msg: print(f"lab: {msg}", flush=True),
        )
    except labmod.LabError as exc:
        raise Exit(f"error: {exc}", code=ExitStatus.HOST_FAILED) from None
    _print_status(rows)
    print(f"lab up in {time.monotonic() - started:.1f} s")


@task(help=H("inventory"))
def lab_down(c, inventory=None):
    """Power the lab's hosts off and remove their network; safe after a crash."""
    spec = _lab_spec(inventory)
    try:
        labmod.down(spec, progress=lambda msg: print(f"lab: {msg}", flush=True))
    except labmod.LabError as exc:
        raise Exit(f"error: {exc}", code=ExitStatus.HOST_FAILED) from None
    print("lab down")


@task(help=H("inventory"))
def lab_status(c, inventory=None):
    """Show each lab host: running or not, address, SSH reachable."""
    rows = labmod.status(_lab_spec(inventory))
    _print_status(rows)
    if any(not s.ssh_ready for s in rows):
        raise Exit(code=ExitStatus.HOST_FAILED)


@task(help=H("inventory", service="only this stand-in (slack, heartbeat, ...)",
             last="show only the last N items of each (default 20)"))
def lab_inbox(c, inventory=None, service=None, last=20):
    """Show what the lab's stand-in services received (Slack alerts, heartbeats, ...)."""
    from opskit import labsvc

    spec = _lab_spec(inventory)
    for svc in labsvc.SERVICES:
        if (service and svc.name != service) or svc.name == "aptproxy":
            continue
        items = labsvc.read_inbox(spec, svc.name)
        print(f"== {svc.name} ({len(items)} received, {labsvc.service_url(spec, svc.name)})")
        for item in items[-last:]:
            print("  " + labsvc.describe_item(svc.name, item))


@task(help=H("inventory", fresh="start from freshly booted hosts"))
def lab_demo(c, inventory=None, fresh=False):
    """The main job on the lab: lab up, provision, provision again (no change), verify."""
    lab_up(c, inventory=inventory, fresh=fresh)
    print("\n== provision (first run)")
    provision(c, inventory=inventory)
    print("\n== provision again: must change nothing")
    provision(c, inventory=inventory, check=True, detailed_exitcode=True)
    print("\n== verify (testinfra)")
    verify(c, inventory=inventory)
    print("\nthe lab is converged and verified; `inv lab.down` stops it")


# --- development ---------------------------------------------------------------------------


@task(help={"fast": "unit tests only (no lab): a developer's shortcut, never CI's"})
def test(c, fast=False):
    """Run the tests: unit, doctests and integration against the lab."""
    args = "-m 'not integration' tests/unit" if fast else ""
    c.run(f"{sys.executable} -m pytest {args}", pty=sys.stdout.isatty())


@task
def lint(c):
    """ruff check, ruff format --check, mypy --strict on opskit."""
    py = sys.executable
    c.run(f"{py} -m ruff check . && {py} -m ruff format --check . && "
          f"{py} -m mypy --strict --ignore-missing-imports opskit")


hosts_ns = Collection("hosts")
hosts_ns.add_task(trust)
lab_ns = Collection("lab")
lab_ns.add_task(lab_up, name="up")
lab_ns.add_task(lab_down, name="down")
lab_ns.add_task(lab_status, name="status")
lab_ns.add_task(lab_demo, name="demo")
lab_ns.add_task(lab_inbox, name="inbox")
dev_ns = Collection("dev")
dev_ns.add_task(test)
dev_ns.add_task(lint)

ns = Collection(provision, verify)
ns.add_collection(hosts_ns)
ns.add_collection(lab_ns)
ns.add_collection(dev_ns)
