"""Stand-in services for the lab: the outside world the lab hosts may talk to.

Lab hosts have no route out of this machine (no forwarding, no NAT). Whatever a role needs from
outside (a Debian mirror, S3, an ACME CA, Slack, UptimeRobot, Sentry, a syslog receiver) is
played by a *stand-in service*: a process on this machine that listens on the bridge address
(``lab.gateway``, reachable from the hosts) or on loopback (reachable from the operator side
only), never on a wildcard address.

``opskit.lab.up`` starts every service in ``SERVICES`` once the bridge exists; ``opskit.lab.down``
stops them. For each service the lab:

* runs ``service.argv(spec)`` detached (own session, ``cwd`` = ``<state_dir>/services``), stdout
  and stderr appended to ``<state_dir>/services/<name>.log``, its pid in ``<name>.pid``;
* adds ``OPSKIT_LAB_SERVICE=<name>`` and ``OPSKIT_LAB_STATE_DIR=<state_dir>`` to its environment
  (how ``down`` recognises its own processes before killing them) and puts the directory holding
  the ``opskit`` package first on ``PYTHONPATH`` (so ``python -m opskit.labsvc.x`` works);
* calls it ready once a TCP connect to ``service.address(spec):service.port`` succeeds;
* keeps a service that is already running (``up`` twice is a no-op).

Adding a service (S3 via moto, ACME via pebble, ...)::

    def _pebble_argv(spec: LabSpec) -> list[str]:
        return ["/usr/bin/pebble", "-config", str(spec.state_dir / "services" / "pebble.json")]

    SERVICES = (..., LabService("pebble", 14000, _pebble_argv,
                                env_builder=lambda spec: {"PEBBLE_VA_ALWAYS_VALID": "1"}))

A builder must be cheap and must not start anything itself; a config file it needs can be written
by ``prepare`` (called before the process starts). Use ``sys.executable`` for Python services so
they run from the same venv. Names must be unique (they name files); ports too.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from opskit.lab import LabSpec

__all__ = ["SERVICES", "LabService", "find_service", "inbox_dir", "read_inbox", "service_url"]


@dataclass(frozen=True)
class LabService:
    """One stand-in service: how to start it and where it listens."""

    name: str
    port: int
    argv_builder: Callable[[LabSpec], list[str]]
    bind: Literal["gateway", "loopback"] = "gateway"
    env_builder: Callable[[LabSpec], Mapping[str, str]] | None = None
    prepare: Callable[[LabSpec], None] | None = None
    ready_timeout: float = 20.0

    def address(self, spec: LabSpec) -> str:
        """The address the service listens on: the bridge's (gateway) or 127.0.0.1."""
        if self.bind == "loopback":
            return "127.0.0.1"
        return str(spec.gateway.split("/", 1)[0])

    def argv(self, spec: LabSpec) -> list[str]:
        """The command line that runs the service in the foreground."""
        return self.argv_builder(spec)

    def env(self, spec: LabSpec) -> dict[str, str]:
        """Extra environment variables for the service (on top of the operator's)."""
        return dict(self.env_builder(spec)) if self.env_builder else {}


def _apt_proxy_argv(spec: LabSpec) -> list[str]:
    # Imported here: opskit.lab imports this package.
    from opskit.lab import machine_mirror_hosts

    return [
        sys.executable,
        "-m",
        "opskit.labsvc.aptproxy",
        "--listen",
        APT_PROXY.address(spec),
        "--port",
        str(APT_PROXY.port),
        "--allow",
        *machine_mirror_hosts(),
    ]


# Port 3142 is apt-cacher-ng's, the usual apt proxy port (also opskit.labsvc.aptproxy.PORT; the
# module is not imported here because it runs as `python -m`).
APT_PROXY = LabService("aptproxy", 3142, _apt_proxy_argv)


def _inbox_argv(kind: str) -> Callable[[LabSpec], list[str]]:
    def argv(spec: LabSpec) -> list[str]:
        service = find_service(kind)
        return [
            sys.executable,
            "-m",
            "opskit.labsvc.inbox",
            "--kind",
            kind,
            "--listen",
            service.address(spec),
            "--port",
            str(service.port),
            "--dir",
            str(inbox_dir(spec, kind)),
        ]

    return argv


# Slack's incoming webhooks: http://<gateway>:8025/services/T…/B…/<token>
SLACK = LabService("slack", 8025, _inbox_argv("slack"))
# UptimeRobot heartbeat URLs: http://<gateway>:8026/<token>
HEARTBEAT = LabService("heartbeat", 8026, _inbox_argv("heartbeat"))

# Started in this order by `up`, stopped in reverse order by `down`.
SERVICES: tuple[LabService, ...] = (APT_PROXY, SLACK, HEARTBEAT)


def inbox_dir(spec: LabSpec, name: str) -> Path:
    """Where the stand-in `name` keeps what it received (inbox.jsonl)."""
    return spec.state_dir / "services" / name


def read_inbox(spec: LabSpec, name: str) -> list[dict[str, Any]]:
    """Everything the stand-in `name` received, oldest first."""
    path = inbox_dir(spec, name) / "inbox.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def describe_item(name: str, item: Mapping[str, Any]) -> str:
    """One line for a received item, as `inv lab.inbox` shows it."""
    import time

    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(item.get("time", 0))))
    if name == "slack":
        payload = item.get("payload", {})
        text = payload.get("text") or json.dumps(payload)[:200]
        return f"{when} from {item.get('from')}: {text}"
    if name == "heartbeat":
        return f"{when} {item.get('method')} /{item.get('token')} from {item.get('from')}"
    return f"{when} {json.dumps(item, sort_keys=True)[:300]}"


def service_url(spec: LabSpec, name: str) -> str:
    """The base URL of an HTTP stand-in as the lab hosts reach it."""
    service = find_service(name)
    return f"http://{service.address(spec)}:{service.port}"


def find_service(name: str) -> LabService:
    """Return the registered service called `name` (KeyError if there is none)."""
    for service in SERVICES:
        if service.name == name:
            return service
    raise KeyError(name)
