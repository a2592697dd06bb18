"""The benchmark's pure parts (bench/): its doctests, and the report from a made-up run."""

from __future__ import annotations

import doctest

import pytest

from bench import labs, measure, report, tools


@pytest.mark.parametrize("module", [labs, measure, report, tools])
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
            step("opskit", "adhoc", 0.5, 1),
            step("ansible", "adhoc", 3.0, 1),
            step("pyinfra", "adhoc", 1.0, 1),
        ],
    }
    text = report.markdown(data)
    assert "| no-change re-run | 1.00 | 60.00 | 2.50 | 0.017 (60x) | 0.400 (2.5x) |" in text
    assert "identical for all three tools on every host" in text
    assert report.missed_targets(data) == ["N=30: no-change run only 2.5x faster than pyinfra"]
