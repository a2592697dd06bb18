"""Thresholds from variables, checked, and the numbers judges compute from samples.

A threshold comes from an inventory variable: `number` refuses what is not a finite number in
range, `checked_pair` a warning above its critical; both raise ConfigError naming the key.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from opskit.checks.levels import Pair
from opskit.core.errors import ConfigError


def number(key: str, value: Any, *, lo: float = 0, hi: float | None = None) -> float:
    """`value` of the variable `key` as a float, when it is a finite number in lo..hi.

    >>> number("x", 5), number("x", 2.5, hi=10)
    (5.0, 2.5)
    >>> number("status_cpu_critical", 150, hi=100)
    Traceback (most recent call last):
    ...
    opskit.core.errors.ConfigError: status_cpu_critical: expected a number 0-100, got 150
    >>> number("x", True)
    Traceback (most recent call last):
    ...
    opskit.core.errors.ConfigError: x: expected a number >= 0, got True
    """
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < lo or (hi is not None and value > hi):
        bounds = f"{lo:g}-{hi:g}" if hi is not None else f">= {lo:g}"
        raise ConfigError(f"{key}: expected a number {bounds}, got {value!r}")
    return float(value)


def checked_pair(warning_key: str, warning: float, critical_key: str, critical: float) -> Pair:
    """Pair(warning, critical), refused when the warning is above the critical (both named).

    >>> checked_pair("w", 70, "c", 90)
    Pair(warning=70, critical=90)
    >>> checked_pair("status_disk_warning", 95, "status_disk_critical", 90)
    Traceback (most recent call last):
    ...
    opskit.core.errors.ConfigError: status_disk_warning (95) is above status_disk_critical (90)
    """
    if warning > critical:
        raise ConfigError(f"{warning_key} ({warning:g}) is above {critical_key} ({critical:g})")
    return Pair(warning, critical)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile `p` (0-100) of `values` (not empty), as the health check's p95.

    >>> percentile([5, 1, 3, 2, 4], 50), percentile([5, 1, 3, 2, 4], 95)
    (3, 5)
    """
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]
