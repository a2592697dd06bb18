"""Turn results into the lines a person reads, or JSON. Pure: returns strings."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict

from opskit.core.result import Change, HostResult

DIFF_LINES = 40


def _indent(text: str) -> str:
    return "".join(f"    {line}\n" for line in text.rstrip("\n").splitlines())


def format_change(change: Change, *, show_diff: bool, verbose: bool = False) -> str:
    """One line per changed resource (ok ones only when verbose), diff below when asked.

    >>> format_change(Change.made("db1", "file:/etc/x", "mode 0644 -> 0750"), show_diff=False)
    '[db1] changed  file:/etc/x  mode 0644 -> 0750\\n'
    """
    if not change.changed:
        return f"[{change.host}] ok       {change.resource}\n" if verbose else ""
    line = f"[{change.host}] changed  {change.resource}  {change.summary}\n"
    if show_diff and change.diff:
        diff = change.diff.splitlines()
        if len(diff) > DIFF_LINES and not verbose:
            diff = [*diff[:DIFF_LINES], f"... ({len(diff) - DIFF_LINES} more lines; --verbose)"]
        line += _indent("\n".join(diff))
    return line


def format_host(result: HostResult, *, show_diff: bool, verbose: bool = False) -> str:
    out = "".join(format_change(c, show_diff=show_diff, verbose=verbose) for c in result.changes)
    for note in result.notes:
        out += f"[{result.host}] note     {note}\n"
    if result.error:
        label = "UNREACHABLE" if result.unreachable else "LOST" if result.lost else "FAILED"
        first, *rest = result.error.splitlines() or [""]
        out += f"[{result.host}] {label:<8} {first}\n" + _indent("\n".join(rest))
    return out


def summary(results: Sequence[HostResult], *, dry_run: bool) -> str:
    """The per-host summary and a totals line.

    >>> print(summary([HostResult("a", (Change.ok("a", "x"),))], dry_run=False), end="")
    a  ok=1 changed=0 failed=0 unreachable=0  (0 remote commands, 0.0 s)
    1 host: 1 ok, 0 changed, 0 failed, 0 unreachable
    """
    width = max((len(r.host) for r in results), default=0)
    lines = []
    for r in results:
        lines.append(
            f"{r.host:<{width}}  ok={r.ok_count} changed={r.changed_count} "
            f"failed={int(r.failed)} unreachable={int(r.unreachable)}"
            f"{' lost=1' if r.lost else ''}  "
            f"({r.commands} remote commands, {r.seconds:.1f} s)"
        )
    n = len(results)
    changed = sum(1 for r in results if r.changed_count and not r.error)
    failed = sum(1 for r in results if r.failed)
    unreachable = sum(1 for r in results if r.unreachable)
    lost = sum(1 for r in results if r.lost)
    ok = n - changed - failed - unreachable - lost
    verb = "would change" if dry_run else "changed"
    lines.append(
        f"{n} host{'s' if n != 1 else ''}: {ok} ok, {changed} {verb}, {failed} failed, "
        f"{unreachable} unreachable" + (f", {lost} lost (connection lost)" if lost else "")
    )
    return "\n".join(lines) + "\n"


def to_json(results: Sequence[HostResult], *, dry_run: bool) -> str:
    hosts = []
    for r in results:
        d = asdict(r)
        d["changes"] = [dict(asdict(c), status=c.status.value) for c in r.changes]
        d["failed"] = r.failed
        hosts.append(d)
    return json.dumps({"dry_run": dry_run, "hosts": hosts}, indent=2) + "\n"


def use_color(isatty: bool, environ: Mapping[str, str]) -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set (https://no-color.org).

    >>> use_color(True, {}), use_color(False, {}), use_color(True, {"NO_COLOR": "1"})
    (True, False, False)
    >>> use_color(True, {"TERM": "dumb"})
    False
    """
    return isatty and not environ.get("NO_COLOR") and environ.get("TERM") != "dumb"
