"""Converge a host to a list of resources in two round trips at most.

1. One command runs every resource's read-only probe; the output comes back in marked sections.
2. Each resource plans locally (pure), in order, knowing which earlier resources change (handlers).
3. Unless dry-run, one command runs the scripts of the resources that must change, in order,
   under `set -e`; a marker after each tells how far it got if one fails.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from opskit.errors import OpsError
from opskit.remote import Remote
from opskit.resources import Plan, Resource
from opskit.result import Change
from opskit.secrets import redact

log = logging.getLogger(__name__)

MARK = "@@opskit"
_SECTION = re.compile(rf"^{MARK} (\d+)$", re.M)
_DONE = re.compile(rf"^{MARK}-done (\d+)$", re.M)


class ConvergeError(OpsError):
    """A change failed on a host; `changes` holds the ones made before it."""

    def __init__(self, message: str, changes: Sequence[Change]) -> None:
        super().__init__(message)
        self.changes = tuple(changes)


@dataclass(frozen=True)
class Planned:
    resource: Resource
    plan: Plan


def probe_script(resources: Sequence[Resource]) -> str:
    parts = ["exec 2>&1"]
    for i, r in enumerate(resources):
        parts.append(f"echo '{MARK} {i}'")
        parts.append(r.probe())
    return "\n".join(parts) + "\n"


def split_sections(output: str, count: int) -> list[str]:
    """Split the probe output into one text per resource.

    >>> split_sections("@@opskit 0\\na\\n@@opskit 1\\nb\\nc\\n", 2)
    ['a\\n', 'b\\nc\\n']
    """
    found = list(_SECTION.finditer(output))
    if [int(m.group(1)) for m in found] != list(range(count)):
        raise OpsError(f"state probe output is garbled:\n{output[-2000:]}")
    sections = []
    for k, m in enumerate(found):
        end = found[k + 1].start() if k + 1 < len(found) else len(output)
        sections.append(output[m.end() + 1 : end])
    return sections


def plan_all(host: str, resources: Sequence[Resource], sections: Sequence[str]) -> list[Planned]:
    changed: set[str] = set()
    planned = []
    for r, state in zip(resources, sections, strict=True):
        try:
            plan = r.plan(state, frozenset(changed))
        except (ValueError, IndexError) as exc:
            raise OpsError(f"{r.id}: cannot read its state ({exc}):\n{state[-500:]}") from exc
        if plan.reasons:
            changed.add(r.id)
        planned.append(Planned(r, plan))
    return planned


def apply_script(todo: Sequence[tuple[int, Planned]]) -> str:
    parts = [
        "set -euo pipefail",
        "_opskit_tmp=''",
        'trap \'[ -z "$_opskit_tmp" ] || rm -f -- "$_opskit_tmp"\' EXIT',
    ]
    for i, p in todo:
        parts.append(p.resource.script(p.plan))
        parts.append(f"echo '{MARK}-done {i}'")
    return "\n".join(parts) + "\n"


def converge(
    remote: Remote, resources: Sequence[Resource], *, dry_run: bool = False
) -> list[Change]:
    """Bring the host to `resources`; one Change per resource (changed also under dry-run)."""
    if not resources:
        return []
    seen: set[str] = set()
    for r in resources:
        if r.id in seen:
            raise OpsError(f"resource {r.id} is declared twice on {remote.name}")
        seen.add(r.id)
    out = remote.run(probe_script(resources), what="read state").stdout
    planned = plan_all(remote.name, resources, split_sections(out, len(resources)))
    secrets = remote.host.secrets
    changes = [
        Change.made(
            remote.name, p.resource.id, ", ".join(p.plan.reasons), redact(p.plan.diff, secrets)
        )
        if p.plan.reasons
        else Change.ok(remote.name, p.resource.id)
        for p in planned
    ]
    todo = [(i, p) for i, p in enumerate(planned) if p.plan.reasons]
    if dry_run or not todo:
        return changes
    res = remote.run(apply_script(todo), what="apply changes", ok_codes=range(256))
    if res.exited != 0:
        # Everything before the failing resource was done; say which one failed.
        done = {int(m.group(1)) for m in _DONE.finditer(res.stdout)}
        made = [c for i, c in enumerate(changes) if c.changed and i in done]
        failed = next((p.resource.id for i, p in todo if i not in done), "?")
        tail = "\n".join(res.stderr.strip().splitlines()[-10:])
        raise ConvergeError(f"{failed}: exit {res.exited}\n{tail}".rstrip(), made)
    return changes
