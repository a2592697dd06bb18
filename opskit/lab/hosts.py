"""A lab host's files: its overlay on the base image, its per-host files (hostname, /etc/hosts,
machine-id, apt proxy), its SSH host keys, the lab's key pair and the operator's known_hosts.

On disk::

    <state_dir>/hosts/<name>/upper, work  the host's overlay layers (its writes, its SSH host keys)
    <state_dir>/hosts/<name>/root         the overlay mount: systemd-nspawn -D
    <state_dir>/hosts/<name>/image        the base image its overlay was made on
    <state_dir>/hosts/<name>/pid          pid of the host's systemd-nspawn
    <state_dir>/hosts/<name>/console.log  the host's console (boot messages)

overlayfs: https://docs.kernel.org/filesystems/overlayfs.html; the known_hosts format: sshd(8),
https://man.openbsd.org/sshd.8#SSH_KNOWN_HOSTS_FILE_FORMAT.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from opskit.lab.apt import APT_PROXY_CONF, apt_proxy_conf
from opskit.lab.proc import (
    is_mounted,
    remove_tree,
    run,
    safe_in_root,
    write_file,
    write_in_root,
)
from opskit.lab.spec import LabError, LabHost, LabSpec, gateway_ip


@dataclass(frozen=True)
class HostPaths:
    """Where one host's files are (see the module docstring)."""

    dir: Path
    upper: Path
    work: Path
    root: Path
    pid: Path
    console: Path
    image: Path


def host_paths(spec: LabSpec, name: str) -> HostPaths:
    """The paths of host `name` under the lab's state_dir."""
    d = spec.state_dir / "hosts" / name
    return HostPaths(
        d, d / "upper", d / "work", d / "root", d / "pid", d / "console.log", d / "image"
    )


def overlay_options(lower: Path, upper: Path, work: Path) -> str:
    """The overlayfs mount options for one host.

    >>> overlay_options(Path("/c/base-1"), Path("/s/upper"), Path("/s/work"))
    'lowerdir=/c/base-1,upperdir=/s/upper,workdir=/s/work'
    """
    for path in (lower, upper, work):
        if any(c in str(path) for c in ",:\\"):
            raise LabError(f"overlayfs cannot use a path containing ',', ':' or '\\': {path}")
    return f"lowerdir={lower},upperdir={upper},workdir={work}"


def known_hosts_line(address: str, host_pubkey: str) -> str:
    """A known_hosts line from an ``ssh_host_*_key.pub`` text (its comment is dropped).

    >>> known_hosts_line("10.213.0.11", "ssh-ed25519 AAAAC3Nz root@build\\n")
    '10.213.0.11 ssh-ed25519 AAAAC3Nz'
    """
    words = host_pubkey.split()
    if len(words) < 2 or not words[0].startswith(("ssh-", "ecdsa-", "sk-")):
        raise LabError(f"not an SSH public key: {host_pubkey.strip()[:60]!r}")
    return f"{address} {words[0]} {words[1]}"


def merge_known_hosts(existing: str, lines: Sequence[str], managed: Collection[str]) -> str:
    """Replace every entry for a `managed` address in known_hosts text by `lines`.

    Other hosts' lines, comments and hashed entries are kept as they are; an address is matched
    bare or as ``[address]:22``.

    >>> merge_known_hosts("a.example ssh-rsa AAA\\n10.0.0.5 ssh-ed25519 OLD\\n",
    ...                   ["10.0.0.5 ssh-ed25519 NEW"], {"10.0.0.5"})
    'a.example ssh-rsa AAA\\n10.0.0.5 ssh-ed25519 NEW\\n'
    """
    managed_patterns = set(managed) | {f"[{a}]:22" for a in managed}
    kept: list[str] = []
    for line in existing.splitlines():
        words = line.split()
        if not words or words[0].startswith("#") or words[0].startswith("|"):
            kept.append(line)
            continue
        marker = words[0] if words[0].startswith("@") else ""
        pattern_index = 1 if marker else 0
        if len(words) <= pattern_index:
            kept.append(line)
            continue
        patterns = words[pattern_index].split(",")
        remaining = [p for p in patterns if p not in managed_patterns]
        if len(remaining) == len(patterns):
            kept.append(line)
        elif remaining:
            words[pattern_index] = ",".join(remaining)
            kept.append(" ".join(words))
    text = "\n".join([*kept, *lines])
    return text + "\n" if text else ""


def render_etc_hosts(spec: LabSpec, name: str) -> str:
    """/etc/hosts of one lab host: loopback, the gateway and every lab host by name."""
    rows = [
        "# Written by opskit.lab.hosts at every `inv lab.up`.",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "ff02::1\tip6-allnodes",
        "ff02::2\tip6-allrouters",
        f"{gateway_ip(spec)}\topskit-gateway",
    ]
    rows += [f"{h.address}\t{h.name}" for h in spec.hosts]
    if name not in {h.name for h in spec.hosts}:
        raise LabError(f"no lab host named {name!r}")
    return "\n".join(rows) + "\n"


# --------------------------------------------------------------------------------------------
# Writing them


def ensure_identity(spec: LabSpec) -> str:
    """Create the lab's SSH key pair once; return the public key line."""
    key, pub = spec.identity, spec.identity.with_name(spec.identity.name + ".pub")
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "opskit-lab", "-f", str(key)])
    os.chmod(key, 0o600)
    if not pub.exists():
        write_file(pub, run(["ssh-keygen", "-y", "-f", str(key)]).stdout, 0o644)
    return pub.read_text().strip()


def _user_ids(root: Path, user: str) -> tuple[int, int, str]:
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if len(fields) >= 7 and fields[0] == user:
            return int(fields[2]), int(fields[3]), fields[5]
    raise LabError(f"user {user!r} missing from {root}/etc/passwd; rebuild the base image")


def prepare_host(spec: LabSpec, host: LabHost, image: Path, pubkey: str) -> None:
    """Mount the host's overlay and write its per-host files (idempotent)."""
    paths = host_paths(spec, host.name)
    for d in (paths.dir, paths.upper, paths.work, paths.root):
        d.mkdir(parents=True, exist_ok=True)
    os.chmod(paths.dir, 0o700)
    os.chmod(paths.upper, 0o755)  # the host's `/` takes its mode from the upper layer
    if not is_mounted(paths.root):
        options = overlay_options(image, paths.upper, paths.work)
        run(["mount", "-t", "overlay", f"opskit-{host.name}", "-o", options, str(paths.root)])
    write_file(paths.image, f"{image}\n")
    root = paths.root
    write_in_root(root, "etc/hostname", f"{host.name}\n")
    write_in_root(root, "etc/hosts", render_etc_hosts(spec, host.name))
    if not (paths.upper / "etc/machine-id").exists():
        write_in_root(root, "etc/machine-id", uuid.uuid4().hex + "\n", mode=0o444)
    write_in_root(root, APT_PROXY_CONF, apt_proxy_conf(gateway_ip(spec)))
    safe_in_root(root, "etc/ssh")
    run(["ssh-keygen", "-A", "-f", str(root)])  # creates only the missing host keys
    authorized = pubkey + "\n"
    uid, gid, home = _user_ids(root, spec.deploy_user)
    for rel, owner in (("root/.ssh", (0, 0)), (home.lstrip("/") + "/.ssh", (uid, gid))):
        ssh_dir = safe_in_root(root, rel)
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        os.chown(ssh_dir, *owner)
        os.chmod(ssh_dir, 0o700)
        write_in_root(root, f"{rel}/authorized_keys", authorized, mode=0o600, owner=owner)


def wipe_host(spec: LabSpec, name: str) -> None:
    """Delete a stopped host's overlay layers: all its changes and its host keys."""
    paths = host_paths(spec, name)
    if is_mounted(paths.root):
        raise LabError(f"{name}: {paths.root} is still mounted; cannot wipe its overlay")
    for d in (paths.upper, paths.work):
        remove_tree(d)


def write_known_hosts(spec: LabSpec) -> None:
    """(Re)write the lab hosts' ed25519 keys into spec.known_hosts, keeping other hosts' lines."""
    lines = []
    for host in spec.hosts:
        pub = host_paths(spec, host.name).upper / "etc/ssh/ssh_host_ed25519_key.pub"
        if pub.is_file():
            lines.append(known_hosts_line(host.address, pub.read_text()))
    try:
        existing = spec.known_hosts.read_text(encoding="utf-8")
    except FileNotFoundError:
        existing = ""
    merged = merge_known_hosts(existing, lines, {h.address for h in spec.hosts})
    if merged != existing:
        write_file(spec.known_hosts, merged, 0o644)
