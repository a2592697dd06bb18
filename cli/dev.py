"""dev.test|lint."""

from __future__ import annotations

import sys

from cli.common import task

# --- development ---------------------------------------------------------------------------


@task(help={"fast": "unit tests only (no lab): a developer's shortcut, never CI's"})
def test(c, fast=False):
    """Run the tests: unit, doctests and integration against the lab."""
    args = "-m 'not integration' tests/unit" if fast else ""
    c.run(f"{sys.executable} -m pytest {args}", pty=sys.stdout.isatty())


@task
def lint(c):
    """ruff check, ruff format --check, mypy --strict on opskit, the layer rule."""
    py = sys.executable
    c.run(
        f"{py} -m ruff check . && {py} -m ruff format --check . && "
        f"{py} -m mypy --strict --ignore-missing-imports opskit && "
        f"{py} -m pytest -q tests/unit/test_layers.py tests/unit/test_repo.py"
    )


@task
def lock(c):
    """Remake requirements.lock (every dependency pinned, with hashes) from the requirements."""
    tools = "/tmp/opskit-pip-tools"
    c.run(f"{sys.executable} -m venv {tools} && {tools}/bin/pip install -q pip-tools==7.7.0")
    c.run(
        f"{tools}/bin/pip-compile -q --generate-hashes --allow-unsafe --strip-extras "
        "--no-emit-index-url --no-emit-find-links --no-header "
        "-o requirements.lock requirements-dev.txt"
    )
