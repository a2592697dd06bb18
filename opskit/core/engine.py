"""Converge a host to a list of resources: one round trip when nothing changes, four at most.

1. One command runs every resource's read-only probe; the output comes back in marked sections.
2. Each resource plans locally (pure), in order, knowing which earlier resources change (handlers).
3. Unless dry-run, one command runs the scripts of the resources that must change, in order,
   under `set -e`; a marker after each tells how far it got if one fails.

Resources that alter what others probe (`Resource.alters_host`: package installs, which add
files and units and start services) are staged: when one of them must change, one command makes
those changes first (in declared order), then one more probes every other resource again, and
they are planned from what the host holds *after* the installs — a file a package created is
seen, a service a package started is restarted when its config changes. A no-op costs one
command; a run with packages to install costs four (probe, install, probe, change). A dry run
plans from the first probe only: it cannot know what a missing package would add.

The same probe runs the check of the whole configuration of every service the resources
configure (`Resource.config_check`: `nginx -t`, `sshd -t`, `rsyslogd -N1`, PostgreSQL's), once
per distinct command. A failing one fails the host with the check's own message (which names the
offending file) even when nothing is to change; when something is, the check runs again after the
changes, and the host fails only if it still fails then.
"""

from __future__ import annotations

import logging
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from opskit.core import facts as host_facts
from opskit.core.errors import OpsError
from opskit.core.facts import Facts
from opskit.core.remote import Remote
from opskit.core.resource import Plan, Resource
from opskit.core.result import Change
from opskit.core.secrets import redact

log = logging.getLogger(__name__)

MARK = "@@opskit"
q = shlex.quote
_SECTION = re.compile(rf"^{MARK} (\d+)$", re.M)
_DONE = re.compile(rf"^{MARK}-done (\d+)$", re.M)
_CHECKS = re.compile(rf"^{MARK}-checks$\n?", re.M)
_CHECK = re.compile(rf"^{MARK}-check (\d+) (\d+)$\n?", re.M)
_LEFTOVER = re.compile(rf"^{MARK}-leftover (.+)\n?", re.M)
STAGED = ".opskit.??????"  # what File stages a new file as, next to it
LEFTOVER_MINUTES = 10  # older than this, a staged file belongs to no running converge
CHECK_FAILED = 65  # the exit code of an apply whose config check still fails afterwards


class FactsChanged(OpsError):
    """The host's release is not the one its resources were built for; nothing was changed."""

    def __init__(self, facts: Facts | None) -> None:
        super().__init__(f"the host's release is now {facts.label if facts else 'unknown'}")
        self.facts = facts


class ConvergeError(OpsError):
    """A change failed on a host; `changes` holds the ones made before it."""

    def __init__(self, message: str, changes: Sequence[Change]) -> None:
        super().__init__(message)
        self.changes = tuple(changes)


@dataclass(frozen=True)
class ConfigCheck:
    """A service's check of its whole configuration, run while one of `paths` exists (before
    opskit has configured the service there is nothing of it to check)."""

    command: str
    paths: tuple[str, ...]


@dataclass(frozen=True)
class CheckFailure:
    check: ConfigCheck
    output: str

    def message(self) -> str:
        lines = self.output.strip().splitlines()
        tail = "\n".join(lines[-10:]) or "(no output)"
        return f"{self.check.command} fails:\n{tail}"


def config_checks(resources: Sequence[Resource]) -> list[ConfigCheck]:
    """The distinct config checks the resources declare, in declaration order."""
    found: dict[str, dict[str, None]] = {}
    for r in resources:
        declared = r.config_check()
        if declared is not None:
            command, path = declared
            found.setdefault(command, {})[path] = None
    return [ConfigCheck(cmd, tuple(paths)) for cmd, paths in found.items()]


def checks_script(checks: Sequence[ConfigCheck]) -> str:
    """Shell for the end of the probe: each check's exit code and output in a marked section."""
    if not checks:
        return ""
    lines = [f"echo '{MARK}-checks'"]
    for i, c in enumerate(checks):
        exists = " || ".join(f"[ -e {q(p)} ]" for p in c.paths)
        lines.append(
            f"if {exists}; then _opskit_o=$( ( {c.command} ) 2>&1 </dev/null ); "
            f'echo "{MARK}-check {i} $?"; printf \'%s\\n\' "$_opskit_o"; fi'
        )
    return "\n".join(lines)


def split_checks(output: str, checks: Sequence[ConfigCheck]) -> tuple[str, list[CheckFailure]]:
    """The probe output without the checks' section, and the checks that failed.

    >>> c = ConfigCheck("nginx -t", ("/etc/nginx/x",))
    >>> out = "@@opskit 0\\nok\\n@@opskit-checks\\n@@opskit-check 0 1\\nbad in /etc/x:1\\n"
    >>> rest, [failed] = split_checks(out, [c])
    >>> rest, failed.message()
    ('@@opskit 0\\nok\\n', 'nginx -t fails:\\nbad in /etc/x:1')
    """
    start = _CHECKS.search(output)
    if not checks or start is None:
        return output, []
    rest, section = output[: start.start()], output[start.end() :]
    found = list(_CHECK.finditer(section))
    failed = []
    for k, m in enumerate(found):
        end = found[k + 1].start() if k + 1 < len(found) else len(section)
        if int(m.group(2)) != 0:
            failed.append(CheckFailure(checks[int(m.group(1))], section[m.end() : end]))
    return rest, failed


def leftovers_script(resources: Sequence[Resource]) -> str:
    """Shell for the end of the probe: staged files an interrupted run left behind (one find)."""
    dirs = list(dict.fromkeys(d for r in resources if (d := r.staging_dir()) is not None))
    if not dirs:
        return ""
    return (
        f"find {' '.join(q(d) for d in dirs)} -maxdepth 1 -type f -name {q(STAGED)} "
        f"-mmin +{LEFTOVER_MINUTES} -printf '{MARK}-leftover %p\\n' 2>/dev/null || true"
    )


def split_leftovers(output: str) -> tuple[str, list[str]]:
    """The probe output without the leftover lines, and the leftover paths.

    >>> split_leftovers("@@opskit 0\\n@@opskit-leftover /etc/x/.opskit.ab12CD\\nok\\n")
    ('@@opskit 0\\nok\\n', ['/etc/x/.opskit.ab12CD'])
    """
    found = [m.group(1) for m in _LEFTOVER.finditer(output)]
    return (_LEFTOVER.sub("", output), found) if found else (output, [])


@dataclass(frozen=True)
class Leftovers(Resource):
    """Staged files of an interrupted run (its connection was lost): removed by the next run."""

    paths: tuple[str, ...]
    id = "leftovers:staged files"

    def probe(self) -> str:  # pragma: no cover - found by leftovers_script, never probed
        return "true"

    def plan(self, state: str, changed: frozenset[str]) -> Plan:
        n = len(self.paths)
        return Plan((f"remove {n} file{'s' if n != 1 else ''} an interrupted run left",))

    def script(self, plan: Plan) -> str:
        return "rm -f -- " + " ".join(q(p) for p in self.paths)


def recheck_script(failed: Sequence[CheckFailure]) -> str:
    """Shell for the end of an apply: the checks that failed before the changes, once more."""
    return "\n".join(
        f"if ! _opskit_o=$( ( {f.check.command} ) 2>&1 </dev/null ); then "
        f"printf '%s fails:\\n%s\\n' {q(f.check.command)} \"$_opskit_o\" >&2; "
        f"exit {CHECK_FAILED}; fi"
        for f in failed
    )


@dataclass(frozen=True)
class Planned:
    resource: Resource
    plan: Plan


# Shell helpers of the resources' probes. Each answers from what prefetch_script read for all
# resources at once (one `stat`, one `sha256sum`, one `systemctl is-enabled` and one `is-active`
# for the whole host instead of one or two processes per resource) and falls back to reading
# directly what was not prefetched; their output is what the direct commands print.
PROBE_HELPERS = r"""declare -A _opskit_pre=() _opskit_st=() _opskit_sh=()
declare -A _opskit_en=() _opskit_ac=()
_opskit_stat() {
  if [ -n "${_opskit_st[$1]+x}" ]; then printf '%s\n' "${_opskit_st[$1]}"
  elif [ -n "${_opskit_pre[$1]+x}" ]; then echo absent
  elif [ -e "$1" ] || [ -L "$1" ]; then stat -c '%F|%a|%U|%G' -- "$1"
  else echo absent; fi
}
_opskit_sha256() {
  if [ -n "${_opskit_sh[$1]+x}" ]; then _opskit_s=${_opskit_sh[$1]}
  else _opskit_s=$(sha256sum < "$1"); _opskit_s=${_opskit_s%% *}; fi
}
_opskit_unit() {
  local e a
  if [ -n "${_opskit_en[$1]+x}" ]; then e=${_opskit_en[$1]}
  else e=$(systemctl is-enabled -- "$1" 2>/dev/null); fi
  if [ -n "${_opskit_ac[$1]+x}" ]; then a=${_opskit_ac[$1]}
  else a=$(systemctl is-active -- "$1"); fi
  printf '%s|%s\n' "$e" "$a"
}
"""


def prefetch_script(resources: Sequence[Resource]) -> str:
    """Shell that reads, in one process per kind, what the probes of `resources` will ask."""
    wanted: dict[str, dict[str, None]] = {"stat": {}, "sha256": {}, "unit": {}}
    for r in resources:
        for kind, items in r.prefetch().items():
            if kind in wanted:  # an unknown kind is simply not prefetched
                wanted[kind].update(dict.fromkeys(items))
    stat, sha, units = (list(wanted[k]) for k in ("stat", "sha256", "unit"))
    lines = [PROBE_HELPERS.rstrip("\n")]
    if stat:
        args = " ".join(q(p) for p in stat)
        lines += [
            f"for _opskit_k in {args}; do _opskit_pre[$_opskit_k]=1; done",
            "while IFS= read -r -d '' _opskit_k && IFS= read -r -d '' _opskit_v; do "
            "_opskit_st[$_opskit_k]=$_opskit_v; done "
            f"< <(stat --printf '%n\\0%F|%a|%U|%G\\0' -- {args} 2>/dev/null)",
        ]
    if sha:
        # `sha256sum -z` prints "<64 hex><space><space or *><name>\0", names unescaped.
        lines.append(
            "while IFS= read -r -d '' _opskit_v; do _opskit_sh[${_opskit_v:66}]=${_opskit_v:0:64}; "
            f"done < <(sha256sum -z -- {' '.join(q(p) for p in sha)} 2>/dev/null)"
        )
    if units:
        # One line per unit, in order; is-enabled stops at an unknown unit, so its answers are
        # used only when there is one per unit (the helper asks each unit itself otherwise).
        args = " ".join(q(u) for u in units)
        for cmd, var, arr in (
            ("is-enabled", "_opskit_e", "_opskit_en"),
            ("is-active", "_opskit_a", "_opskit_ac"),
        ):
            sets = "; ".join(
                f"_opskit_k={q(u)}; {arr}[$_opskit_k]=${{{var}[{i}]}}" for i, u in enumerate(units)
            )
            lines.append(
                f"mapfile -t {var} < <(systemctl {cmd} -- {args} 2>/dev/null); "
                f"if [ ${{#{var}[@]}} -eq {len(units)} ]; then {sets}; fi"
            )
    return "\n".join(lines) + "\n"


def probe_script(resources: Sequence[Resource], *, with_facts: bool = False) -> str:
    parts = ["exec 2>&1", *([host_facts.PROBE] if with_facts else [])]
    parts.append(prefetch_script(resources).rstrip("\n"))
    for i, r in enumerate(resources):
        parts.append(f"echo '{MARK} {i}'")
        parts.append(r.probe())
    checks = checks_script(config_checks(resources))
    if checks:
        parts.append(checks)
    leftovers = leftovers_script(resources)
    if leftovers:
        parts.append(leftovers)
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


def plan_all(
    host: str,
    resources: Sequence[Resource],
    sections: Sequence[str],
    *,
    changed_before: frozenset[str] = frozenset(),
) -> list[Planned]:
    """Plan every resource in order; `changed_before`: ids that changed in an earlier stage."""
    changed: set[str] = set(changed_before)
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


def apply_script(todo: Sequence[tuple[int, Planned]], recheck: Sequence[CheckFailure] = ()) -> str:
    parts = [
        "set -euo pipefail",
        "_opskit_tmp=''",
        'trap \'[ -z "$_opskit_tmp" ] || rm -f -- "$_opskit_tmp"\' EXIT',
    ]
    for i, p in todo:
        parts.append(p.resource.script(p.plan))
        parts.append(f"echo '{MARK}-done {i}'")
    if recheck:
        parts.append(recheck_script(recheck))
    return "\n".join(parts) + "\n"


def _change(remote: Remote, p: Planned) -> Change:
    if not p.plan.reasons:
        return Change.ok(remote.name, p.resource.id)
    diff = redact(p.plan.diff, remote.host.secrets)
    return Change.made(remote.name, p.resource.id, ", ".join(p.plan.reasons), diff)


def _apply(
    remote: Remote,
    todo: Sequence[tuple[int, Planned]],
    made_before: Sequence[Change],
    what: str,
    recheck: Sequence[CheckFailure] = (),
) -> None:
    """Run the scripts of `todo` in one command; on failure say which resource failed."""
    res = remote.run(apply_script(todo, recheck), what=what, ok_codes=range(256))
    if res.exited != 0:
        # Everything before the failing resource was done; say which one failed.
        done = {int(m.group(1)) for m in _DONE.finditer(res.stdout)}
        made = [*made_before, *(_change(remote, p) for i, p in todo if i in done)]
        failed = next((p.resource.id for i, p in todo if i not in done), None)
        tail = "\n".join(res.stderr.strip().splitlines()[-10:])
        if failed is None:  # every change was made; a config check still fails
            raise ConvergeError(redact(tail, remote.host.secrets), made)
        raise ConvergeError(f"{failed}: exit {res.exited}\n{tail}".rstrip(), made)


def _check_error(
    remote: Remote, failed: Sequence[CheckFailure], planned: Sequence[Planned], *, dry_run: bool
) -> ConvergeError:
    pending = any(p.plan.reasons for p in planned)
    if dry_run and pending:
        why = "the changes above may fix it; run without --check to see"
    elif pending:
        why = "after the changes above"
    else:
        why = "opskit changed nothing here"
    text = "\n".join(f.message() for f in failed)
    message = redact(f"a config check fails ({why}): {text}", remote.host.secrets)
    return ConvergeError(message, [_change(remote, p) for p in planned])


def converge(
    remote: Remote,
    resources: Sequence[Resource],
    *,
    dry_run: bool = False,
    facts: Facts | None = None,
) -> list[Change]:
    """Bring the host to `resources`; one Change per resource (changed also under dry-run).

    With `facts` (what `resources` were built for), the first probe re-reads the host's release
    too and raises FactsChanged, before planning or changing anything, when it differs.
    """
    if not resources:
        return []
    seen: set[str] = set()
    for r in resources:
        if r.id in seen:
            raise OpsError(f"resource {r.id} is declared twice on {remote.name}")
        seen.add(r.id)
    out = remote.run(
        probe_script(resources, with_facts=facts is not None), what="read state"
    ).stdout
    if facts is not None:
        found = host_facts.parse(out)
        if found != facts:
            raise FactsChanged(found)
        out = host_facts.strip(out)
    out, leftover = split_leftovers(out)
    out, failing = split_checks(out, config_checks(resources))
    planned = plan_all(remote.name, resources, split_sections(out, len(resources)))
    if leftover:
        cleanup = Leftovers(tuple(leftover))
        planned.append(Planned(cleanup, cleanup.plan("", frozenset())))
    if dry_run:
        if failing:
            raise _check_error(remote, failing, planned, dry_run=True)
        return [_change(remote, p) for p in planned]
    staged = [(i, p) for i, p in enumerate(planned) if p.plan.reasons and p.resource.alters_host]
    others = [i for i, r in enumerate(resources) if not r.alters_host]
    made: list[Change] = []
    if staged and others:
        _apply(remote, staged, [], "install packages")
        made = [_change(remote, p) for _, p in staged]
        rest = [resources[i] for i in others]
        out = remote.run(probe_script(rest), what="read state after installing").stdout
        out, _ = split_leftovers(out)
        out, failing = split_checks(out, config_checks(rest))
        replanned = plan_all(
            remote.name,
            rest,
            split_sections(out, len(rest)),
            changed_before=frozenset(p.resource.id for _, p in staged),
        )
        for i, p in zip(others, replanned, strict=True):
            planned[i] = p
    todo = [(i, p) for i, p in enumerate(planned) if p.plan.reasons]
    if staged and others:
        todo = [(i, p) for i, p in todo if not p.resource.alters_host]
    if todo:
        _apply(remote, todo, made, "apply changes", failing)
    elif failing:
        raise _check_error(remote, failing, planned, dry_run=False)
    return [_change(remote, p) for p in planned]
