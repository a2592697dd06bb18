"""Backups as text and JSON: progress lines, results of run/verify/restore/drill, sizes, ages.

The library never prints: these functions return the text `cli/backup.py` prints.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from opskit.backup.hosts import HostOutcome
from opskit.hostside.backup import (
    COUNTED_PHASES,
    KEY_ALERT,
    KEY_BUCKET,
    KEY_COUNTS,
    KEY_ERROR,
    KEY_HEARTBEAT,
    KEY_HOST,
    KEY_KEY,
    KEY_LIVE_COUNTS,
    KEY_LOCAL_COPY_KEPT,
    KEY_LOCAL_PATH,
    KEY_OK,
    KEY_PEAK_MEMORY,
    KEY_REMOVED_LOCAL,
    KEY_SCRATCH,
    KEY_SECONDS,
    KEY_SHA256,
    KEY_SIZE,
    KEY_TARGET,
    KEY_UPLOAD_CHECK,
    MEMORY_CHILDREN,
    MEMORY_SELF,
    SECONDS_DOWNLOAD,
    SECONDS_DUMP,
    SECONDS_RESTORE,
    SECONDS_TOTAL,
    SECONDS_UPLOAD,
    SECONDS_VERIFY_DUMP,
    SECONDS_VERIFY_UPLOAD,
)

# Keys the laptop adds to a drill's result (opskit/backup/restore.py).
KEY_RPO = "rpo_seconds"
KEY_RTO = "rto_seconds"
KEY_DIFF = "diff"
KEY_CLEANED_UP = "cleaned_up"


def human_size(n: float) -> str:
    """
    >>> human_size(0), human_size(1536), human_size(5 * 1024**3)
    ('0 B', '1.5 KiB', '5.0 GiB')
    """
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def human_age(delta: dt.timedelta) -> str:
    """
    >>> human_age(dt.timedelta(seconds=42)), human_age(dt.timedelta(hours=7, minutes=5))
    ('42 s', '7 h 5 min')
    >>> human_age(dt.timedelta(days=2, hours=3))
    '2 d 3 h'
    """
    s = int(delta.total_seconds())
    if s < 120:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400 * 2:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def format_progress(host: str, phase: str, done: int, total: int, width: int = 24) -> str:
    """One progress line.

    >>> format_progress("db1", "upload", 50, 100, width=10)
    '[db1] upload         [#####.....]  50%  50 B / 100 B'
    >>> format_progress("db1", "dump", 2048, 0)
    '[db1] dump           2.0 KiB'
    """
    if total <= 0:
        return f"[{host}] {phase:<14} {human_size(done)}"
    frac = min(1.0, done / total)
    bar = "#" * int(frac * width) + "." * (width - int(frac * width))
    amount = (
        f"{done} / {total} items"
        if phase in COUNTED_PHASES
        else f"{human_size(done)} / {human_size(total)}"
    )
    return f"[{host}] {phase:<14} [{bar}] {frac * 100:3.0f}%  {amount}"


def format_failed(o: HostOutcome) -> str:
    """A host where the operation failed (or that was not reached), with its error."""
    first, *rest = (o.error or "?").splitlines()
    label = "UNREACHABLE" if o.unreachable else "FAILED"
    return f"[{o.host}] {label}  {first}\n" + "".join(f"    {x}\n" for x in rest)


def format_run(o: HostOutcome) -> str:
    """A backup's outcome: where it went, its checksum, the steps' seconds, peak memory."""
    d = o.data
    if not o.ok:
        lines = [f"[{o.host}] FAILED   {o.error.splitlines()[0] if o.error else '?'}"]
        if d.get(KEY_LOCAL_COPY_KEPT):
            lines.append(f"[{o.host}]          local copy kept: {d.get(KEY_LOCAL_PATH)}")
        if d.get(KEY_ALERT):
            lines.append(
                f"[{o.host}]          slack alert: {d[KEY_ALERT]}; "
                f"heartbeat: {d.get(KEY_HEARTBEAT)}"
            )
        lines += [f"    {x}" for x in o.error.splitlines()[1:]]
        return "\n".join(lines) + "\n"
    s = d.get(KEY_SECONDS, {})
    mem = d.get(KEY_PEAK_MEMORY, {})
    peak = max(mem.get(MEMORY_SELF, 0), mem.get(MEMORY_CHILDREN, 0)) * 1024
    return (
        f"[{o.host}] backup ok  s3://{d[KEY_BUCKET]}/{d[KEY_KEY]}  {human_size(d[KEY_SIZE])}  "
        f"sha256 {d[KEY_SHA256][:12]}…\n"
        f"[{o.host}]   dump {s.get(SECONDS_DUMP, 0):.1f} s, "
        f"verify dump {s.get(SECONDS_VERIFY_DUMP, 0):.1f} s, "
        f"upload {s.get(SECONDS_UPLOAD, 0):.1f} s, verify upload ({d.get(KEY_UPLOAD_CHECK)}) "
        f"{s.get(SECONDS_VERIFY_UPLOAD, 0):.1f} s, total {s.get(SECONDS_TOTAL, 0):.1f} s; "
        f"peak memory {human_size(peak)}\n"
        f"[{o.host}]   heartbeat: {d.get(KEY_HEARTBEAT)}; local copies removed: "
        f"{len(d.get(KEY_REMOVED_LOCAL, []))}\n"
    )


def format_counts(counts: Mapping[str, int], live: Mapping[str, int] | None) -> list[str]:
    """Row counts per table, next to live's when there are those."""
    lines = []
    for t in sorted(set(counts) | set(live or {})):
        c = counts.get(t)
        if live is None:
            lines.append(f"    {t:<40} {c}")
        else:
            mark = "=" if live.get(t) == c else "≠"
            lines.append(f"    {t:<40} restored {c}  {mark} live {live.get(t)}")
    return lines


def format_restore(o: HostOutcome, title: str) -> str:
    """A restore's outcome (also of verify and drill): checksum, seconds, row counts."""
    if not o.ok:
        return format_failed(o)
    d = o.data
    s = d.get(KEY_SECONDS, {})
    lines = [
        f"[{o.host}] {title}  {d[KEY_KEY]}",
        f"[{o.host}]   checksum ok (sha256 {d.get(KEY_SHA256, '')[:12]}…, "
        f"{human_size(d.get(KEY_SIZE, 0))}); download {s.get(SECONDS_DOWNLOAD, 0):.1f} s, "
        f"restore {s.get(SECONDS_RESTORE, 0):.1f} s",
    ]
    if d.get(KEY_SCRATCH):
        lines.append(f"[{o.host}]   scratch database {d[KEY_TARGET]} restored, counted and dropped")
    else:
        lines.append(
            f"[{o.host}]   restored into the NEW database {d[KEY_TARGET]} "
            "(the live one is untouched)"
        )
    lines += [
        f"[{o.host}] {x}" for x in format_counts(d.get(KEY_COUNTS, {}), d.get(KEY_LIVE_COUNTS))
    ]
    return "\n".join(lines) + "\n"


def format_drill(o: HostOutcome) -> str:
    """A drill's outcome: the restore, then RPO, RTO, whether counts match and cleanup."""
    if not o.ok:
        return format_failed(o)
    d = o.data
    same = (
        "all row counts match live"
        if not d[KEY_DIFF]
        else f"{len(d[KEY_DIFF])} table(s) differ from live"
    )
    return (
        format_restore(o, "drill") + f"[{o.host}]   RPO (age of the data): "
        f"{human_age(dt.timedelta(seconds=d[KEY_RPO]))}"
        f"; RTO (download + restore): {d[KEY_RTO]:.1f} s; {same}; "
        f"{'cleaned up' if d[KEY_CLEANED_UP] else 'NOT cleaned up'}\n"
    )


def outcome_json(o: HostOutcome) -> dict[str, Any]:
    """One host's outcome as the tasks print it with --json."""
    return {
        **o.data,
        KEY_HOST: o.host,
        KEY_OK: o.ok,
        KEY_ERROR: o.error or None,
        "unreachable": o.unreachable,
    }
