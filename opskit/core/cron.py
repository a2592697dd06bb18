"""The one cron schedule parser: the schema's `cron` type, CronEntry, and how long a schedule
may leave between two runs (backups' and health checks' age limits) use it.

It accepts what Debian's cron (Vixie cron) accepts in /etc/cron.d: five fields (minute, hour,
day of month, month, day of week) of `*`, numbers, ranges `a-b`, lists `a,b` and steps `/n`,
month and weekday names (jan, mon, ...), or one of the @-keywords. See crontab(5):
https://manpages.debian.org/bookworm/cron/crontab.5.en.html
"""

from __future__ import annotations

import datetime as dt
import itertools

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


_AS_FIELDS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
# Month names count from 1, weekday names from 0 (sunday).
_NUMBERS = {i: {n: k + (1 if i == 3 else 0) for k, n in enumerate(NAMES[i])} for i in NAMES}


def _field(text: str, index: int) -> tuple[set[int], bool]:
    """The values a cron field allows, and whether it is restricted (not '*')."""
    lo, hi = RANGES[index]
    values: set[int] = set()
    for item in text.split(","):
        rng, _, step_text = item.partition("/")
        step = int(step_text) if step_text else 1
        if rng == "*":
            start, end = lo, hi
        else:
            bounds = [_NUMBERS.get(index, {}).get(b.lower(), None) for b in rng.split("-")]
            nums = [
                b if b is not None else int(r) for b, r in zip(bounds, rng.split("-"), strict=True)
            ]
            start, end = nums[0], nums[-1] if len(nums) > 1 else (hi if step_text else nums[0])
        values.update(range(start, end + 1, step))
    if index == 4 and 7 in values:
        values.add(0)
    return values, not text.startswith("*")


def max_gap(schedule: str) -> dt.timedelta | None:
    """The longest time between two runs of a cron schedule (None for @reboot).

    >>> max_gap("0 */6 * * *"), max_gap("15 3 * * *"), max_gap("@weekly")
    (datetime.timedelta(seconds=21600), datetime.timedelta(days=1), datetime.timedelta(days=7))
    >>> max_gap("0 9 * * 1-5")
    datetime.timedelta(days=3)
    """
    s = validate_cron_schedule(schedule)
    if s == "@reboot":
        return None
    parts = _AS_FIELDS.get(s, s).split()
    minutes, hours = _field(parts[0], 0)[0], _field(parts[1], 1)[0]
    (dom, dom_r), months = _field(parts[2], 2), _field(parts[3], 3)[0]
    dow, dow_r = _field(parts[4], 4)
    start = dt.datetime(2024, 1, 1)  # 2 years: covers leap days and every weekday/month mix
    runs: list[dt.datetime] = []
    for d in range(366 * 2 + 31):
        day = start + dt.timedelta(days=d)
        if day.month not in months:
            continue
        in_dom, in_dow = day.day in dom, (day.isoweekday() % 7) in dow
        # cron: when both day fields are restricted, either one matching is enough
        if (in_dom or in_dow) if (dom_r and dow_r) else (in_dom and in_dow):
            runs += [day.replace(hour=h, minute=m) for h in sorted(hours) for m in sorted(minutes)]
    if len(runs) < 2:
        return None
    return max(b - a for a, b in itertools.pairwise(runs))
