"""Commands, processes, mounts and files on this machine: what the other lab modules build on.

Processes the lab starts run detached (own session) and are remembered so they can be reaped;
processes are found through /proc (``proc_stat``, ``cmdline_of``), never by name. Files are
written atomically, and never through a symlink inside a host's tree (``write_in_root``).
Everything here needs root (``check_prerequisites`` says so, and which tools are missing).

The library never prints: lab operations take a ``Progress`` callback for one-line messages
(``noop`` drops them); the `inv lab.*` tasks pass one that prints.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from opskit.lab.spec import LabError

log = logging.getLogger(__name__)


Progress = Callable[[str], None]
INSTALL_HINT = "apt-get install debootstrap systemd-container iproute2 openssh-client"
REQUIRED_TOOLS = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "ip": "iproute2",
    "ssh-keygen": "openssh-client",
    "nsenter": "util-linux",
    "mount": "mount",
    "chroot": "coreutils",
}
# PATH of the commands run inside the image (chroot) and the hosts (nsenter).
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def noop(message: str) -> None:
    """Default progress callback: drop the message."""


def check_prerequisites() -> None:
    """LabError naming the fix when this machine cannot run the lab (not root, tools missing)."""
    if os.geteuid() != 0:
        raise LabError(
            "the lab needs root (it mounts overlays, creates network namespaces and boots "
            "containers): run it as root, e.g. `sudo .venv/bin/inv lab.up`"
        )
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        raise LabError(
            f"missing {', '.join(missing)} on this machine; install with: {INSTALL_HINT}"
        )


def parse_mountinfo(text: str) -> list[tuple[str, str, str]]:
    """(mount point, filesystem type, super options) per line of /proc/self/mountinfo.

    >>> parse_mountinfo("36 35 0:30 / /var/x\\\\040y rw - overlay ovl rw,lowerdir=/a\\n")
    [('/var/x y', 'overlay', 'rw,lowerdir=/a')]
    """
    mounts: list[tuple[str, str, str]] = []
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if not sep or len(fields) < 5 or not rest:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        mounts.append((point, rest[0], rest[2] if len(rest) > 2 else ""))
    return mounts


def tail(text: str, lines: int = 15) -> str:
    """The last `lines` lines of `text`, indented, for error messages."""
    return "\n".join("    " + line for line in text.rstrip().splitlines()[-lines:])


# --------------------------------------------------------------------------------------------
# Commands and processes

_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}  # processes we started, so we can reap them


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = 600,
) -> subprocess.CompletedProcess[str]:
    """Run `argv` to completion, output captured; LabError on a non-zero exit when `check`."""
    log.debug("run: %s", shlex.join(argv))
    try:
        result = subprocess.run(
            list(argv),
            input=input,
            capture_output=True,
            text=True,
            env=dict(env) if env is not None else None,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise LabError(f"{argv[0]} not found; install with: {INSTALL_HINT}") from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"timed out after {timeout} s: {shlex.join(argv)}") from exc
    if check and result.returncode != 0:
        output = (result.stderr or "") + (result.stdout or "")
        raise LabError(f"exit {result.returncode}: {shlex.join(argv)}\n{tail(output)}")
    return result


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of a process, None when it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def cmdline_of(pid: int) -> list[str]:
    """The command line of process `pid` ([] when it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def alive(pid: int) -> bool:
    """True when process `pid` exists and is not a zombie."""
    stat = proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def reap(pid: int) -> None:
    """Collect the exit status of a child we spawned once it has exited."""
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        del _CHILDREN[pid]


def all_pids() -> Iterator[int]:
    """Every process id in /proc."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            yield int(entry.name)


def read_pid(path: Path) -> int | None:
    """The pid in a pid file, None when the file is missing or holds no number."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def wait_gone(pids: Collection[int], timeout: float) -> list[int]:
    """Wait until `pids` have exited; return those still alive after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        for pid in pids:
            reap(pid)
        living = [p for p in pids if alive(p)]
        if not living or time.monotonic() >= deadline:
            return living
        time.sleep(0.1)


def terminate(pids: Collection[int], timeout: float) -> None:
    """SIGTERM, wait up to `timeout`, then SIGKILL what is left."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    left = wait_gone(pids, timeout)
    for pid in left:
        log.warning("pid %d ignored SIGTERM for %.0f s; sending SIGKILL", pid, timeout)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if wait_gone(left, 10.0):
        raise LabError(f"processes {left} survive SIGKILL; look at them with `ps -o pid,stat,cmd`")


def spawn(argv: Sequence[str], log_path: Path, *, mode: str, **kwargs: Any) -> int:
    """Start `argv` detached (own session, output to `log_path`) and return its pid."""
    with open(log_path, mode + "b") as out:
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                **kwargs,
            )
        except OSError as exc:
            raise LabError(f"cannot start {shlex.join(argv)}: {exc}") from exc
    _CHILDREN[proc.pid] = proc
    return proc.pid


def read_tail(path: Path, lines: int = 15) -> str:
    """The last `lines` lines of a log file, indented, for error messages."""
    try:
        return tail(path.read_text(errors="replace"), lines)
    except OSError:
        return "    (no output)"


# What a Debian machine's root has. The lab creates its hosts' overlay layers, images and state
# under it: an operator's umask of 077 (a common hardening) would otherwise make each host's `/`
# 0700 and lock every user but root out of SSH (sshd reads authorized_keys as the user).
LAB_UMASK = 0o022


@contextlib.contextmanager
def standard_umask() -> Iterator[None]:
    """Run the block (and what it spawns) with LAB_UMASK; the caller's umask is restored after.

    >>> old = os.umask(0o077)
    >>> with standard_umask():
    ...     oct(os.umask(0o022))
    '0o22'
    >>> oct(os.umask(old))
    '0o77'
    """
    old = os.umask(LAB_UMASK)
    try:
        yield
    finally:
        os.umask(old)


@contextlib.contextmanager
def locked(path: Path, progress: Progress) -> Iterator[None]:
    """Hold an exclusive flock on `path`; say so through `progress` when waiting for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"waiting for another lab command to finish (lock {path})…")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def mounts() -> list[tuple[str, str, str]]:
    """This process's mount table: (mount point, filesystem type, super options)."""
    return parse_mountinfo(Path("/proc/self/mountinfo").read_text())


def is_mounted(path: Path) -> bool:
    """True when something is mounted at `path`."""
    return any(point == str(path) for point, _, _ in mounts())


def umount_under(path: Path) -> None:
    """Unmount everything at or below `path`, deepest first (lazily if busy)."""
    prefix = str(path).rstrip("/") + "/"
    points = [p for p, _, _ in mounts() if p == str(path) or p.startswith(prefix)]
    for point in sorted(set(points), key=len, reverse=True):
        if run(["umount", point], check=False).returncode != 0:
            run(["umount", "-l", point])


def remove_tree(path: Path) -> None:
    """Delete `path` without ever crossing into a filesystem mounted below it."""
    if not path.exists() and not path.is_symlink():
        return
    umount_under(path)
    run(["rm", "-rf", "--one-file-system", "--", str(path)])


def write_file(path: Path, content: str, mode: int = 0o644) -> None:
    """Write a file atomically (temp file + rename) with `mode`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.opskit-new")
    tmp.write_text(content, encoding="utf-8")
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def safe_in_root(root: Path, relative: str) -> Path:
    """`root/relative`, refusing symlinks on the way (a host must not redirect our writes)."""
    current = root
    for part in Path(relative).parts:
        current = current / part
        if current.is_symlink():
            raise LabError(f"refusing to write through a symlink inside a lab host: {current}")
    return current


def write_in_root(
    root: Path, relative: str, content: str, *, mode: int = 0o644, owner: tuple[int, int] = (0, 0)
) -> None:
    """Write a file inside a host's tree (see safe_in_root), owned by `owner`."""
    path = safe_in_root(root, relative)
    write_file(path, content, mode)
    os.chown(path, *owner)
