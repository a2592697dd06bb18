"""The lab's description: the inventory's `lab:` section read into a LabSpec, checked key by key.

A LabSpec holds how to build and wire the lab (``lab:``: state and cache directories, bridge,
gateway, baked-in packages), the lab hosts (``groups:``, names and addresses in the lab subnet),
the deploy user (``vars.ssh_user``) and the lab's SSH key pair and known_hosts (``ssh:``). Only a
lab inventory has a ``lab:`` section (inventories/lab.yml; a lab of one's own next to it:
docs/DEVELOPING.md). Every other lab module, the stand-ins' registry included, takes a LabSpec.

LabError is the lab's one error: its message says what, where and what to do.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from opskit.core.errors import OpsError

_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_BRIDGE_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,14}$")


class LabError(OpsError):
    """The lab cannot do what was asked; the message says what, where and what to do."""


SUITES = ("bookworm", "trixie")  # Debian 12 and 13
IMAGES = ("baked", "bare")


@dataclass(frozen=True)
class LabHost:
    """One lab host: its inventory name, IPv4 address on the lab bridge, Debian suite, and image.

    `image` "baked" boots from the base image with ``lab.packages`` installed (fast converges);
    "bare" from the minimal one a hosting provider hands over (systemd, openssh-server, sudo,
    python3): its first provision installs every package its roles need.
    """

    name: str
    address: str
    suite: str = "bookworm"
    image: str = "baked"


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

    hosts = _hosts(top, gateway, where)
    return LabSpec(
        state_dir=_path(lab, "state_dir", where, "lab", base),
        cache_dir=_path(lab, "cache_dir", where, "lab", base),
        bridge=bridge,
        gateway=str(gateway),
        packages=tuple(packages),
        hosts=_host_images(lab, hosts, where),
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


def _choice(value: object, allowed: tuple[str, ...], where: str, key: str) -> str:
    if value not in allowed:
        raise LabError(f"{where}: {key}: {value!r}: expected one of {', '.join(allowed)}")
    return str(value)


def _host_images(
    lab: Mapping[str, Any], hosts: tuple[LabHost, ...], where: str
) -> tuple[LabHost, ...]:
    """Apply ``lab.suite``/``lab.image`` (defaults) and ``lab.hosts.<name>.suite/image``."""
    suite = _choice(lab.get("suite", "bookworm"), SUITES, where, "lab.suite")
    image = _choice(lab.get("image", "baked"), IMAGES, where, "lab.image")
    per_host = _mapping(lab.get("hosts") or {}, where, "lab.hosts")
    names = {h.name for h in hosts}
    for name in per_host:
        if name not in names:
            raise LabError(
                f"{where}: lab.hosts.{name}: no such lab host (hosts: {', '.join(sorted(names))})"
            )
    out = []
    for h in hosts:
        entry = _mapping(per_host.get(h.name) or {}, where, f"lab.hosts.{h.name}")
        unknown = sorted(set(entry) - {"suite", "image"})
        if unknown:
            raise LabError(f"{where}: lab.hosts.{h.name}: unknown key(s) {', '.join(unknown)}")
        out.append(
            LabHost(
                h.name,
                h.address,
                _choice(entry.get("suite", suite), SUITES, where, f"lab.hosts.{h.name}.suite"),
                _choice(entry.get("image", image), IMAGES, where, f"lab.hosts.{h.name}.image"),
            )
        )
    return tuple(out)


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
