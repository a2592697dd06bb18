"""The benchmark as CI's smoke test: opskit, Ansible and pyinfra on 3 bench lab hosts, 1 round.

It runs `bench/run` as a person would (installing ansible-core and pyinfra into bench/.venv when
bench/requirements.txt changed), on the bench's own lab (bridge opskit8, hosts b8h01..b8h03:
never the default lab), and stops that lab afterwards. The full run (1, 10 and 30 hosts, 5
rounds) is `bench/run`; its report is bench/RESULTS.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from opskit.core.roles import REPO

N = 3


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("the benchmark boots lab hosts and needs root (run: sudo bash scripts/test)")
    missing = [t for t in ("debootstrap", "systemd-nspawn", "ip", "ssh") if not shutil.which(t)]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run bash scripts/bootstrap")
    out = tmp_path_factory.mktemp("bench") / "results.json"
    proc = subprocess.run(
        ["bash", "bench/run", "--sizes", str(N), "--runs", "1", "--json", str(out), "--down"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    data = json.loads(out.read_text())
    data["report"] = proc.stdout
    return data


def steps(data, tool, step):
    found = [s for s in data["steps"] if s["tool"] == tool and s["step"] == step]
    assert len(found) == 1, (tool, step)
    return found[0]


def test_all_three_tools_leave_identical_files_modes_owners(results):
    assert results["identical_state"] and not results["problems"]
    assert results["state_lines_per_host"] >= 20
    assert "identical for all three tools on every host" in results["report"]


def test_every_step_ran_on_every_host(results):
    for tool in ("opskit", "ansible", "pyinfra"):
        for step in ("first", "noop", "adhoc"):
            s = steps(results, tool, step)
            assert s["exit_code"] == 0, (tool, step, s["output_tail"])
            # Counted from each host's own sshd log: every host was reached.
            assert sorted(s["sessions"]) == [f"b8h0{i}" for i in range(1, N + 1)]
            assert min(s["sessions"].values()) >= 1, (tool, step)
        assert steps(results, tool, "noop")["reported_changes"] == 0, tool


def test_opskit_needs_at_most_two_remote_commands_per_host(results):
    assert set(steps(results, "opskit", "noop")["sessions"].values()) == {1}
    assert max(steps(results, "opskit", "first")["sessions"].values()) <= 2
    assert set(steps(results, "opskit", "adhoc")["sessions"].values()) == {1}
    # ... over one SSH connection per host.
    assert set(steps(results, "opskit", "noop")["connections"].values()) == {1}


def test_opskit_is_the_fastest_to_converge_and_check(results):
    for step in ("first", "noop"):
        opskit = steps(results, "opskit", step)["wall"]
        for other in ("ansible", "pyinfra"):
            assert opskit < steps(results, other, step)["wall"], (step, other)
