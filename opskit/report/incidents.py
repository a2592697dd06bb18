"""The incident files' shared format (`inv incident.*` writes them, opskit/incident) and what the
weekly review counts from them: incidents opened in the window, by severity, and their durations.

Each file `<incident_dir>/<YYYY-MM-DD>-<slug>.md` starts with one line of metadata, an HTML
comment that Markdown viewers hide:

    <!-- opskit-incident {"title": ..., "severity": ..., "status": "open"|"resolved",
         "opened_at": ISO, "resolved_at": ISO|null, ...} -->
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from opskit.report.data import parse_time

MARKER = "opskit-incident"
META_RE = re.compile(r"^<!-- " + MARKER + r" (\{.*\}) -->$")
SEVERITIES = ("critical", "high", "medium", "low")


def meta_line(meta: Mapping[str, Any]) -> str:
    """The first line of an incident file (`--` cannot occur inside: JSON escapes it).

    >>> meta_line({"title": "a -- b"})
    '<!-- opskit-incident {"title": "a \\\\u002d\\\\u002d b"} -->'
    """
    text = json.dumps(dict(meta), sort_keys=True).replace("--", "\\u002d\\u002d")
    return f"<!-- {MARKER} {text} -->"


def read_meta(text: str) -> dict[str, Any] | None:
    """The metadata of an incident file's text (None: not an incident file).

    >>> read_meta(meta_line({"status": "open"}) + "\\n# x\\n")
    {'status': 'open'}
    >>> read_meta("# just a note") is None
    True
    """
    m = META_RE.match(text.split("\n", 1)[0])
    if not m:
        return None
    try:
        value = json.loads(m.group(1))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def duration_s(meta: Mapping[str, Any], now: dt.datetime) -> float | None:
    """Seconds from opened to resolved (still open: to `now`)."""
    opened = parse_time(meta.get("opened_at"))
    if opened is None:
        return None
    resolved = parse_time(meta.get("resolved_at")) or now
    return max(0.0, (resolved - opened).total_seconds())


def incidents_in(directory: Path, since: dt.datetime, until: dt.datetime) -> dict[str, Any]:
    """The incidents that were open at some time in the window: each one's file, severity,
    status and duration, and the totals the weekly review shows."""
    found: list[dict[str, Any]] = []
    for f in sorted(directory.glob("*.md")) if directory.is_dir() else []:
        try:
            meta = read_meta(f.read_text())
        except (OSError, UnicodeDecodeError):
            continue
        if meta is None:
            continue
        opened = parse_time(meta.get("opened_at"))
        resolved = parse_time(meta.get("resolved_at"))
        if opened is None or opened > until or (resolved is not None and resolved < since):
            continue
        found.append(
            {
                "file": f.name,
                "title": meta.get("title"),
                "severity": meta.get("severity"),
                "status": meta.get("status"),
                "opened_at": meta.get("opened_at"),
                "resolved_at": meta.get("resolved_at"),
                "duration_s": duration_s(meta, until),
            }
        )
    resolved_durations = [float(i["duration_s"] or 0.0) for i in found if i["status"] == "resolved"]
    return {
        "directory": str(directory),
        "incidents": found,
        "count": len(found),
        "open": sum(1 for i in found if i["status"] != "resolved"),
        "by_severity": {s: sum(1 for i in found if i["severity"] == s) for s in SEVERITIES},
        "total_duration_s": sum(i["duration_s"] or 0.0 for i in found),
        "longest_duration_s": max((i["duration_s"] or 0.0 for i in found), default=None),
        "mean_time_to_resolve_s": (
            sum(resolved_durations) / len(resolved_durations) if resolved_durations else None
        ),
    }
