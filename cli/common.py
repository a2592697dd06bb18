"""What the task modules (cli/) share: loading the inventory, printing results, exit codes."""

from __future__ import annotations

import getpass
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import invoke
from invoke.exceptions import Exit

from opskit.core.errors import ConfigError, ExitStatus, OpsError
from opskit.core.inventory import Host, Inventory, load_inventory
from opskit.core.output import format_host, summary, to_json
from opskit.core.result import HostResult
from opskit.core.roles import REPO
from opskit.core.secrets import Secret

DEFAULT_INVENTORY = REPO / "inventories" / "lab.yml"

COMMON_HELP = {
    "inventory": "inventory file (default: $OPSKIT_INVENTORY or inventories/lab.yml, the lab)",
    "hosts": "hosts: names, groups or globs, comma-separated (default: all)",
    "workers": "hosts worked on at once (default 32)",
    "json": "print the results as JSON on stdout instead of lines",
    "ask_sudo_pass": "ask once for the deploy user's sudo password (or set it in the inventory)",
}


@dataclass(frozen=True)
class Number:
    """What a numeric flag accepts: a whole number or seconds, at least (or above) `least`."""

    whole: bool
    least: float
    above: bool = False  # strictly greater than `least`

    def describe(self) -> str:
        what = "a whole number" if self.whole else "a number"
        return f"{what} {'>' if self.above else '>='} {self.least:g}"

    def parse(self, flag: str, value: Any) -> int | float:
        """`value` (as typed, or a default) as a number, or ConfigError naming the flag.

        >>> Number(True, 1).parse("--workers", "4")
        4
        >>> Number(True, 1).parse("--workers", "0")
        Traceback (most recent call last):
        ...
        opskit.core.errors.ConfigError: --workers: expected a whole number >= 1, got '0'
        """
        text = str(value).strip()
        try:
            number: int | float = int(text) if self.whole else float(text)
        except ValueError:
            number = math.nan
        if (
            isinstance(value, bool)
            or math.isnan(number)
            or math.isinf(number)
            or number < self.least
            or (self.above and number == self.least)
        ):
            raise ConfigError(f"{flag}: expected {self.describe()}, got {text!r}")
        return number


# The numeric flags of every task, checked before anything is loaded or touched (exit 2).
NUMBERS = {
    "workers": Number(True, 1),
    "batch": Number(True, 1),
    "steps": Number(True, 1),
    "timeout": Number(False, 0),  # `inv run`: 0 means no limit
    "health_timeout": Number(False, 0, above=True),
    "since_hours": Number(False, 0, above=True),
    "journal": Number(True, 0),  # `inv app.releases`: 0 means none
    "samples": Number(True, 0),  # `inv status`: 0 means status_samples
    "last": Number(True, 1),  # `inv lab.inbox`
}


class OpsTask(invoke.Task):  # type: ignore[misc]
    """An Invoke task with opskit's one error boundary.

    - `-h` always means help: no flag gets `h` as its short form (`--hosts` would take it).
    - Numeric flags (NUMBERS) arrive as text and are checked here: `--workers abc` or `0` exits
      2 naming the flag, before the inventory is read.
    - Bad input (`ConfigError`, raised before anything is touched) exits 2 with the message;
      Ctrl-C exits 130 (hosts not started are skipped; every file is written atomically).
    """

    def arg_opts(self, name: str, default: Any, taken_names: set[str]) -> dict[str, Any]:
        opts: dict[str, Any] = super().arg_opts(name, default, {*taken_names, "h"})
        if name in NUMBERS:
            opts["kind"] = str  # parsed by __call__: invoke's own cast fails with a traceback
        return opts

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            for name, rule in NUMBERS.items():
                if kwargs.get(name) not in (None, ""):
                    kwargs[name] = rule.parse(f"--{name.replace('_', '-')}", kwargs[name])
            return super().__call__(*args, **kwargs)
        except ConfigError as exc:
            raise Exit(f"error: {exc}", code=ExitStatus.USAGE) from None
        except KeyboardInterrupt:
            raise Exit(
                "interrupted: hosts not started were skipped; no file is half-written",
                code=ExitStatus.INTERRUPTED,
            ) from None


def task(*args: Any, **kwargs: Any) -> Any:
    """`@task` of the task modules: invoke.task making an OpsTask."""
    return invoke.task(*args, klass=OpsTask, **kwargs)


def inventory_path(inventory: str | None) -> Path:
    return Path(inventory or os.environ.get("OPSKIT_INVENTORY") or DEFAULT_INVENTORY)


def load(inventory: str | None, hosts: str | None) -> tuple[Inventory, list[Host]]:
    """Load and validate the inventory and select hosts, or exit 2 with the error."""
    try:
        inv = load_inventory(inventory_path(inventory))
        return inv, inv.select([hosts] if hosts else None)
    except OpsError as exc:
        raise Exit(f"error: {exc}", code=ExitStatus.USAGE) from None


def ask_sudo_password(ask: bool) -> Secret | None:
    if not ask:
        return None
    if not sys.stdin.isatty():
        raise Exit(
            "error: --ask-sudo-pass needs a terminal; set ssh.sudo_password in the inventory",
            code=ExitStatus.USAGE,
        )
    return Secret(getpass.getpass("sudo password for the deploy user: "))


def printer(*, json_out: bool, show_diff: bool, verbose: bool):  # type: ignore[no-untyped-def]
    def emit(result: HostResult) -> None:
        if not json_out:
            sys.stdout.write(format_host(result, show_diff=show_diff, verbose=verbose))
            sys.stdout.flush()

    return emit


def finish(
    results: Sequence[HostResult], *, json_out: bool, dry_run: bool, detailed_exitcode: bool = False
) -> None:
    """Print the summary (or JSON) and exit with the documented code."""
    if json_out:
        sys.stdout.write(to_json(results, dry_run=dry_run))
    else:
        sys.stdout.write(summary(results, dry_run=dry_run))
    if any(r.refused for r in results):  # bad input for a host (unsupported release): untouched
        raise Exit(code=ExitStatus.USAGE)
    if any(r.error for r in results):
        raise Exit(code=ExitStatus.HOST_FAILED)
    if detailed_exitcode and any(r.changed_count for r in results):
        raise Exit(code=ExitStatus.CHANGES_PENDING)


def usage_error(exc: ConfigError) -> Exit:
    return Exit(f"error: {exc}", code=ExitStatus.USAGE)


def H(*names: str, **extra: str) -> dict[str, str]:
    """Help texts for a task's flags: the shared ones named, plus the task's own."""
    return {**{n: COMMON_HELP[n] for n in names}, **extra}
