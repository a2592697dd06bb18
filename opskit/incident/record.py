"""An incident's record: `<incident_dir>/<YYYY-MM-DD>-<slug>.md` rendered from
templates/incident/incident.md.j2 out of its metadata (the file's first line, shared with the
weekly review: opskit.report.incidents), and the Slack messages of open, update and resolve.

The record is opskit's: `inv incident.update` and `inv incident.resolve` render it again from its
metadata, which holds the timeline, the sections and the action items."""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from opskit.core.errors import ConfigError, OpsError
from opskit.core.render import render
from opskit.report.incidents import SEVERITIES, duration_s, meta_line, read_meta
from opskit.report.render import md_escape

TEMPLATE = "incident/incident.md.j2"
SECTIONS = ("root_cause", "resolution", "prevention")


class IncidentError(OpsError):
    """The incident file could not be read or written."""


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def slug(title: str) -> str:
    """A file-name slug of the title.

    >>> slug("API down: 502s on /checkout!")
    'api-down-502s-on-checkout'
    """
    s = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    return s[:60].rstrip("-") or "incident"


def severity(value: str) -> str:
    """One of the guides' severities; ConfigError otherwise.

    >>> severity("HIGH")
    'high'
    >>> severity("sev9")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    opskit.core.errors.ConfigError: --severity: expected one of critical, ...; got 'sev9'
    """
    v = str(value).strip().lower()
    if v not in SEVERITIES:
        raise ConfigError(f"--severity: expected one of {', '.join(SEVERITIES)}; got {value!r}")
    return v


def human_duration(seconds: float | None) -> str:
    """`1 h 05 min`, `12 min`.

    >>> human_duration(3900), human_duration(59), human_duration(None)
    ('1 h 05 min', '0 min', '')
    """
    if seconds is None:
        return ""
    m = int(seconds // 60)
    return f"{m // 60} h {m % 60:02d} min" if m >= 60 else f"{m} min"


def render_record(meta: Mapping[str, Any]) -> str:
    """The Markdown file of an incident from its metadata (every free text escaped)."""
    now = dt.datetime.now(dt.UTC)
    resolved = meta.get("status") == "resolved"
    return render(
        TEMPLATE,
        {
            "meta_line": meta_line(meta),
            "title": md_escape(meta["title"]),
            "status": meta["status"],
            "severity": meta["severity"],
            "opened_at": meta["opened_at"],
            "opened_by": md_escape(meta["opened_by"]),
            "resolved_at": meta.get("resolved_at"),
            "resolved_by": md_escape(meta.get("resolved_by") or ""),
            "duration": human_duration(duration_s(meta, now)) if resolved else "",
            "hosts": meta.get("hosts") or [],
            "window": meta.get("window", ""),
            "timeline": [
                {k: md_escape(v) for k, v in e.items()} for e in meta.get("timeline") or []
            ],
            "not_read": [md_escape(f"{k}: {v}") for k, v in (meta.get("not_read") or {}).items()],
            **{s: md_escape(meta.get(s) or "") for s in SECTIONS},
            "action_items": [md_escape(a) for a in meta.get("action_items") or []],
        },
    )


def write_record(path: Path, meta: Mapping[str, Any]) -> None:
    """Write the file atomically (temp file + rename)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(render_record(meta))
        tmp.replace(path)
    except OSError as exc:
        raise IncidentError(f"{path}: cannot write: {exc.strerror}") from exc


def new_path(directory: Path, opened: dt.datetime, title: str) -> Path:
    """`<dir>/<date>-<slug>.md`, `-2`, `-3` ... when that name is taken."""
    base = f"{opened.strftime('%Y-%m-%d')}-{slug(title)}"
    path, n = directory / f"{base}.md", 2
    while path.exists():
        path, n = directory / f"{base}-{n}.md", n + 1
    return path


def new_meta(
    title: str,
    sev: str,
    opened_by: str,
    opened: dt.datetime,
    *,
    hosts: Sequence[str],
    window: str,
    timeline: Sequence[Mapping[str, str]],
    not_read: Mapping[str, str],
    impact: str = "",
) -> dict[str, Any]:
    if not title.strip():
        raise ConfigError("--title: give the incident a title (what users see)")
    return {
        "title": title.strip(),
        "severity": severity(sev),
        "status": "open",
        "opened_at": iso(opened),
        "opened_by": opened_by,
        "resolved_at": None,
        "resolved_by": None,
        "impact": impact,
        "hosts": list(hosts),
        "window": window,
        "timeline": [dict(e) for e in timeline],
        "not_read": dict(not_read),
        "root_cause": "",
        "resolution": "",
        "prevention": "",
        "action_items": [],
    }


def load(path: Path) -> dict[str, Any]:
    try:
        meta = read_meta(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    if meta is None:
        raise ConfigError(f"{path}: not an incident file (no opskit-incident line at the top)")
    return meta


def find(directory: Path, which: str | None) -> Path:
    """The incident `which` names (a file name, with or without .md, or a unique part of it);
    without it, the newest open one. ConfigError when none or several match."""
    files = sorted(directory.glob("*.md")) if directory.is_dir() else []
    if which:
        matches = [f for f in files if which in (f.name, f.stem)] or [
            f for f in files if which in f.name
        ]
        if len(matches) != 1:
            found = ", ".join(f.name for f in matches) or "none"
            raise ConfigError(f"--incident {which!r}: matches {found} in {directory}")
        return matches[0]
    open_ones = []
    for f in files:
        try:
            meta = read_meta(f.read_text())
        except OSError:
            continue
        if meta and meta.get("status") == "open":
            open_ones.append((str(meta.get("opened_at")), f))
    if not open_ones:
        raise ConfigError(f"no open incident in {directory}: `inv incident.open` first")
    return max(open_ones)[1]


def add_update(meta: dict[str, Any], when: dt.datetime, who: str, message: str) -> None:
    if not message.strip():
        raise ConfigError("--message: say what happened or was done")
    meta["timeline"].append(
        {"time": iso(when), "host": "-", "source": "update", "text": f"{message.strip()} ({who})"}
    )


def resolve(meta: dict[str, Any], when: dt.datetime, who: str, sections: Mapping[str, str]) -> None:
    """Mark resolved with the three sections (every one needed, non-empty)."""
    if meta.get("status") == "resolved":
        raise ConfigError(f"the incident was already resolved at {meta.get('resolved_at')}")
    missing = [s for s in SECTIONS if not (sections.get(s) or "").strip()]
    if missing:
        raise ConfigError(
            "missing " + ", ".join("--" + s.replace("_", "-") for s in missing) + " (no stdin "
            "to ask on): nothing changed"
        )
    for s in SECTIONS:
        meta[s] = sections[s].strip()
    meta["status"] = "resolved"
    meta["resolved_at"] = iso(when)
    meta["resolved_by"] = who
    meta["timeline"].append(
        {"time": iso(when), "host": "-", "source": "update", "text": f"resolved ({who})"}
    )


def _esc(text: Any) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def open_message(meta: Mapping[str, Any], path: Path) -> str:
    """The guides' alert: severity, what, status, impact, who leads, where the record is."""
    return (
        f":rotating_light: *INCIDENT [{str(meta['severity']).upper()}]: {_esc(meta['title'])}*\n"
        f"Status: Investigating\n"
        f"Impact: {_esc(meta.get('impact') or 'being assessed')}\n"
        f"Started: {meta['opened_at']}\n"
        f"Incident lead: {_esc(meta['opened_by'])}\n"
        f"Timeline and notes: {_esc(path.name)} ({len(meta.get('timeline') or [])} events so far)\n"
        f"Updates follow in this channel."
    )


def update_message(meta: Mapping[str, Any], message: str) -> str:
    return f":memo: *Incident update: {_esc(meta['title'])}*: {_esc(message.strip())}"


def resolve_message(meta: Mapping[str, Any]) -> str:
    dur = human_duration(duration_s(meta, dt.datetime.now(dt.UTC)))
    return (
        f":white_check_mark: *RESOLVED [{str(meta['severity']).upper()}]: {_esc(meta['title'])}*"
        f" after {dur}\n"
        f"Root cause: {_esc(meta['root_cause'])}\n"
        f"Resolution: {_esc(meta['resolution'])}\n"
        f"Prevention: {_esc(meta['prevention'])}"
    )
