"""The screen and the JSON of `inv status` (pure: strings for cli/status.py to print).

The screen: hosts worst first (then in inventory order), one line per metric with its
thresholds, coloured by level when asked (cli asks on a terminal without NO_COLOR), and a
summary line with the exit code.
"""

from __future__ import annotations

import datetime as dt
import json

from opskit.checks.levels import LEVELS, RANK
from opskit.status.fleet import FleetStatus, HostStatus
from opskit.status.judge import Metric

_COLORS = {"ok": "32", "warning": "33", "critical": "31", "unknown": "35"}


def paint(text: str, level: str, color: bool) -> str:
    """`text` in the level's colour (bold for critical) when `color`, else as is."""
    if not color:
        return text
    code = _COLORS.get(level, "0")
    if level == "critical":
        code = f"1;{code}"
    return f"\033[{code}m{text}\033[0m"


def format_value(m: Metric) -> str:
    """
    >>> format_value(Metric("cpu", "cpu", 12.5, "%", "ok"))
    '12.5 %'
    >>> format_value(Metric("x", "x", None, "ms", "unknown"))
    '-'
    >>> format_value(Metric("x", "x", 3.0, "ms", "ok"))
    '3 ms'
    """
    if m.value is None:
        return "-"
    if isinstance(m.value, float) and m.value.is_integer() and m.unit not in ("%",):
        text = f"{int(m.value)}"
    else:
        text = f"{m.value}"
    return f"{text} {m.unit}".strip()


def _limits(m: Metric) -> str:
    if m.warning is None and m.critical is None:
        return ""
    below = m.unit == "days"  # certificates: fewer days left is worse
    word = "<" if below else ">="

    def num(x: float | None) -> str:
        return "-" if x is None else f"{x:g}"

    return f"[warn {word}{num(m.warning)}, crit {word}{num(m.critical)}]"


def format_host(h: HostStatus, *, color: bool) -> str:
    """One host's block: a header line, then one line per metric."""
    level = h.level
    head = (
        f"{paint(f'{level.upper():<8}', level, color)}  {h.host}  {h.address}  "
        f"({', '.join(h.roles) or 'no roles'})"
    )
    lines = [head]
    if h.error:
        label = "UNREACHABLE" if h.unreachable else "FAILED"
        first, *rest = h.error.splitlines() or [""]
        lines.append(f"    {paint(label, 'unknown', color)}  {first}")
        lines += [f"      {x}" for x in rest[:10]]
        return "\n".join(lines) + "\n"
    for m in h.metrics:
        word = paint(f"{m.level:<8}", m.level, color)
        detail = " ".join(x for x in (m.detail, _limits(m)) if x)
        lines.append(f"    {word}  {m.label:<17} {format_value(m):>12}  {detail}".rstrip())
    return "\n".join(lines) + "\n"


def format_fleet(fleet: FleetStatus, *, color: bool = False) -> str:
    """The screen: hosts worst first (then in inventory order), then a summary line."""
    order = sorted(range(len(fleet.hosts)), key=lambda i: (-RANK[fleet.hosts[i].level], i))
    blocks = [format_host(fleet.hosts[i], color=color) for i in order]
    counts = {lvl: sum(1 for h in fleet.hosts if h.level == lvl) for lvl in LEVELS}
    unreachable = sum(1 for h in fleet.hosts if h.unreachable)
    stamp = fleet.generated_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    n = len(fleet.hosts)
    summary = (
        f"{n} host{'s' if n != 1 else ''}: {counts['critical']} critical, "
        f"{counts['unknown']} unknown ({unreachable} unreachable), {counts['warning']} warning, "
        f"{counts['ok']} ok; worst {paint(fleet.worst, fleet.worst, color)} "
        f"(exit {int(fleet.exit_code)}) at {stamp}"
    )
    return "\n".join(blocks) + summary + "\n"


def to_json(fleet: FleetStatus) -> str:
    """The fleet's status as indented JSON (`FleetStatus.to_dict()`), newline-terminated."""
    return json.dumps(fleet.to_dict(), indent=2) + "\n"
