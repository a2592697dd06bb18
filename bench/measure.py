"""Timing one step of one tool: wall time, operator-side CPU, and the hosts' own sshd logs.

* Wall time: from the tool's start to its exit (its own start-up included, as an operator waits).
* CPU seconds on the operator side: every process the tool starts runs in a cgroup of its own
  (cgroup v2 `cpu.stat`, else v1 `cpuacct`), so the OpenSSH ControlPersist masters that Ansible
  leaves behind are counted too; they are closed (`ssh -O exit`) before the reading. Without a
  usable cgroup hierarchy, getrusage(RUSAGE_CHILDREN) is used (it misses those masters).
* Remote commands per host: the "Starting session:" lines (one per exec, shell or subsystem request,
  logged at LogLevel VERBOSE) and "Accepted publickey" lines (connections) that sshd wrote to each
  host's journal during the step, read through nsenter afterwards.
"""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bench import labs, light, tools
from opskit.lab.nspawn import exec_in
from opskit.lab.spec import LabSpec


@dataclass(frozen=True)
class Step:
    tool: str
    step: str
    n: int
    round: int
    wall: float
    cpu: float
    exit_code: int
    sessions: dict[str, int] = field(default_factory=dict)  # host -> remote commands
    connections: dict[str, int] = field(default_factory=dict)  # host -> SSH logins
    remote_cpu: float | None = None  # CPU seconds the hosts spent (their cgroups), all hosts
    reported_changes: int | None = None  # what the tool itself said (noop runs: must be 0)
    output_tail: str = ""
    load1: float | None = None  # the machine's 1-minute load average when the step started
    lite: bool = False  # on the light hosts (bench/light.py: sshd alone), not the lab's

    @property
    def cpu_ms_per_host(self) -> float:
        """Operator CPU per host, in milliseconds (start-up included)."""
        return 1000 * self.cpu / self.n


# --- operator-side CPU ---------------------------------------------------------------------


def _cgroup_root() -> tuple[str, Path] | None:
    """('v2', dir) or ('v1', dir) where this process may create a child cgroup, or None."""
    mounts = [line.split(" - ") for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for head, tail in (m for m in mounts if len(m) == 2):
        fstype, point = tail.split()[0], head.split()[4]
        if fstype == "cgroup2" and Path(point, "cpu.stat").exists():
            return "v2", Path(point)
    for head, tail in (m for m in mounts if len(m) == 2):
        if tail.split()[0] == "cgroup" and "cpuacct" in tail.split()[2].split(","):
            return "v1", Path(head.split()[4])
    return None


def cpu_meter_kind() -> str:
    """How CpuMeter will count: "v2", "v1" (cgroups) or "rusage"."""
    root = _cgroup_root() if os.geteuid() == 0 else None
    return "rusage" if root is None else root[0]


class CpuMeter:
    """Counts the CPU time of a process tree, daemonised descendants included."""

    def __init__(self) -> None:
        root = _cgroup_root() if os.geteuid() == 0 else None
        self.kind, self.dir = ("rusage", None) if root is None else (root[0], None)
        if root is not None:
            self.dir = root[1] / f"opskit-bench-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            try:
                self.dir.mkdir()
            except OSError:
                self.kind, self.dir = "rusage", None
        self._rusage = 0.0

    def preexec(self) -> None:
        if self.dir is not None:
            (self.dir / "cgroup.procs").write_text(str(os.getpid()))

    def start(self) -> None:
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._rusage = ru.ru_utime + ru.ru_stime

    def pids(self) -> list[int]:
        if self.dir is None:
            return []
        return [int(p) for p in (self.dir / "cgroup.procs").read_text().split()]

    def seconds(self) -> float:
        if self.kind == "v2":
            assert self.dir is not None
            stat = dict(line.split() for line in (self.dir / "cpu.stat").read_text().splitlines())
            return int(stat["usage_usec"]) / 1e6
        if self.kind == "v1":
            assert self.dir is not None
            return int((self.dir / "cpuacct.usage").read_text()) / 1e9
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        return ru.ru_utime + ru.ru_stime - self._rusage

    def close(self) -> None:
        if self.dir is not None:
            with contextlib.suppress(OSError):
                self.dir.rmdir()


def _close_ssh_masters(control_dir: Path, meter: CpuMeter) -> None:
    """Close the OpenSSH ControlPersist masters Ansible left, then wait for them to exit."""
    if control_dir.is_dir():
        for sock in control_dir.iterdir():
            subprocess.run(
                ["ssh", "-O", "exit", "-S", str(sock), "bench"],
                capture_output=True,
                check=False,
                timeout=10,
            )
    deadline = time.monotonic() + 10
    while meter.pids() and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in meter.pids():  # ours: started by this step; should not happen
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    while meter.pids() and time.monotonic() < deadline + 5:
        time.sleep(0.05)


# --- CPU spent on the hosts (they share this machine's cores) ----------------------------------


def host_cpu(names: Sequence[str]) -> float | None:
    """CPU seconds used so far by the hosts' cgroups (the lab puts each host in its own)."""
    root = _cgroup_root()
    if root is None or root[0] != "v2":
        return None
    total = 0.0
    for name in names:
        stat = root[1] / "opskit-lab" / name / "cpu.stat"
        try:
            total += int(stat.read_text().split()[1]) / 1e6  # usage_usec
        except (OSError, IndexError, ValueError):
            return None
    return total


# --- remote commands from sshd's logs -------------------------------------------------------


def _journal(spec: LabSpec, name: str, args: Sequence[str]) -> str:
    res = exec_in(spec, name, ["journalctl", "-q", *args], timeout=60)
    if res.returncode != 0:
        raise RuntimeError(f"[{name}] journalctl failed: {res.stderr.strip()}")
    return res.stdout


def cursors(spec: LabSpec, names: Sequence[str]) -> dict[str, str]:
    """Each host's current journal cursor."""

    def one(name: str) -> str:
        out = _journal(spec, name, ["-n", "0", "--show-cursor"])
        return out.strip().removeprefix("-- cursor: ")

    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(zip(names, pool.map(one, names), strict=True))


def count_sessions(text: str) -> tuple[int, int]:
    """(sessions, logins) in sshd's messages.

    >>> count_sessions("Accepted publickey for deploy from 10.0.0.1 port 1 ssh2: ED25519 x\\n"
    ...                "Starting session: command for deploy from 10.0.0.1 port 1 id 0\\n"
    ...                "Starting session: subsystem 'sftp' for deploy from 10.0.0.1 port 1 id 1\\n")
    (2, 1)
    """
    lines = text.splitlines()
    sessions = sum(1 for line in lines if line.startswith("Starting session: "))
    logins = sum(1 for line in lines if line.startswith("Accepted publickey for "))
    return sessions, logins


def sessions_since(spec: LabSpec, marks: dict[str, str]) -> tuple[dict[str, int], dict[str, int]]:
    """Sessions and logins per host that sshd logged after the cursors in `marks`."""

    def one(name: str) -> tuple[int, int]:
        args = ["-o", "cat", "SYSLOG_IDENTIFIER=sshd"]
        if marks[name]:
            args.insert(0, f"--after-cursor={marks[name]}")
        return count_sessions(_journal(spec, name, args))

    names = list(marks)
    with ThreadPoolExecutor(max_workers=8) as pool:
        counts = list(pool.map(one, names))
    return (
        {n: c[0] for n, c in zip(names, counts, strict=True)},
        {n: c[1] for n, c in zip(names, counts, strict=True)},
    )


# --- one step ---------------------------------------------------------------------------------


def light_sessions(marks: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """Sessions and logins per light host, from its sshd log after the offsets in `marks`."""
    counts = {name: count_sessions(light.log_since(name, at)) for name, at in marks.items()}
    return {n: c[0] for n, c in counts.items()}, {n: c[1] for n, c in counts.items()}


def run_step(
    spec: LabSpec,
    tool: str,
    step: str,
    n: int,
    rnd: int,
    *,
    workers: int | None = None,
    lite: bool = False,
) -> Step:
    names = light.host_names(n) if lite else labs.host_names(n)
    cmd = tools.command(tool, step, n, workers=workers, lite=lite)
    offsets = light.log_sizes(names) if lite else {}
    marks = {} if lite else cursors(spec, names)
    load1 = float(Path("/proc/loadavg").read_text().split()[0])
    meter = CpuMeter()
    meter.start()
    remote_before = None if lite else host_cpu(names)
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd.argv,
            cwd=cmd.cwd,
            env=tools.environment(cmd),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            preexec_fn=meter.preexec,
            timeout=1800,
            check=False,
        )
        wall = time.perf_counter() - started
        if tool == "ansible":
            _close_ssh_masters(tools.workdir(n) / "cp", meter)
        cpu = meter.seconds()
        remote_after = None if lite else host_cpu(names)
    finally:
        meter.close()
    sessions, logins = light_sessions(offsets) if lite else sessions_since(spec, marks)
    output = proc.stdout + proc.stderr
    return Step(
        tool,
        step,
        n,
        rnd,
        wall,
        cpu,
        proc.returncode,
        sessions,
        logins,
        None if remote_before is None or remote_after is None else remote_after - remote_before,
        tools.reported_changes(tool, output) if step in ("first", "noop") else None,
        "\n".join(output.rstrip().splitlines()[-(4 if proc.returncode == 0 else 40) :]),
        load1,
        lite,
    )
