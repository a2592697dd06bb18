"""The Markdown report (bench/RESULTS.md) from the raw measurements, and the issue's targets."""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

STEP_TITLES = {
    "first": "first converge (fresh hosts)",
    "noop": "no-change re-run",
    "adhoc": "ad-hoc command (`uptime`)",
}
TARGETS = {"noop_vs_ansible": 50.0, "noop_vs_pyinfra": 3.0, "noop_commands_per_host": 3}
LIGHT_CPU_MS = 12.0  # operator CPU per host for the ad-hoc command at fleet scale (issue 19)
NOOP_VS_ADHOC = 1.3  # a no-change run within 1.3x of opskit's own ad-hoc time


def machine() -> dict[str, str]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    os_name = "?"
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("PRETTY_NAME="):
            os_name = line.split("=", 1)[1].strip('"')
    return {
        "cpu": f"{os.cpu_count()} x {cpu}",
        "memory": f"{mem_kb / 1024 / 1024:.0f} GiB",
        "os": f"{os_name}, kernel {platform.release()}",
    }


def _steps(
    data: Mapping[str, Any], n: int, tool: str, step: str, lite: bool = False
) -> list[Mapping[str, Any]]:
    return [
        s
        for s in data["steps"]
        if s["n"] == n and s["tool"] == tool and s["step"] == step and s.get("lite", False) == lite
    ]


def median(
    data: Mapping[str, Any], n: int, tool: str, step: str, key: str, lite: bool = False
) -> float | None:
    values = [s[key] for s in _steps(data, n, tool, step, lite)]
    return statistics.median(values) if values else None


def median_or_none(data: Mapping[str, Any], n: int, tool: str, step: str, key: str) -> float | None:
    values = [s.get(key) for s in _steps(data, n, tool, step)]
    return statistics.median(values) if values and None not in values else None


def cpu_per_host(
    data: Mapping[str, Any], n: int, tool: str, step: str, lite: bool = False
) -> float | None:
    """Median operator CPU per host, in milliseconds (the tool's start-up included)."""
    cpu = median(data, n, tool, step, "cpu", lite)
    return None if cpu is None else 1000 * cpu / n


def commands(
    data: Mapping[str, Any],
    n: int,
    tool: str,
    step: str,
    key: str = "sessions",
    lite: bool = False,
) -> str:
    """Remote commands (or logins) per host: the range over every host and round."""
    values = [v for s in _steps(data, n, tool, step, lite) for v in s[key].values()]
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def ratio(a: float | None, b: float | None) -> str:
    """`a/b` and how many times faster a is.

    >>> ratio(0.5, 25.0)
    '0.020 (50x)'
    """
    if a is None or b is None or a == 0:
        return "-"
    return f"{a / b:.3f} ({b / a:.0f}x)" if b / a >= 10 else f"{a / b:.3f} ({b / a:.1f}x)"


def speedups(data: Mapping[str, Any], n: int, step: str) -> dict[str, float]:
    o = median(data, n, "opskit", step, "wall")
    out = {}
    for other in ("ansible", "pyinfra"):
        m = median(data, n, other, step, "wall")
        if o and m:
            out[other] = m / o
    return out


def missed_targets(data: Mapping[str, Any]) -> list[str]:
    n = max(data["sizes"])
    missed = []
    up = speedups(data, n, "noop")
    if "ansible" in up and up["ansible"] < TARGETS["noop_vs_ansible"]:
        missed.append(f"N={n}: no-change run only {up['ansible']:.1f}x faster than Ansible")
    if "pyinfra" in up and up["pyinfra"] < TARGETS["noop_vs_pyinfra"]:
        missed.append(f"N={n}: no-change run only {up['pyinfra']:.1f}x faster than pyinfra")
    worst = max(
        (v for s in _steps(data, n, "opskit", "noop") for v in s["sessions"].values()), default=0
    )
    if worst > TARGETS["noop_commands_per_host"]:
        missed.append(f"N={n}: {worst} remote commands on a host in a no-change run")
    first = speedups(data, n, "first")
    missed += [f"N={n}: first converge not faster than {t}" for t, v in first.items() if v <= 1]
    noop, floor = (
        median(data, n, "opskit", "noop", "wall"),
        median(data, n, "opskit", "adhoc", "wall"),
    )
    if noop and floor and noop > NOOP_VS_ADHOC * floor:
        missed.append(f"N={n}: no-change run {noop / floor:.2f}x opskit's ad-hoc time")
    return missed + light_targets(data) + readonly_targets(data)


def _table(data: Mapping[str, Any], n: int, tools: Sequence[str]) -> list[str]:
    names = {"opskit": "opskit", "ansible": "Ansible", "pyinfra": "pyinfra"}
    head = ["step"] + [f"{names[t]} s" for t in tools]
    if "opskit" in tools:
        head += [f"opskit/{names[t]}" for t in tools if t != "opskit"]
    head += [
        "operator CPU s (" + " / ".join(names[t] for t in tools) + ")",
        "operator CPU ms per host (" + " / ".join(names[t] for t in tools) + ")",
        "CPU s on the hosts (" + " / ".join(names[t] for t in tools) + ")",
        "remote commands per host (" + " / ".join(names[t] for t in tools) + ")",
        "SSH logins per host",
    ]
    if "opskit" in tools:
        head.append("opskit: x its ad-hoc floor")
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    floor = median(data, n, "opskit", "adhoc", "wall")
    for step in STEP_TITLES:
        walls = {t: median(data, n, t, step, "wall") for t in tools}
        cells = [STEP_TITLES[step]]
        cells += [f"{walls[t]:.2f}" if walls[t] is not None else "-" for t in tools]
        if "opskit" in tools:
            cells += [ratio(walls["opskit"], walls[t]) for t in tools if t != "opskit"]
        cpus = [median(data, n, t, step, "cpu") for t in tools]
        cells.append(" / ".join(f"{c:.2f}" if c is not None else "-" for c in cpus))
        per_host = [cpu_per_host(data, n, t, step) for t in tools]
        cells.append(" / ".join(f"{c:.1f}" if c is not None else "-" for c in per_host))
        remote = [median_or_none(data, n, t, step, "remote_cpu") for t in tools]
        cells.append(" / ".join(f"{c:.2f}" if c is not None else "-" for c in remote))
        cells.append(" / ".join(commands(data, n, t, step) for t in tools))
        cells.append(" / ".join(commands(data, n, t, step, "connections") for t in tools))
        if "opskit" in tools:
            cells.append(f"{walls['opskit'] / floor:.2f}" if walls["opskit"] and floor else "-")
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _light_table(data: Mapping[str, Any], n: int, tools: Sequence[str]) -> list[str]:
    """The ad-hoc command on the light hosts: what reaching a host costs each tool."""
    names = {"opskit": "opskit", "ansible": "Ansible", "pyinfra": "pyinfra"}
    rows = [
        "| tool | wall s | opskit/tool | operator CPU s | operator CPU ms per host "
        "| remote commands per host | SSH logins per host |",
        "|---|---|---|---|---|---|---|",
    ]
    mine = median(data, n, "opskit", "adhoc", "wall", lite=True)
    for t in tools:
        wall = median(data, n, t, "adhoc", "wall", lite=True)
        cpu = median(data, n, t, "adhoc", "cpu", lite=True)
        per_host = cpu_per_host(data, n, t, "adhoc", lite=True)
        rows.append(
            f"| {names[t]} | {'-' if wall is None else f'{wall:.2f}'} "
            f"| {'-' if t == 'opskit' else ratio(mine, wall)} "
            f"| {'-' if cpu is None else f'{cpu:.2f}'} "
            f"| {'-' if per_host is None else f'{per_host:.1f}'} "
            f"| {commands(data, n, t, 'adhoc', lite=True)} "
            f"| {commands(data, n, t, 'adhoc', 'connections', lite=True)} |"
        )
    return rows


READONLY_TITLES = {
    "status": "`inv status`",
    "audit": "`inv audit` (inside)",
    "certs.status": "`inv certs.status`",
    "backup.list": "`inv backup.list`",
    "releases": "`inv releases`",
}


def per_host(data: Mapping[str, Any], n: int, step: str, key: str) -> list[int]:
    """Every host's count (`sessions` or `connections`) over every round of opskit's `step`."""
    return [v for s in _steps(data, n, "opskit", step) for v in s[key].values()]


def one_and_one(data: Mapping[str, Any], n: int, step: str) -> bool | None:
    """True when `step` cost exactly 1 connection and 1 remote command on every host, every
    round (None: not run).

    >>> s = {"tool": "opskit", "step": "status", "n": 2, "sessions": {"a": 1, "b": 1},
    ...      "connections": {"a": 1, "b": 1}}
    >>> one_and_one({"steps": [s]}, 2, "status"), one_and_one({"steps": [s]}, 2, "audit")
    (True, None)
    >>> one_and_one({"steps": [{**s, "sessions": {"a": 1, "b": 2}}]}, 2, "status")
    False
    """
    counts = per_host(data, n, step, "sessions") + per_host(data, n, step, "connections")
    return None if not counts else set(counts) == {1}


def _exit_codes(data: Mapping[str, Any], n: int, step: str) -> str:
    return ", ".join(
        str(c) for c in sorted({s["exit_code"] for s in _steps(data, n, "opskit", step)})
    )


def _readonly_table(data: Mapping[str, Any], n: int) -> list[str]:
    """opskit's read-only fleet commands: what each costs per host."""
    rows = [
        "| command | wall s | SSH connections per host | remote commands per host "
        "| operator CPU ms per host | exit | 1 connection, 1 command per host |",
        "|---|---|---|---|---|---|---|",
    ]
    for step, title in READONLY_TITLES.items():
        met = one_and_one(data, n, step)
        if met is None:
            continue
        wall = median(data, n, "opskit", step, "wall")
        cpu = cpu_per_host(data, n, "opskit", step)
        rows.append(
            f"| {title} | {'-' if wall is None else f'{wall:.2f}'} "
            f"| {commands(data, n, 'opskit', step, 'connections')} "
            f"| {commands(data, n, 'opskit', step)} "
            f"| {'-' if cpu is None else f'{cpu:.1f}'} "
            f"| {_exit_codes(data, n, step)} | {'yes' if met else '**no**'} |"
        )
    return rows


def readonly_targets(data: Mapping[str, Any]) -> list[str]:
    """Every read-only fleet command: 1 connection and 1 remote command per host (issue 19)."""
    n = data.get("readonly") or 0
    missed = []
    for step in READONLY_TITLES if n else ():
        if one_and_one(data, n, step) is False:
            missed.append(
                f"N={n}: inv {step}: {commands(data, n, 'opskit', step, 'connections')} "
                f"connections, {commands(data, n, 'opskit', step)} remote commands per host"
            )
    return missed


def readonly_section(data: Mapping[str, Any]) -> list[str]:
    """The report's section on the read-only fleet commands (empty when they did not run)."""
    n = data.get("readonly") or 0
    if not n:
        return []
    return [
        f"## Read-only fleet commands on {n} host{'s' if n != 1 else ''}",
        "",
        "opskit's read-only commands on the lab hosts, through an inventory that gives them the "
        "roles these commands read (app, certbot, backup; bench/labs.py "
        "`readonly_inventory_data`) without converging them: the hosts run the slice alone, so "
        "the commands report no release, no certificate and no backup program (hence the exit "
        "codes), at the cost of a real read. Connections and remote commands per host are the "
        "`Accepted publickey` and `Starting session:` lines each host's sshd logged (range over "
        "hosts and rounds); audit's probes from outside (HTTP, web hosts only) are not SSH and "
        "these hosts have no nginx role. Medians of the rounds.",
        "",
        *_readonly_table(data, n),
        "",
    ]


def light_targets(data: Mapping[str, Any]) -> list[str]:
    """The fleet-scale targets on the light hosts: opskit's ad-hoc at least as fast as
    pyinfra's, and at most LIGHT_CPU_MS of operator CPU per host."""
    n = data.get("light") or 0
    if not n:
        return []
    missed = []
    mine = median(data, n, "opskit", "adhoc", "wall", lite=True)
    theirs = median(data, n, "pyinfra", "adhoc", "wall", lite=True)
    if mine is not None and theirs is not None and mine > theirs:
        missed.append(f"{n} light hosts: ad-hoc {mine:.2f} s, pyinfra {theirs:.2f} s")
    per_host = cpu_per_host(data, n, "opskit", "adhoc", lite=True)
    if per_host is not None and per_host > LIGHT_CPU_MS:
        missed.append(f"{n} light hosts: {per_host:.1f} ms operator CPU per host")
    return missed


def _floor_lines(data: Mapping[str, Any], n: int) -> list[str]:
    lines = []
    noop, floor = (
        median(data, n, "opskit", "noop", "wall"),
        median(data, n, "opskit", "adhoc", "wall"),
    )
    if noop and floor:
        lines.append(
            f"- no-change run: {noop / floor:.2f}x opskit's own ad-hoc time "
            f"(target at most {NOOP_VS_ADHOC})"
        )
    light = data.get("light") or 0
    if light:
        mine = median(data, light, "opskit", "adhoc", "wall", lite=True)
        theirs = median(data, light, "pyinfra", "adhoc", "wall", lite=True)
        per_host = cpu_per_host(data, light, "opskit", "adhoc", lite=True)
        if mine is not None:
            lines.append(
                f"- ad-hoc on {light} light hosts: opskit {mine:.2f} s"
                + (f", pyinfra {theirs:.2f} s" if theirs is not None else "")
                + (f"; {per_host:.1f} ms operator CPU per host" if per_host is not None else "")
                + f" (targets: not slower than pyinfra, at most {LIGHT_CPU_MS:g} ms)"
            )
    return lines


def markdown(data: Mapping[str, Any]) -> str:
    tools = data["tools"]
    out = [
        "# Benchmark: opskit, Ansible and pyinfra on the same lab hosts",
        "",
        f"Run {data['started']} with `{data['command']}` ({data['duration_s']} s; lab boot "
        f"{data['lab_boot_s']} s). Medians of {data['runs']} rounds; the tools' order rotates "
        "from round to round. Times are wall seconds from the tool's start to its exit; "
        f"operator CPU is measured with {data['cpu_meter']} accounting over the tool's whole "
        "process tree; CPU on the hosts is what their cgroups used (all hosts together; they share "
        "the machine's cores); remote commands per host are the `Starting session:` lines each "
        "host's sshd logged (range over hosts and rounds).",
        "",
    ]
    for n in data["sizes"]:
        out += [f"## {n} host{'s' if n != 1 else ''}", "", *_table(data, n, tools), ""]
    if data.get("light"):
        n = data["light"]
        out += [
            f"## {n} light hosts (sshd alone): the ad-hoc floor",
            "",
            f"`uptime` on {n} hosts that are one sshd each in its own network namespace "
            "(bench/light.py; no systemd, so no converge there): connect, authenticate, open a "
            "channel, run, collect — what reaching a host at all costs each tool.",
            "",
            *_light_table(data, n, tools),
            "",
        ]
    out += readonly_section(data)
    out += [
        "## End state",
        "",
        f"After every first converge, {data['state_lines_per_host']} facts per host (type, mode, "
        "owner, group and sha256 of every file and directory of the slice, packages, services) "
        "were read through nsenter: "
        + (
            (
                "**identical for all three tools on every host.**"
                if len(tools) == 3
                else f"**identical for {' and '.join(tools)} on every host.**"
            )
            if data["identical_state"]
            else "**they differ — see problems below.**"
        ),
        "",
    ]
    if "opskit" in tools:
        n = max(data["sizes"])
        missed = missed_targets(data)
        up = speedups(data, n, "noop")
        out += [f"## Targets at {n} hosts", ""]
        out += [f"- no-change run: {up[t]:.0f}x faster than {t} " for t in up]
        out += [
            "- remote commands per host in a no-change run: " + commands(data, n, "opskit", "noop"),
            "- first converge: "
            + ", ".join(f"{v:.1f}x faster than {t}" for t, v in speedups(data, n, "first").items()),
            *_floor_lines(data, n),
            "- " + ("all met" if not missed else "MISSED: " + "; ".join(missed)),
            "",
        ]
    out += [
        "## How the runs were made",
        "",
        "- The same 17 resources per host for all three tools, from one definition "
        "(`bench/roles/benchslice/defaults.yml`; bench/README.md lists them).",
        "- first converge: before it, the slice is taken away on every host through nsenter "
        "(files, directories and cron entries removed, cron disabled and stopped), so each tool "
        "finds what a fresh host has; the hosts are not re-booted between runs.",
        "- Every tool: the same hosts, user (`deploy`, sudo), key and strict host-key checking; "
        "as many workers as hosts (opskit `--workers N`, Ansible `forks = N` with pipelining, "
        "ControlPersist and no fact gathering, pyinfra `--parallel N`).",
        "- The hosts run on the same 2 cores as the tools, so the CPU a tool makes the hosts "
        "spend (sshd sessions, sudo, remote Python, systemctl) shows in its wall time.",
        "",
        "## Machine and versions",
        "",
    ]
    out += [f"- {k}: {v}" for k, v in data["machine"].items()]
    out.append(
        f"- load average before / after: {' '.join(data['load_before'])} / "
        f"{' '.join(data['load_after'])} (the 2 cores are shared with other work)"
    )
    loads = [s["load1"] for s in data["steps"] if s.get("load1") is not None]
    if loads:
        out.append(
            f"- 1-minute load average at the start of the steps: {min(loads):.1f} to "
            f"{max(loads):.1f} (median {statistics.median(loads):.1f})"
        )
    out += [f"- {k}: {v}" for k, v in data["versions"].items()]
    if data["problems"]:
        out += ["", "## Problems", ""] + [f"- {p}" for p in data["problems"]]
    return "\n".join(out) + "\n"
