"""The task layer: every task is an OpsTask (one error boundary), and `-h` always means help."""

from __future__ import annotations

import subprocess
import sys

import pytest
from invoke import Collection

import tasks
from cli.common import OpsTask
from opskit.core.roles import REPO


def _all_tasks(coll: Collection, prefix: str = "") -> list[tuple[str, object]]:
    out = [(f"{prefix}{name}", t) for name, t in coll.tasks.items()]
    for name, sub in coll.collections.items():
        out += _all_tasks(sub, f"{prefix}{name}.")
    return out


TASKS = _all_tasks(tasks.ns)


@pytest.mark.parametrize(("name", "task"), TASKS, ids=[n for n, _ in TASKS])
def test_every_task_has_the_one_error_boundary_and_no_h_flag(name: str, task: object) -> None:
    assert isinstance(task, OpsTask), f"{name}: use cli.common.task, not invoke.task"
    shorts = {n for a in task.get_arguments() for n in a.names if len(n) == 1}
    assert "h" not in shorts


@pytest.mark.parametrize("name", ["backup.list", "status", "provision", "deploy", "lab.up"])
def test_dash_h_prints_the_tasks_help(name: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "invoke", name, "-h"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stderr
    assert f"Usage: inv[oke] [--core-opts] {name}" in out.stdout and "--hosts" in out.stdout


def test_bad_input_exits_2_and_names_the_problem(tmp_path) -> None:
    bad = tmp_path / "inv.yml"
    bad.write_text("hosts: [not, a, mapping]\n")
    out = subprocess.run(
        [sys.executable, "-m", "invoke", "provision", "--check", "-i", str(bad)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 2
    assert str(bad) in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["provision", "--workers", "0"], "--workers: expected a whole number >= 1, got '0'"),
        (["provision", "--workers", "-3"], "--workers: expected a whole number >= 1, got '-3'"),
        (["provision", "--workers", "abc"], "--workers: expected a whole number >= 1, got 'abc'"),
        (["audit", "--workers", "2.5"], "--workers: expected a whole number >= 1, got '2.5'"),
        (["deploy", "--health-timeout", "-5"], "--health-timeout: expected a number > 0"),
        (["deploy", "--health-timeout", "0"], "--health-timeout: expected a number > 0"),
        (["deploy", "--batch", "0"], "--batch: expected a whole number >= 1, got '0'"),
        (["rollback", "--steps", "0"], "--steps: expected a whole number >= 1, got '0'"),
        (["rollback", "--health-timeout", "nan"], "--health-timeout: expected a number > 0"),
        (["audit", "--since-hours", "-1"], "--since-hours: expected a number > 0, got '-1'"),
        (["releases", "--journal", "-1"], "--journal: expected a whole number >= 0"),
        (["status", "--samples", "x"], "--samples: expected a whole number >= 0, got 'x'"),
        (["lab.inbox", "--last", "0"], "--last: expected a whole number >= 1, got '0'"),
        (
            ["run", "--timeout", "soon", "--command", "true"],
            "--timeout: expected a number >= 0, got 'soon'",
        ),
    ],
)
def test_numeric_flags_are_checked_before_the_inventory_is_read(tmp_path, args, message) -> None:
    """Exit 2 naming the flag, no traceback, and nothing read: the inventory does not exist."""
    out = subprocess.run(
        [sys.executable, "-m", "invoke", *args, "-i", str(tmp_path / "none.yml")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"error: {message}" in out.stderr and "Traceback" not in out.stderr
    assert out.stdout == ""
