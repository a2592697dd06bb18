"""The lab's base images: debootstrapped Debian trees, built once, shared read-only by the hosts
as the lower layer of their overlays. One image per kind (`ImageKind`: suite and baked-in package
list): a "baked" host boots from its suite's image with ``lab.packages``, a "bare" host from the
minimal one (systemd, openssh-server, sudo, python3: what a hosting provider hands over).

On disk::

    <cache_dir>/base-<key>/               the image; key: base_image_key (packages, recipe, baked)
    <cache_dir>/base-<key>.used           touched whenever an `up` uses that image
    <cache_dir>/build-<key>.log           output of the last build of that image
    <cache_dir>/.lock                     serialises builds (several labs may share a cache_dir)

debootstrap (https://wiki.debian.org/Debootstrap) installs the minimal base set; apt in a chroot
then installs the inventory's ``lab.packages`` (baked in so that converging the lab installs
nothing heavy). A build takes a few minutes and needs root.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from opskit.lab.apt import (
    APT_PROXY_CONF,
    SUITE,
    apt_proxy_conf,
    machine_source_files,
    pick_mirror,
    read_machine_apt_sources,
)
from opskit.lab.proc import (
    CONTAINER_PATH,
    INSTALL_HINT,
    Progress,
    check_prerequisites,
    locked,
    mounts,
    noop,
    read_tail,
    remove_tree,
    run,
    standard_umask,
    umount_under,
    write_file,
)
from opskit.lab.spec import SUITES, LabError, LabHost, LabSpec, gateway_ip

# Bump when the image recipe (_build_image / _configure_image) changes: it is part of the key.
RECIPE_VERSION = 2
# Daemons of baked-in packages that only their role starts (see _build_image).
ROLE_DAEMONS = ("nginx.service", "postgresql.service", "certbot.timer")
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "openssh-server", "iproute2", "python3", "sudo")
# Units masked in the image. apt-daily*: a timer-driven apt run in a host would hold the dpkg lock
# while a test installs something (and would go through the proxy unasked).
MASKED_UNITS = ("apt-daily.timer", "apt-daily-upgrade.timer")


@dataclass(frozen=True)
class ImageKind:
    """What distinguishes base images: the Debian suite and the packages baked in."""

    suite: str
    packages: tuple[str, ...]

    @property
    def label(self) -> str:
        extra = f"{len(self.packages)} packages" if self.packages else "bare"
        return f"{self.suite}, {extra}"


def image_kind(spec: LabSpec, host: LabHost) -> ImageKind:
    """The image `host` boots from.

    >>> from pathlib import Path
    >>> spec = LabSpec(Path("/s"), Path("/c"), "b", "10.0.0.1/24", ("nginx",), (), "d",
    ...                Path("/k"), Path("/h"))
    >>> image_kind(spec, LabHost("w", "10.0.0.2", "trixie", "bare"))
    ImageKind(suite='trixie', packages=())
    """
    return ImageKind(host.suite, spec.packages if host.image == "baked" else ())


def base_image_key(
    packages: Collection[str], baked: Mapping[str, str] | None = None, suite: str = SUITE
) -> str:
    """Short sha256 naming a base image: the package set, the recipe and what is baked in.

    The order of `packages` does not matter; `baked` holds values written into the image
    (deploy user, gateway, mirror), so changing one of them builds a new image.

    >>> base_image_key(["curl", "less"]) == base_image_key(["less", "curl", "less"])
    True
    """
    payload = {
        "recipe": RECIPE_VERSION,
        "suite": suite,
        "packages": sorted(set(packages)),
        "baked": dict(sorted((baked or {}).items())),
    }
    blob = json.dumps(payload, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def ensure_base_images(
    spec: LabSpec, kinds: Collection[ImageKind], progress: Progress = noop
) -> dict[ImageKind, Path]:
    """Return the cached base image of each kind, building the missing ones (minutes each).

    Images are keyed by base_image_key(); several inventories can share one cache_dir. Besides
    the images returned, the most recently used others are kept (``base-<key>.used`` stamps),
    and no image a host has mounted is ever removed; older ones are deleted.
    """
    check_prerequisites()
    sources = read_machine_apt_sources()
    mirror = pick_mirror(sources)
    spec.cache_dir.mkdir(parents=True, exist_ok=True)
    images: dict[ImageKind, Path] = {}
    with locked(spec.cache_dir / ".lock", progress), standard_umask():
        for kind in dict.fromkeys(kinds):
            key = base_image_key(kind.packages, _baked(spec, mirror), kind.suite)
            image = spec.cache_dir / f"base-{key}"
            if not (image / "etc" / "os-release").exists():
                _build_image(spec, kind, image, key, mirror, progress)
            image.with_name(image.name + ".used").touch()
            images[kind] = image
        _remove_old_images(spec.cache_dir, keep=set(images.values()), progress=progress)
    return images


def _baked(spec: LabSpec, mirror: str) -> dict[str, str]:
    # What the image holds that is not a package. The gateway is not in here: each host gets its
    # apt proxy address written into its own overlay, so labs on other subnets share the image.
    return {"deploy_user": spec.deploy_user, "mirror": mirror}


def _build_image(
    spec: LabSpec, kind: ImageKind, image: Path, key: str, mirror: str, progress: Progress
) -> None:
    for stale in spec.cache_dir.glob(".base-*.tmp"):
        # We hold the cache lock, so nobody else is building: this is an interrupted build.
        progress(f"removing an interrupted build: {stale}")
        remove_tree(stale)
    tmp = spec.cache_dir / f".base-{key}.tmp"
    build_log = spec.cache_dir / f"build-{key}.log"
    build_log.write_text("")
    # Only the base set goes through debootstrap's own resolver: with a long --include list
    # (postgresql, nginx, nodejs, ...) it configures packages in an order that fails. apt inside
    # the chroot installs spec.packages afterwards.
    argv = [
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(BASE_PACKAGES)}",
        kind.suite,
        str(tmp),
        mirror,
    ]
    progress(f"building base image ({kind.label}; first time, minutes)…")
    started = time.monotonic()
    for attempt in range(1, BUILD_ATTEMPTS + 1):
        try:
            _build_once(argv, tmp, spec, kind, build_log, progress)
            break
        except LabError as exc:
            if attempt == BUILD_ATTEMPTS or not transient_network_error(str(exc)):
                raise
            wait = 15 * attempt
            progress(
                f"base image: the mirror could not be reached ({_first_fetch_error(str(exc))}); "
                f"trying again in {wait} s (attempt {attempt + 1} of {BUILD_ATTEMPTS})"
            )
            time.sleep(wait)
    os.rename(tmp, image)
    size = run(["du", "-sh", str(image)], check=False).stdout.split("\t")[0]
    progress(f"base image ready in {time.monotonic() - started:.0f} s ({size}): {image}")


# A fresh machine's resolver can fail for a while ("Temporary failure resolving"): such a build
# is tried again from scratch, twice, before the error reaches the operator.
BUILD_ATTEMPTS = 3
_TRANSIENT = re.compile(
    r"Temporary failure resolving|Could not resolve|Failed to fetch|Connection timed out|"
    r"Connection refused|Connection reset|Couldn't download|Unable to connect|"
    r"Hash Sum mismatch"
)


def transient_network_error(message: str) -> bool:
    """Whether a failed build says that the mirror was unreachable (worth another try).

    >>> transient_network_error("E: Failed to fetch http://deb/x.deb  Temporary failure resolving")
    True
    >>> transient_network_error("E: Unable to locate package nosuch")
    False
    """
    return _TRANSIENT.search(message) is not None


def _first_fetch_error(message: str) -> str:
    for line in message.splitlines():
        if transient_network_error(line):
            return line.strip()[:120]
    return "network error"


def _build_once(
    argv: Sequence[str],
    tmp: Path,
    spec: LabSpec,
    kind: ImageKind,
    build_log: Path,
    progress: Progress,
) -> None:
    try:
        try:
            _stream(argv, build_log, progress, _debootstrap_phase)
        except LabError:
            detail = tmp / "debootstrap/debootstrap.log"
            with open(build_log, "a", encoding="utf-8") as out, contextlib.suppress(OSError):
                out.write(detail.read_text(errors="replace"))
            raise
        _configure_image(tmp, spec, kind, build_log, progress)
    except BaseException:
        remove_tree(tmp)
        raise


_PER_PACKAGE = re.compile(r"^I: (Retrieving|Validating|Extracting|Unpacking|Configuring) (?!the )")


def _debootstrap_phase(line: str) -> str | None:
    """debootstrap's phase lines for progress; its per-package lines are too many."""
    if not line.startswith("I: ") or _PER_PACKAGE.match(line):
        return None
    text = line[3:].strip()
    return text if len(text) < 80 else text[:77] + "..."


def _stream(
    argv: Sequence[str],
    build_log: Path,
    progress: Progress,
    phase: Callable[[str], str | None],
    env: Mapping[str, str] | None = None,
) -> None:
    """Run `argv`, appending its output to `build_log`; `phase` picks lines for progress."""
    with open(build_log, "a", encoding="utf-8") as logfile:
        logfile.write(f"$ {shlex.join(argv)}\n")
        logfile.flush()
        try:
            proc = subprocess.Popen(
                list(argv),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                errors="replace",
                env=dict(env) if env is not None else None,
                start_new_session=True,  # its own process group: see the except below
            )
        except OSError as exc:
            raise LabError(f"cannot run {argv[0]}: {exc}; install with: {INSTALL_HINT}") from exc
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                logfile.write(line)
                message = phase(line)
                if message:
                    progress(f"base image: {message}")
        except BaseException:
            # Interrupted (Ctrl-C): stop debootstrap/dpkg and their children before the caller
            # deletes the half-built tree under them.
            _kill_group(proc)
            raise
        rc = proc.wait()
    if rc != 0:
        raise LabError(
            f"base image: exit {rc} from {shlex.join(argv[:4])}...; full log: {build_log}\n"
            f"{read_tail(build_log, 25)}"
        )


def _kill_group(proc: subprocess.Popen[str]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def _configure_image(
    root: Path, spec: LabSpec, kind: ImageKind, build_log: Path, progress: Progress
) -> None:
    env = {
        "PATH": CONTAINER_PATH,
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "DEBIAN_FRONTEND": "noninteractive",
    }

    def chroot(*argv: str, phase: Callable[[str], str | None] = lambda line: None) -> None:
        _stream(["chroot", str(root), *argv], build_log, progress, phase, env)

    # The same apt sources as this machine (debootstrap wrote its own sources.list).
    (root / "etc/apt/sources.list").unlink(missing_ok=True)
    for path in machine_source_files(Path("/etc/apt")):
        target = root / path.relative_to("/")
        write_file(target, for_suite(path.read_text(encoding="utf-8"), kind.suite), 0o644)
        for keyring in re.findall(r"(?im)^\s*signed-by:\s*(/\S+)\s*$", target.read_text()):
            copy = root / keyring.lstrip("/")
            if Path(keyring).is_file() and not copy.exists():
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(keyring, copy)
    # apt needs DNS now (the chroot shares this machine's network); the hosts will not.
    resolv = root / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    shutil.copyfile("/etc/resolv.conf", resolv)
    # Maintainer scripts must not start daemons on this machine (policy-rc.d 101 = refuse);
    # some need /proc, initdb needs /dev/shm.
    policy = root / "usr/sbin/policy-rc.d"
    write_file(policy, "#!/bin/sh\n# opskit lab image build: start nothing\nexit 101\n", 0o755)
    try:
        run(["mount", "-t", "proc", "proc", str(root / "proc")])
        (root / "dev/shm").mkdir(parents=True, exist_ok=True)
        run(["mount", "-t", "tmpfs", "-o", "mode=1777,size=256m", "tmpfs", str(root / "dev/shm")])
        chroot("apt-get", "-o", "Acquire::Retries=3", "update")
        if kind.packages:
            progress(f"base image: apt-get install {len(kind.packages)} packages (minutes)…")
            chroot(
                "apt-get",
                "-o",
                "Acquire::Retries=3",
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "-o",
                "Dpkg::Options::=--force-unsafe-io",
                "--",
                *kind.packages,
                phase=lambda line: line.strip() if line.startswith("Setting up ") else None,
            )
        progress("base image: configuring (deploy user, apt sources and proxy, no host keys)…")
        user = spec.deploy_user
        chroot("useradd", "--create-home", "--shell", "/bin/bash", "--groups", "sudo", user)
        write_file(root / "etc/sudoers.d" / user, f"{user} ALL=(ALL) NOPASSWD:ALL\n", 0o440)
        chroot("visudo", "-cf", f"/etc/sudoers.d/{user}")
        # The packages are baked in for speed, but a real server runs a daemon only when a role
        # installed it: the roles enable what they need (a db host must not serve port 80).
        daemons = [u for u in ROLE_DAEMONS if _unit_file(root, u) is not None]
        if daemons:
            chroot("systemctl", "disable", "--quiet", *daemons)
        chroot("apt-get", "clean")
    finally:
        umount_under(root / "dev/shm")
        umount_under(root / "proc")
        policy.unlink(missing_ok=True)

    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()  # generated per host, so every host has its own
    write_file(root / APT_PROXY_CONF, apt_proxy_conf(gateway_ip(spec)))
    for unit in MASKED_UNITS:
        link = root / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/dev/null")
    write_file(root / "etc/hostname", "opskit-lab\n")
    resolv.unlink()
    # No DNS inside the lab: lookups go to the host's own loopback and fail fast. apt does not
    # resolve mirror names itself, the proxy (on this machine) does.
    write_file(
        resolv,
        "# opskit lab host: no DNS; apt reaches mirrors via its proxy\nnameserver 127.0.0.1\n",
    )
    write_file(
        root / "etc/opskit-lab-image",
        f"recipe={RECIPE_VERSION}\nsuite={kind.suite}\npackages={' '.join(kind.packages)}\n",
    )


KEEP_OTHER_IMAGES = 2  # besides the current ones: e.g. a second inventory's


def _unit_file(root: Path, unit: str) -> Path | None:
    for d in ("lib/systemd/system", "usr/lib/systemd/system", "etc/systemd/system"):
        if (root / d / unit).exists():
            return root / d / unit
    return None


def for_suite(sources: str, suite: str) -> str:
    """This machine's apt sources rewritten for another Debian suite (its updates and security
    suites too); unchanged when they already name it.

    >>> print(for_suite("Suites: bookworm bookworm-updates\\nURIs: http://m/debian\\n", "trixie"))
    Suites: trixie trixie-updates
    URIs: http://m/debian
    <BLANKLINE>
    >>> for_suite("deb http://m/debian-security bookworm-security main\\n", "trixie")
    'deb http://m/debian-security trixie-security main\\n'
    """
    return re.sub(rf"\b({'|'.join(SUITES)})(?=(-updates|-security|-backports)?\b)", suite, sources)


def _remove_old_images(cache_dir: Path, *, keep: set[Path], progress: Progress) -> None:
    """Delete base images beyond the current ones and the most recently used others."""
    in_use = "\n".join(opts for _, fstype, opts in mounts() if fstype == "overlay")

    def last_used(image: Path) -> float:
        stamp = image.with_name(image.name + ".used")
        return (stamp if stamp.exists() else image).stat().st_mtime

    others = [
        p
        for p in cache_dir.iterdir()
        if re.fullmatch(r"base-[0-9a-f]{12}", p.name) and p.is_dir() and p not in keep
    ]
    for old in sorted(others, key=last_used, reverse=True)[KEEP_OTHER_IMAGES:]:
        if f"lowerdir={old}," in in_use or f"lowerdir={old}:" in in_use:
            continue  # a running host still uses it; removed by a later `up`
        progress(f"removing old base image {old}")
        remove_tree(old)
        key = old.name.removeprefix("base-")
        for leftover in (old.with_name(old.name + ".used"), cache_dir / f"build-{key}.log"):
            leftover.unlink(missing_ok=True)
