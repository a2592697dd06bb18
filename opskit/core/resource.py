"""Idempotent primitives as declarative resources.

Each resource gives a read-only shell `probe()`, a pure `plan()` over what the probe printed, and
the shell that converges it (`script()`). The engine (opskit/core/engine.py) concatenates the probes
of every resource on a host into one remote command, plans locally, and runs every needed change
in one more command, so a no-op run costs a single round trip per host.
"""

from __future__ import annotations

import difflib
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

q = shlex.quote
DIFF_LIMIT = 64 * 1024  # old contents above this size are not fetched for a diff
BACKUP_DIR = "/var/backups/opskit"


def backup_path(path: str) -> str:
    """Where the previous version of a checked config file is kept.

    >>> backup_path("/etc/ssh/sshd_config.d/10-x.conf")
    '/var/backups/opskit/etc_ssh_sshd_config.d_10-x.conf.prev'
    """
    return f"{BACKUP_DIR}/{path.strip('/').replace('/', '_')}.prev"


@dataclass(frozen=True)
class Plan:
    """What a resource must do: `reasons` (empty = nothing), a diff, and data for script()."""

    reasons: tuple[str, ...] = ()
    diff: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)


NOTHING = Plan()


class Resource:
    """Base class: subclasses set `id` and implement probe, plan and script."""

    id: str
    # True for a resource whose change can alter what other resources probe (a package install
    # adds files, units and users, and starts services): the engine makes these changes first,
    # then probes the other resources again before planning them (see opskit.core.engine).
    alters_host = False

    def probe(self) -> str:
        """Read-only shell printing the state. It runs inside engine.probe_script, whose helpers
        (engine.PROBE_HELPERS: `_opskit_stat`, `_opskit_sha256`, `_opskit_unit`) answer from
        state read for all resources at once (see prefetch) and fall back to reading directly."""
        raise NotImplementedError

    def prefetch(self) -> Mapping[str, Sequence[str]]:
        """What the engine may read for every resource in one go before the probes run:
        {"stat": paths, "sha256": paths, "unit": systemd units}. Only an optimisation."""
        return {}

    def config_check(self) -> tuple[str, str] | None:
        """(command, path): the check of the whole configuration of the service this resource
        configures (`nginx -t`, `sshd -t`), or None. The engine runs each distinct command in the
        one probe while `path` exists, and a failing one fails the host even when nothing
        changes (a stray file opskit does not manage can break the service)."""
        return None

    def staging_dir(self) -> str | None:
        """Where script() stages a new file (`.opskit.XXXXXX`) before moving it in place. A run
        that died there (connection lost) leaves it behind: the engine's probe finds such files
        and the next run removes them."""
        return None

    def plan(self, state: str, changed: frozenset[str]) -> Plan:
        """Decide from the probe output (pure). `changed`: ids of resources changing before."""
        raise NotImplementedError

    def script(self, plan: Plan) -> str:
        raise NotImplementedError


def unified_diff(old: str, new: str, path: str) -> str:
    """A unified diff of two texts, headed with `path`.

    >>> print(unified_diff("a\\n", "b\\n", "/etc/x"), end="")
    --- /etc/x
    +++ /etc/x (new)
    @@ -1 +1 @@
    -a
    +b
    """
    lines = difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True), path, f"{path} (new)"
    )
    out = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
    return out


def ids(resources: Sequence[Resource]) -> list[str]:
    return [r.id for r in resources]
