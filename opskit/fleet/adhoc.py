"""Ad-hoc commands: one shell command on many hosts, one remote command per host.

The command goes over the host's one connection like every other opskit command (strict host
keys, bounded parallelism, one bad host never stops the others); its output and exit code come
back per host.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from opskit.core.errors import ConfigError
from opskit.core.inventory import Host, Inventory
from opskit.core.remote import Remote
from opskit.core.result import Change, HostResult
from opskit.core.runner import RunContext, run_on_hosts
from opskit.core.secrets import Secret


@dataclass(frozen=True)
class CommandResult:
    """What the command did on one host; `error` is set when it could not run there."""

    host: str
    exited: int | None = None
    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    unreachable: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and self.exited == 0


def run_command(
    inventory: Inventory,
    hosts: Sequence[Host],
    command: str,
    *,
    sudo: bool = False,
    workers: int = 8,
    timeout: float | None = None,
    sudo_password: Secret | None = None,
    on_result: Callable[[CommandResult], None] | None = None,
) -> list[CommandResult]:
    """Run `command` (bash) on every host, as the login user or as root with `sudo`."""
    if not command.strip():
        raise ConfigError("the command is empty")
    outputs: dict[str, tuple[int, str, str]] = {}

    def work(remote: Remote, ctx: RunContext) -> list[Change]:
        res = remote.run(command, sudo=sudo, ok_codes=range(256), what=command, timeout=timeout)
        outputs[remote.name] = (res.exited, res.stdout, res.stderr)
        return []

    def convert(r: HostResult) -> CommandResult:
        if r.host in outputs:
            exited, out, err = outputs[r.host]
            return CommandResult(r.host, exited, out, err, seconds=r.seconds)
        return CommandResult(r.host, error=r.error, unreachable=r.unreachable, seconds=r.seconds)

    def report(r: HostResult) -> None:
        if on_result is not None:
            on_result(convert(r))

    results = run_on_hosts(
        inventory, hosts, work, workers=workers, sudo_password=sudo_password, on_result=report
    )
    return [convert(r) for r in results]


def format_result(r: CommandResult) -> str:
    """The lines a person reads for one host: its output, each line prefixed with the host.

    >>> print(format_result(CommandResult("web1", 0, "up 3 days\\n")), end="")
    [web1] up 3 days
    >>> print(format_result(CommandResult("web2", 1, "", "no such file\\n")), end="")
    [web2] ! no such file
    [web2] exit 1
    """
    if r.error is not None:
        label = "UNREACHABLE" if r.unreachable else "FAILED"
        return f"[{r.host}] {label} {r.error}\n"
    lines = [f"[{r.host}] {line}" for line in r.stdout.splitlines()]
    lines += [f"[{r.host}] ! {line}" for line in r.stderr.splitlines()]
    if r.exited != 0:
        lines.append(f"[{r.host}] exit {r.exited}")
    return "".join(f"{line}\n" for line in lines)


def summary(results: Sequence[CommandResult]) -> str:
    """The totals line.

    >>> summary([CommandResult("a", 0), CommandResult("b", 2), CommandResult("c", error="x")])
    '3 hosts: 1 ok, 1 failed, 1 unreachable or not run\\n'
    """
    n = len(results)
    ok = sum(1 for r in results if r.ok)
    broken = sum(1 for r in results if r.error is not None)
    return (
        f"{n} host{'s' if n != 1 else ''}: {ok} ok, {n - ok - broken} failed, "
        f"{broken} unreachable or not run\n"
    )


def to_json(results: Sequence[CommandResult]) -> str:
    return json.dumps({"hosts": [asdict(r) for r in results]}, indent=2) + "\n"
