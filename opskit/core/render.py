"""Local, pure template rendering: one Jinja environment, StrictUndefined, a `quote` filter."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from opskit.core.errors import TemplateError
from opskit.core.roles import template_dirs


def environment() -> jinja2.Environment:
    return _environment(template_dirs())


@cache
def _environment(dirs: tuple[Path, ...]) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(d) for d in dirs]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["quote"] = lambda v: shlex.quote(str(v))
    return env


def managed_by(role: str) -> str:
    return f"Managed by opskit, role {role}; local edits are overwritten."


def render(template: str, variables: Mapping[str, Any], *, role: str | None = None) -> str:
    """Render `templates/<template>` with `variables`; errors name the template and line."""
    context = dict(variables)
    context.setdefault("managed_by", managed_by(role or template.split("/")[0]))
    try:
        return environment().get_template(template).render(context)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"templates/{template}:{exc.lineno}: {exc.message}") from None
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"templates/{template}: {exc.message}") from None
    except jinja2.TemplateNotFound:
        raise TemplateError(f"templates/{template}: template not found") from None
