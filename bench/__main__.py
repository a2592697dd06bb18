"""`python -m bench`: opskit, Ansible and pyinfra on the same lab hosts, side by side.

For each lab size N: per round (the tools' order rotates from round to round), each tool in turn
gets hosts whose slice was taken away (bench/state.py), converges them (first), converges again
(noop: nothing to do) and runs an ad-hoc command on all hosts (adhoc). After every first converge
the files, modes, owners, packages and services on every host are read back and must be identical
for the three tools. With --readonly, opskit's read-only fleet commands (status, audit,
certs.status, backup.list, releases) run on the largest N's hosts too. Medians, ratios,
operator CPU and remote commands per host go to a JSON file and, with --results, to a Markdown
report.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from bench import labs, light, measure, report, state, tools
from opskit.lab.spec import LabSpec


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--sizes",
        default="1,10,30",
        help="lab sizes N, comma-separated (default 1,10,30; at most 60)",
    )
    p.add_argument(
        "--light",
        type=int,
        default=0,
        metavar="N",
        help="also run the ad-hoc command on N light hosts (sshd alone, bench/light.py; "
        f"at most {light.MAX_HOSTS}); default 0: none",
    )
    p.add_argument(
        "--readonly",
        action="store_true",
        help="also run opskit's read-only fleet commands (" + ", ".join(tools.READONLY) + ") on "
        "the largest N's hosts, --runs times each, and count what each costs per host",
    )
    p.add_argument("--runs", type=int, default=5, help="rounds per size (default 5; medians)")
    p.add_argument(
        "--tools",
        default=",".join(tools.TOOLS),
        help="tools to compare (default opskit,ansible,pyinfra)",
    )
    p.add_argument(
        "--fresh-lab",
        action="store_true",
        help="wipe and boot the bench hosts anew first (default: reuse running ones)",
    )
    p.add_argument("--down", action="store_true", help="stop the bench lab at the end")
    p.add_argument(
        "--json",
        type=Path,
        default=labs.STATE_DIR / "results.json",
        help="where the raw measurements go (default %(default)s)",
    )
    p.add_argument(
        "--results",
        type=Path,
        default=None,
        help="write the Markdown report there (e.g. bench/RESULTS.md)",
    )
    p.add_argument(
        "--report-only",
        type=Path,
        metavar="JSON",
        help="no lab, no runs: print (and with --results write) the report of a "
        "JSON file written by an earlier run",
    )
    p.add_argument(
        "--check-targets",
        action="store_true",
        help="exit 1 unless opskit meets the issue's targets at the largest N",
    )
    args = p.parse_args(argv)
    try:
        args.sizes = sorted({int(x) for x in args.sizes.split(",") if x.strip()})
        labs.host_names(max(args.sizes))
    except ValueError as exc:
        p.error(f"--sizes: {exc}")
    if args.light:
        try:
            light.host_names(args.light)
        except ValueError as exc:
            p.error(f"--light: {exc}")
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [t for t in args.tools if t not in tools.TOOLS]
    if unknown or not args.tools:
        p.error(f"--tools: unknown {', '.join(unknown)} (tools: {', '.join(tools.TOOLS)})")
    if args.runs < 1:
        p.error("--runs: at least 1")
    return args


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)  # noqa: T201


def parallel(fn, names):  # type: ignore[no-untyped-def]
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(fn, names))


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    if args.report_only:
        text = report.markdown(json.loads(args.report_only.read_text()))
        print(text, end="")  # noqa: T201
        if args.results:
            args.results.write_text(text)
        return 0
    missing = [
        t
        for t in ("ansible", "pyinfra")
        if t in args.tools
        and not (tools.VENV / ("ansible-playbook" if t == "ansible" else t)).exists()
    ]
    if missing:
        log(
            f"{', '.join(missing)} missing from {tools.VENV}: run bench/run (it installs "
            "bench/requirements.txt there)"
        )
        return 2
    started = time.time()
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    biggest = max(args.sizes)
    log(f"lab: {biggest} hosts on {labs.BRIDGE} ({labs.GATEWAY})")
    spec, boot_seconds = labs.up(biggest, fresh=args.fresh_lab, progress=log)
    log(f"lab ready in {boot_seconds:.0f} s")
    steps: list[measure.Step] = []
    snapshots: dict[str, dict[str, dict[str, list[str]]]] = {}  # N -> tool -> host -> lines
    problems: list[str] = []
    for n in args.sizes:
        tools.write_configs(n)
        names = labs.host_names(n)
        for rnd in range(args.runs):
            k = rnd % len(args.tools)
            order = args.tools[k:] + args.tools[:k]
            for tool in order:
                parallel(lambda h: state.reset(spec, h), names)
                for step in tools.STEPS:
                    s = measure.run_step(spec, tool, step, n, rnd)
                    steps.append(s)
                    log(
                        f"N={n} round {rnd + 1}/{args.runs} {tool:<7} {step:<5} "
                        f"{s.wall:7.2f} s wall {s.cpu:6.2f} s cpu  "
                        f"{max(s.sessions.values())} cmds/host  exit {s.exit_code}"
                    )
                    if s.exit_code != 0:
                        problems.append(
                            f"N={n} {tool} {step} exited {s.exit_code}:\n{s.output_tail}"
                        )
                    if step == "noop" and s.reported_changes not in (0, None):
                        problems.append(f"N={n} {tool} noop reported {s.reported_changes} changes")
                    if step == "first":
                        snap = dict(
                            zip(
                                names,
                                parallel(lambda h: state.snapshot(spec, h), names),
                                strict=True,
                            )
                        )
                        prev = snapshots.setdefault(str(n), {}).get(tool)
                        if prev is not None and prev != snap:
                            problems.append(f"N={n} {tool}: the state differs between rounds")
                        snapshots[str(n)][tool] = snap
        problems += compare(n, snapshots[str(n)])
    if args.readonly:
        steps_ro, problems_ro = readonly(spec, biggest, args.runs)
        steps += steps_ro
        problems += problems_ro
    light_boot = 0.0
    if args.light:
        n = args.light
        light_boot = light.up(n, progress=log)
        log(f"{n} light hosts ready in {light_boot:.0f} s")
        tools.write_configs(n, lite=True)
        for rnd in range(args.runs):
            k = rnd % len(args.tools)
            for tool in args.tools[k:] + args.tools[:k]:
                s = measure.run_step(spec, tool, "adhoc", n, rnd, lite=True)
                steps.append(s)
                log(
                    f"light N={n} round {rnd + 1}/{args.runs} {tool:<7} adhoc "
                    f"{s.wall:7.2f} s wall {s.cpu:6.2f} s cpu ({s.cpu_ms_per_host:.1f} ms/host)  "
                    f"{min(s.sessions.values())}-{max(s.sessions.values())} cmds/host  "
                    f"exit {s.exit_code}"
                )
                if s.exit_code != 0 or min(s.sessions.values()) < 1:
                    problems.append(
                        f"light N={n} {tool} adhoc exited {s.exit_code}:\n{s.output_tail}"
                    )
    finished = time.time()
    data = {
        "command": "bench/run " + " ".join(argv),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "duration_s": round(finished - started),
        "lab_boot_s": round(boot_seconds, 1),
        "light": args.light,
        "readonly": biggest if args.readonly else 0,
        "light_boot_s": round(light_boot, 1),
        "load_before": load_before,
        "load_after": Path("/proc/loadavg").read_text().split()[:3],
        "machine": report.machine(),
        "versions": tools.versions(),
        "cpu_meter": measure.cpu_meter_kind(),
        "sizes": args.sizes,
        "runs": args.runs,
        "tools": args.tools,
        "steps": [asdict(s) for s in steps],
        "identical_state": not [p for p in problems if "differ" in p],
        "state_lines_per_host": len(
            next(iter(next(iter(snapshots.values())).values()))[labs.host_names(1)[0]]
        ),
        "problems": problems,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(data, indent=1) + "\n")
    log(f"raw measurements: {args.json}")
    text = report.markdown(data)
    print(text)  # noqa: T201 (the report is this command's output)
    if args.results:
        args.results.write_text(text)
        log(f"report: {args.results}")
    if args.down:
        if args.light:
            light.down(log)
        labs.down(biggest)  # the bridge last: the light hosts' veths are on it too
    for p in problems:
        log(f"PROBLEM: {p}")
    if problems:
        return 1
    if args.check_targets:
        missed = report.missed_targets(data)
        for m in missed:
            log(f"target missed: {m}")
        return 1 if missed else 0
    return 0


def readonly(spec: LabSpec, n: int, runs: int) -> tuple[list[measure.Step], list[str]]:
    """opskit's read-only fleet commands on hosts b8h01..b8hNN, each `runs` times: what each
    costs per host. The slice is taken away first (a fresh host: no bench script where the backup
    role's program would be). Their exit codes say what they found on hosts that run no app,
    certificate or backup (1, 4 or 5); a usage error (2) or a host they never reached is a
    problem."""
    names = labs.host_names(n)
    tools.write_configs(n)
    parallel(lambda h: state.reset(spec, h), names)
    steps, problems = [], []
    for rnd in range(runs):
        for name in tools.READONLY:
            s = measure.run_step(spec, "opskit", name, n, rnd)
            steps.append(s)
            log(
                f"N={n} round {rnd + 1}/{runs} inv {name:<12} {s.wall:7.2f} s wall "
                f"{s.cpu:6.2f} s cpu ({s.cpu_ms_per_host:.1f} ms/host)  "
                f"{min(s.connections.values())}-{max(s.connections.values())} logins/host  "
                f"{min(s.sessions.values())}-{max(s.sessions.values())} cmds/host  "
                f"exit {s.exit_code}"
            )
            if s.exit_code in (2, 130) or min(s.connections.values()) < 1:
                problems.append(f"N={n} inv {name} exited {s.exit_code}:\n{s.output_tail}")
    return steps, problems


def compare(n: int, by_tool: dict[str, dict[str, list[str]]]) -> list[str]:
    """Differences between the tools' end states (every host, every line), as problems."""
    problems = []
    tool_names = list(by_tool)
    ref_tool = tool_names[0]
    ref = by_tool[ref_tool]
    hosts = list(ref)
    for host in hosts[1:]:
        if ref[host] != ref[hosts[0]]:
            problems.append(f"N={n} {ref_tool}: {host} and {hosts[0]} differ")
    for tool in tool_names[1:]:
        for host in hosts:
            if by_tool[tool][host] != ref[host]:
                a, b = set(ref[host]), set(by_tool[tool][host])
                problems.append(
                    f"N={n} {tool} and {ref_tool} differ on {host}: only {ref_tool}: "
                    f"{sorted(a - b)}; only {tool}: {sorted(b - a)}"
                )
    absent = [line for line in ref[hosts[0]] if line.endswith(" absent")]
    if absent:
        problems.append(f"N={n}: after a converge these are still absent: {absent}")
    return problems


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
