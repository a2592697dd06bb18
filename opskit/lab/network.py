"""The lab's network: a bridge, a network namespace and a veth pair per host, the unreachable route.

The bridge ``lab.bridge`` holds ``lab.gateway`` in the root namespace; each host has a network
namespace ``opskit-<name>`` whose veth end ``host0`` holds the host's address, default route via
the gateway. No forwarding, no NAT: hosts reach this machine's bridge address only, and an
``unreachable`` route for the lab subnet (metric 4000, kept after ``down``) makes sure lab
addresses never route out of the machine while the bridge is gone (ip-route(8):
https://man7.org/linux/man-pages/man8/ip-route.8.html).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
from pathlib import Path

from opskit.lab.proc import alive, all_pids, run
from opskit.lab.spec import LabError, LabHost, LabSpec, gateway_ip, lab_network


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


def netns_path(name: str) -> Path:
    """The bind mount that keeps a host's network namespace (`ip netns add`)."""
    return Path("/run/netns") / netns_name(name)


def netns_pids(name: str) -> list[int]:
    """Processes living in a host's network namespace (its container, nothing else)."""
    try:
        target = os.stat(netns_path(name))
    except OSError:
        return []
    found = []
    for pid in all_pids():
        try:
            st = os.stat(f"/proc/{pid}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino) and alive(pid):
            found.append(pid)
    return found


def ensure_bridge(spec: LabSpec) -> None:
    """Create the bridge with the gateway address if missing, up, and the unreachable route."""
    net, bridge = lab_network(spec), spec.bridge
    sys_dir = Path("/sys/class/net") / bridge
    if sys_dir.exists() and not (sys_dir / "bridge").exists():
        raise LabError(f"interface {bridge} exists and is not a bridge; pick another lab.bridge")
    if not sys_dir.exists():
        _check_subnet_free(spec)
        run(["ip", "link", "add", "name", bridge, "type", "bridge"])
    addresses = json.loads(run(["ip", "-j", "addr", "show", "dev", bridge]).stdout or "[]")
    have = {
        f"{a['local']}/{a['prefixlen']}" for link in addresses for a in link.get("addr_info", [])
    }
    if spec.gateway not in have:
        run(["ip", "addr", "add", spec.gateway, "dev", bridge])
    run(["ip", "link", "set", bridge, "up"])
    ensure_unreachable_route(net)


def ensure_unreachable_route(net: object) -> None:
    """Route the lab subnet nowhere when nothing better matches (metric 4000)."""
    run(["ip", "route", "replace", "unreachable", str(net), "metric", "4000"])


def _check_subnet_free(spec: LabSpec) -> None:
    net = lab_network(spec)
    for route in json.loads(run(["ip", "-j", "route", "show", "table", "main"]).stdout or "[]"):
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


def ensure_host_net(spec: LabSpec, host: LabHost) -> None:
    """A host's namespace, veth pair on the bridge, address and default route (idempotent)."""
    ns, veth, path = netns_name(host.name), veth_name(host.name), netns_path(host.name)
    if path.exists() and not os.path.ismount(path):
        path.unlink()  # a stale file, not a namespace
    if not path.exists():
        run(["ip", "netns", "add", ns])
    if not Path(f"/sys/class/net/{veth}").exists():
        run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "host0", "netns", ns])
    run(["ip", "link", "set", veth, "master", spec.bridge, "up"])
    prefix = lab_network(spec).prefixlen
    run(["ip", "-n", ns, "link", "set", "lo", "up"])
    run(["ip", "-n", ns, "addr", "replace", f"{host.address}/{prefix}", "dev", "host0"])
    run(["ip", "-n", ns, "link", "set", "host0", "up"])
    run(["ip", "-n", ns, "route", "replace", "default", "via", gateway_ip(spec), "dev", "host0"])


def remove_host_net(name: str) -> None:
    """Delete a host's veth and network namespace; nothing left is fine."""
    veth, path = veth_name(name), netns_path(name)
    if Path(f"/sys/class/net/{veth}").exists():
        run(["ip", "link", "del", veth], check=False)
    if path.exists():
        run(["ip", "netns", "delete", netns_name(name)], check=False)
    if path.exists():  # not a mount any more, or a stale file
        run(["umount", "-l", str(path)], check=False)
        path.unlink(missing_ok=True)


def remove_bridge(spec: LabSpec) -> None:
    """Delete the lab's bridge if it exists (the hosts' veths go with their namespaces)."""
    if Path(f"/sys/class/net/{spec.bridge}").exists():
        run(["ip", "link", "del", spec.bridge])
