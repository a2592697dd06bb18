"""What the task modules share."""

from __future__ import annotations

from opskit import cli


def H(*names: str, **extra: str) -> dict[str, str]:
    """Help texts for a task's flags: the shared ones named, plus the task's own."""
    return {**{n: cli.COMMON_HELP[n] for n in names}, **extra}
