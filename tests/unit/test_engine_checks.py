"""The config check of every service runs in the one probe and a failing one fails the host."""

from __future__ import annotations

import pytest

from opskit.core.engine import ConvergeError, config_checks, converge
from opskit.resources import File
from tests.fakes import LocalRemote


def checked(tmp_path, content="good\n"):
    """A drop-in whose service's check reads every file of its directory, like `nginx -t`."""
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir(exist_ok=True)
    check = tmp_path / "check"
    check.write_text(
        f'for f in {conf_d}/*; do if grep -q broken "$f"; then '
        'echo "unknown directive in $f:1"; exit 1; fi; done; echo "syntax is ok"\n'
    )
    return File(str(conf_d / "site.conf"), content, check_after=f"bash {check}")


def test_a_stray_broken_file_fails_a_no_op_in_one_command_naming_it(tmp_path):
    site = checked(tmp_path)
    converge(LocalRemote(), [site])
    stray = tmp_path / "conf.d" / "stray.conf"
    stray.write_text("broken\n")
    remote = LocalRemote()
    with pytest.raises(ConvergeError) as err:
        converge(remote, [site])
    assert remote.commands == 1
    assert "opskit changed nothing here" in str(err.value)
    assert f"unknown directive in {stray}:1" in str(err.value)
    assert [c.changed for c in err.value.changes] == [False]
    # --check says the same.
    with pytest.raises(ConvergeError, match=r"stray\.conf"):
        converge(LocalRemote(), [site], dry_run=True)
    stray.unlink()
    healthy = LocalRemote()
    assert [c.changed for c in converge(healthy, [site])] == [False]
    assert healthy.commands == 1


def test_a_change_that_fixes_the_check_passes_and_one_that_does_not_fails(tmp_path):
    converge(LocalRemote(), [checked(tmp_path)])
    (tmp_path / "conf.d" / "site.conf").write_text("broken\n")  # drift that opskit repairs
    changes = converge(LocalRemote(), [checked(tmp_path)])
    assert [c.changed for c in changes] == [True]
    (tmp_path / "conf.d" / "other.conf").write_text("broken\n")
    (tmp_path / "conf.d" / "site.conf").write_text("drift\n")
    with pytest.raises(ConvergeError, match=r"other\.conf"):
        converge(LocalRemote(), [checked(tmp_path)])
    assert (tmp_path / "conf.d" / "site.conf").read_text() == "drift\n"  # check_after put it back


def test_a_check_runs_only_once_its_file_exists_and_once_per_command(tmp_path):
    a = File(str(tmp_path / "a"), "x\n", check_after="false")
    b = File(str(tmp_path / "b"), "x\n", check_after="false")
    [check] = config_checks([a, b])
    assert check.paths == (a.path, b.path)
    # Before the service is configured there is nothing to check: the first run is not refused
    # by the probe (the change's own check fails it then).
    remote = LocalRemote()
    with pytest.raises(ConvergeError, match="false failed"):
        converge(remote, [a])
    assert remote.commands == 2


def test_files_an_interrupted_run_staged_are_removed_by_the_next_run(tmp_path):
    """A connection lost mid-apply can leave `.opskit.XXXXXX` next to a file (no EXIT trap on
    SIGPIPE); the next run's probe finds those older than a running converge's and removes them."""
    import os
    import time

    site = File(str(tmp_path / "site.conf"), "x\n")
    converge(LocalRemote(), [site])
    old, fresh = tmp_path / ".opskit.AbC123", tmp_path / ".opskit.XyZ789"
    old.write_text("half")
    fresh.write_text("being written")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    remote = LocalRemote()
    changes = converge(remote, [site])
    assert [(c.resource, c.summary) for c in changes if c.changed] == [
        ("leftovers:staged files", "remove 1 file an interrupted run left")
    ]
    assert not old.exists() and fresh.exists() and remote.commands == 2
    again = LocalRemote()
    assert not any(c.changed for c in converge(again, [site])) and again.commands == 1
