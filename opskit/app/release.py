"""Operator side of a deploy: build a release artifact from a git ref, and the PM2 bundle.

Everything here runs on the operator's machine (which reaches git remotes and the npm registry);
the hosts only receive finished tarballs. An artifact has two parts, so that a host is sent only
what it lacks:

* the **code**: ``git archive <commit>:<app_repo_path>`` (gzipped). Its identity is the git
  tree id of that directory, so two commits with the same app code are the same code;
* the **dependencies**: ``node_modules`` as ``npm ci --omit=dev --ignore-scripts`` makes it from
  the app's ``package-lock.json``, cached locally by the lock's sha256 (the *deps key*): a deploy
  whose lock did not change runs no npm at all.

Tarballs are deterministic (sorted names, fixed mtime and owners, gzip without a timestamp), so
the same input always has the same sha256. `inv deploy` builds with ``install=False`` and lets
opskit.app.build install the dependencies on the hosts' platform (install scripts run there).
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import posixpath
import re
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from opskit.core.artifacts import (
    BuildError,
    cache_dir,
    gzip_bytes,
    retimed,
    run_local,
    sha256,
    tar_gz_dir,
)
from opskit.core.errors import ConfigError

log = logging.getLogger(__name__)

_SHA_RE = re.compile(r"^[0-9a-f]{40}$")


def operator() -> str:
    """Who deploys, for locks and journals: ``$OPSKIT_OPERATOR`` or ``user@machine``."""
    return os.environ.get("OPSKIT_OPERATOR") or f"{getpass.getuser()}@{socket.gethostname()}"


# --- the release artifact ------------------------------------------------------------------------


@dataclass(frozen=True)
class Artifact:
    """A release built from one commit of the app's repo, ready to upload."""

    name: str  # the release's directory name on the hosts: <UTC time>-<short sha>
    ref: str  # what the operator asked for (tag, branch, sha)
    sha: str  # the commit
    describe: str  # `git describe --tags --always`
    tree: str  # git tree id of the app directory: the code's identity
    code: bytes  # tar.gz of the app directory (no node_modules)
    deps_key: str  # sha256 of package-lock.json, or "" when the app has no dependencies
    deps: bytes | None  # tar.gz of node_modules (None when deps_key is "")
    built_at: str
    built_by: str

    @property
    def code_sha256(self) -> str:
        return sha256(self.code)

    @property
    def deps_sha256(self) -> str:
        return sha256(self.deps) if self.deps is not None else ""

    def metadata(self, *, message: str = "") -> dict[str, str]:
        """What the host keeps in the release's .opskit-release.json."""
        return {
            "name": self.name,
            "ref": self.ref,
            "sha": self.sha,
            "describe": self.describe,
            "tree": self.tree,
            "deps_key": self.deps_key,
            "built_at": self.built_at,
            "built_by": self.built_by,
            "message": message,
        }


def release_name(sha: str, when: float) -> str:
    """Release directory names sort by creation time.

    >>> release_name("0123456789abcdef0123456789abcdef01234567", 0)
    '19700101T000000Z-0123456'
    """
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when)) + f"-{sha[:7]}"


def resolve_repo(repo: str, base_dir: Path, *, cache: Path | None = None) -> Path:
    """A local git directory for `repo`: a path (relative to the inventory) or a remote URL.

    A remote URL is mirrored into the local cache and fetched on every deploy.
    """
    if not repo:
        raise ConfigError(
            "app_repo is not set: name the app's git repository (a path or a URL) in the inventory"
        )
    if "://" not in repo and not re.match(r"^[\w.-]+@[\w.-]+:", repo):
        path = (base_dir / repo).expanduser().resolve()
        if not path.exists():
            raise ConfigError(f"app_repo: {path} does not exist")
        return path
    mirror = (cache or cache_dir()) / "repos" / (sha256(repo.encode())[:16] + ".git")
    if mirror.exists():
        run_local(
            ["git", "-C", str(mirror), "fetch", "-q", "--prune", "--tags", "origin"],
            what=f"fetching {repo}",
        )
    else:
        mirror.parent.mkdir(parents=True, exist_ok=True)
        run_local(["git", "clone", "-q", "--mirror", repo, str(mirror)], what=f"cloning {repo}")
    return mirror


def _git(repo: Path, *args: str, what: str) -> bytes:
    return run_local(["git", "-C", str(repo), *args], what=what)


def resolve_commit(repo: Path, ref: str) -> str:
    """The commit `ref` names in `repo`, or ConfigError (nothing built, nothing touched)."""
    if not ref or ref.startswith("-"):
        raise ConfigError(f"--ref {ref!r}: expected a git ref (tag, branch or commit)")
    try:
        out = _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", what="ref")
    except BuildError:
        raise ConfigError(f"--ref {ref!r}: no such commit, tag or branch in {repo}") from None
    sha = out.decode().strip()
    if not _SHA_RE.match(sha):
        raise ConfigError(f"--ref {ref!r}: git answered {sha!r}")
    return sha


def build(
    repo: Path,
    subdir: str,
    ref: str,
    *,
    cache: Path | None = None,
    now: float | None = None,
    install: bool = True,
) -> Artifact:
    """Build the artifact of `ref`: the app's code at that commit and its dependencies.

    `install=False`: the code only (deps None, deps_key the lock's sha256); opskit.app.build
    then installs the dependencies where the platform matches the hosts'."""
    sha = resolve_commit(repo, ref)
    path = subdir.strip("/") or "."
    treeish = sha if path == "." else f"{sha}:{path}"
    # `<commit>:<path>` names the directory's tree (a `^{tree}` suffix would be part of the path)
    spec = f"{sha}^{{tree}}" if path == "." else treeish
    try:
        tree = _git(repo, "rev-parse", "--verify", spec, what="app path").decode().strip()
        kind = _git(repo, "cat-file", "-t", tree, what="app path").decode().strip()
    except BuildError:
        kind = ""
    if kind != "tree":
        raise ConfigError(f"app_repo_path {subdir!r}: not a directory at {ref} in {repo}")
    archive = _git(repo, "archive", "--format=tar", treeish, what="git archive")
    committed = int(_git(repo, "show", "-s", "--format=%ct", sha, what="commit time"))
    code = gzip_bytes(retimed(archive, committed))
    describe = _git(repo, "describe", "--tags", "--always", sha, what="git describe")

    def show(name: str) -> bytes | None:
        try:
            return _git(
                repo, "show", f"{treeish}/{name}" if path != "." else f"{sha}:{name}", what=name
            )
        except BuildError:
            return None

    package = show("package.json")
    lock = show("package-lock.json")
    deps_key, deps = "", None
    if package is not None:
        try:
            declared = json.loads(package).get("dependencies") or {}
        except (ValueError, AttributeError) as exc:
            raise BuildError(f"{path}/package.json at {ref}: not valid JSON ({exc})") from None
        if declared:
            if lock is None:
                raise BuildError(
                    f"{path}/package.json at {ref} declares dependencies but there is no "
                    "package-lock.json: commit one (npm install --package-lock-only)"
                )
            deps_key = sha256(lock)
            local = {f: show(f) for f in local_tarballs(declared)}
            missing = sorted(f for f, data in local.items() if data is None)
            if missing:
                raise BuildError(f"{path}/package.json at {ref}: {', '.join(missing)} not in git")
            files = {f: data for f, data in local.items() if data is not None}
            if install:
                deps = dependencies(package, lock, deps_key, cache=cache, files=files)
    when = time.time() if now is None else now
    return Artifact(
        name=release_name(sha, when),
        ref=ref,
        sha=sha,
        describe=describe.decode().strip(),
        tree=tree,
        code=code,
        deps_key=deps_key,
        deps=deps,
        built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when)),
        built_by=operator(),
    )


def local_tarballs(declared: dict[str, str]) -> list[str]:
    """The app's own package tarballs its dependencies name (`file:vendor/x-1.0.0.tgz`): npm ci
    needs them beside package.json (their integrity is in the lock file, so the deps key holds).

    >>> local_tarballs({"ms": "2.1.3", "probe": "file:vendor/probe-1.0.0.tgz", "d": "file:../d"})
    ['vendor/probe-1.0.0.tgz']
    """
    found = []
    for spec in declared.values():
        rel = str(spec)[len("file:") :] if str(spec).startswith("file:") else ""
        if rel.endswith((".tgz", ".tar.gz")) and not rel.startswith("/") and ".." not in rel:
            found.append(posixpath.normpath(rel))
    return sorted(found)


def dependencies(
    package: bytes,
    lock: bytes,
    key: str,
    *,
    cache: Path | None = None,
    files: dict[str, bytes] | None = None,
) -> bytes:
    """node_modules for this lock file as a tarball: from the cache, else `npm ci` once.
    `files`: the local package tarballs the dependencies name (relative path -> bytes)."""
    root = (cache or cache_dir()) / "deps"
    tarball = root / f"{key}.tar.gz"
    if tarball.exists():
        return tarball.read_bytes()
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".build-") as tmp:
        work = Path(tmp)
        (work / "package.json").write_bytes(package)
        (work / "package-lock.json").write_bytes(lock)
        for rel, data in (files or {}).items():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            (work / rel).write_bytes(data)
        run_local(
            ["npm", "ci", "--omit=dev", "--ignore-scripts", "--no-audit", "--no-fund"],
            cwd=work,
            what="installing the app's dependencies with npm ci (operator side)",
        )
        modules = work / "node_modules"
        modules.mkdir(exist_ok=True)
        for junk in modules.glob(".package-lock.json"):
            junk.unlink()  # npm's own bookkeeping; it holds no code
        data = tar_gz_dir(modules, prefix="node_modules")
        partial = tarball.with_suffix(".partial")
        partial.write_bytes(data)
        partial.replace(tarball)
    return data
