"""Running the host program (opskit-backup) on database hosts, over the one SSH connection.

The host does the heavy work (dump, verify, upload, download, restore); the laptop starts the
program, hands its progress lines to a callback as they arrive and reads its JSON result.
"""

from __future__ import annotations

import select
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opskit.backup.spec import BackupConfig, config_for, has_backup_role
from opskit.clients import ApiError
from opskit.core.errors import ConfigError, ConnectError, OpsError, RemoteCommandError
from opskit.core.inventory import Host, Inventory
from opskit.core.remote import Remote
from opskit.core.result import Change
from opskit.core.runner import RunContext, run_on_hosts
from opskit.core.secrets import Secret, redact
from opskit.hostside.backup import (
    KEY_ERROR,
    KEY_LABEL,
    KEY_OK,
    PROGRAM,
    PROGRESS_MARK,
    SCRIPT,
    parse_progress,
    parse_result,
)

q = shlex.quote

MISSING = 127  # the shell's exit when the program is not installed

Progress = Callable[[str, str, int, int], None]  # host, phase, done, total


def no_progress(host: str, phase: str, done: int, total: int) -> None:
    """Default progress callback: drop the event."""


class BackupError(OpsError):
    """A backup operation failed on a host; the message says where and why."""

    def __init__(self, message: str, result: Mapping[str, Any] | None = None, code: int = 1):
        super().__init__(message)
        self.result, self.code = dict(result or {}), code


def backup_hosts(inventory: Inventory, selected: Sequence[Host]) -> list[Host]:
    """The selected hosts that have the backup role; ConfigError if there are none."""
    hosts = [h for h in selected if has_backup_role(h)]
    if not hosts:
        names = ", ".join(h.name for h in inventory.hosts if has_backup_role(h)) or "none"
        raise ConfigError(
            f"{inventory.path}: none of the selected hosts has the backup role "
            f"(hosts with it: {names})"
        )
    for h in hosts:
        config_for(h)  # bad values stop everything before anything runs
    return hosts


def stream(
    remote: Remote,
    script: str,
    on_line: Callable[[str], None],
    *,
    timeout: float | None = None,
) -> tuple[int, str, str]:
    """Run `script` as root like Remote.run, but hand each stderr line to `on_line` as it
    arrives (Remote.run returns output only at the end). Returns (exit, stdout, stderr)."""
    secrets = [*remote.host.secrets, *([remote.sudo_password] if remote.sudo_password else [])]
    chan = remote.open_channel(script)
    out, err, pending = bytearray(), [], b""
    try:
        chan.shutdown_write()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            busy = False
            if chan.recv_ready():
                out += chan.recv(65536)
                busy = True
            if chan.recv_stderr_ready():
                pending += chan.recv_stderr(65536)
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    line = redact(raw.decode(errors="replace"), secrets)
                    err.append(line)
                    on_line(line)
                busy = True
            if busy:
                continue
            if chan.exit_status_ready():
                break
            if deadline is not None and time.monotonic() > deadline:
                raise RemoteCommandError(
                    remote.name, "backup script", -1, f"timed out after {timeout} s"
                )
            select.select([chan], [], [], 0.5)
        while chan.recv_ready():
            out += chan.recv(65536)
        while chan.recv_stderr_ready():
            pending += chan.recv_stderr(65536)
        if pending:
            line = redact(pending.decode(errors="replace"), secrets)
            err.append(line)
            on_line(line)
        code = chan.recv_exit_status()
    finally:
        chan.close()
    stdout = redact(out.decode(errors="replace"), secrets)
    if code == 1 and "password is required" in "\n".join(err[-3:]):
        raise ConnectError(
            f"sudo on {remote.name} needs a password: set ssh.sudo_password or --ask-sudo-pass"
        )
    return code, stdout, "\n".join(err)


def host_script(
    remote: Remote,
    args: Sequence[str],
    progress: Progress = no_progress,
    *,
    timeout: float | None = None,
) -> tuple[int, dict[str, Any], str]:
    """Run `opskit-backup <args> --json --progress` on the host: (exit, result, log lines)."""
    logs: list[str] = []

    def on_line(line: str) -> None:
        if line.startswith(PROGRESS_MARK):
            event = parse_progress(line)
            if event is not None:
                progress(remote.name, *event)
        elif line.strip():
            logs.append(line)

    command = " ".join(q(a) for a in [SCRIPT, *args, "--json", "--progress"])
    missing = f"[ -x {SCRIPT} ] || {{ echo '{PROGRAM} is missing' >&2; exit {MISSING}; }}"
    code, out, _ = stream(remote, f"{missing}\n{command}\n", on_line, timeout=timeout)
    if code == MISSING:
        raise BackupError(f"{remote.name}: {SCRIPT} is missing: run `inv provision` first")
    result = parse_result(out)
    if not result:
        tail = "\n".join(logs[-10:])
        raise BackupError(
            f"{remote.name}: {PROGRAM} {args[0]} gave no result (exit {code})\n{tail}"
        )
    return code, result, "\n".join(logs)


def host_label(remote: Remote | None, cfg: BackupConfig) -> tuple[str, dict[str, Any] | None]:
    """The label the host's backups are stored under, and its `info` (None if unreachable)."""
    if remote is None:
        return cfg.label or cfg.host, None
    code, info, _ = host_script(remote, ["info"], timeout=120)
    if code != 0:
        raise BackupError(f"{PROGRAM} info: {info.get(KEY_ERROR, f'exit {code}')}")
    return str(info.get(KEY_LABEL) or cfg.label or cfg.host), info


@dataclass
class HostOutcome:
    """What an operation did on one host: `ok`, its data, or an error."""

    host: str
    ok: bool = False
    data: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    unreachable: bool = False


def on_hosts(
    inventory: Inventory,
    hosts: Sequence[Host],
    fn: Callable[[Remote, BackupConfig], dict[str, Any]],
    *,
    workers: int = 4,
    sudo_password: Secret | None = None,
) -> list[HostOutcome]:
    """Run `fn(remote, config)` on each host in parallel; one failing host never stops others."""
    found: dict[str, HostOutcome] = {}

    def work(remote: Remote, ctx: RunContext) -> list[Change]:
        outcome = HostOutcome(remote.name)
        found[remote.name] = outcome
        try:
            outcome.data = fn(remote, config_for(remote.host))
            outcome.ok = bool(outcome.data.get(KEY_OK, True))
        except BackupError as exc:
            outcome.error, outcome.data = str(exc), {**exc.result, **outcome.data}
        except (ApiError, ConfigError, RemoteCommandError) as exc:
            outcome.error = redact(str(exc), remote.host.secrets)
        return []

    results = run_on_hosts(inventory, hosts, work, workers=workers, sudo_password=sudo_password)
    out = []
    for r in results:
        o = found.get(r.host, HostOutcome(r.host))
        if r.error and not o.error:
            o.error, o.unreachable, o.ok = r.error, r.unreachable, False
        out.append(o)
    return out
