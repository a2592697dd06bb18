"""Cron: one schedule parser, and entries in /etc/cron.d."""

from __future__ import annotations

import re
from collections.abc import Mapping

from opskit.core.errors import ConfigError
from opskit.resources.files import File

# --- cron ----------------------------------------------------------------------------------

_CRON_FIELDS = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
_CRON_NAMES = {
    3: ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
    4: ["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
}
_CRON_SPECIAL = {
    "@reboot",
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
}


def validate_cron_schedule(schedule: str) -> str:
    """Return `schedule` if cron accepts it, else raise ConfigError saying which field is wrong.

    >>> validate_cron_schedule("*/5 * * * *")
    '*/5 * * * *'
    >>> validate_cron_schedule("61 * * * *")
    Traceback (most recent call last):
    ...
    opskit.core.errors.ConfigError: cron schedule '61 * * * *': minute '61' is out of range 0-59
    """
    s = " ".join(schedule.split())
    if s in _CRON_SPECIAL:
        return s
    parts = s.split(" ")
    names = ["minute", "hour", "day of month", "month", "day of week"]
    if len(parts) != 5:
        raise ConfigError(f"cron schedule {schedule!r}: expected 5 fields, got {len(parts)}")
    for i, (part, (lo, hi)) in enumerate(zip(parts, _CRON_FIELDS, strict=True)):
        for item in part.split(","):
            rng, _, step = item.partition("/")
            if step and (not step.isdigit() or int(step) == 0):
                raise ConfigError(
                    f"cron schedule {schedule!r}: {names[i]} step {step!r} is invalid"
                )
            if rng == "*":
                continue
            bounds = rng.split("-")
            if len(bounds) > 2:
                raise ConfigError(f"cron schedule {schedule!r}: {names[i]} {item!r} is invalid")
            for b in bounds:
                if b.lower() in _CRON_NAMES.get(i, []):  # jan, mon, ... also in ranges
                    continue
                if not b.isdigit():
                    raise ConfigError(
                        f"cron schedule {schedule!r}: {names[i]} {b!r} is not a number"
                    )
                if not lo <= int(b) <= hi:
                    raise ConfigError(
                        f"cron schedule {schedule!r}: {names[i]} {b!r} is out of range {lo}-{hi}"
                    )
    return s


def CronEntry(
    name: str,
    schedule: str,
    command: str,
    *,
    user: str = "root",
    env: Mapping[str, str] | None = None,
) -> File:
    """`/etc/cron.d/<name>` runs `command` as `user` on `schedule` (validated)."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ConfigError(
            f"cron entry {name!r}: names are letters, digits, '_' and '-' (cron skips others)"
        )
    if not re.fullmatch(r"[a-z_][a-z0-9_-]*", user):
        raise ConfigError(f"cron entry {name!r}: invalid user {user!r}")
    if "\n" in command or not command.strip():
        raise ConfigError(f"cron entry {name!r}: the command must be one non-empty line")
    lines = ["# Managed by opskit; local edits are overwritten."]
    lines += [f"{k}={v}" for k, v in (env or {}).items()]
    lines.append(f"{validate_cron_schedule(schedule)} {user} {command}")
    return File(f"/etc/cron.d/{name}", "\n".join(lines) + "\n", mode=0o644)
