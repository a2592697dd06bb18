"""Deploy, roll back and list releases of the PM2 app, gated on its health endpoint.

Layout on a host (made by roles/app)::

    /srv/<app>/releases/<name>/      one directory per release, never changed once complete:
                                     the code, node_modules, .opskit-release.json (what, who,
                                     when) and, for a release that failed its gate, .opskit-bad
    /srv/<app>/current               symlink to releases/<name>, switched atomically (rename)
    /srv/<app>/shared/               the app's own files; ecosystem.config.js (0600) and the
                                     app_shared_paths every release links to
    /srv/<app>/.opskit/              root only: deploy.lock, lock.json (holder), journal.jsonl
                                     (every deploy and rollback), activate.sh/.log/.result

A deploy of one host, over its one SSH connection:

1. **lock**: a command that stays open for the whole deploy holds ``flock`` on deploy.lock and
   writes who holds it (owner, time, message) to lock.json. A second deploy is refused and told
   who holds it. The lock dies with its holder: if the operator's process is killed, its SSH
   channel closes and the lock is released — no stale locks to break by hand.
2. **read state** (one command): releases, their metadata and bad marks, ``current``.
3. **upload** only what the host lacks: nothing when a release with the same code (git tree) and
   dependencies (package-lock.json) is there (its files are hard-linked); else the code and/or
   the dependencies tarball (SFTP on the same connection), checked by sha256.
4. **prepare** (one command): unpack into ``releases/.partial-<name>``, make the app_shared_paths
   missing in ``shared/`` and link them into it (replacing the release's own copy), then rename
   it into place. A deploy killed here leaves ``current`` untouched.
5. **activate** (one command): a transient systemd unit on the host first starts the release
   *beside* the live app, as the PM2 app ``<app>-candidate`` (one process) on the spare port
   app_candidate_port, and polls its health endpoint there: it must answer healthy
   app_health_successes times in a row within app_health_timeout. A definite answer (an HTTP
   status other than 200, a body that does not match, the process gone) fails it at once; only a
   release that is not listening yet may use the whole timeout. No live request reaches it
   meanwhile. Once it passed, the candidate is removed, ``current`` switches, ``pm2
   startOrReload`` reloads the live app (cluster mode: one process after the other) and the gate
   runs again on 127.0.0.1:<app_port> until every PM2 process of the app runs from the new
   release (its cwd). Before the candidate starts, the target gets any shared-path link it lacks
   (a release prepared before the path was declared). A release that fails is marked bad; if it
   failed live, the previous one is switched back, reloaded and checked. A failed activation
   prunes nothing. The unit runs on even if the operator's process dies, so ``current`` always
   ends on a release that passed its gate (or the previous one). Result and journal entry are
   written by the unit.

Rollback is steps 1, 2 and 5 with an older release as target: no upload, no install.
"""

from __future__ import annotations

import base64
import json
import logging
import posixpath
import re
import select
import shlex
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Generic, Protocol, TypeVar

import paramiko

from opskit.app import hold
from opskit.app.release import Artifact, operator
from opskit.app.spec import (
    BAD_MARK,
    LOCKED_EXIT,
    PM2_BIN,
    RELEASE_META,
    UNPROVISIONED_EXIT,
    AppLayout,
    node_bin_dir,
)
from opskit.core.errors import ConfigError, OpsError
from opskit.core.inventory import Host, Inventory
from opskit.core.remote import Remote
from opskit.core.result import Change, HostResult
from opskit.core.roles import TEMPLATES_DIR
from opskit.core.runner import RunContext, run_on_hosts
from opskit.core.secrets import Secret

log = logging.getLogger(__name__)
q = shlex.quote

T = TypeVar("T")

_NAME_RE = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{7}$")


class DeployError(OpsError):
    """A deploy or rollback failed on a host (its message says what the host serves now)."""


class LockedError(DeployError):
    """Another deploy holds the host's deploy lock."""


class NothingToRollBack(DeployError):
    """No release to roll back to."""


# --- host state ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Release:
    name: str
    meta: Mapping[str, Any]
    bad: Mapping[str, Any] | None = None

    @property
    def label(self) -> str:
        """What a person recognises: the git describe, else the ref."""
        return str(self.meta.get("describe") or self.meta.get("ref") or "?")


@dataclass(frozen=True)
class HostState:
    releases: tuple[Release, ...]  # sorted by name: oldest first
    current: str | None
    lock: Mapping[str, Any] | None = None
    activating: bool = False
    journal: tuple[Mapping[str, Any], ...] = ()
    spare_busy: bool = False  # something listens on app_candidate_port

    def check_spare_port(self, layout: AppLayout) -> None:
        """Refuse (nothing changed) when another program holds the spare port and no activation
        runs (an activation's own candidate listens there while it runs)."""
        if self.spare_busy and not self.activating:
            raise DeployError(
                f"app_candidate_port {layout.spare_port} is in use by another program: a release "
                "proves itself there before it takes traffic; free it or choose another port "
                "(nothing changed)"
            )

    def find(self, name: str) -> Release | None:
        return next((r for r in self.releases if r.name == name), None)


def state_script(layout: AppLayout, *, journal: int = 0) -> str:
    d = q(layout.state_dir)
    return f"""set -u
[ -d {q(layout.releases)} ] || {{ echo "@@unprovisioned"; exit {UNPROVISIONED_EXIT}; }}
echo "@@current $(readlink {q(layout.current)} 2>/dev/null || true)"
for r in {q(layout.releases)}/*/; do
  [ -d "$r" ] || continue
  echo "@@release $(basename "$r")"
  cat "$r/{RELEASE_META}" 2>/dev/null | tr -d '\\n'; echo
  if [ -e "$r/{BAD_MARK}" ]; then echo "@@bad"; tr -d '\\n' < "$r/{BAD_MARK}"; echo; fi
done
if [ -s {d}/lock.json ]; then
  pid=$(sed -n 's/.*"pid": *\\([0-9][0-9]*\\).*/\\1/p' {d}/lock.json)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    echo "@@lock"; tr -d '\\n' < {d}/lock.json; echo
  fi
fi
echo "@@activating $(systemctl is-active {q(layout.activate_unit)} 2>/dev/null || true)"
echo "@@spare $(ss -Hltn 'sport = :{layout.spare_port}' 2>/dev/null | wc -l)"
if [ {journal} -gt 0 ] && [ -f {d}/journal.jsonl ]; then
  echo "@@journal"; tail -n {journal} {d}/journal.jsonl
fi
"""


def _json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text.strip() else {}
    except ValueError:
        return {"unreadable": text[:200]}
    return value if isinstance(value, dict) else {"unreadable": text[:200]}


def parse_state(output: str) -> HostState:
    """Parse what state_script printed.

    >>> s = parse_state('@@current releases/b\\n@@release a\\n{"ref": "v1"}\\n'
    ...                 '@@release b\\n{"ref": "v2"}\\n@@bad\\n{"reason": "x"}\\n'
    ...                 '@@activating inactive\\n')
    >>> s.current, [r.name for r in s.releases], s.releases[1].bad, s.lock
    ('b', ['a', 'b'], {'reason': 'x'}, None)
    """
    releases: list[Release] = []
    current: str | None = None
    lock = None
    activating = False
    journal: list[Mapping[str, Any]] = []
    spare_busy = False
    lines = output.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.startswith("@@current"):
            target = line[len("@@current") :].strip()
            current = target.rsplit("/", 1)[-1] or None
        elif line.startswith("@@release "):
            releases.append(Release(line.split(" ", 1)[1], _json(nxt)))
            i += 1
        elif line == "@@bad" and releases:
            releases[-1] = Release(releases[-1].name, releases[-1].meta, _json(nxt) or {"at": "?"})
            i += 1
        elif line == "@@lock":
            lock = _json(nxt)
            i += 1
        elif line.startswith("@@activating"):
            activating = line.split(" ", 1)[-1].strip() in ("active", "activating")
        elif line.startswith("@@spare "):
            spare_busy = line.split(" ", 1)[1].strip() not in ("", "0")
        elif line == "@@journal":
            journal = [_json(j) for j in lines[i + 1 :] if j.strip()]
            break
        i += 1
    releases.sort(key=lambda r: r.name)
    return HostState(tuple(releases), current, lock, activating, tuple(journal), spare_busy)


def read_state(remote: Remote, layout: AppLayout, *, journal: int = 0) -> HostState:
    res = remote.run(
        state_script(layout, journal=journal),
        what="read releases",
        ok_codes=(0, UNPROVISIONED_EXIT),
    )
    if res.exited == UNPROVISIONED_EXIT:
        raise DeployError(
            f"{layout.releases} does not exist: provision the app role first (inv provision)"
        )
    return parse_state(res.stdout)


# --- pure decisions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadPlan:
    """How a host gets a release: what is hard-linked from a release it has, what is sent."""

    code_from: str | None  # an existing release with the same code (git tree)
    deps_from: str | None  # an existing release with the same dependencies
    send_code: bool
    send_deps: bool

    def describe(self, artifact: Artifact) -> str:
        parts = []
        if self.code_from:
            parts.append(f"code linked from {self.code_from}")
        else:
            parts.append(f"code sent ({_size(len(artifact.code))})")
        if artifact.deps_key:
            if self.deps_from:
                parts.append(f"dependencies linked from {self.deps_from} (no install)")
            else:
                parts.append(f"dependencies sent ({_size(len(artifact.deps or b''))})")
        else:
            parts.append("no dependencies")
        return ", ".join(parts)


def _size(n: int) -> str:
    """
    >>> _size(512), _size(2048), _size(3 * 1024 * 1024)
    ('512 B', '2.0 KiB', '3.0 MiB')
    """
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1024 / 1024:.1f} MiB"


def plan_upload(state: HostState, artifact: Artifact) -> UploadPlan:
    """Send only what no release on the host has; prefer the newest release to link from.

    >>> from opskit.app.release import Artifact
    >>> a = Artifact("n", "v2", "s", "v2", "T2", b"c", "D1", b"d", "t", "me")
    >>> s = HostState((Release("r1", {"tree": "T1", "deps_key": "D1"}),), "r1")
    >>> plan_upload(s, a)
    UploadPlan(code_from=None, deps_from='r1', send_code=True, send_deps=False)
    """
    newest_first = list(reversed(state.releases))
    same_code = [r for r in newest_first if r.meta.get("tree") == artifact.tree]
    same_deps = [r for r in newest_first if r.meta.get("deps_key") == artifact.deps_key]
    both = [r.name for r in same_code if r in same_deps]
    code_from = next(iter(both or [r.name for r in same_code]), None)
    deps_from = None
    if artifact.deps_key:
        deps_from = next(iter(both or [r.name for r in same_deps]), None)
    return UploadPlan(
        code_from=code_from,
        deps_from=deps_from,
        send_code=code_from is None,
        send_deps=bool(artifact.deps_key) and deps_from is None,
    )


def choose_rollback(state: HostState, *, steps: int = 1, to: str | None = None) -> Release:
    """The release a rollback switches to: `steps` good releases older than current, or `to`.

    Releases marked bad are skipped (and refused by name). Raises NothingToRollBack.

    >>> s = HostState((Release("a", {}), Release("b", {}, {"r": 1}), Release("c", {})), "c")
    >>> choose_rollback(s).name
    'a'
    """
    if to is not None:
        matches = [r for r in state.releases if r.name == to] or [
            r for r in state.releases if r.name.startswith(to) or r.name.endswith(to)
        ]
        if not matches:
            known = ", ".join(r.name for r in state.releases) or "none"
            raise NothingToRollBack(f"no release {to!r} on this host (releases: {known})")
        if len(matches) > 1:
            several = ", ".join(r.name for r in matches)
            raise NothingToRollBack(f"{to!r} matches several releases: {several}")
        target = matches[0]
        if target.name == state.current:
            raise NothingToRollBack(f"{target.name} is already the current release")
        if target.bad is not None:
            why = target.bad.get("reason", "")
            raise NothingToRollBack(
                f"{target.name} is marked bad ({why}); refusing to switch to it"
            )
        return target
    if steps < 1:
        raise ConfigError(f"--steps {steps}: expected 1 or more")
    if state.current is None or state.find(state.current) is None:
        raise NothingToRollBack("there is no current release to roll back from")
    names = [r.name for r in state.releases]
    older = [r for r in state.releases[: names.index(state.current)] if r.bad is None]
    if len(older) < steps:
        skipped = sum(1 for r in state.releases[: names.index(state.current)] if r.bad)
        bad = f" ({skipped} older release(s) marked bad are skipped)" if skipped else ""
        have = f"only {len(older)} good release(s)" if older else "no good release"
        raise NothingToRollBack(
            f"nothing to roll back to: {have} older than the current {state.current}{bad}"
        )
    return older[-steps]


def releases_to_prune(
    names: Sequence[str], keep: int, *, protect: Sequence[str] = (), bad: Sequence[str] = ()
) -> list[str]:
    """The releases to delete so that `keep` remain: bad ones first, then the oldest; never one
    in `protect` (the new release and the current one, the rollback target).

    >>> releases_to_prune(["a", "b", "c", "d"], 2, protect=["a"])
    ['b', 'c']
    >>> releases_to_prune(["a", "b", "c", "d"], 3, bad=["c"])
    ['c']
    """
    ordered = sorted(set(names))
    excess = len(ordered) - max(1, keep)
    candidates = sorted((n for n in ordered if n not in protect), key=lambda n: (n not in bad, n))
    return sorted(candidates[: max(0, excess)])


def batches(hosts: Sequence[Host], size: int) -> list[list[Host]]:
    """Consecutive batches of at most `size` hosts.

    >>> [len(b) for b in batches([None] * 5, 2)]
    [2, 2, 1]
    """
    if size < 1:
        raise ConfigError(f"--batch {size}: expected 1 or more")
    return [list(hosts[i : i + size]) for i in range(0, len(hosts), size)]


# --- the lock ------------------------------------------------------------------------------------


def lock_script(layout: AppLayout, info: Mapping[str, Any]) -> str:
    """Hold the deploy lock until stdin closes. Wrapped in a function: bash must have read the
    whole script before `cat` starts reading the rest of stdin."""
    d = q(layout.state_dir)
    body = json.dumps(dict(info, pid="__PID__")).replace('"__PID__"', "__PID__")
    return f"""opskit_lock() {{
  set -u
  [ -d {q(layout.releases)} ] || {{ echo "@@unprovisioned"; exit {UNPROVISIONED_EXIT}; }}
  mkdir -p {d} && chmod 0700 {d}
  exec 9>>{d}/deploy.lock
  if ! flock -n -x 9; then
    echo "@@locked"; tr -d '\\n' < {d}/lock.json 2>/dev/null; echo; exit {LOCKED_EXIT}
  fi
  info={q(body)}
  printf '%s\\n' "${{info/__PID__/$$}}" > {d}/lock.json.new && mv -f {d}/lock.json.new {d}/lock.json
  echo "@@acquired"
  cat > /dev/null 9>&-  # only this shell holds the lock: it ends when stdin closes or it dies
  rm -f {d}/lock.json
}}
opskit_lock
"""


class HostLock:
    """The deploy lock of one host, held by an open SSH channel for as long as the `with` lasts."""

    def __init__(self, remote: Remote, layout: AppLayout, info: Mapping[str, Any]) -> None:
        self.remote, self.layout, self.info = remote, layout, info
        self.chan: paramiko.Channel | None = None

    def __enter__(self) -> HostLock:
        chan = self.remote.open_channel(lock_script(self.layout, self.info))
        out = b""
        deadline = time.monotonic() + 30
        while b"@@acquired\n" not in out:
            if chan.recv_ready():
                out += chan.recv(65536)
                continue
            if chan.exit_status_ready() and not chan.recv_ready():
                code = chan.recv_exit_status()
                err = (
                    chan.recv_stderr(65536).decode(errors="replace")
                    if chan.recv_stderr_ready()
                    else ""
                )
                chan.close()
                self._refuse(code, out.decode(errors="replace"), err)
            if time.monotonic() > deadline:
                chan.close()
                raise DeployError("timed out waiting for the deploy lock")
            select.select([chan], [], [], 0.5)
        self.chan = chan
        return self

    def _refuse(self, code: int, out: str, err: str) -> None:
        if code == UNPROVISIONED_EXIT:
            raise DeployError(
                f"{self.layout.releases} does not exist: provision the app role first "
                "(inv provision)"
            )
        if code == LOCKED_EXIT:
            lines = out.split("@@locked", 1)[-1].strip().splitlines()
            holder = _json(lines[0]) if lines else {}
            raise LockedError(f"refused: {describe_lock(holder)}")
        raise DeployError(f"cannot take the deploy lock (exit {code}): {err.strip()[-500:]}")

    def __exit__(self, *exc: object) -> None:
        chan, self.chan = self.chan, None
        if chan is None:
            return
        try:
            chan.shutdown_write()  # `cat` ends, lock.json goes, the flock is released
            deadline = time.monotonic() + 10
            while not chan.exit_status_ready() and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            chan.close()


def describe_lock(holder: Mapping[str, Any]) -> str:
    """
    >>> describe_lock({"owner": "al@lap", "since": "T", "action": "deploy v2", "message": "m"})
    'a deploy holds the lock: al@lap since T (deploy v2: m)'
    """
    if not holder:
        return "a deploy holds the lock (its holder did not say who)"
    what = holder.get("action", "?")
    msg = f": {holder['message']}" if holder.get("message") else ""
    return (
        f"a deploy holds the lock: {holder.get('owner', '?')} since {holder.get('since', '?')} "
        f"({what}{msg})"
    )


# --- prepare -------------------------------------------------------------------------------------


def _home(remote: Remote) -> str:
    sftp = remote.sftp()
    return str(sftp.normalize("."))


def upload(remote: Remote, data: bytes, name: str) -> str:
    """Send `data` over the connection's SFTP into the login user's home; its absolute path."""
    remote.put_bytes(data, name)
    return f"{_home(remote).rstrip('/')}/{name}"


STALE_UPLOAD_MINUTES = 60
SHARED_REPLACED = "@@shared-replaced "
SHARED_LINKED = ": replaced by the link to shared/"  # what activate.sh says then

# Defines opskit_shared KIND PATH (KIND d or f, PATH without its trailing /): makes
# $SHARED/PATH when missing (parents too: 0750 dirs, 0640 files, owner $OWNER; never one that is
# there) and links $RELEASE/PATH to it; a release's own copy there is replaced (and said).
# Nothing is created outside $SHARED or $RELEASE through a symlink.
_SHARED_FN = r"""
inside() {  # inside DIR TOP: DIR resolves under TOP
  local real; real=$(readlink -f -- "$1") && case "$real/" in "$2"/*) return 0 ;; esac
  echo "$1 leads outside $2 (to ${real:-?}): nothing created there" >&2; return 1
}
opskit_shared() {
  local kind=$1 rel=$2 s part c link top rtop
  local -a cs=()
  top=$(readlink -f -- "$SHARED") && rtop=$(readlink -f -- "$RELEASE") || return 1
  s=$SHARED/$rel
  if [ ! -e "$s" ] && [ ! -L "$s" ]; then
    part=$SHARED
    [ "${rel%/*}" = "$rel" ] || IFS=/ read -ra cs <<<"${rel%/*}"
    for c in "${cs[@]}"; do
      inside "$part" "$top" || return 1
      part=$part/$c
      if [ ! -e "$part" ] && [ ! -L "$part" ]; then
        install -d -m 0750 -- "$part" && chown -h -- "$OWNER": "$part" || return 1
      fi
    done
    inside "$(dirname -- "$s")" "$top" || return 1
    if [ "$kind" = d ]; then
      install -d -m 0750 -- "$s" || return 1
    else
      install -m 0640 /dev/null "$s" || return 1
    fi
    chown -h -- "$OWNER": "$s" || return 1
  elif [ "$kind" = d ] && [ ! -d "$s" ]; then
    echo "$s exists but is not a directory (app_shared_paths has $rel/)" >&2; return 1
  elif [ "$kind" = f ] && [ -d "$s" ]; then
    echo "$s is a directory (app_shared_paths has $rel, a file; write $rel/ for a directory)" >&2
    return 1
  fi
  link=$RELEASE/$rel
  if [ -L "$link" ] && [ "$(readlink -- "$link")" = "$s" ]; then return 0; fi
  if [ -e "$link" ] || [ -L "$link" ]; then
    rm -rf -- "$link" || return 1
    echo "@@shared-replaced $rel$([ "$kind" = d ] && echo /)"
  fi
  mkdir -p -- "$(dirname -- "$link")" && inside "$(dirname -- "$link")" "$rtop" || return 1
  ln -s -- "$s" "$link" || return 1
}
"""


def shared_script(layout: AppLayout, release_dir: str) -> str:
    """A bash script that makes the app_shared_paths in shared/ when missing and links them into
    `release_dir` (idempotent: nothing changes when they are there). It prints
    `@@shared-replaced <path>` for each path the release had its own copy of. Empty when there
    are no shared paths."""
    if not layout.shared_paths:
        return ""
    lines = [
        "set -euo pipefail",
        "umask 022",
        f"SHARED={q(layout.shared)} RELEASE={q(release_dir)} OWNER={q(layout.user)}",
        _SHARED_FN.strip(),
    ]
    for p in layout.shared_paths:
        kind = "d" if p.endswith("/") else "f"
        lines.append(f"opskit_shared {kind} {q(p.rstrip('/'))}")
    return "\n".join(lines) + "\n"


def replaced_note(output: str, release: str) -> str | None:
    """The one line a deploy or rollback says when the release had its own copy of shared paths.

    >>> replaced_note("x\\n@@shared-replaced uploads/\\n@@shared-replaced .env\\n", "r1")
    'r1 had its own uploads/, .env: replaced by links to the shared ones (app_shared_paths)'
    """
    paths = [ln.split(" ", 1)[1] for ln in output.splitlines() if ln.startswith(SHARED_REPLACED)]
    if not paths:
        return None
    return (
        f"{release} had its own {', '.join(dict.fromkeys(paths))}: replaced by links to the "
        "shared ones (app_shared_paths)"
    )


def prepare_script(
    layout: AppLayout,
    artifact: Artifact,
    plan: UploadPlan,
    *,
    code_path: str | None,
    deps_path: str | None,
    meta: Mapping[str, Any],
) -> str:
    """Unpack (or link) the release into releases/.partial-<name>, then rename it into place."""
    rel = q(layout.releases)
    tmp = f"{rel}/.partial-{artifact.name}"
    final = f"{rel}/{artifact.name}"
    lines = [
        "set -euo pipefail",
        f"rm -rf -- {rel}/.partial-*",  # a deploy killed while preparing (we hold the lock)
        f"[ ! -e {final} ] || {{ echo 'release {artifact.name} exists already' >&2; exit 17; }}",
    ]
    sent = [p for p in (code_path, deps_path) if p]
    if sent:
        # Uploads of a deploy killed before it unpacked them; an hour old, so never those of a
        # deploy of another app on this host that is running now.
        home = q(posixpath.dirname(sent[0]))
        lines.append(
            f"find {home} -maxdepth 1 -type f \\( -name '.opskit-*-code.tar.gz' -o "
            f"-name '.opskit-*-deps.tar.gz' \\) -mmin +{STALE_UPLOAD_MINUTES} -delete"
        )
    if plan.code_from:
        lines += [
            f"cp -al -- {rel}/{q(plan.code_from)} {tmp}",
            f"rm -rf -- {tmp}/{RELEASE_META} {tmp}/{BAD_MARK}",
        ]
    else:
        assert code_path is not None
        lines += [
            f"echo {artifact.code_sha256}' '{q(code_path)} | sha256sum -c --quiet -",
            f"install -d -m 0755 -- {tmp}",
            f"tar -xzf {q(code_path)} -C {tmp} --no-same-owner",
            f"rm -f -- {q(code_path)}",
        ]
    linked_with_code = plan.code_from is not None and plan.deps_from == plan.code_from
    if not linked_with_code:
        lines.append(f"rm -rf -- {tmp}/node_modules")
        if artifact.deps_key and plan.deps_from:
            lines.append(f"cp -al -- {rel}/{q(plan.deps_from)}/node_modules {tmp}/node_modules")
        elif artifact.deps_key:
            assert deps_path is not None
            lines += [
                f"echo {artifact.deps_sha256}' '{q(deps_path)} | sha256sum -c --quiet -",
                f"tar -xzf {q(deps_path)} -C {tmp} --no-same-owner",
                f"rm -f -- {q(deps_path)}",
            ]
    meta_b64 = base64.b64encode((json.dumps(meta, sort_keys=True) + "\n").encode()).decode()
    lines.append(f"echo {meta_b64} | base64 -d > {tmp}/{RELEASE_META}")
    link = shared_script(layout, f"{layout.releases}/.partial-{artifact.name}")
    if link:  # a subshell: its own options and functions; its links are never followed below
        lines.append(f"bash -c {q(link)}")
    lines += [
        f"chown -R root:root -- {tmp} && chmod -R u+rwX,go+rX,go-w -- {tmp}",
        f"mv -T -- {tmp} {final}",
    ]
    return "\n".join(lines) + "\n"


# --- activation (runs on the host in a transient systemd unit) ----------------------------------


# The activation script: static, sent with every activation (roles/app does not install it, so
# a deploy never depends on the version of opskit that provisioned the host).
@cache
def activate_sh() -> str:
    return (TEMPLATES_DIR / "app" / "activate.sh").read_text()


@dataclass(frozen=True)
class Activation:
    ok: bool
    target: str
    previous: str
    detail: str
    restored: str
    seconds: float
    gate_seconds: float
    log: str


def activation_params(
    layout: AppLayout,
    v: Mapping[str, Any],
    *,
    action: str,
    target: str,
    ref: str,
    sha: str,
    message: str,
    prune: Sequence[str],
    health_timeout: float | None,
) -> dict[str, str]:
    """The parameters the activation script reads (all strings; written as a sourced file)."""
    timeout = float(health_timeout if health_timeout is not None else v["app_health_timeout"])
    interval = float(v["app_health_interval"])
    successes = int(v["app_health_successes"])
    path = str(v["app_health_path"])
    if not path.startswith("/"):
        raise ConfigError(f"app_health_path: {path!r} must start with '/'")
    if timeout <= 0 or interval <= 0 or successes < 1:
        raise ConfigError(
            "app_health_timeout and app_health_interval must be > 0, app_health_successes >= 1"
        )
    return {
        "ACTION": action,
        "APP": layout.name,
        "APP_USER": layout.user,
        "APP_HOME": layout.home,
        "BASE": layout.base,
        "STATE": layout.state_dir,
        "TARGET": target,
        "PM2_BIN": PM2_BIN,
        "NODE_BIN": node_bin_dir(v),
        "PM2_HOME": layout.pm2_home,
        "PM2_SERVICE": layout.pm2_service,
        "ECOSYSTEM": layout.ecosystem,
        "HEALTH_URL": f"http://127.0.0.1:{layout.port}{path}",
        "CANDIDATE": layout.candidate,
        "CANDIDATE_PORT": str(layout.spare_port),
        "CANDIDATE_URL": f"http://127.0.0.1:{layout.spare_port}{path}",
        "HEALTH_MATCH": str(v["app_health_match"] or ""),
        "HEALTH_TIMEOUT": f"{timeout:g}",
        "HEALTH_INTERVAL": f"{interval:g}",
        "HEALTH_SUCCESSES": str(successes),
        "PRUNE": " ".join(prune),
        "LINK_SHARED": shared_script(layout, f"{layout.releases}/{target}"),
        "OPERATOR": operator(),
        "REF": ref,
        "SHA": sha,
        "MESSAGE": message,
    }


def activate_command(
    layout: AppLayout,
    params: Mapping[str, str],
    *,
    wait: float,
    hold_lines: tuple[str, str] | None = None,
) -> str:
    """One remote command: start the activation unit, wait for its result, print log and result.
    `hold_lines` (opskit.app.hold): set the health check's alert hold before, clear it after."""
    d, unit = q(layout.state_dir), q(layout.activate_unit)
    hold_set, hold_clear = hold_lines or (":", ":")
    script_b64 = base64.b64encode(activate_sh().encode()).decode()
    env = "".join(f"{k}={q(str(val))}\n" for k, val in params.items())
    return f"""set -u
d={d}
# An activation left running by an operator whose connection died finishes first.
for _ in $(seq 1 {int(wait * 5)}); do systemctl is-active -q {unit} || break; sleep 0.2; done
if systemctl is-active -q {unit}; then
  echo "an earlier activation is still running" >&2; exit 16
fi
rm -f "$d/activate.result"
{hold_set} || echo "could not write the alert hold" >&2
echo {script_b64} | base64 -d > "$d/activate.sh"
cat > "$d/activate.env" <<'OPSKIT_EOF'
{env}OPSKIT_EOF
systemd-run --unit={unit} --collect --quiet -p Type=exec \\
  /bin/bash "$d/activate.sh" "$d/activate.env"
end=$(( $(date +%s) + {int(wait)} ))
while [ ! -e "$d/activate.result" ] && systemctl is-active -q {unit}; do
  if [ "$(date +%s)" -ge "$end" ]; then
    echo "@@log"; cat "$d/activate.log"; echo "@@timeout"; exit 0
  fi
  sleep 0.1
done
sleep 0.1
{hold_clear}
echo "@@log"; cat "$d/activate.log" 2>/dev/null
echo "@@result"; cat "$d/activate.result" 2>/dev/null
"""


def parse_activation(output: str) -> Activation:
    """
    >>> a = parse_activation('@@log\\nx\\n@@result\\n{"result": "ok", "target": "r2", '
    ...     '"previous": "r1", "detail": "", "restored": "", "seconds": 2.5, '
    ...     '"gate_seconds": 1.2}\\n')
    >>> a.ok, a.target, a.gate_seconds, a.log
    (True, 'r2', 1.2, 'x')
    """
    logpart, _, resultpart = output.partition("@@result\n")
    logtext = logpart.split("@@log\n", 1)[-1].replace("@@timeout", "").strip()
    result = _json(resultpart.strip().splitlines()[0]) if resultpart.strip() else {}
    if not result or "result" not in result:
        raise DeployError(
            "the activation ended without a result"
            + (" (still running: timed out waiting)" if "@@timeout" in output else "")
            + (f"; its log:\n{logtext}" if logtext else "")
        )
    return Activation(
        ok=result["result"] == "ok",
        target=str(result.get("target", "")),
        previous=str(result.get("previous", "")),
        detail=str(result.get("detail", "")),
        restored=str(result.get("restored", "")),
        seconds=float(result.get("seconds") or 0),
        gate_seconds=float(result.get("gate_seconds") or 0),
        log=logtext,
    )


def activate(remote: Remote, layout: AppLayout, params: Mapping[str, str]) -> Activation:
    """Switch to params['TARGET'] and gate it; on failure the host is back on the previous one."""
    timeout = float(params["HEALTH_TIMEOUT"])
    # three gates (the release beside the live app, then live, then maybe the previous one)
    wait = 3 * timeout + 120
    hold_lines = None
    if "healthcheck" in remote.host.roles:  # its alerts are held while this host switches
        reason = f"{params['ACTION']} {params['TARGET']}"
        hold_lines = (hold.hold_script(wait + hold.HOLD_MARGIN, reason), hold.release_script())
    res = remote.run(
        activate_command(layout, params, wait=wait, hold_lines=hold_lines),
        what=f"activate {params['TARGET']}",
        timeout=wait + 30,
    )
    return parse_activation(res.stdout)


# --- deploy, rollback, list ----------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    message: str = ""
    health_timeout: float | None = None


class SwitchHook(Protocol):
    """What a deploy does around each host's switch (opskit.app.watch: the post-deploy watch)."""

    def before_switch(self, remote: Remote, state: HostState) -> None: ...

    def after_switch(
        self, remote: Remote, ctx: RunContext, state: HostState, act: Activation
    ) -> list[Change]: ...


def app_hosts(inventory: Inventory, hosts: Sequence[Host]) -> list[Host]:
    """The selected hosts, all of which must have the app role (ConfigError otherwise)."""
    lacking = [h.name for h in hosts if "app" not in h.roles]
    if lacking:
        raise ConfigError(
            f"{', '.join(lacking)}: no app role in {inventory.path.name}; "
            "select hosts whose groups have roles: [app, ...] (e.g. --hosts web)"
        )
    if not hosts:
        raise ConfigError("no host selected")
    apps = {(h.vars["app_name"], h.vars["app_repo"], h.vars["app_repo_path"]) for h in hosts}
    if len(apps) > 1:
        raise ConfigError(
            "the selected hosts run different apps (app_name/app_repo/app_repo_path differ): "
            "deploy them one --hosts selection at a time"
        )
    return list(hosts)


def lock_info(action: str, message: str) -> dict[str, str]:
    return {
        "owner": operator(),
        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "action": action,
        "message": message,
    }


def _result_change(remote: Remote, act: Activation, what: str) -> Change:
    if not act.ok:
        if not act.restored:  # refused before anything changed (no release marked)
            raise DeployError(f"{act.detail}\nactivation log:\n{act.log}")
        raise DeployError(
            f"{act.detail}\n{act.target} is marked bad; {act.restored}\nactivation log:\n{act.log}"
        )
    prev = f"; previous {act.previous}" if act.previous else ""
    return Change.made(
        remote.name,
        f"release:{act.target}",
        f"{what}: healthy after {act.gate_seconds:g} s, switch+reload+gate {act.seconds:g} s{prev}",
    )


def deploy_prepare(
    artifact: Artifact | Callable[[], Artifact],
    opts: Options,
    staged: dict[str, HostState],
) -> Callable[[Remote, RunContext], str]:
    """Steps 2-4 of a deploy on one host (state, upload, prepare): for run_in_batches' `stage`
    (every host prepares before any switches, e.g. for a migration). Returns the release's name;
    `staged` keeps what deploy_work needs of the host."""

    def prepare(remote: Remote, ctx: RunContext) -> str:
        art = artifact() if callable(artifact) else artifact
        staged[remote.name] = _prepare(remote, ctx, art, opts)
        return art.name

    return prepare


def _prepare(remote: Remote, ctx: RunContext, art: Artifact, opts: Options) -> HostState:
    layout = AppLayout.from_vars(remote.host.vars)
    state = read_state(remote, layout)
    state.check_spare_port(layout)
    plan = plan_upload(state, art)
    code_path = deps_path = None
    if plan.send_code:
        code_path = upload(remote, art.code, f".opskit-{art.name}-code.tar.gz")
    if plan.send_deps and art.deps is not None:
        deps_path = upload(remote, art.deps, f".opskit-{art.name}-deps.tar.gz")
    meta = dict(
        art.metadata(message=opts.message),
        deployed_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        deployed_by=operator(),
    )
    prepared = remote.run(
        prepare_script(layout, art, plan, code_path=code_path, deps_path=deps_path, meta=meta),
        what=f"prepare release {art.name}",
    )
    ctx.notes.append(f"{art.name}: {plan.describe(art)}")
    note = replaced_note(prepared.stdout, art.name)
    if note:
        ctx.notes.append(note)
    return state


def deploy_work(
    artifact: Artifact | Callable[[], Artifact],
    opts: Options,
    staged: dict[str, HostState] | None = None,
    hook: SwitchHook | None = None,
) -> Callable[[Remote, RunContext], list[Change]]:
    """The work of `inv deploy` on one host (see the module docstring for the steps), run by
    run_in_batches while it holds the fleet's deploy lock. `artifact` may be a callable (a
    `Once`): then it is built once, after every host's lock is held. A host in `staged` was
    prepared already (deploy_prepare): only its activation is left. `hook` runs just before
    and after the switch, on the same connection and under the same lock."""

    def work(remote: Remote, ctx: RunContext) -> list[Change]:
        art = artifact() if callable(artifact) else artifact
        v = remote.host.vars
        layout = AppLayout.from_vars(v)
        keep = int(v["app_keep_releases"])
        started = time.monotonic()
        known = staged.pop(remote.name, None) if staged is not None else None
        state = known if known is not None else _prepare(remote, ctx, art, opts)
        names = [r.name for r in state.releases] + [art.name]
        protect = [art.name] + ([state.current] if state.current else [])
        params = activation_params(
            layout,
            v,
            action="deploy",
            target=art.name,
            ref=art.ref,
            sha=art.sha,
            message=opts.message,
            prune=releases_to_prune(
                names, keep, protect=protect, bad=[r.name for r in state.releases if r.bad]
            ),
            health_timeout=opts.health_timeout,
        )
        if hook is not None:
            hook.before_switch(remote, state)
        act = activate(remote, layout, params)
        change = _result_change(remote, act, f"deployed {art.describe}")
        ctx.notes.append(f"deploy took {time.monotonic() - started:.1f} s")
        if hook is not None:
            return [change, *hook.after_switch(remote, ctx, state, act)]
        return [change]

    return work


def rollback_check(
    *,
    steps: int = 1,
    to: str | None = None,
    states: dict[str, HostState] | None = None,
    guard: Callable[[HostState, Release], object] | None = None,
    journal: int = 0,
) -> Callable[[Remote], object]:
    """For run_in_batches' `check`: the rollback's target exists and is good on this host (one
    read of its state), so that a `--to` one host lacks changes no host. The state read is kept
    in `states` for rollback_work: the host stays locked until its work is done. `guard` (e.g.
    the schema guard, reading `journal` lines of the journal) may refuse the target too."""

    def check(remote: Remote) -> object:
        state = read_state(remote, AppLayout.from_vars(remote.host.vars), journal=journal)
        target = choose_rollback(state, steps=steps, to=to)
        if guard is not None:
            guard(state, target)
        if states is not None:
            states[remote.name] = state
        return target

    return check


def rollback_work(
    *,
    steps: int = 1,
    to: str | None = None,
    opts: Options = Options(),
    landed: dict[str, str] | None = None,
    states: dict[str, HostState] | None = None,
) -> Callable[[Remote, RunContext], list[Change]]:
    """The work of `inv rollback` on one host: back to an older good release, gated (run by
    run_in_batches while it holds the fleet's deploy lock).

    `landed` (if given) gets each host's new current release's commit once it passed the gate.
    `states` holds what rollback_check read of the host under the same lock (else it is read).
    """

    def work(remote: Remote, ctx: RunContext) -> list[Change]:
        v = remote.host.vars
        layout = AppLayout.from_vars(v)
        known = states.pop(remote.name, None) if states is not None else None
        state = known if known is not None else read_state(remote, layout)
        target = choose_rollback(state, steps=steps, to=to)
        state.check_spare_port(layout)
        params = activation_params(
            layout,
            v,
            action="rollback",
            target=target.name,
            ref=str(target.meta.get("ref", "")),
            sha=str(target.meta.get("sha", "")),
            message=opts.message,
            prune=(),
            health_timeout=opts.health_timeout,
        )
        act = activate(remote, layout, params)
        # a release prepared before app_shared_paths had its own copy: the activation said so
        ctx.notes += [
            line.split(" ", 1)[-1] for line in act.log.splitlines() if SHARED_LINKED in line
        ]
        change = _result_change(remote, act, f"rolled back to {target.label}")
        if landed is not None and target.meta.get("sha"):
            landed[remote.name] = str(target.meta["sha"])
        return [change]

    return work


# --- one deploy at a time per app and fleet ------------------------------------------------------


class Once(Generic[T]):
    """`fn` called at most once, by whichever thread asks first; the others get its value (or
    its exception)."""

    def __init__(self, fn: Callable[[], T]) -> None:
        self.fn = fn
        self._lock = threading.Lock()
        self._done = False
        self._value: T | None = None
        self.error: BaseException | None = None

    def __call__(self) -> T:
        with self._lock:
            if not self._done:
                try:
                    self._value = self.fn()
                except Exception as exc:
                    self.error = exc
                self._done = True
        if self.error is not None:
            raise self.error
        return self._value  # type: ignore[return-value]


class FleetLock:
    """One deploy or rollback at a time for every selected host of the app.

    Each host's work (one SSH connection per host, all open at once) takes that host's deploy
    lock (HostLock) in one order, host name after host name, so that two deploys started together
    meet at the same first host. Nothing changes anywhere until every host's lock is held; if one
    is refused (or unreachable) every host lets go and reports why: the holder is named. Then the
    batches run in turn, each host keeping its lock until its own part is done. A lock lives on
    its host's connection: if the operator's process dies, every lock dies with it.
    """

    def __init__(
        self,
        hosts: Sequence[Host],
        batch: int,
        info: Mapping[str, Any],
        prepare: Callable[[], object] | None = None,
        check: Callable[[Remote], object] | None = None,
        stage: Callable[[Remote, RunContext], object] | None = None,
    ) -> None:
        self.groups = batches(hosts, batch)
        self.check = check
        self.stage = stage
        self.check_failed: dict[str, str] = {}  # host -> why its check refused the work
        self.order = sorted(h.name for h in hosts)
        self.batch_of = {h.name: n for n, g in enumerate(self.groups) for h in g}
        self.info = dict(info, hosts=len(self.order))
        self.prepare = prepare
        self.cond = threading.Condition()
        self.locked: set[str] = set()
        self.refused: dict[str, str] = {}
        self.finished: dict[str, bool] = {}
        self.cancelled = False

    def _wait(self, ready: Callable[[], bool]) -> None:
        while not ready():
            if self.cancelled:
                raise DeployError("not run: interrupted; this host is unchanged")
            self.cond.wait(0.2)

    def _refusal(self) -> str:
        host, why = sorted(self.refused.items())[0]
        return f"not run: {host}: {why}; this host is unchanged"

    def cancel(self) -> None:
        with self.cond:
            self.cancelled = True
            self.cond.notify_all()

    def on_result(self, result: HostResult) -> None:
        with self.cond:
            self.finished[result.host] = result.error is None
            if result.host not in self.locked and result.host not in self.refused:
                self.refused[result.host] = result.error or "stopped"
            self.cond.notify_all()

    def wrap(
        self, work: Callable[[Remote, RunContext], Sequence[Change]]
    ) -> Callable[[Remote, RunContext], Sequence[Change]]:
        def locked_work(remote: Remote, ctx: RunContext) -> Sequence[Change]:
            name = remote.name
            before = self.order[: self.order.index(name)]
            with self.cond:
                self._wait(lambda: bool(self.refused) or all(n in self.locked for n in before))
                if self.refused:
                    raise DeployError(self._refusal())
            lock = HostLock(remote, AppLayout.from_vars(remote.host.vars), self.info)
            try:
                lock.__enter__()
            except Exception as exc:
                with self.cond:
                    self.refused[name] = str(exc)
                    self.cond.notify_all()
                raise
            try:
                if self.check is not None:
                    try:
                        self.check(remote)  # e.g. the rollback's target exists here
                    except DeployError as exc:
                        with self.cond:
                            self.refused[name] = self.check_failed[name] = str(exc)
                            self.cond.notify_all()
                        raise
                with self.cond:
                    self.locked.add(name)
                    self.cond.notify_all()
                    self._wait(lambda: bool(self.refused) or len(self.locked) == len(self.order))
                    if self.refused:
                        raise DeployError(self._refusal())
                if self.prepare is not None:
                    try:
                        self.prepare()
                    except Exception as exc:
                        raise DeployError(f"not run: {exc}; this host is unchanged") from exc
                if self.stage is not None:
                    self.stage(remote, ctx)  # every host at once, before the batches switch
                n = self.batch_of[name]
                earlier = [h for g in self.groups[:n] for h in g]
                with self.cond:
                    self._wait(lambda: all(h.name in self.finished for h in earlier))
                    for k, g in enumerate(self.groups[:n], 1):
                        failed = [h.name for h in g if not self.finished[h.name]]
                        if failed:
                            raise DeployError(
                                f"not run: batch {k} failed ({', '.join(failed)}); "
                                "this host is unchanged"
                            )
                return work(remote, ctx)
            finally:
                lock.__exit__()

        return locked_work


def run_in_batches(
    inventory: Inventory,
    hosts: Sequence[Host],
    work: Callable[[Remote, RunContext], Sequence[Change]],
    *,
    batch: int,
    info: Mapping[str, Any] | None = None,
    prepare: Once[Any] | None = None,
    check: Callable[[Remote], object] | None = None,
    stage: Callable[[Remote, RunContext], object] | None = None,
    sudo_password: Secret | None = None,
    on_result: Callable[[HostResult], None] | None = None,
    on_interrupt: Callable[[], None] | None = None,
) -> list[HostResult]:
    """Run `work` batch after batch (hosts of a batch in parallel; stop after a failed batch)
    under the fleet's deploy lock (FleetLock): nothing changes on any host until every host's
    lock is held. `prepare` (the build) runs once, after that; if it fails, its exception is
    raised here once every lock is released. `info` says who holds the lock and why. `check`
    runs on each host once its lock is held, before any host changes: a DeployError it raises on
    any host stops every host, and is raised here as a ConfigError (exit 2) naming the hosts.
    `stage` runs on every host at once after `prepare`, before the first batch's work (a deploy
    with a migration prepares everywhere, then migrates once, before any host switches).
    `on_interrupt` is called on Ctrl-C before waiting for the started hosts (to end a watch)."""
    fleet = FleetLock(hosts, batch, info or lock_info("deploy", ""), prepare, check, stage)

    def report(result: HostResult) -> None:
        fleet.on_result(result)
        if on_result is not None and not (prepare is not None and prepare.error is not None):
            on_result(result)

    done: list[list[HostResult]] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            done.append(
                run_on_hosts(
                    inventory,
                    hosts,
                    fleet.wrap(work),
                    workers=len(hosts),
                    sudo_password=sudo_password,
                    on_result=report,
                )
            )
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="opskit-deploy", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.2)
    except KeyboardInterrupt:
        fleet.cancel()  # hosts waiting for a lock or a batch stop; started ones finish
        if on_interrupt is not None:
            on_interrupt()
        thread.join()
        raise
    if failure:
        raise failure[0]
    if fleet.check_failed:
        why = "; ".join(f"{h}: {e}" for h, e in sorted(fleet.check_failed.items()))
        raise ConfigError(f"refused before any host changed: {why}")
    if prepare is not None and prepare.error is not None:
        raise prepare.error
    return done[0]


@dataclass(frozen=True)
class HostReleases:
    host: str
    state: HostState | None = None
    error: str | None = None
    keep: int = 0


def list_releases(
    inventory: Inventory, hosts: Sequence[Host], *, journal: int = 0, workers: int = 8
) -> list[HostReleases]:
    """Each host's releases, current, bad marks, lock holder (and the journal's last lines)."""
    found: dict[str, HostState] = {}

    def work(remote: Remote, ctx: RunContext) -> list[Change]:
        found[remote.name] = read_state(
            remote, AppLayout.from_vars(remote.host.vars), journal=journal
        )
        return []

    results = run_on_hosts(inventory, hosts, work, workers=workers)
    return [
        HostReleases(
            r.host,
            found.get(r.host),
            r.error,
            int(inventory.host(r.host).vars["app_keep_releases"]),
        )
        for r in results
    ]


def format_releases(rows: Sequence[HostReleases]) -> str:
    """What `inv releases` prints: per host, newest first; * current, ! bad."""
    out = []
    for row in rows:
        if row.error or row.state is None:
            out.append(f"[{row.host}] FAILED   {row.error}")
            continue
        s = row.state
        out.append(
            f"[{row.host}] {len(s.releases)} release(s), current: {s.current or 'none'}"
            + (f", keeping {row.keep}" if row.keep else "")
        )
        if s.lock:
            out.append(f"    LOCKED: {describe_lock(s.lock)}")
        if s.activating:
            out.append("    an activation is running")
        for r in reversed(s.releases):
            mark = "*" if r.name == s.current else ("!" if r.bad else " ")
            m = r.meta
            line = (
                f"  {mark} {r.name}  {r.label:<14} deployed {m.get('deployed_at', '?')} "
                f"by {m.get('deployed_by', '?')}"
            )
            if m.get("message"):
                line += f"  ({m['message']})"
            if r.bad:
                line += f"\n      BAD since {r.bad.get('at', '?')}: {r.bad.get('reason', '')}"
            out.append(line)
        if s.journal:
            out.append("    journal:")
            for j in s.journal:
                out.append(
                    f"      {j.get('time', '?')} {j.get('action', '?'):<8} "
                    f"{j.get('result', '?'):<6} "
                    f"{j.get('release', '')} (from {j.get('from') or 'none'}) by "
                    f"{j.get('operator', '?')} ref {j.get('ref', '')} {j.get('seconds', '')} s"
                    + (f": {j['detail']}" if j.get("detail") else "")
                )
    return "\n".join(out) + "\n"
