"""Rendering a report: Markdown, HTML (inline SVG charts, autoescaped) and the Slack summary
from templates/report/, and the JSON, every one with the secrets redacted."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jinja2
import markupsafe

from opskit.core.roles import TEMPLATES_DIR
from opskit.core.secrets import redact
from opskit.report.data import ReportError
from opskit.report.judge import fmt_value
from opskit.report.view import build_view


def md_escape(value: Any) -> str:
    """Text safe inside a Markdown table cell or line: no markup, no table breaks.

    >>> md_escape("a|b *c* <x>\\nd")
    'a\\\\|b \\\\*c\\\\* &lt;x&gt; d'
    """
    text = str(value if value is not None else "")
    for ch in ("\\", "`", "*", "_", "[", "]", "|", "#"):
        text = text.replace(ch, "\\" + ch)
    return text.replace("<", "&lt;").replace(">", "&gt;").replace("\r", " ").replace("\n", " ")


_CODE = re.compile(r"(`[^`\n]+`)")


def md_with_code(value: Any) -> str:
    """Like md_escape, but `code spans` stay code (hints and fixes name commands).

    >>> md_with_code("run `inv a_b` | now_")
    'run `inv a_b` \\\\| now\\\\_'
    """
    parts = _CODE.split(str(value if value is not None else ""))
    return "".join(p if i % 2 else md_escape(p) for i, p in enumerate(parts))


def html_with_code(value: Any) -> markupsafe.Markup:
    """HTML-escaped text whose `code spans` become <code> elements.

    >>> str(html_with_code("run `inv x` <now>"))
    'run <code>inv x</code> &lt;now&gt;'
    """
    text = str(markupsafe.escape(str(value if value is not None else "")))
    return markupsafe.Markup(_CODE.sub(lambda m: f"<code>{m.group(1)[1:-1]}</code>", text))


def slack_escape(value: Any) -> str:
    """Text safe in a Slack message: &, < and > escaped as Slack documents.

    >>> slack_escape("<!channel> & co")
    '&lt;!channel&gt; &amp; co'
    """
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR / "report")),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default=False),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["md"] = md_escape
    env.filters["slack"] = slack_escape
    env.filters["mdcode"] = md_with_code
    env.filters["code"] = html_with_code
    env.filters["value"] = fmt_value
    return env


@dataclass(frozen=True)
class Rendered:
    markdown: str
    html: str
    slack: str
    json: str


def render(report: Mapping[str, Any], *, link: str = "", secrets: Sequence[str] = ()) -> Rendered:
    """Markdown, HTML, the Slack summary and the JSON of one report; secrets redacted."""
    view = build_view(report)
    env = _environment()
    try:
        md = env.get_template(f"{report['kind']}.md.j2").render(v=view)
        html = env.get_template("report.html.j2").render(v=view)
        slack = env.get_template("slack.j2").render(v=view, link=link).strip() + "\n"
    except jinja2.TemplateError as exc:
        raise ReportError(f"templates/report: {exc}") from exc
    body = json.dumps({**report, "numbers": view["numbers"]}, indent=1, default=str) + "\n"
    return Rendered(*(redact(x, secrets) for x in (md, html, slack, body)))
