"""The benchmark's pure parts (bench/): its doctests, and the report from a made-up run."""

from __future__ import annotations

import doctest

import pytest

from bench import labs, light, measure, report, tools


@pytest.mark.parametrize("module", [labs, light, measure, report, tools])
def test_doctests(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def step(tool, name, wall, sessions):
    return {
        "tool": tool,
        "step": name,
        "n": 30,
        "round": 0,
        "wall": wall,
        "cpu": 1.0,
        "remote_cpu": 2.0,
        "exit_code": 0,
        "sessions": {"b8h01": sessions},
        "connections": {"b8h01": 1},
        "reported_changes": 0,
        "output_tail": "",
    }


def test_report_and_targets():
    data = {
        "command": "bench/run",
        "started": "now",
        "duration_s": 1,
        "lab_boot_s": 1.0,
        "runs": 1,
        "sizes": [30],
        "tools": list(tools.TOOLS),
        "cpu_meter": "v2",
        "identical_state": True,
        "state_lines_per_host": 21,
        "problems": [],
        "machine": {"cpu": "2 x test"},
        "versions": {"opskit": "0"},
        "load_before": ["1", "1", "1"],
        "load_after": ["1", "1", "1"],
        "steps": [
            step("opskit", "first", 2.0, 2),
            step("ansible", "first", 100.0, 78),
            step("pyinfra", "first", 20.0, 97),
            step("opskit", "noop", 1.0, 1),
            step("ansible", "noop", 60.0, 57),
            step("pyinfra", "noop", 2.5, 39),
            step("opskit", "adhoc", 0.9, 1),
            step("ansible", "adhoc", 3.0, 1),
            step("pyinfra", "adhoc", 1.0, 1),
        ],
    }
    text = report.markdown(data)
    assert "| no-change re-run | 1.00 | 60.00 | 2.50 | 0.017 (60x) | 0.400 (2.5x) |" in text
    assert "identical for all three tools on every host" in text
    assert report.missed_targets(data) == ["N=30: no-change run only 2.5x faster than pyinfra"]


def test_the_light_hosts_ad_hoc_floor_and_its_targets():
    def lite(tool, wall, cpu):
        return {**step(tool, "adhoc", wall, 1), "n": 100, "cpu": cpu, "lite": True}

    data = {
        "command": "bench/run",
        "started": "now",
        "duration_s": 1,
        "lab_boot_s": 1.0,
        "runs": 1,
        "sizes": [10],
        "light": 100,
        "tools": ["opskit", "pyinfra"],
        "cpu_meter": "v2",
        "identical_state": True,
        "state_lines_per_host": 21,
        "problems": [],
        "machine": {"cpu": "2 x test"},
        "versions": {"opskit": "0"},
        "load_before": ["1", "1", "1"],
        "load_after": ["1", "1", "1"],
        "steps": [
            {**step("opskit", "noop", 1.2, 1), "n": 10},
            {**step("pyinfra", "noop", 6.0, 39), "n": 10},
            {**step("opskit", "adhoc", 1.0, 1), "n": 10},
            {**step("pyinfra", "adhoc", 1.0, 1), "n": 10},
            lite("opskit", 2.0, 0.8),
            lite("pyinfra", 3.0, 1.3),
        ],
    }
    text = report.markdown(data)
    assert "## 100 light hosts (sshd alone): the ad-hoc floor" in text
    assert "| opskit | 2.00 | - | 0.80 | 8.0 | 1 | 1 |" in text
    assert "| pyinfra | 3.00 | 0.667 (1.5x) | 1.30 | 13.0 | 1 | 1 |" in text
    assert "- no-change run: 1.20x opskit's own ad-hoc time" in text
    assert report.missed_targets(data) == []
    data["steps"][4] = lite("opskit", 3.5, 1.5)
    assert report.missed_targets(data) == [
        "100 light hosts: ad-hoc 3.50 s, pyinfra 3.00 s",
        "100 light hosts: 15.0 ms operator CPU per host",
    ]
