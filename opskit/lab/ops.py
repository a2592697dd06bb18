"""The lab: a few real Debian 12 hosts booted on this machine with systemd-nspawn.

Recipe and measurements: ../shared/LAB.md. Everything here needs root. On disk::

    <cache_dir>/base-<key>/               debootstrap base image, the shared read-only lower layer
    <cache_dir>/base-<key>.used           touched whenever an `up` uses that image
    <cache_dir>/build-<key>.log           output of the last build of that image
    <state_dir>/.lock                     serialises up / down / reset_host
    <state_dir>/hosts/<name>/upper, work  the host's overlay layers (its writes, its SSH host keys)
    <state_dir>/hosts/<name>/root         the overlay mount: systemd-nspawn -D
    <state_dir>/hosts/<name>/pid          pid of the host's systemd-nspawn
    <state_dir>/hosts/<name>/console.log  the host's console (boot messages)
    <state_dir>/services/<svc>.pid, .log  stand-in services (opskit.lab.standins)
    <cgroup mounts>/opskit-lab/<name>/    each host's own cgroup (see _boot)

Network: the bridge ``lab.bridge`` holds ``lab.gateway`` in the root namespace; each host has a
network namespace ``opskit-<name>`` whose veth end ``host0`` holds the host's address, default
route via the gateway. No forwarding, no NAT: hosts reach this machine's bridge address only, and
an ``unreachable`` route for the lab subnet (metric 4000, kept after ``down``) makes sure lab
addresses never route out of the machine while the bridge is gone.

The library never prints: pass ``progress`` to get one-line messages.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from opskit.core.errors import OpsError
from opskit.lab import standins as labsvc

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

SUITE = "bookworm"
# Bump when the image recipe (_build_image / _configure_image) changes: it is part of the key.
RECIPE_VERSION = 2
# Daemons of baked-in packages that only their role starts (see _build_image).
ROLE_DAEMONS = ("nginx.service", "postgresql.service", "certbot.timer")
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "openssh-server", "iproute2", "python3", "sudo")
# Units masked in the image. apt-daily*: a timer-driven apt run in a host would hold the dpkg lock
# while a test installs something (and would go through the proxy unasked).
MASKED_UNITS = ("apt-daily.timer", "apt-daily-upgrade.timer")
INSTALL_HINT = "apt-get install debootstrap systemd-container iproute2 openssh-client"
REQUIRED_TOOLS = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "ip": "iproute2",
    "ssh-keygen": "openssh-client",
    "nsenter": "util-linux",
    "mount": "mount",
    "chroot": "coreutils",
}
APT_PROXY_CONF = "etc/apt/apt.conf.d/01opskit-lab-proxy"
CGROUP_PARENT = "opskit-lab"  # per-host cgroups: <cgroup mount>/opskit-lab/<name>
SSH_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_BRIDGE_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,14}$")


def _noop(message: str) -> None:
    """Default progress callback: drop the message."""


class LabError(OpsError):
    """The lab cannot do what was asked; the message says what, where and what to do."""


@dataclass(frozen=True)
class LabHost:
    """One lab host: its inventory name and IPv4 address on the lab bridge."""

    name: str
    address: str


@dataclass(frozen=True)
class LabSpec:
    """How to build and wire the lab, read from the inventory's `lab:` and `ssh:` sections."""

    state_dir: Path
    cache_dir: Path
    bridge: str
    gateway: str  # bridge address with prefix, "10.213.0.1/24"
    packages: tuple[str, ...]
    hosts: tuple[LabHost, ...]
    deploy_user: str
    identity: Path
    known_hosts: Path


@dataclass(frozen=True)
class LabHostStatus:
    """What one lab host is doing right now."""

    name: str
    address: str
    state: str  # "running" | "stopped" | "broken"
    pid: int | None  # pid of its systemd-nspawn
    ssh_ready: bool
    detail: str = ""


@dataclass(frozen=True)
class LabServiceStatus:
    """What one stand-in service is doing right now."""

    name: str
    address: str
    port: int
    pid: int | None
    listening: bool


@dataclass(frozen=True)
class AptSource:
    """One apt source entry (a deb822 stanza or a sources.list line)."""

    types: tuple[str, ...]
    uris: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...]


# --------------------------------------------------------------------------------------------
# Inventory


def load_lab_spec(inventory_path: Path) -> LabSpec:
    """Read the lab description from an inventory; LabError names file and key when it is bad."""
    where = str(inventory_path)
    try:
        data = yaml.safe_load(inventory_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise LabError(f"{where}: cannot read the inventory: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise LabError(f"{where}: not valid YAML: {exc}") from exc
    top = _mapping(data, where, "")
    base = inventory_path.parent
    ssh = _mapping(_required(top, "ssh", where, ""), where, "ssh")
    lab = _mapping(_required(top, "lab", where, ""), where, "lab")
    top_vars = _mapping(_required(top, "vars", where, ""), where, "vars")

    gateway = _gateway(
        _string(_required(lab, "gateway", where, "lab"), where, "lab.gateway"), where
    )
    bridge = _string(_required(lab, "bridge", where, "lab"), where, "lab.bridge")
    if not _BRIDGE_RE.match(bridge):
        raise LabError(
            f"{where}: lab.bridge: {bridge!r} is not a usable interface name "
            "(letters, digits, '-', '_'; at most 15 characters)"
        )
    packages_raw = lab.get("packages", [])
    if not isinstance(packages_raw, list):
        raise LabError(f"{where}: lab.packages: expected a list of Debian package names")
    packages: list[str] = []
    for i, item in enumerate(packages_raw):
        if not isinstance(item, str) or not _PACKAGE_RE.match(item):
            raise LabError(f"{where}: lab.packages[{i}]: {item!r} is not a Debian package name")
        if item not in packages:
            packages.append(item)
    user = _string(_required(top_vars, "ssh_user", where, "vars"), where, "vars.ssh_user")
    if not _USER_RE.match(user):
        raise LabError(f"{where}: vars.ssh_user: {user!r} is not a valid Linux user name")

    return LabSpec(
        state_dir=_path(lab, "state_dir", where, "lab", base),
        cache_dir=_path(lab, "cache_dir", where, "lab", base),
        bridge=bridge,
        gateway=str(gateway),
        packages=tuple(packages),
        hosts=_hosts(top, gateway, where),
        deploy_user=user,
        identity=_path(ssh, "identity", where, "ssh", base),
        known_hosts=_path(ssh, "known_hosts", where, "ssh", base),
    )


def _mapping(value: object, where: str, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        label = f"{key}: " if key else ""
        raise LabError(f"{where}: {label}expected a mapping, got {type(value).__name__}")
    return value


def _required(mapping: Mapping[str, Any], key: str, where: str, parent: str) -> Any:
    if mapping.get(key) is None:
        prefix = f"{parent}: " if parent else ""
        raise LabError(f"{where}: {prefix}missing '{key}'")
    return mapping[key]


def _string(value: object, where: str, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise LabError(f"{where}: {key}: expected a non-empty string, got {value!r}")
    return value.strip()


def _path(mapping: Mapping[str, Any], key: str, where: str, parent: str, base: Path) -> Path:
    value = _string(_required(mapping, key, where, parent), where, f"{parent}.{key}")
    if any(c in value for c in ",:\\\n"):
        # These would break overlayfs mount options and ssh's known_hosts handling.
        raise LabError(f"{where}: {parent}.{key}: {value!r} must not contain ',', ':' or '\\'")
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def _gateway(value: str, where: str) -> ipaddress.IPv4Interface:
    if "/" not in value:
        raise LabError(f"{where}: lab.gateway: {value!r} needs a prefix length, e.g. 10.213.0.1/24")
    try:
        gateway = ipaddress.ip_interface(value)
    except ValueError as exc:
        raise LabError(f"{where}: lab.gateway: {value!r} is not an IPv4 address/prefix") from exc
    if not isinstance(gateway, ipaddress.IPv4Interface) or not 8 <= gateway.network.prefixlen <= 30:
        raise LabError(
            f"{where}: lab.gateway: {value!r}: use an IPv4 address with a /8../30 prefix"
        )
    if gateway.ip in (gateway.network.network_address, gateway.network.broadcast_address):
        raise LabError(f"{where}: lab.gateway: {value!r} is the network or broadcast address")
    return gateway


def _hosts(
    top: Mapping[str, Any], gateway: ipaddress.IPv4Interface, where: str
) -> tuple[LabHost, ...]:
    groups = _mapping(_required(top, "groups", where, ""), where, "groups")
    found: dict[str, LabHost] = {}
    by_address: dict[str, str] = {}
    net = gateway.network
    for group_name, group in groups.items():
        group_map = _mapping(group, where, f"groups.{group_name}")
        hosts = _mapping(group_map.get("hosts") or {}, where, f"groups.{group_name}.hosts")
        for name, entry in hosts.items():
            key = f"groups.{group_name}.hosts.{name}"
            if not isinstance(name, str) or not _NAME_RE.match(name):
                raise LabError(
                    f"{where}: {key}: a lab host name is lowercase letters, digits and '-' "
                    "(at most 32 characters)"
                )
            raw = _required(_mapping(entry, where, key), "address", where, key)
            try:
                address = ipaddress.ip_address(str(raw))
            except ValueError as exc:
                raise LabError(f"{where}: {key}.address: {raw!r} is not an IP address") from exc
            if address not in net or address in (
                net.network_address,
                net.broadcast_address,
                gateway.ip,
            ):
                raise LabError(
                    f"{where}: {key}.address: {address} must be a host address in the lab "
                    f"subnet {net} other than the gateway {gateway.ip}"
                )
            host = LabHost(name, str(address))
            if name in found and found[name] != host:
                raise LabError(
                    f"{where}: {key}.address: {address} differs from {found[name].address} "
                    "given for the same host in another group"
                )
            if by_address.get(str(address), name) != name:
                raise LabError(
                    f"{where}: {key}.address: {address} is already used by "
                    f"{by_address[str(address)]}"
                )
            found[name] = host
            by_address[str(address)] = name
    if not found:
        raise LabError(f"{where}: groups: the lab needs at least one host")
    return tuple(found.values())


def gateway_ip(spec: LabSpec) -> str:
    """The bridge address without prefix ("10.213.0.1")."""
    return str(ipaddress.ip_interface(spec.gateway).ip)


def lab_network(spec: LabSpec) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The lab subnet ("10.213.0.0/24")."""
    return ipaddress.ip_interface(spec.gateway).network


def find_host(spec: LabSpec, name: str) -> LabHost:
    """Return the lab host called `name`; LabError lists the known names otherwise."""
    for host in spec.hosts:
        if host.name == name:
            return host
    known = ", ".join(h.name for h in spec.hosts)
    raise LabError(f"no lab host named {name!r} (lab hosts: {known})")


# --------------------------------------------------------------------------------------------
# Pure helpers


def parse_deb822_sources(text: str) -> list[AptSource]:
    """Parse a deb822 ``*.sources`` file; stanzas with ``Enabled: no`` are left out.

    >>> src = parse_deb822_sources("Types: deb\\nURIs: http://deb.debian.org/debian\\n"
    ...                            "Suites: bookworm bookworm-updates\\nComponents: main\\n")
    >>> src[0].uris, src[0].suites
    (('http://deb.debian.org/debian',), ('bookworm', 'bookworm-updates'))
    """
    sources: list[AptSource] = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        current = ""
        for line in stanza.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line[0] in " \t" and current:
                fields[current] += " " + line.strip()
                continue
            key, sep, value = line.partition(":")
            if not sep:
                continue
            current = key.strip().lower()
            fields[current] = value.strip()
        if not fields or fields.get("enabled", "yes").lower() == "no":
            continue
        sources.append(
            AptSource(
                types=tuple(fields.get("types", "").split()),
                uris=tuple(fields.get("uris", "").split()),
                suites=tuple(fields.get("suites", "").split()),
                components=tuple(fields.get("components", "").split()),
            )
        )
    return sources


def parse_sources_list(text: str) -> list[AptSource]:
    """Parse one-line-style ``sources.list`` text (``deb [opts] URI suite component...``).

    >>> parse_sources_list("deb [arch=amd64] http://ftp.de.debian.org/debian bookworm main\\n")
    [AptSource(types=('deb',), uris=('http://ftp.de.debian.org/debian',), \
suites=('bookworm',), components=('main',))]
    """
    sources: list[AptSource] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        line = re.sub(r"\[[^\]]*\]", " ", line)  # options such as [arch=amd64 signed-by=...]
        words = line.split()
        if len(words) < 3 or words[0] not in ("deb", "deb-src"):
            continue
        sources.append(AptSource((words[0],), (words[1],), (words[2],), tuple(words[3:])))
    return sources


def pick_mirror(sources: Sequence[AptSource], suite: str = SUITE) -> str:
    """The first ``deb`` URI that serves `suite` (what debootstrap should use).

    >>> pick_mirror(parse_sources_list("deb http://m.example/debian bookworm main"))
    'http://m.example/debian'
    """
    for source in sources:
        if "deb" in source.types and suite in source.suites:
            for uri in source.uris:
                if urlsplit(uri).scheme in ("http", "https"):
                    return uri
    raise LabError(
        f"no apt source for {suite!r} found in /etc/apt/sources.list or "
        f"/etc/apt/sources.list.d/*.sources: the lab builds its base image from this machine's "
        f"own Debian mirror; add one, e.g. a 'deb http://<mirror>/debian {suite} main' line"
    )


def mirror_hosts(sources: Sequence[AptSource]) -> tuple[str, ...]:
    """Host names (``host`` or ``host:port``) of the plain-http URIs, in first-seen order.

    >>> mirror_hosts(parse_sources_list("deb http://a.example/d bookworm main\\n"
    ...                                 "deb http://b.example:8080/d bookworm main"))
    ('a.example', 'b.example:8080')
    """
    hosts: list[str] = []
    for source in sources:
        for uri in source.uris:
            parts = urlsplit(uri)
            if parts.scheme != "http" or not parts.hostname:
                continue
            host = parts.hostname if parts.port in (None, 80) else f"{parts.hostname}:{parts.port}"
            if host not in hosts:
                hosts.append(host)
    return tuple(hosts)


def base_image_key(packages: Collection[str], baked: Mapping[str, str] | None = None) -> str:
    """Short sha256 naming a base image: the package set, the recipe and what is baked in.

    The order of `packages` does not matter; `baked` holds values written into the image
    (deploy user, gateway, mirror), so changing one of them builds a new image.

    >>> base_image_key(["curl", "less"]) == base_image_key(["less", "curl", "less"])
    True
    """
    payload = {
        "recipe": RECIPE_VERSION,
        "suite": SUITE,
        "packages": sorted(set(packages)),
        "baked": dict(sorted((baked or {}).items())),
    }
    blob = json.dumps(payload, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


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
        "# Written by opskit.lab.ops at every `inv lab.up`.",
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


def apt_proxy_conf(gateway: str, port: int = labsvc.APT_PROXY.port) -> str:
    """apt.conf snippet sending the host's plain-http apt traffic to the lab's apt proxy."""
    return (
        "// Written by opskit.lab.ops: lab hosts reach Debian mirrors only through this proxy.\n"
        f'Acquire::http::Proxy "http://{gateway}:{port}";\n'
    )


def netns_name(name: str) -> str:
    """Network namespace of a lab host."""
    return f"opskit-{name}"


def veth_name(name: str) -> str:
    """Root-namespace end of a host's veth pair; at most 15 characters (IFNAMSIZ - 1).

    >>> veth_name("web1")
    'vo-web1'
    >>> len(veth_name("a-rather-long-host-name"))
    15
    """
    candidate = f"vo-{name}"
    if len(candidate) <= 15:
        return candidate
    return "vo-" + hashlib.sha256(name.encode()).hexdigest()[:12]


def nspawn_argv(root: Path, name: str) -> list[str]:
    """The systemd-nspawn command line booting one host (LAB.md's recipe)."""
    return [
        "systemd-nspawn",
        "-D",
        str(root),
        "--register=no",
        "--keep-unit",
        f"--network-namespace-path=/run/netns/{netns_name(name)}",
        "--resolv-conf=off",  # the image's own resolv.conf (no DNS) stays
        # nspawn would otherwise rewrite /etc/localtime at every boot to match this machine,
        # undoing what the base role set (drift that no real server has).
        "--timezone=off",
        "--link-journal=no",
        "-b",
        "-M",
        name,
    ]


def is_lab_nspawn(cmdline: Sequence[str], root: Path) -> bool:
    """True when a process command line is systemd-nspawn booting the tree at `root`.

    >>> root = Path("/l/hosts/web1/root")
    >>> is_lab_nspawn(["systemd-nspawn", "-D", "/l/hosts/web1/root", "-b"], root)
    True
    >>> is_lab_nspawn(["sshd", "-D", "/l/hosts/web1/root"], root)
    False
    """
    if not cmdline or os.path.basename(cmdline[0]) != "systemd-nspawn":
        return False
    args = list(cmdline[1:])
    for i, arg in enumerate(args):
        if arg in ("-D", "--directory") and i + 1 < len(args) and args[i + 1] == str(root):
            return True
        if arg == f"--directory={root}":
            return True
    return False


def parse_ssh_banner(data: bytes) -> bool:
    """True when `data` starts with an SSH-2 identification string.

    >>> parse_ssh_banner(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\\r\\n")
    True
    >>> parse_ssh_banner(b"HTTP/1.1 400 Bad Request\\r\\n")
    False
    """
    return data.startswith((b"SSH-2.0-", b"SSH-1.99-"))


def overlay_options(lower: Path, upper: Path, work: Path) -> str:
    """The overlayfs mount options for one host.

    >>> overlay_options(Path("/c/base-1"), Path("/s/upper"), Path("/s/work"))
    'lowerdir=/c/base-1,upperdir=/s/upper,workdir=/s/work'
    """
    for path in (lower, upper, work):
        if any(c in str(path) for c in ",:\\"):
            raise LabError(f"overlayfs cannot use a path containing ',', ':' or '\\': {path}")
    return f"lowerdir={lower},upperdir={upper},workdir={work}"


def parse_mountinfo(text: str) -> list[tuple[str, str, str]]:
    """(mount point, filesystem type, super options) per line of /proc/self/mountinfo.

    >>> parse_mountinfo("36 35 0:30 / /var/x\\\\040y rw - overlay ovl rw,lowerdir=/a\\n")
    [('/var/x y', 'overlay', 'rw,lowerdir=/a')]
    """
    mounts: list[tuple[str, str, str]] = []
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if not sep or len(fields) < 5 or not rest:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        mounts.append((point, rest[0], rest[2] if len(rest) > 2 else ""))
    return mounts


def tail(text: str, lines: int = 15) -> str:
    """The last `lines` lines of `text`, indented, for error messages."""
    return "\n".join("    " + line for line in text.rstrip().splitlines()[-lines:])


# --------------------------------------------------------------------------------------------
# Machine facts


def read_machine_apt_sources(apt_dir: Path = Path("/etc/apt")) -> list[AptSource]:
    """This machine's apt sources: sources.list, sources.list.d/*.list and *.sources."""
    sources: list[AptSource] = []
    for path in _machine_source_files(apt_dir):
        text = path.read_text(encoding="utf-8", errors="replace")
        if path.suffix == ".sources":
            sources += parse_deb822_sources(text)
        else:
            sources += parse_sources_list(text)
    return sources


def machine_mirror_hosts() -> tuple[str, ...]:
    """Host names of this machine's plain-http apt mirrors (what the apt proxy may reach)."""
    hosts = mirror_hosts(read_machine_apt_sources())
    if not hosts:
        raise LabError(
            "this machine's apt sources name no http:// mirror; the lab's apt proxy forwards "
            "plain http only: add an http mirror to /etc/apt/sources.list.d/"
        )
    return hosts


def _machine_source_files(apt_dir: Path) -> list[Path]:
    files = [apt_dir / "sources.list"] if (apt_dir / "sources.list").is_file() else []
    listing = apt_dir / "sources.list.d"
    if listing.is_dir():
        files += sorted(p for p in listing.iterdir() if p.suffix in (".list", ".sources"))
    return files


def check_prerequisites() -> None:
    """LabError naming the fix when this machine cannot run the lab (not root, tools missing)."""
    if os.geteuid() != 0:
        raise LabError(
            "the lab needs root (it mounts overlays, creates network namespaces and boots "
            "containers): run it as root, e.g. `sudo .venv/bin/inv lab.up`"
        )
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        raise LabError(
            f"missing {', '.join(missing)} on this machine; install with: {INSTALL_HINT}"
        )


# --------------------------------------------------------------------------------------------
# Commands and processes

_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}  # processes we started, so we can reap them


def _run(
    argv: Sequence[str],
    *,
    check: bool = True,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = 600,
) -> subprocess.CompletedProcess[str]:
    log.debug("run: %s", shlex.join(argv))
    try:
        result = subprocess.run(
            list(argv),
            input=input,
            capture_output=True,
            text=True,
            env=dict(env) if env is not None else None,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise LabError(f"{argv[0]} not found; install with: {INSTALL_HINT}") from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"timed out after {timeout} s: {shlex.join(argv)}") from exc
    if check and result.returncode != 0:
        output = (result.stderr or "") + (result.stdout or "")
        raise LabError(f"exit {result.returncode}: {shlex.join(argv)}\n{tail(output)}")
    return result


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of a process, None when it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _alive(pid: int) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        del _CHILDREN[pid]


def _pids() -> Iterator[int]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            yield int(entry.name)


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _wait_gone(pids: Collection[int], timeout: float) -> list[int]:
    """Wait until `pids` have exited; return those still alive after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        for pid in pids:
            _reap(pid)
        alive = [p for p in pids if _alive(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.1)


def _terminate(pids: Collection[int], timeout: float) -> None:
    """SIGTERM, wait up to `timeout`, then SIGKILL what is left."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    left = _wait_gone(pids, timeout)
    for pid in left:
        log.warning("pid %d ignored SIGTERM for %.0f s; sending SIGKILL", pid, timeout)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if _wait_gone(left, 10.0):
        raise LabError(f"processes {left} survive SIGKILL; look at them with `ps -o pid,stat,cmd`")


def _spawn(argv: Sequence[str], log_path: Path, *, mode: str, **kwargs: Any) -> int:
    """Start `argv` detached (own session, output to `log_path`) and return its pid."""
    with open(log_path, mode + "b") as out:
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                **kwargs,
            )
        except OSError as exc:
            raise LabError(f"cannot start {shlex.join(argv)}: {exc}") from exc
    _CHILDREN[proc.pid] = proc
    return proc.pid


def _read_tail(path: Path, lines: int = 15) -> str:
    try:
        return tail(path.read_text(errors="replace"), lines)
    except OSError:
        return "    (no output)"


@contextlib.contextmanager
def _locked(path: Path, progress: Progress) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"waiting for another lab command to finish (lock {path})…")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _mounts() -> list[tuple[str, str, str]]:
    return parse_mountinfo(Path("/proc/self/mountinfo").read_text())


def _is_mounted(path: Path) -> bool:
    return any(point == str(path) for point, _, _ in _mounts())


def _umount_under(path: Path) -> None:
    """Unmount everything at or below `path`, deepest first (lazily if busy)."""
    prefix = str(path).rstrip("/") + "/"
    points = [p for p, _, _ in _mounts() if p == str(path) or p.startswith(prefix)]
    for point in sorted(set(points), key=len, reverse=True):
        if _run(["umount", point], check=False).returncode != 0:
            _run(["umount", "-l", point])


def _remove_tree(path: Path) -> None:
    """Delete `path` without ever crossing into a filesystem mounted below it."""
    if not path.exists() and not path.is_symlink():
        return
    _umount_under(path)
    _run(["rm", "-rf", "--one-file-system", "--", str(path)])


def _write_file(path: Path, content: str, mode: int = 0o644) -> None:
    """Write a file atomically (temp file + rename) with `mode`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.opskit-new")
    tmp.write_text(content, encoding="utf-8")
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _safe_in_root(root: Path, relative: str) -> Path:
    """`root/relative`, refusing symlinks on the way (a host must not redirect our writes)."""
    current = root
    for part in Path(relative).parts:
        current = current / part
        if current.is_symlink():
            raise LabError(f"refusing to write through a symlink inside a lab host: {current}")
    return current


def _write_in_root(
    root: Path, relative: str, content: str, *, mode: int = 0o644, owner: tuple[int, int] = (0, 0)
) -> None:
    path = _safe_in_root(root, relative)
    _write_file(path, content, mode)
    os.chown(path, *owner)


# --------------------------------------------------------------------------------------------
# Base image


def ensure_base_image(spec: LabSpec, progress: Progress = _noop) -> Path:
    """Return the cached base image for `spec`, building it first if needed (a few minutes).

    Images are keyed by base_image_key(); several inventories can share one cache_dir. Besides
    the image returned, the most recently used other image is kept (``base-<key>.used`` stamps),
    and no image a host has mounted is ever removed; older ones are deleted.
    """
    check_prerequisites()
    sources = read_machine_apt_sources()
    mirror = pick_mirror(sources)
    key = base_image_key(spec.packages, _baked(spec, mirror))
    image = spec.cache_dir / f"base-{key}"
    spec.cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(spec.cache_dir / ".lock", progress):
        if not (image / "etc" / "os-release").exists():
            _build_image(spec, image, key, mirror, progress)
        image.with_name(image.name + ".used").touch()
        _remove_old_images(spec.cache_dir, keep=image, progress=progress)
    return image


def _baked(spec: LabSpec, mirror: str) -> dict[str, str]:
    # What the image holds that is not a package. The gateway is not in here: each host gets its
    # apt proxy address written into its own overlay, so labs on other subnets share the image.
    return {"deploy_user": spec.deploy_user, "mirror": mirror}


def _build_image(spec: LabSpec, image: Path, key: str, mirror: str, progress: Progress) -> None:
    for stale in spec.cache_dir.glob(".base-*.tmp"):
        # We hold the cache lock, so nobody else is building: this is an interrupted build.
        progress(f"removing an interrupted build: {stale}")
        _remove_tree(stale)
    tmp = spec.cache_dir / f".base-{key}.tmp"
    build_log = spec.cache_dir / f"build-{key}.log"
    build_log.write_text("")
    # Only the base set goes through debootstrap's own resolver: with a long --include list
    # (postgresql, nginx, nodejs, ...) it configures packages in an order that fails. apt inside
    # the chroot installs spec.packages afterwards (LAB.md: "packages in the base").
    argv = [
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(BASE_PACKAGES)}",
        SUITE,
        str(tmp),
        mirror,
    ]
    progress("building base image (first time, ~2 min)…")
    started = time.monotonic()
    try:
        try:
            _stream(argv, build_log, progress, _debootstrap_phase)
        except LabError:
            detail = tmp / "debootstrap/debootstrap.log"
            with open(build_log, "a", encoding="utf-8") as out, contextlib.suppress(OSError):
                out.write(detail.read_text(errors="replace"))
            raise
        _configure_image(tmp, spec, build_log, progress)
        os.rename(tmp, image)
    except BaseException:
        _remove_tree(tmp)
        raise
    size = _run(["du", "-sh", str(image)], check=False).stdout.split("\t")[0]
    progress(f"base image ready in {time.monotonic() - started:.0f} s ({size}): {image}")


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
            f"{_read_tail(build_log, 25)}"
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


def _configure_image(root: Path, spec: LabSpec, build_log: Path, progress: Progress) -> None:
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
    for path in _machine_source_files(Path("/etc/apt")):
        target = root / path.relative_to("/")
        _write_file(target, path.read_text(encoding="utf-8"), 0o644)
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
    _write_file(policy, "#!/bin/sh\n# opskit lab image build: start nothing\nexit 101\n", 0o755)
    try:
        _run(["mount", "-t", "proc", "proc", str(root / "proc")])
        (root / "dev/shm").mkdir(parents=True, exist_ok=True)
        _run(["mount", "-t", "tmpfs", "-o", "mode=1777,size=256m", "tmpfs", str(root / "dev/shm")])
        chroot("apt-get", "update")
        if spec.packages:
            progress(f"base image: apt-get install {len(spec.packages)} packages (minutes)…")
            chroot(
                "apt-get",
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "-o",
                "Dpkg::Options::=--force-unsafe-io",
                "--",
                *spec.packages,
                phase=lambda line: line.strip() if line.startswith("Setting up ") else None,
            )
        progress("base image: configuring (deploy user, apt sources and proxy, no host keys)…")
        user = spec.deploy_user
        chroot("useradd", "--create-home", "--shell", "/bin/bash", "--groups", "sudo", user)
        _write_file(root / "etc/sudoers.d" / user, f"{user} ALL=(ALL) NOPASSWD:ALL\n", 0o440)
        chroot("visudo", "-cf", f"/etc/sudoers.d/{user}")
        # The packages are baked in for speed, but a real server runs a daemon only when a role
        # installed it: the roles enable what they need (a db host must not serve port 80).
        chroot("systemctl", "disable", "--quiet", *ROLE_DAEMONS)
        chroot("apt-get", "clean")
    finally:
        _umount_under(root / "dev/shm")
        _umount_under(root / "proc")
        policy.unlink(missing_ok=True)

    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()  # generated per host, so every host has its own
    _write_file(root / APT_PROXY_CONF, apt_proxy_conf(gateway_ip(spec)))
    for unit in MASKED_UNITS:
        link = root / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/dev/null")
    _write_file(root / "etc/hostname", "opskit-lab\n")
    resolv.unlink()
    # No DNS inside the lab: lookups go to the host's own loopback and fail fast. apt does not
    # resolve mirror names itself, the proxy (on this machine) does.
    _write_file(
        resolv,
        "# opskit lab host: no DNS; apt reaches mirrors via its proxy\nnameserver 127.0.0.1\n",
    )
    _write_file(
        root / "etc/opskit-lab-image",
        f"recipe={RECIPE_VERSION}\nsuite={SUITE}\npackages={' '.join(spec.packages)}\n",
    )


KEEP_OTHER_IMAGES = 1  # besides the current one: e.g. a second inventory's


def _remove_old_images(cache_dir: Path, *, keep: Path, progress: Progress) -> None:
    """Delete base images beyond the current one and the most recently used others."""
    in_use = "\n".join(opts for _, fstype, opts in _mounts() if fstype == "overlay")

    def last_used(image: Path) -> float:
        stamp = image.with_name(image.name + ".used")
        return (stamp if stamp.exists() else image).stat().st_mtime

    others = [
        p
        for p in cache_dir.iterdir()
        if re.fullmatch(r"base-[0-9a-f]{12}", p.name) and p.is_dir() and p != keep
    ]
    for old in sorted(others, key=last_used, reverse=True)[KEEP_OTHER_IMAGES:]:
        if f"lowerdir={old}," in in_use or f"lowerdir={old}:" in in_use:
            continue  # a running host still uses it; removed by a later `up`
        progress(f"removing old base image {old}")
        _remove_tree(old)
        key = old.name.removeprefix("base-")
        for leftover in (old.with_name(old.name + ".used"), cache_dir / f"build-{key}.log"):
            leftover.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Hosts


@dataclass(frozen=True)
class _HostPaths:
    dir: Path
    upper: Path
    work: Path
    root: Path
    pid: Path
    console: Path
    image: Path


def _host_paths(spec: LabSpec, name: str) -> _HostPaths:
    d = spec.state_dir / "hosts" / name
    return _HostPaths(
        d, d / "upper", d / "work", d / "root", d / "pid", d / "console.log", d / "image"
    )


def _nspawn_pids(root: Path) -> list[int]:
    """Live systemd-nspawn processes booting `root` (top-most only, not their forks)."""
    found = [p for p in _pids() if _alive(p) and is_lab_nspawn(_cmdline(p), root)]
    parents = {p: (_proc_stat(p) or ("", 0))[1] for p in found}
    return [p for p in found if parents[p] not in found]


def _host_nspawn_pid(spec: LabSpec, name: str) -> int | None:
    """The verified pid of a host's systemd-nspawn: pid file first, then a scan of /proc."""
    paths = _host_paths(spec, name)
    pid = _read_pid(paths.pid)
    if pid is not None and _alive(pid) and is_lab_nspawn(_cmdline(pid), paths.root):
        return pid
    pids = _nspawn_pids(paths.root)
    return pids[0] if pids else None


def _container_init(nspawn_pid: int) -> int | None:
    """PID (in our namespace) of the container's init: the child of systemd-nspawn."""
    own = os.stat("/proc/self/ns/pid").st_ino
    for pid in _pids():
        stat = _proc_stat(pid)
        if stat is None or stat[1] != nspawn_pid or stat[0] in ("Z", "X"):
            continue
        try:
            if os.stat(f"/proc/{pid}/ns/pid").st_ino != own:
                return pid
        except OSError:
            continue
    return None


def _netns_path(name: str) -> Path:
    return Path("/run/netns") / netns_name(name)


def _netns_pids(name: str) -> list[int]:
    """Processes living in a host's network namespace (its container, nothing else)."""
    try:
        target = os.stat(_netns_path(name))
    except OSError:
        return []
    found = []
    for pid in _pids():
        try:
            st = os.stat(f"/proc/{pid}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino) and _alive(pid):
            found.append(pid)
    return found


def _ssh_ready(address: str, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((address, 22), timeout=timeout) as sock:
            sock.settimeout(timeout)
            data = b""
            while b"\n" not in data and len(data) < 256:
                chunk = sock.recv(256)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return False
    return parse_ssh_banner(data)


def _host_status(spec: LabSpec, host: LabHost, *, check_ssh: bool = True) -> LabHostStatus:
    paths = _host_paths(spec, host.name)
    pid = _host_nspawn_pid(spec, host.name)
    mounted = _is_mounted(paths.root)
    netns = _netns_path(host.name).exists()
    stale_pid = _read_pid(paths.pid)
    if pid is not None:
        problems = []
        if not mounted:
            problems.append(f"its root {paths.root} is not mounted")
        if not netns:
            problems.append(f"network namespace {netns_name(host.name)} is missing")
        if problems:
            detail = "; ".join(problems) + "; run `inv lab.up --fresh` or `inv lab.down`"
            return LabHostStatus(host.name, host.address, "broken", pid, False, detail)
        ready = _ssh_ready(host.address) if check_ssh else False
        detail = (
            ""
            if ready or not check_ssh
            else (f"running but no SSH banner on {host.address}:22; console: {paths.console}")
        )
        return LabHostStatus(host.name, host.address, "running", pid, ready, detail)
    leftovers = []
    if stale_pid is not None:
        leftovers.append(f"its systemd-nspawn (pid {stale_pid}) is gone")
    orphans = set(_netns_pids(host.name)) | set(_cgroup_pids(host.name))
    if orphans:
        leftovers.append(f"{len(orphans)} orphaned container process(es) still run")
    if mounted:
        leftovers.append(f"{paths.root} still mounted")
    if netns:
        leftovers.append(f"network namespace {netns_name(host.name)} left over")
    if leftovers:
        detail = "; ".join(leftovers) + f"; run `inv lab.down` (console: {paths.console})"
        return LabHostStatus(host.name, host.address, "broken", None, False, detail)
    return LabHostStatus(host.name, host.address, "stopped", None, False)


def _ensure_identity(spec: LabSpec) -> str:
    """Create the lab's SSH key pair once; return the public key line."""
    key, pub = spec.identity, spec.identity.with_name(spec.identity.name + ".pub")
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "opskit-lab", "-f", str(key)])
    os.chmod(key, 0o600)
    if not pub.exists():
        _write_file(pub, _run(["ssh-keygen", "-y", "-f", str(key)]).stdout, 0o644)
    return pub.read_text().strip()


def _user_ids(root: Path, user: str) -> tuple[int, int, str]:
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if len(fields) >= 7 and fields[0] == user:
            return int(fields[2]), int(fields[3]), fields[5]
    raise LabError(f"user {user!r} missing from {root}/etc/passwd; rebuild the base image")


def _prepare_host(spec: LabSpec, host: LabHost, image: Path, pubkey: str) -> None:
    """Mount the host's overlay and write its per-host files (idempotent)."""
    paths = _host_paths(spec, host.name)
    for d in (paths.dir, paths.upper, paths.work, paths.root):
        d.mkdir(parents=True, exist_ok=True)
    os.chmod(paths.dir, 0o700)
    if not _is_mounted(paths.root):
        options = overlay_options(image, paths.upper, paths.work)
        _run(["mount", "-t", "overlay", f"opskit-{host.name}", "-o", options, str(paths.root)])
    _write_file(paths.image, f"{image}\n")
    root = paths.root
    _write_in_root(root, "etc/hostname", f"{host.name}\n")
    _write_in_root(root, "etc/hosts", render_etc_hosts(spec, host.name))
    if not (paths.upper / "etc/machine-id").exists():
        _write_in_root(root, "etc/machine-id", uuid.uuid4().hex + "\n", mode=0o444)
    _write_in_root(root, APT_PROXY_CONF, apt_proxy_conf(gateway_ip(spec)))
    _safe_in_root(root, "etc/ssh")
    _run(["ssh-keygen", "-A", "-f", str(root)])  # creates only the missing host keys
    authorized = pubkey + "\n"
    uid, gid, home = _user_ids(root, spec.deploy_user)
    for rel, owner in (("root/.ssh", (0, 0)), (home.lstrip("/") + "/.ssh", (uid, gid))):
        ssh_dir = _safe_in_root(root, rel)
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        os.chown(ssh_dir, *owner)
        os.chmod(ssh_dir, 0o700)
        _write_in_root(root, f"{rel}/authorized_keys", authorized, mode=0o600, owner=owner)


def _wipe_host(spec: LabSpec, name: str) -> None:
    paths = _host_paths(spec, name)
    if _is_mounted(paths.root):
        raise LabError(f"{name}: {paths.root} is still mounted; cannot wipe its overlay")
    for d in (paths.upper, paths.work):
        _remove_tree(d)


def _write_known_hosts(spec: LabSpec) -> None:
    """(Re)write the lab hosts' ed25519 keys into spec.known_hosts, keeping other hosts' lines."""
    lines = []
    for host in spec.hosts:
        pub = _host_paths(spec, host.name).upper / "etc/ssh/ssh_host_ed25519_key.pub"
        if pub.is_file():
            lines.append(known_hosts_line(host.address, pub.read_text()))
    try:
        existing = spec.known_hosts.read_text(encoding="utf-8")
    except FileNotFoundError:
        existing = ""
    merged = merge_known_hosts(existing, lines, {h.address for h in spec.hosts})
    if merged != existing:
        _write_file(spec.known_hosts, merged, 0o644)


def _ensure_bridge(spec: LabSpec) -> None:
    net, bridge = lab_network(spec), spec.bridge
    sys_dir = Path("/sys/class/net") / bridge
    if sys_dir.exists() and not (sys_dir / "bridge").exists():
        raise LabError(f"interface {bridge} exists and is not a bridge; pick another lab.bridge")
    if not sys_dir.exists():
        _check_subnet_free(spec)
        _run(["ip", "link", "add", "name", bridge, "type", "bridge"])
    addresses = json.loads(_run(["ip", "-j", "addr", "show", "dev", bridge]).stdout or "[]")
    have = {
        f"{a['local']}/{a['prefixlen']}" for link in addresses for a in link.get("addr_info", [])
    }
    if spec.gateway not in have:
        _run(["ip", "addr", "add", spec.gateway, "dev", bridge])
    _run(["ip", "link", "set", bridge, "up"])
    _ensure_unreachable_route(net)


def _ensure_unreachable_route(net: object) -> None:
    _run(["ip", "route", "replace", "unreachable", str(net), "metric", "4000"])


def _check_subnet_free(spec: LabSpec) -> None:
    net = lab_network(spec)
    for route in json.loads(_run(["ip", "-j", "route", "show", "table", "main"]).stdout or "[]"):
        dst = route.get("dst", "")
        if (
            dst == "default"
            or route.get("type") == "unreachable"
            or route.get("dev") == spec.bridge
        ):
            continue
        with contextlib.suppress(ValueError):
            if ipaddress.ip_network(dst, strict=False).overlaps(net):
                raise LabError(
                    f"the lab subnet {net} overlaps route {dst} via {route.get('dev')} on this "
                    "machine; pick another lab.gateway in the inventory"
                )


def _ensure_host_net(spec: LabSpec, host: LabHost) -> None:
    ns, veth, path = netns_name(host.name), veth_name(host.name), _netns_path(host.name)
    if path.exists() and not os.path.ismount(path):
        path.unlink()  # a stale file, not a namespace
    if not path.exists():
        _run(["ip", "netns", "add", ns])
    if not Path(f"/sys/class/net/{veth}").exists():
        _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "host0", "netns", ns])
    _run(["ip", "link", "set", veth, "master", spec.bridge, "up"])
    prefix = lab_network(spec).prefixlen
    _run(["ip", "-n", ns, "link", "set", "lo", "up"])
    _run(["ip", "-n", ns, "addr", "replace", f"{host.address}/{prefix}", "dev", "host0"])
    _run(["ip", "-n", ns, "link", "set", "host0", "up"])
    _run(["ip", "-n", ns, "route", "replace", "default", "via", gateway_ip(spec), "dev", "host0"])


def _remove_host_net(name: str) -> None:
    veth, path = veth_name(name), _netns_path(name)
    if Path(f"/sys/class/net/{veth}").exists():
        _run(["ip", "link", "del", veth], check=False)
    if path.exists():
        _run(["ip", "netns", "delete", netns_name(name)], check=False)
    if path.exists():  # not a mount any more, or a stale file
        _run(["umount", "-l", str(path)], check=False)
        path.unlink(missing_ok=True)


def _stop_hosts(spec: LabSpec, names: Sequence[str], progress: Progress) -> None:
    """Power hosts off (SIGTERM to systemd-nspawn, SIGKILL after a timeout) and unmount them."""
    nspawns = {n: pid for n in names if (pid := _host_nspawn_pid(spec, n)) is not None}
    if nspawns:
        progress(f"stopping {', '.join(nspawns)}…")
        _terminate(list(nspawns.values()), STOP_TIMEOUT)
    for name in names:
        # A container whose systemd-nspawn was SIGKILLed keeps running, orphaned. Its processes
        # are the only ones in the cgroup and the network namespace we made for that host.
        orphans = sorted(set(_netns_pids(name)) | set(_cgroup_pids(name)))
        if orphans:
            progress(f"{name}: killing {len(orphans)} orphaned container process(es)")
            for pid in orphans:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            _wait_gone(orphans, 10.0)
        _remove_cgroups(name)
        paths = _host_paths(spec, name)
        _umount_under(paths.root)
        paths.pid.unlink(missing_ok=True)


def _cgroup_dirs(name: str) -> list[Path]:
    """The host's own cgroup in each hierarchy systemd uses (cgroup2, v1 ``name=systemd``)."""
    dirs: list[Path] = []
    for point, fstype, options in _mounts():
        if fstype == "cgroup2" or (fstype == "cgroup" and "name=systemd" in options.split(",")):
            path = Path(point) / CGROUP_PARENT / name
            if path not in dirs:
                dirs.append(path)
    return dirs


def _cgroup_pids(name: str) -> list[int]:
    pids: set[int] = set()
    for top in _cgroup_dirs(name):
        if not top.is_dir():
            continue
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in procs.read_text().split())
    return sorted(p for p in pids if _alive(p))


def _remove_cgroups(name: str) -> None:
    for top in _cgroup_dirs(name):
        if not top.is_dir():
            continue
        for directory, _, _ in os.walk(top, topdown=False):
            with contextlib.suppress(OSError):
                os.rmdir(directory)
        with contextlib.suppress(OSError):
            os.rmdir(top.parent)  # CGROUP_PARENT, once no host is left in it


def _boot(spec: LabSpec, host: LabHost) -> int:
    """Start the host's systemd-nspawn detached, in a cgroup of its own; return its pid."""
    paths = _host_paths(spec, host.name)
    # With --keep-unit systemd-nspawn runs the container in the cgroup it was started in. Hosts
    # sharing one would share their units' cgroups, and stopping nginx on web1 would kill
    # web2's nginx (and early boot races fail units). So each host first joins its own cgroup.
    cgroups = _cgroup_dirs(host.name)
    for directory in cgroups:
        directory.mkdir(parents=True, exist_ok=True)
    join = "".join(f"echo $$ > {shlex.quote(str(d / 'cgroup.procs'))} && " for d in cgroups)
    argv = ["/bin/sh", "-c", f'{join}exec "$@"', "opskit-lab-boot"]
    pid = _spawn([*argv, *nspawn_argv(paths.root, host.name)], paths.console, mode="w")
    _write_file(paths.pid, f"{pid}\n")
    return pid


def _wait_ssh(spec: LabSpec, host: LabHost, pid: int, timeout: float) -> float:
    """Wait for the host's SSH banner; return seconds waited."""
    console = _host_paths(spec, host.name).console
    started = time.monotonic()
    while True:
        if not _alive(pid):
            _reap(pid)
            raise LabError(
                f"{host.name}: systemd-nspawn exited during boot; console {console}:\n"
                f"{_read_tail(console)}"
            )
        if _ssh_ready(host.address):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise LabError(
                f"{host.name}: no SSH banner on {host.address}:22 after {timeout:.0f} s; "
                f"console {console}:\n{_read_tail(console)}"
            )
        time.sleep(0.25)


def _wait_systemd(spec: LabSpec, host: LabHost, pid: int, timeout: float) -> str:
    """Wait until the host's boot is over; "" when systemd says running, else a note."""
    init = _container_init(pid)
    if init is None:
        raise LabError(f"{host.name}: no container init under systemd-nspawn pid {pid}")
    argv = ["systemctl", "is-system-running", "--wait"]
    try:
        state = _nsenter(init, argv, None, max(timeout, 1.0)).stdout.strip()
    except subprocess.TimeoutExpired as exc:
        console = _host_paths(spec, host.name).console
        raise LabError(
            f"{host.name}: boot not finished after {timeout:.0f} s (`systemctl list-jobs` "
            f"inside shows what waits); console {console}:\n{_read_tail(console)}"
        ) from exc
    if state == "running":
        return ""
    failed = _nsenter(init, ["systemctl", "--failed", "--no-legend", "--plain"], None, 30.0)
    units = [line.split()[0] for line in failed.stdout.splitlines() if line.strip()]
    return f"systemd: {state}" + (f" (failed: {', '.join(units)})" if units else "")


# --------------------------------------------------------------------------------------------
# Services


def _service_files(spec: LabSpec, name: str) -> tuple[Path, Path]:
    d = spec.state_dir / "services"
    return d / f"{name}.pid", d / f"{name}.log"


def _is_our_service(pid: int, spec: LabSpec, name: str) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return (
        f"OPSKIT_LAB_SERVICE={name}".encode() in environ
        and f"OPSKIT_LAB_STATE_DIR={spec.state_dir}".encode() in environ
    )


def _service_pid(spec: LabSpec, name: str) -> int | None:
    pid = _read_pid(_service_files(spec, name)[0])
    if pid is not None and _alive(pid) and _is_our_service(pid, spec, name):
        return pid
    return None


def _tcp_open(address: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def _start_services(spec: LabSpec, progress: Progress) -> None:
    directory = spec.state_dir / "services"
    directory.mkdir(parents=True, exist_ok=True)
    package_parent = str(Path(__file__).resolve().parents[2])
    for service in labsvc.SERVICES:
        if _service_pid(spec, service.name) is not None:
            continue
        pid_file, log_file = _service_files(spec, service.name)
        if service.prepare is not None:
            service.prepare(spec)
        env = dict(os.environ)
        env.update(service.env(spec))
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_parent, env.get("PYTHONPATH", "")) if p
        )
        env["OPSKIT_LAB_SERVICE"] = service.name
        env["OPSKIT_LAB_STATE_DIR"] = str(spec.state_dir)
        argv = service.argv(spec)
        with open(log_file, "a", encoding="utf-8") as handle:
            handle.write(f"--- {time.strftime('%F %T')} $ {shlex.join(argv)}\n")
        pid = _spawn(argv, log_file, mode="a", cwd=directory, env=env)
        _write_file(pid_file, f"{pid}\n")
        address = service.address(spec)
        deadline = time.monotonic() + service.ready_timeout
        while not _tcp_open(address, service.port):
            if not _alive(pid) or time.monotonic() > deadline:
                _reap(pid)
                raise LabError(
                    f"service {service.name} did not start listening on {address}:"
                    f"{service.port}; log {log_file}:\n{_read_tail(log_file)}"
                )
            time.sleep(0.1)
        if service.started is not None:
            service.started(spec)
        progress(f"service {service.name}: listening on {address}:{service.port} (pid {pid})")


def _stop_services(spec: LabSpec, progress: Progress) -> None:
    directory = spec.state_dir / "services"
    if not directory.is_dir():
        return
    names = [s.name for s in reversed(labsvc.SERVICES)]
    names += sorted(p.stem for p in directory.glob("*.pid") if p.stem not in names)
    pids = []
    for name in names:
        pid = _service_pid(spec, name)
        if pid is not None:
            progress(f"stopping service {name} (pid {pid})")
            pids.append(pid)
    _terminate(pids, 10.0)
    for name in names:
        _service_files(spec, name)[0].unlink(missing_ok=True)


def service_status(spec: LabSpec) -> list[LabServiceStatus]:
    """State of every registered stand-in service; changes nothing."""
    result = []
    for service in labsvc.SERVICES:
        pid = _service_pid(spec, service.name)
        address = service.address(spec)
        listening = pid is not None and _tcp_open(address, service.port)
        result.append(LabServiceStatus(service.name, address, service.port, pid, listening))
    return result


# --------------------------------------------------------------------------------------------
# Public operations


# Every booted host's systemd, journald, logind, ... holds inotify instances, and all hosts of all
# labs on the machine run as root: the kernel default of 128 per user stops boots at about a dozen
# hosts ("Failed to create control group inotify object: Too many open files").
SYSCTLS = {"fs.inotify.max_user_instances": 8192, "fs.inotify.max_user_watches": 1048576}


def raise_limits(progress: Progress = _noop) -> None:
    """Raise the machine's inotify limits to SYSCTLS (never lowers them)."""
    for key, want in SYSCTLS.items():
        path = Path("/proc/sys") / key.replace(".", "/")
        if int(path.read_text()) < want:
            progress(f"raising {key} to {want} (booted hosts of all labs share the default 128)")
            path.write_text(str(want))


def up(
    spec: LabSpec,
    *,
    fresh: bool = False,
    hosts: Sequence[str] | None = None,
    progress: Progress = _noop,
) -> list[LabHostStatus]:
    """Make the lab hosts (all, or `hosts`) run with SSH ready; running hosts are kept as they are.

    ``fresh=True`` stops the selected hosts, wipes their overlay (all their changes, their host
    keys) and boots them again. Raises LabError (naming console.log) when a host does not boot.
    """
    check_prerequisites()
    raise_limits(progress)
    selected = [find_host(spec, n) for n in dict.fromkeys(hosts)] if hosts else list(spec.hosts)
    with _locked(spec.state_dir / ".lock", progress):
        image = ensure_base_image(spec, progress)
        pubkey = _ensure_identity(spec)
        _ensure_bridge(spec)
        _start_services(spec, progress)
        keep: dict[str, int] = {}
        boot: list[LabHost] = []
        stop: list[str] = []
        wipe: dict[str, str] = {}
        for host in selected:
            paths = _host_paths(spec, host.name)
            current = _host_status(spec, host, check_ssh=False)
            recorded = paths.image.read_text().strip() if paths.image.exists() else str(image)
            if current.state == "running" and current.pid and not fresh and recorded == str(image):
                keep[host.name] = current.pid
                _ensure_host_net(spec, host)  # re-attaches it if the bridge was re-created
                continue
            if current.state != "stopped":
                stop.append(host.name)
            if fresh or recorded != str(image):
                wipe[host.name] = "fresh" if fresh else "base image changed"
            boot.append(host)
        _stop_hosts(spec, stop, progress)

        def prepare(host: LabHost) -> None:
            if host.name in wipe:
                progress(f"{host.name}: wiping its overlay ({wipe[host.name]})")
                _wipe_host(spec, host.name)
            _prepare_host(spec, host, image, pubkey)  # ssh-keygen -A takes ~1 s: in parallel
            _ensure_host_net(spec, host)

        with ThreadPoolExecutor(max_workers=max(1, len(boot))) as pool:
            list(pool.map(prepare, boot))
        _write_known_hosts(spec)
        if boot:
            progress(f"booting {', '.join(h.name for h in boot)}…")
        pids = {**keep, **{h.name: _boot(spec, h) for h in boot}}

        notes: dict[str, str] = {}

        def wait(host: LabHost) -> str | None:
            started = time.monotonic()
            try:
                seconds = _wait_ssh(spec, host, pids[host.name], SSH_TIMEOUT)
                left = SSH_TIMEOUT - (time.monotonic() - started)
                notes[host.name] = _wait_systemd(spec, host, pids[host.name], left)
            except LabError as exc:
                return str(exc)
            booted = time.monotonic() - started
            note = f"; {notes[host.name]}" if notes[host.name] else ""
            if host.name in keep:
                progress(f"{host.name}: already running (pid {pids[host.name]}), ssh ready{note}")
            else:
                progress(
                    f"{host.name}: booted, ssh ready in {seconds:.1f} s, "
                    f"boot finished in {booted:.1f} s{note}"
                )
            return None

        with ThreadPoolExecutor(max_workers=max(1, len(selected))) as pool:
            errors = [e for e in pool.map(wait, selected) if e]
        if errors:
            raise LabError("\n".join(errors))
        result = [_host_status(spec, h) for h in selected]
        return [replace(s, detail=s.detail or notes.get(s.name, "")) for s in result]


def down(spec: LabSpec, *, progress: Progress = _noop) -> None:
    """Stop every lab host and service and remove the network; safe after a crash, twice too.

    Overlays (the hosts' changes), the base image, the key pair and known_hosts stay; the
    `unreachable` route for the lab subnet stays too.
    """
    check_prerequisites()
    with _locked(spec.state_dir / ".lock", progress):
        names = [h.name for h in spec.hosts]
        hosts_dir = spec.state_dir / "hosts"
        if hosts_dir.is_dir():  # hosts since removed from the inventory
            names += sorted(
                p.name for p in hosts_dir.iterdir() if p.is_dir() and p.name not in names
            )
        _stop_hosts(spec, names, progress)
        for name in names:
            _remove_host_net(name)
        _stop_services(spec, progress)
        if Path(f"/sys/class/net/{spec.bridge}").exists():
            _run(["ip", "link", "del", spec.bridge])
        _ensure_unreachable_route(lab_network(spec))
        progress("lab is down")


def status(spec: LabSpec) -> list[LabHostStatus]:
    """State of every lab host (pid files, processes, mounts, SSH banner); changes nothing."""
    return [_host_status(spec, h) for h in spec.hosts]


def reset_host(spec: LabSpec, name: str, progress: Progress = _noop) -> LabHostStatus:
    """Stop one host, wipe its overlay (its changes and host keys) and boot it fresh."""
    find_host(spec, name)
    return up(spec, fresh=True, hosts=[name], progress=progress)[0]


def exec_in(
    spec: LabSpec,
    name: str,
    argv: Sequence[str],
    *,
    input: str | None = None,
    timeout: float = 600.0,
) -> subprocess.CompletedProcess[str]:
    """Run `argv` as root inside a running host (nsenter, no SSH); the caller checks the exit."""
    find_host(spec, name)
    pid = _host_nspawn_pid(spec, name)
    init = _container_init(pid) if pid is not None else None
    if init is None:
        raise LabError(f"{name} is not running; start it with `inv lab.up`")
    try:
        return _nsenter(init, argv, input, timeout)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{name}: timed out after {timeout} s: {shlex.join(argv)}") from exc


def _nsenter(
    init: int, argv: Sequence[str], stdin: str | None, timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run `argv` in all namespaces of the container whose init is `init`, clean environment."""
    command = [
        "nsenter",
        "-t",
        str(init),
        "-a",
        "-r",
        "-w",
        "--",
        "/usr/bin/env",
        "-i",
        f"PATH={CONTAINER_PATH}",
        "HOME=/root",
        "LANG=C.UTF-8",
        "TERM=dumb",
        *argv,
    ]
    log.debug("nsenter %d: %s", init, shlex.join(argv))
    return subprocess.run(
        command, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )
