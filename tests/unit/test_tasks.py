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
