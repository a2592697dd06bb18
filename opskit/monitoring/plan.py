"""One step of a sync plan (Action), and the check of whole-number variables both plans use."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from opskit.core.errors import ConfigError


@dataclass(frozen=True)
class Action:
    """One step of a sync: create, update, replace, delete, ok or conflict."""

    service: str  # "uptimerobot" | "sentry"
    kind: str
    what: str  # "monitor 'shop homepage'"
    detail: str = ""
    ident: str | None = None  # the service's id of the existing object
    body: Mapping[str, Any] | None = field(default=None, repr=False)

    @property
    def changes(self) -> bool:
        return self.kind in ("create", "update", "replace", "delete")


def whole_number(v: Mapping[str, Any], key: str, lo: int, hi: int) -> int:
    """The variable `key` of `v`, a whole number from `lo` to `hi`; ConfigError naming it.

    >>> whole_number({"n": 5}, "n", 1, 10)
    5
    """
    value = v[key]
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{key}: expected a whole number {lo}-{hi}, got {value!r}")
    return value
