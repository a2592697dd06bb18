"""Publishing a written report: its files (atomically), the Slack summary and the lines the
task prints; the library never prints, cli/report.py does."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests

from opskit.clients.http import JsonApi
from opskit.core.secrets import Secret
from opskit.report.data import ReportError
from opskit.report.judge import numbers
from opskit.report.render import Rendered


def file_stem(report: Mapping[str, Any]) -> str:
    """`daily-2026-11-23`: the kind and the UTC date of the window's end."""
    return f"{report['kind']}-{str(report['until'])[:10]}"


def write(rendered: Rendered, out_dir: Path, stem: str) -> dict[str, Path]:
    """Write the four files atomically (temp file + rename); their paths by format."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"{out_dir}: cannot create the report directory: {exc.strerror}") from exc
    paths = {}
    for ext, text in (
        ("md", rendered.markdown),
        ("html", rendered.html),
        ("json", rendered.json),
    ):
        path = out_dir / f"{stem}.{ext}"
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            tmp.write_text(text)
            tmp.replace(path)
        except OSError as exc:
            raise ReportError(f"{path}: cannot write: {exc.strerror}") from exc
        paths[ext] = path
    return paths


def post_slack(text: str, webhook: Secret, *, session: requests.Session | None = None) -> None:
    """Send `text` to the Slack incoming webhook; ApiError (URL redacted) when it fails."""
    api = JsonApi("Slack", str(webhook), secrets=[str(webhook)], session=session, attempts=3)
    api.request("POST", str(webhook), json={"text": text}, ok=(200,), what="POST webhook")


def summary_lines(report: Mapping[str, Any], paths: Mapping[str, Path]) -> str:
    """What the task prints after writing: the paths, then the headline."""
    n = numbers(report)
    lines = [f"wrote {p}" for p in paths.values()]
    lines.append(
        f"{report['kind']} review: {n['worst'].upper()}; {n['hosts']} host(s), "
        f"{n['unreadable']} unreadable; actions: {n['actions_critical']} critical, "
        f"{n['actions_warning']} warning; alerts sent {n['alerts_sent']}; "
        f"requests {n['requests']} ({n['errors_5xx']} 5xx); backups {n['backups_in_window']}; "
        f"cert days left {n['cert_min_days'] if n['cert_min_days'] is not None else 'n/a'}; "
        f"deploys {n['deploys']}, rollbacks {n['rollbacks']}"
    )
    for source, err in sorted((report.get("errors") or {}).items()):
        lines.append(f"  not read: {source}: {err.splitlines()[0] if err else ''}")
    return "\n".join(lines) + "\n"
