"""The one cron schedule parser: the schema's `cron` type, CronEntry and the backup area use it.

It accepts what Debian's cron (Vixie cron) accepts in /etc/cron.d: five fields (minute, hour,
day of month, month, day of week) of `*`, numbers, ranges `a-b`, lists `a,b` and steps `/n`,
month and weekday names (jan, mon, ...), or one of the @-keywords. See crontab(5):
https://manpages.debian.org/bookworm/cron/crontab.5.en.html
"""

from __future__ import annotations

from opskit.core.errors import ConfigError

FIELDS = ("minute", "hour", "day of month", "month", "day of week")
RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
NAMES = {
    3: ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
    4: ("sun", "mon", "tue", "wed", "thu", "fri", "sat"),
}
SPECIAL = (
    "@reboot",
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
)


def validate_cron_schedule(schedule: str) -> str:
    """Return `schedule` (whitespace normalised) if cron accepts it, else raise ConfigError
    saying which field is wrong.

    >>> validate_cron_schedule("*/5 * * * *")
    '*/5 * * * *'
    >>> validate_cron_schedule("0 9 * jan-mar mon-fri")
    '0 9 * jan-mar mon-fri'
    >>> validate_cron_schedule("61 * * * *")
    Traceback (most recent call last):
    ...
    opskit.core.errors.ConfigError: cron schedule '61 * * * *': minute '61' is out of range 0-59
    """
    s = " ".join(schedule.split())
    if s in SPECIAL:
        return s
    parts = s.split(" ")
    if len(parts) != len(FIELDS):
        raise ConfigError(f"cron schedule {schedule!r}: expected 5 fields, got {len(parts)}")
    for i, (part, (lo, hi)) in enumerate(zip(parts, RANGES, strict=True)):
        for item in part.split(","):
            rng, _, step = item.partition("/")
            if step and (not step.isdigit() or int(step) == 0):
                raise ConfigError(
                    f"cron schedule {schedule!r}: {FIELDS[i]} step {step!r} is invalid"
                )
            if rng == "*":
                continue
            bounds = rng.split("-")
            if len(bounds) > 2:
                raise ConfigError(f"cron schedule {schedule!r}: {FIELDS[i]} {item!r} is invalid")
            for b in bounds:
                if b.lower() in NAMES.get(i, ()):  # jan, mon, ... also in ranges
                    continue
                if not b.isdigit():
                    raise ConfigError(
                        f"cron schedule {schedule!r}: {FIELDS[i]} {b!r} is not a number"
                    )
                if not lo <= int(b) <= hi:
                    raise ConfigError(
                        f"cron schedule {schedule!r}: {FIELDS[i]} {b!r} is out of range {lo}-{hi}"
                    )
    return s
