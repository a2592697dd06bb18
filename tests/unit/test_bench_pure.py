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


def run_data(command, **fields):
    """A bench run's header as results.json has it; `fields`: sizes, tools, light, readonly."""
    return {
        "command": command,
        "started": "now",
        "duration_s": 1,
        "lab_boot_s": 1.0,
        "runs": 1,
        **fields,
        "cpu_meter": "v2",
        "identical_state": True,
        "state_lines_per_host": 21,
        "problems": [],
        "machine": {"cpu": "2 x test"},
        "versions": {"opskit": "0"},
        "load_before": ["1", "1", "1"],
        "load_after": ["1", "1", "1"],
    }


def test_report_and_targets():
    data = {
        **run_data("bench/run", sizes=[30], tools=list(tools.TOOLS)),
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
        **run_data("bench/run", sizes=[10], light=100, tools=["opskit", "pyinfra"]),
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


def test_the_read_only_fleet_commands_table_and_their_target():
    def ro(name, wall, sessions, connections=1, exit_code=1):
        return {
            **step("opskit", name, wall, sessions),
            "n": 2,
            "cpu": 0.5,
            "exit_code": exit_code,
            "sessions": {"b8h01": 1, "b8h02": sessions},
            "connections": {"b8h01": 1, "b8h02": connections},
        }

    data = {
        **run_data("bench/run --readonly", sizes=[2], readonly=2, tools=["opskit"]),
        "steps": [
            {**step("opskit", "noop", 1.0, 1), "n": 2},
            {**step("opskit", "adhoc", 1.0, 1), "n": 2},
            ro("status", 1.5, 1, exit_code=5),
            ro("audit", 1.25, 1, exit_code=4),
            ro("certs.status", 1.0, 1, exit_code=0),
            ro("backup.list", 2.0, 2),
            ro("releases", 0.75, 1, connections=2),
        ],
    }
    text = report.markdown(data)
    assert "## Read-only fleet commands on 2 hosts" in text
    assert "| `inv status` | 1.50 | 1 | 1 | 250.0 | 5 | yes |" in text
    assert "| `inv audit` (inside) | 1.25 | 1 | 1 | 250.0 | 4 | yes |" in text
    assert "| `inv certs.status` | 1.00 | 1 | 1 | 250.0 | 0 | yes |" in text
    assert "| `inv backup.list` | 2.00 | 1 | 1-2 | 250.0 | 1 | **no** |" in text
    assert "| `inv releases` | 0.75 | 1-2 | 1 | 250.0 | 1 | **no** |" in text
    assert report.readonly_targets(data) == [
        "N=2: inv backup.list: 1 connections, 1-2 remote commands per host",
        "N=2: inv releases: 1-2 connections, 1 remote commands per host",
    ]
    assert report.readonly_targets(data) == report.missed_targets(data)[-2:]
    del data["readonly"]  # a run without --readonly: no section, no target
    assert "Read-only fleet commands" not in report.markdown(data)
    assert report.readonly_targets(data) == []


def test_the_read_only_commands_run_through_their_own_inventory():
    data = labs.readonly_inventory_data(2)
    assert data["roles"] == ["app", "certbot", "backup"]
    assert list(data["groups"]["bench"]["hosts"]) == ["b8h01", "b8h02"]
    secrets = [v["secret"] for v in data["vars"].values() if isinstance(v, dict) and "secret" in v]
    assert sorted(secrets) == sorted(labs.READONLY_SECRETS)
    for name in tools.READONLY:
        cmd = tools.command("opskit", name, 2)
        assert cmd.argv[1] == name and cmd.argv[3].endswith("n2/opskit-readonly.yml")
        assert set(labs.READONLY_SECRETS) <= set(cmd.env)
    with pytest.raises(ValueError):
        tools.command("pyinfra", "status", 2)


def test_the_read_only_inventory_is_valid_for_the_roles_it_declares(tmp_path, monkeypatch):
    from opskit.app.deploy import app_hosts
    from opskit.backup.hosts import backup_hosts
    from opskit.certs.read import cert_hosts
    from opskit.core.inventory import load_inventory

    for name, value in labs.READONLY_SECRETS.items():
        monkeypatch.setenv(name, value)
    inv = load_inventory(labs.write_inventory(3, tmp_path / "ro.yml", readonly=True))
    assert [h.roles for h in inv.hosts] == [labs.READONLY_ROLES] * 3
    for pick in (app_hosts, backup_hosts, lambda i, h: cert_hosts(i, h, explicit=False)):
        assert len(pick(inv, inv.hosts)) == 3
