"""The lab: a few real Debian 12 hosts booted on this machine with systemd-nspawn; up, down,
status, reset_host.

Everything here needs root. What lives where::

    opskit.lab.spec       the inventory's `lab:` section -> LabSpec
    opskit.lab.image      <cache_dir>/base-<key>/: the debootstrap base image, shared read-only
    opskit.lab.network    the bridge, a network namespace and veth per host, the unreachable route
    opskit.lab.hosts      <state_dir>/hosts/<name>/: overlays, host keys, known_hosts
    opskit.lab.nspawn     booting, stopping and entering hosts (exec_in)
    opskit.lab.registry   the stand-ins (Debian mirror proxy, S3, ACME, Slack, UptimeRobot,
                          Sentry, Papertrail) and what they received
    opskit.lab.services   <state_dir>/services/: starting and stopping the stand-ins
    <state_dir>/.lock     serialises up / down / reset_host

The library never prints: pass ``progress`` to get one-line messages. The lab in use, how to run
one of one's own next to it and the integration tests against it: README.md, docs/DEVELOPING.md.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from opskit.lab.hosts import (
    ensure_identity,
    host_paths,
    prepare_host,
    wipe_host,
    write_known_hosts,
)
from opskit.lab.image import ensure_base_images, image_kind
from opskit.lab.network import (
    ensure_bridge,
    ensure_host_net,
    ensure_unreachable_route,
    remove_bridge,
    remove_host_net,
)
from opskit.lab.nspawn import (
    SSH_TIMEOUT,
    LabHostStatus,
    boot,
    host_status,
    other_lab_host,
    stop_hosts,
    wait_ssh,
    wait_systemd,
)
from opskit.lab.proc import Progress, check_prerequisites, locked, noop, standard_umask
from opskit.lab.services import start_services, stop_services
from opskit.lab.spec import LabError, LabHost, LabSpec, find_host, lab_network

# Every booted host's systemd, journald, logind, ... holds inotify instances, and all hosts of all
# labs on the machine run as root: the kernel default of 128 per user stops boots at about a dozen
# hosts ("Failed to create control group inotify object: Too many open files").
SYSCTLS = {"fs.inotify.max_user_instances": 8192, "fs.inotify.max_user_watches": 1048576}


def raise_limits(progress: Progress = noop) -> None:
    """Raise the machine's inotify limits to SYSCTLS (never lowers them)."""
    for key, want in SYSCTLS.items():
        path = Path("/proc/sys") / key.replace(".", "/")
        if int(path.read_text()) < want:
            progress(f"raising {key} to {want} (booted hosts of all labs share the default 128)")
            path.write_text(str(want))


def up(
    spec: LabSpec,
    *,
    fresh: bool = False,
    hosts: Sequence[str] | None = None,
    progress: Progress = noop,
) -> list[LabHostStatus]:
    """Make the lab hosts (all, or `hosts`) run with SSH ready; running hosts are kept as they are.

    ``fresh=True`` stops the selected hosts, wipes their overlay (all their changes, their host
    keys) and boots them again. Raises LabError (naming console.log) when a host does not boot.
    """
    check_prerequisites()
    raise_limits(progress)
    selected = [find_host(spec, n) for n in dict.fromkeys(hosts)] if hosts else list(spec.hosts)
    for host in selected:
        other = other_lab_host(spec, host.name)
        if other:
            raise LabError(
                f"{host.name}: another lab on this machine runs a host of that name ({other}); "
                "hosts' network namespaces and cgroups are named after them: give this lab's "
                "hosts other names (and its own bridge and subnet), or stop that lab first"
            )
    with locked(spec.state_dir / ".lock", progress), standard_umask():
        images = ensure_base_images(spec, [image_kind(spec, h) for h in selected], progress)
        pubkey = ensure_identity(spec)
        ensure_bridge(spec)
        start_services(spec, progress)
        keep: dict[str, int] = {}
        to_boot: list[LabHost] = []
        to_stop: list[str] = []
        wipe: dict[str, str] = {}
        for host in selected:
            paths = host_paths(spec, host.name)
            current = host_status(spec, host, check_ssh=False)
            image = images[image_kind(spec, host)]
            recorded = paths.image.read_text().strip() if paths.image.exists() else str(image)
            if current.state == "running" and current.pid and not fresh and recorded == str(image):
                keep[host.name] = current.pid
                ensure_host_net(spec, host)  # re-attaches it if the bridge was re-created
                continue
            if current.state != "stopped":
                to_stop.append(host.name)
            if fresh or recorded != str(image):
                wipe[host.name] = "fresh" if fresh else "base image changed"
            to_boot.append(host)
        stop_hosts(spec, to_stop, progress)

        def prepare(host: LabHost) -> None:
            if host.name in wipe:
                progress(f"{host.name}: wiping its overlay ({wipe[host.name]})")
                wipe_host(spec, host.name)
            prepare_host(
                spec, host, images[image_kind(spec, host)], pubkey
            )  # ssh-keygen -A takes ~1 s: in parallel
            ensure_host_net(spec, host)

        with ThreadPoolExecutor(max_workers=max(1, len(to_boot))) as pool:
            list(pool.map(prepare, to_boot))
        write_known_hosts(spec)
        if to_boot:
            progress(f"booting {', '.join(h.name for h in to_boot)}…")
        pids = {**keep, **{h.name: boot(spec, h) for h in to_boot}}

        notes: dict[str, str] = {}

        def wait(host: LabHost) -> str | None:
            started = time.monotonic()
            try:
                seconds = wait_ssh(spec, host, pids[host.name], SSH_TIMEOUT)
                left = SSH_TIMEOUT - (time.monotonic() - started)
                notes[host.name] = wait_systemd(spec, host, pids[host.name], left)
            except LabError as exc:
                return str(exc)
            booted = time.monotonic() - started
            note = f"; {notes[host.name]}" if notes[host.name] else ""
            if host.name in keep:
                progress(f"{host.name}: already running (pid {pids[host.name]}), ssh ready{note}")
            else:
                progress(
                    f"{host.name}: booted, ssh ready in {seconds:.1f} s, "
                    f"boot finished in {booted:.1f} s{note}"
                )
            return None

        with ThreadPoolExecutor(max_workers=max(1, len(selected))) as pool:
            errors = [e for e in pool.map(wait, selected) if e]
        if errors:
            raise LabError("\n".join(errors))
        result = [host_status(spec, h) for h in selected]
        return [replace(s, detail=s.detail or notes.get(s.name, "")) for s in result]


def down(spec: LabSpec, *, progress: Progress = noop) -> None:
    """Stop every lab host and service and remove the network; safe after a crash, twice too.

    Overlays (the hosts' changes), the base image, the key pair and known_hosts stay; the
    `unreachable` route for the lab subnet stays too.
    """
    check_prerequisites()
    with locked(spec.state_dir / ".lock", progress), standard_umask():
        names = [h.name for h in spec.hosts]
        hosts_dir = spec.state_dir / "hosts"
        if hosts_dir.is_dir():  # hosts since removed from the inventory
            names += sorted(
                p.name for p in hosts_dir.iterdir() if p.is_dir() and p.name not in names
            )
        for name in [n for n in names if other_lab_host(spec, n)]:
            # Its network namespace and cgroup are that lab's now (they are named after it).
            progress(f"{name}: left alone: another lab on this machine runs a host of that name")
            names.remove(name)
        stop_hosts(spec, names, progress)
        for name in names:
            remove_host_net(name)
        stop_services(spec, progress)
        remove_bridge(spec)
        ensure_unreachable_route(lab_network(spec))
        progress("lab is down")


def status(spec: LabSpec) -> list[LabHostStatus]:
    """State of every lab host (pid files, processes, mounts, SSH banner); changes nothing."""
    return [host_status(spec, h) for h in spec.hosts]


def reset_host(spec: LabSpec, name: str, progress: Progress = noop) -> LabHostStatus:
    """Stop one host, wipe its overlay (its changes and host keys) and boot it fresh."""
    find_host(spec, name)
    return up(spec, fresh=True, hosts=[name], progress=progress)[0]
