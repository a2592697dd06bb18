"""lab.up|down|status|inbox: the lab of real hosts on this machine."""

from __future__ import annotations

import time

from invoke.exceptions import Exit

from cli import common as cli
from cli.common import H, task
from opskit.core.errors import ExitStatus
from opskit.lab import lifecycle, registry
from opskit.lab.spec import LabError, load_lab_spec

# --- the lab -------------------------------------------------------------------------------


def _lab_spec(inventory):
    path = cli.inventory_path(inventory)
    try:
        return load_lab_spec(path)
    except LabError as exc:
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
        rows = lifecycle.up(
            spec,
            fresh=fresh,
            hosts=hosts.split(",") if hosts else None,
            progress=lambda msg: print(f"lab: {msg}", flush=True),
        )
    except LabError as exc:
        raise Exit(f"error: {exc}", code=ExitStatus.HOST_FAILED) from None
    _print_status(rows)
    print(f"lab up in {time.monotonic() - started:.1f} s")


@task(help=H("inventory"))
def lab_down(c, inventory=None):
    """Power the lab's hosts off and remove their network; safe after a crash."""
    spec = _lab_spec(inventory)
    try:
        lifecycle.down(spec, progress=lambda msg: print(f"lab: {msg}", flush=True))
    except LabError as exc:
        raise Exit(f"error: {exc}", code=ExitStatus.HOST_FAILED) from None
    print("lab down")


@task(help=H("inventory"))
def lab_status(c, inventory=None):
    """Show each lab host: running or not, address, SSH reachable."""
    spec = _lab_spec(inventory)
    rows = lifecycle.status(spec)
    _print_status(rows)
    print(registry.apt_cache_line(spec))
    if any(not s.ssh_ready for s in rows):
        raise Exit(code=ExitStatus.HOST_FAILED)


@task(
    help=H(
        "inventory",
        service="only this stand-in (slack, heartbeat, ...)",
        last="show only the last N items of each (default 20)",
    )
)
def lab_inbox(c, inventory=None, service=None, last=20):
    """Show what the lab's stand-in services received (Slack alerts, heartbeats, ...)."""
    spec = _lab_spec(inventory)
    for svc in registry.SERVICES:
        if (service and svc.name != service) or svc.name == "aptproxy":
            continue
        items = registry.read_inbox(spec, svc.name)
        print(f"== {svc.name} ({len(items)} received, {registry.service_url(spec, svc.name)})")
        counts = registry.inbox_counts(svc.name, items)
        if counts:
            print("  by target: " + ", ".join(f"{k} {n}" for k, n in counts.items()))
        for item in items[-last:]:
            print("  " + registry.describe_item(svc.name, item))
