"""How old a backup may be: the longest gap between two runs of its cron schedule, plus grace."""

from __future__ import annotations

import datetime as dt

from opskit.backup.spec import BackupConfig
from opskit.core.cron import max_gap


def allowed_age(cfg: BackupConfig) -> dt.timedelta | None:
    """How old the newest backup may be: the schedule's longest gap plus the grace."""
    gap = max_gap(cfg.schedule)
    return None if gap is None else gap + cfg.grace
