"""Cron: entries in /etc/cron.d (the schedule parser is opskit.core.cron, shared with the
schema's `cron` variable type)."""

from __future__ import annotations

import re
from collections.abc import Mapping

from opskit.core.cron import validate_cron_schedule
from opskit.core.errors import ConfigError
from opskit.resources.files import File

HEADER = "# Managed by opskit; local edits are overwritten."


def CronEntry(
    name: str,
    schedule: str,
    command: str,
    *,
    user: str = "root",
    env: Mapping[str, str] | None = None,
    header: str | None = HEADER,
) -> File:
    """`/etc/cron.d/<name>` runs `command` as `user` on `schedule` (validated).

    The file is exactly: the `header` line (None: no header; any other text must be a `#`
    comment), one `NAME=value` line per `env` entry, then the entry line.

    >>> print(CronEntry("x", "@daily", "/bin/true", header=None).content, end="")
    @daily root /bin/true
    >>> print(CronEntry("x", "0 3 * * *", "run", env={"MAILTO": ""}).content, end="")
    # Managed by opskit; local edits are overwritten.
    MAILTO=
    0 3 * * * root run
    """
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ConfigError(
            f"cron entry {name!r}: names are letters, digits, '_' and '-' (cron skips others)"
        )
    if not re.fullmatch(r"[a-z_][a-z0-9_-]*", user):
        raise ConfigError(f"cron entry {name!r}: invalid user {user!r}")
    if "\n" in command or not command.strip():
        raise ConfigError(f"cron entry {name!r}: the command must be one non-empty line")
    if header is not None and (not header.startswith("#") or "\n" in header):
        raise ConfigError(f"cron entry {name!r}: the header must be one '#' comment line")
    for key, value in (env or {}).items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) or "\n" in value:
            raise ConfigError(f"cron entry {name!r}: invalid environment line {key}=...")
    lines = [header] if header is not None else []
    lines += [f"{k}={v}" for k, v in (env or {}).items()]
    lines.append(f"{validate_cron_schedule(schedule)} {user} {command}")
    return File(f"/etc/cron.d/{name}", "\n".join(lines) + "\n", mode=0o644)
