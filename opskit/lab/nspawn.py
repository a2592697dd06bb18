"""Running lab hosts: boot them with systemd-nspawn, wait for SSH and the end of their boot, tell
their state, stop them, and run commands inside them without SSH (``exec_in``).

Each host boots in a cgroup of its own (``<cgroup mount>/opskit-lab/<name>``, see ``boot``) and
is found again by its process (a systemd-nspawn with ``-D <its root>``), the pid file being only
the first guess. systemd-nspawn(1):
https://www.freedesktop.org/software/systemd/man/latest/systemd-nspawn.html.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from opskit.lab.hosts import host_paths
from opskit.lab.network import netns_name, netns_path, netns_pids
from opskit.lab.proc import (
    CONTAINER_PATH,
    Progress,
    alive,
    all_pids,
    cmdline_of,
    is_mounted,
    mounts,
    proc_stat,
    read_pid,
    read_tail,
    reap,
    spawn,
    terminate,
    umount_under,
    wait_gone,
    write_file,
)
from opskit.lab.spec import LabError, LabHost, LabSpec, find_host

log = logging.getLogger(__name__)


CGROUP_PARENT = "opskit-lab"  # per-host cgroups: <cgroup mount>/opskit-lab/<name>
SSH_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


@dataclass(frozen=True)
class LabHostStatus:
    """What one lab host is doing right now."""

    name: str
    address: str
    state: str  # "running" | "stopped" | "broken"
    pid: int | None  # pid of its systemd-nspawn
    ssh_ready: bool
    detail: str = ""


def nspawn_argv(root: Path, name: str) -> list[str]:
    """The systemd-nspawn command line booting one host (options: systemd-nspawn(1))."""
    return [
        "systemd-nspawn",
        "-D",
        str(root),
        "--register=no",
        "--keep-unit",
        f"--network-namespace-path=/run/netns/{netns_name(name)}",
        "--resolv-conf=off",  # the image's own resolv.conf (no DNS) stays
        # nspawn would otherwise rewrite /etc/localtime at every boot to match this machine,
        # undoing what the base role set (drift that no real server has).
        "--timezone=off",
        "--link-journal=no",
        "-b",
        "-M",
        name,
    ]


def is_lab_nspawn(cmdline: Sequence[str], root: Path) -> bool:
    """True when a process command line is systemd-nspawn booting the tree at `root`.

    >>> root = Path("/l/hosts/web1/root")
    >>> is_lab_nspawn(["systemd-nspawn", "-D", "/l/hosts/web1/root", "-b"], root)
    True
    >>> is_lab_nspawn(["sshd", "-D", "/l/hosts/web1/root"], root)
    False
    """
    if not cmdline or os.path.basename(cmdline[0]) != "systemd-nspawn":
        return False
    args = list(cmdline[1:])
    for i, arg in enumerate(args):
        if arg in ("-D", "--directory") and i + 1 < len(args) and args[i + 1] == str(root):
            return True
        if arg == f"--directory={root}":
            return True
    return False


def parse_ssh_banner(data: bytes) -> bool:
    """True when `data` starts with an SSH-2 identification string.

    >>> parse_ssh_banner(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\\r\\n")
    True
    >>> parse_ssh_banner(b"HTTP/1.1 400 Bad Request\\r\\n")
    False
    """
    return data.startswith((b"SSH-2.0-", b"SSH-1.99-"))


def _nspawn_pids(root: Path) -> list[int]:
    """Live systemd-nspawn processes booting `root` (top-most only, not their forks)."""
    found = [p for p in all_pids() if alive(p) and is_lab_nspawn(cmdline_of(p), root)]
    parents = {p: (proc_stat(p) or ("", 0))[1] for p in found}
    return [p for p in found if parents[p] not in found]


def nspawn_root(cmdline: Sequence[str]) -> str | None:
    """The tree a systemd-nspawn command line boots (None: not systemd-nspawn, or no -D).

    >>> nspawn_root(["systemd-nspawn", "-D", "/l2/hosts/web1/root", "-b"])
    '/l2/hosts/web1/root'
    >>> nspawn_root(["systemd-nspawn", "--directory=/x/root"]), nspawn_root(["sshd", "-D"])
    ('/x/root', None)
    """
    if not cmdline or os.path.basename(cmdline[0]) != "systemd-nspawn":
        return None
    args = list(cmdline[1:])
    for i, arg in enumerate(args):
        if arg in ("-D", "--directory") and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--directory="):
            return arg.removeprefix("--directory=")
    return None


def other_lab_host(spec: LabSpec, name: str) -> str | None:
    """The tree of a host of *another* lab that runs under the same name, if any.

    A host's network namespace, veth and cgroup are named after it, machine-wide: two labs on
    one machine need different host names (and bridges and subnets)."""
    mine = str(host_paths(spec, name).root)
    for pid in all_pids():
        root = nspawn_root(cmdline_of(pid))
        if root and root != mine and Path(root).parent.name == name:
            return root
    return None


def host_nspawn_pid(spec: LabSpec, name: str) -> int | None:
    """The verified pid of a host's systemd-nspawn: pid file first, then a scan of /proc."""
    paths = host_paths(spec, name)
    pid = read_pid(paths.pid)
    if pid is not None and alive(pid) and is_lab_nspawn(cmdline_of(pid), paths.root):
        return pid
    pids = _nspawn_pids(paths.root)
    return pids[0] if pids else None


def container_init(nspawn_pid: int) -> int | None:
    """PID (in our namespace) of the container's init: the child of systemd-nspawn."""
    own = os.stat("/proc/self/ns/pid").st_ino
    for pid in all_pids():
        stat = proc_stat(pid)
        if stat is None or stat[1] != nspawn_pid or stat[0] in ("Z", "X"):
            continue
        try:
            if os.stat(f"/proc/{pid}/ns/pid").st_ino != own:
                return pid
        except OSError:
            continue
    return None


def _ssh_ready(address: str, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((address, 22), timeout=timeout) as sock:
            sock.settimeout(timeout)
            data = b""
            while b"\n" not in data and len(data) < 256:
                chunk = sock.recv(256)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return False
    return parse_ssh_banner(data)


def host_status(spec: LabSpec, host: LabHost, *, check_ssh: bool = True) -> LabHostStatus:
    """What a host is doing: running (SSH banner checked if `check_ssh`), stopped or broken."""
    paths = host_paths(spec, host.name)
    pid = host_nspawn_pid(spec, host.name)
    mounted = is_mounted(paths.root)
    netns = netns_path(host.name).exists()
    stale_pid = read_pid(paths.pid)
    if pid is not None:
        problems = []
        if not mounted:
            problems.append(f"its root {paths.root} is not mounted")
        if not netns:
            problems.append(f"network namespace {netns_name(host.name)} is missing")
        if problems:
            detail = "; ".join(problems) + "; run `inv lab.up --fresh` or `inv lab.down`"
            return LabHostStatus(host.name, host.address, "broken", pid, False, detail)
        ready = _ssh_ready(host.address) if check_ssh else False
        detail = (
            ""
            if ready or not check_ssh
            else (f"running but no SSH banner on {host.address}:22; console: {paths.console}")
        )
        return LabHostStatus(host.name, host.address, "running", pid, ready, detail)
    leftovers = []
    if stale_pid is not None:
        leftovers.append(f"its systemd-nspawn (pid {stale_pid}) is gone")
    orphans = set(netns_pids(host.name)) | set(_cgroup_pids(host.name))
    if orphans:
        leftovers.append(f"{len(orphans)} orphaned container process(es) still run")
    if mounted:
        leftovers.append(f"{paths.root} still mounted")
    if netns:
        leftovers.append(f"network namespace {netns_name(host.name)} left over")
    if leftovers:
        detail = "; ".join(leftovers) + f"; run `inv lab.down` (console: {paths.console})"
        return LabHostStatus(host.name, host.address, "broken", None, False, detail)
    return LabHostStatus(host.name, host.address, "stopped", None, False)


# --------------------------------------------------------------------------------------------
# Boot and stop


def boot(spec: LabSpec, host: LabHost) -> int:
    """Start the host's systemd-nspawn detached, in a cgroup of its own; return its pid."""
    paths = host_paths(spec, host.name)
    # With --keep-unit systemd-nspawn runs the container in the cgroup it was started in. Hosts
    # sharing one would share their units' cgroups, and stopping nginx on web1 would kill
    # web2's nginx (and early boot races fail units). So each host first joins its own cgroup.
    cgroups = _cgroup_dirs(host.name)
    for directory in cgroups:
        directory.mkdir(parents=True, exist_ok=True)
    join = "".join(f"echo $$ > {shlex.quote(str(d / 'cgroup.procs'))} && " for d in cgroups)
    argv = ["/bin/sh", "-c", f'{join}exec "$@"', "opskit-lab-boot"]
    pid = spawn([*argv, *nspawn_argv(paths.root, host.name)], paths.console, mode="w")
    write_file(paths.pid, f"{pid}\n")
    return pid


def wait_ssh(spec: LabSpec, host: LabHost, pid: int, timeout: float) -> float:
    """Wait for the host's SSH banner; return seconds waited."""
    console = host_paths(spec, host.name).console
    started = time.monotonic()
    while True:
        if not alive(pid):
            reap(pid)
            raise LabError(
                f"{host.name}: systemd-nspawn exited during boot; console {console}:\n"
                f"{read_tail(console)}"
            )
        if _ssh_ready(host.address):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise LabError(
                f"{host.name}: no SSH banner on {host.address}:22 after {timeout:.0f} s; "
                f"console {console}:\n{read_tail(console)}"
            )
        time.sleep(0.25)


def wait_systemd(spec: LabSpec, host: LabHost, pid: int, timeout: float) -> str:
    """Wait until the host's boot is over; "" when systemd says running, else a note."""
    init = container_init(pid)
    if init is None:
        raise LabError(f"{host.name}: no container init under systemd-nspawn pid {pid}")
    argv = ["systemctl", "is-system-running", "--wait"]
    try:
        state = _nsenter(init, argv, None, max(timeout, 1.0)).stdout.strip()
    except subprocess.TimeoutExpired:
        # SSH answers already (waited for before): the host is usable, some unit still starts
        # (seen on a machine busy booting other labs). Say which, instead of failing the lab.
        try:
            jobs = _nsenter(init, ["systemctl", "list-jobs", "--no-legend"], None, 10.0).stdout
        except subprocess.TimeoutExpired:
            jobs = "?"
        waiting = ", ".join(line.split()[1] for line in jobs.splitlines() if len(line.split()) > 1)
        return f"boot not finished after {timeout:.0f} s (waiting: {waiting or 'nothing listed'})"
    if state == "running":
        return ""
    failed = _nsenter(init, ["systemctl", "--failed", "--no-legend", "--plain"], None, 30.0)
    units = [line.split()[0] for line in failed.stdout.splitlines() if line.strip()]
    return f"systemd: {state}" + (f" (failed: {', '.join(units)})" if units else "")


def stop_hosts(spec: LabSpec, names: Sequence[str], progress: Progress) -> None:
    """Power hosts off (SIGTERM to systemd-nspawn, SIGKILL after a timeout) and unmount them."""
    nspawns = {n: pid for n in names if (pid := host_nspawn_pid(spec, n)) is not None}
    if nspawns:
        progress(f"stopping {', '.join(nspawns)}…")
        terminate(list(nspawns.values()), STOP_TIMEOUT)
    for name in names:
        # A container whose systemd-nspawn was SIGKILLed keeps running, orphaned. Its processes
        # are the only ones in the cgroup and the network namespace we made for that host.
        paths = host_paths(spec, name)
        orphans = [
            pid
            for pid in sorted(set(netns_pids(name)) | set(_cgroup_pids(name)))
            if _same_root(pid, paths.root)  # never another lab's host of the same name
        ]
        if orphans:
            progress(f"{name}: killing {len(orphans)} orphaned container process(es)")
            for pid in orphans:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            wait_gone(orphans, 10.0)
        _remove_cgroups(name)
        umount_under(paths.root)
        paths.pid.unlink(missing_ok=True)


def _same_root(pid: int, root: Path) -> bool:
    """Whether process `pid` runs inside the tree mounted at `root` (a container's processes
    see it as "/", so their root is compared by device and inode), or is gone already.

    A container whose systemd-nspawn died keeps its root: that tells this lab's orphans from
    those of another lab's host of the same name (its netns and cgroup have the same names)."""
    try:
        theirs = os.stat(f"/proc/{pid}/root")
    except OSError:
        return True  # gone, or not ours to read: killing a gone pid does nothing
    try:
        mine = os.stat(root)
    except OSError:
        return False
    return (theirs.st_dev, theirs.st_ino) == (mine.st_dev, mine.st_ino)


def _cgroup_dirs(name: str) -> list[Path]:
    """The host's own cgroup in each hierarchy systemd uses (cgroup2, v1 ``name=systemd``)."""
    dirs: list[Path] = []
    for point, fstype, options in mounts():
        if fstype == "cgroup2" or (fstype == "cgroup" and "name=systemd" in options.split(",")):
            path = Path(point) / CGROUP_PARENT / name
            if path not in dirs:
                dirs.append(path)
    return dirs


def _cgroup_pids(name: str) -> list[int]:
    pids: set[int] = set()
    for top in _cgroup_dirs(name):
        if not top.is_dir():
            continue
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in procs.read_text().split())
    return sorted(p for p in pids if alive(p))


def _remove_cgroups(name: str) -> None:
    for top in _cgroup_dirs(name):
        if not top.is_dir():
            continue
        for directory, _, _ in os.walk(top, topdown=False):
            with contextlib.suppress(OSError):
                os.rmdir(directory)
        with contextlib.suppress(OSError):
            os.rmdir(top.parent)  # CGROUP_PARENT, once no host is left in it


# --------------------------------------------------------------------------------------------
# Commands inside a host


def exec_in(
    spec: LabSpec,
    name: str,
    argv: Sequence[str],
    *,
    input: str | None = None,
    timeout: float = 600.0,
) -> subprocess.CompletedProcess[str]:
    """Run `argv` as root inside a running host (nsenter, no SSH); the caller checks the exit."""
    find_host(spec, name)
    pid = host_nspawn_pid(spec, name)
    init = container_init(pid) if pid is not None else None
    if init is None:
        raise LabError(f"{name} is not running; start it with `inv lab.up`")
    try:
        return _nsenter(init, argv, input, timeout)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{name}: timed out after {timeout} s: {shlex.join(argv)}") from exc


def _nsenter(
    init: int, argv: Sequence[str], stdin: str | None, timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run `argv` in all namespaces of the container whose init is `init`, clean environment."""
    command = [
        "nsenter",
        "-t",
        str(init),
        "-a",
        "-r",
        "-w",
        "--",
        "/usr/bin/env",
        "-i",
        f"PATH={CONTAINER_PATH}",
        "HOME=/root",
        "LANG=C.UTF-8",
        "TERM=dumb",
        *argv,
    ]
    log.debug("nsenter %d: %s", init, shlex.join(argv))
    return subprocess.run(
        command, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )
