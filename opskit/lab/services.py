"""Running the stand-ins of the registry (opskit.lab.registry): start, stop, status.

For each service, in registry order, ``start_services``:

* runs ``service.argv(spec)`` detached (own session, ``cwd`` = ``<state_dir>/services``), stdout
  and stderr appended to ``<state_dir>/services/<name>.log``, its pid in ``<name>.pid``;
* adds ``OPSKIT_LAB_SERVICE=<name>`` and ``OPSKIT_LAB_STATE_DIR=<state_dir>`` to its environment
  (how ``stop_services`` recognises its own processes before killing them) and puts the directory
  holding the ``opskit`` package first on ``PYTHONPATH`` (so ``python -m opskit.lab.standins.x``
  works);
* calls it ready once a TCP connect to ``service.address(spec):service.port`` succeeds;
* keeps a service that is already running (``up`` twice is a no-op).
"""

from __future__ import annotations

import os
import shlex
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from opskit.lab.proc import (
    Progress,
    alive,
    read_pid,
    read_tail,
    reap,
    spawn,
    terminate,
    write_file,
)
from opskit.lab.registry import SERVICES
from opskit.lab.spec import LabError, LabSpec


@dataclass(frozen=True)
class LabServiceStatus:
    """What one stand-in service is doing right now."""

    name: str
    address: str
    port: int
    pid: int | None
    listening: bool


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
    pid = read_pid(_service_files(spec, name)[0])
    if pid is not None and alive(pid) and _is_our_service(pid, spec, name):
        return pid
    return None


def _tcp_open(address: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def start_services(spec: LabSpec, progress: Progress) -> None:
    """Start every registered stand-in that is not running (see the module docstring)."""
    directory = spec.state_dir / "services"
    directory.mkdir(parents=True, exist_ok=True)
    package_parent = str(Path(__file__).resolve().parents[2])
    for service in SERVICES:
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
        pid = spawn(argv, log_file, mode="a", cwd=directory, env=env)
        write_file(pid_file, f"{pid}\n")
        address = service.address(spec)
        deadline = time.monotonic() + service.ready_timeout
        while not _tcp_open(address, service.port):
            if not alive(pid) or time.monotonic() > deadline:
                reap(pid)
                raise LabError(
                    f"service {service.name} did not start listening on {address}:"
                    f"{service.port}; log {log_file}:\n{read_tail(log_file)}"
                )
            time.sleep(0.1)
        if service.started is not None:
            service.started(spec)
        progress(f"service {service.name}: listening on {address}:{service.port} (pid {pid})")


def stop_services(spec: LabSpec, progress: Progress) -> None:
    """Stop every stand-in of this lab, registered or left from an older registry."""
    directory = spec.state_dir / "services"
    if not directory.is_dir():
        return
    names = [s.name for s in reversed(SERVICES)]
    names += sorted(p.stem for p in directory.glob("*.pid") if p.stem not in names)
    pids = []
    for name in names:
        pid = _service_pid(spec, name)
        if pid is not None:
            progress(f"stopping service {name} (pid {pid})")
            pids.append(pid)
    terminate(pids, 10.0)
    for name in names:
        _service_files(spec, name)[0].unlink(missing_ok=True)


def service_status(spec: LabSpec) -> list[LabServiceStatus]:
    """State of every registered stand-in service; changes nothing."""
    result = []
    for service in SERVICES:
        pid = _service_pid(spec, service.name)
        address = service.address(spec)
        listening = pid is not None and _tcp_open(address, service.port)
        result.append(LabServiceStatus(service.name, address, service.port, pid, listening))
    return result
