"""How old a backup may be: the longest gap between two runs of a cron schedule, plus grace."""

from __future__ import annotations

import datetime as dt
import itertools

from opskit.backup.spec import BackupConfig
from opskit.resources import validate_cron_schedule

_SPECIAL = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
_NAMES = {
    3: {
        m: i + 1
        for i, m in enumerate(
            ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
        )
    },
    4: {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])},
}
_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]


def _field(text: str, index: int) -> tuple[set[int], bool]:
    """The values a cron field allows, and whether it is restricted (not '*')."""
    lo, hi = _RANGES[index]
    values: set[int] = set()
    for item in text.split(","):
        rng, _, step_text = item.partition("/")
        step = int(step_text) if step_text else 1
        if rng == "*":
            start, end = lo, hi
        else:
            bounds = [_NAMES.get(index, {}).get(b.lower(), None) for b in rng.split("-")]
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
    parts = _SPECIAL.get(s, s).split()
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


def allowed_age(cfg: BackupConfig) -> dt.timedelta | None:
    """How old the newest backup may be: the schedule's longest gap plus the grace."""
    gap = max_gap(cfg.schedule)
    return None if gap is None else gap + cfg.grace
