"""The errors opskit raises on purpose; every message says what, where and what to do next."""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    """Exit codes of every `inv` task (documented in README.md)."""

    OK = 0
    HOST_FAILED = 1  # at least one host failed or was unreachable; others may have changed
    USAGE = 2  # bad arguments, inventory, role variables or secrets; nothing touched
    CHANGES_PENDING = 3  # --check found drift and --detailed-exitcode was asked for
    WARNING = 4  # a task that judges (status, audit, certs.status, report --fail-on): a warning
    CRITICAL = 5  # ... something critical (see opskit.checks.levels.exit_status)
    INTERRUPTED = 130  # Ctrl-C


class OpsError(Exception):
    """Root of the errors opskit raises on purpose."""


class ConfigError(OpsError, ValueError):
    """Bad input (inventory, variables, secrets, arguments); nothing was touched."""


class ConnectError(OpsError):
    """A host could not be reached or authenticated."""


class ConnectionLost(ConnectError):
    """An established SSH connection died while a step ran (sshd killed, network gone).

    What the step had done on the host is unknown; each step is safe to run again."""

    def __init__(self, host: str, step: str, reason: str = "") -> None:
        self.host, self.step = host, step
        detail = f" ({reason})" if reason else ""
        super().__init__(f"connection lost during {step}{detail}")


class HostKeyError(ConnectError):
    """A host presented an unknown or changed SSH host key."""


class RemoteCommandError(OpsError):
    """A remote command exited with an unexpected code."""

    def __init__(self, host: str, command: str, exited: int, stderr: str) -> None:
        self.host, self.command, self.exited, self.stderr = host, command, exited, stderr
        tail = "\n".join(stderr.strip().splitlines()[-10:])
        msg = f"exit {exited}: {command}"
        super().__init__(f"{msg}\n{tail}" if tail else msg)


class TemplateError(OpsError):
    """A template failed to render (names the template and line)."""
