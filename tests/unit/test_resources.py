"""Plans are pure; scripts are real shell, run here by LocalRemote on files in a temp dir."""

from __future__ import annotations

import os
import stat

import pytest

from opskit.core.cron import validate_cron_schedule
from opskit.core.engine import ConvergeError, converge, split_sections
from opskit.core.errors import ConfigError
from opskit.core.secrets import Secret
from opskit.resources import (
    Command,
    CronEntry,
    Directory,
    File,
    Line,
    Service,
    Symlink,
)
from tests.fakes import LocalRemote, make_host

SHA_A = "a" * 64
OLD_TOKEN = "b2xkLXRva2VuCg=="  # base64 of "old-token\n"


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("absent\n", ("create",)),
        (f"regular file|644|root|root\n{File('/x', 'a').sha256}\n", ()),
        (f"regular file|600|root|root\n{File('/x', 'a').sha256}\n", ("mode 0600 -> 0644",)),
        (f"regular file|644|app|root\n{SHA_A}\nYgo=\n", ("content", "owner app -> root")),
    ],
)
def test_plan_file(state, expected):
    assert File("/x", "a").plan(state, frozenset()).reasons == expected


def test_plan_file_refuses_a_directory():
    with pytest.raises(ConfigError, match="is a directory"):
        File("/x", "a").plan("directory|755|root|root\n", frozenset())


def test_sensitive_file_never_shows_content():
    plan = File("/x", "token=hunter2\n", sensitive=True).plan(
        f"regular file|600|root|root\n{SHA_A}\n{OLD_TOKEN}\n", frozenset()
    )
    assert "hunter2" not in plan.diff and "old-token" not in plan.diff


@pytest.mark.parametrize(
    ("state", "changed", "expected"),
    [
        ("enabled|active", frozenset(), ()),
        ("disabled|inactive", frozenset(), ("enable (disabled)", "start (inactive)")),
        ("enabled|active", frozenset({"file:/etc/x"}), ("reload (config changed)",)),
        ("enabled|inactive", frozenset({"file:/etc/x"}), ("start (inactive)",)),  # start suffices
        ("|inactive", frozenset(), ("enable (not found)", "start (inactive)")),
    ],
)
def test_plan_service_handler(state, changed, expected):
    svc = Service("nginx", reload_on=("file:/etc/x",))
    assert svc.plan(state, changed).reasons == expected


@pytest.mark.parametrize(
    "bad", ["* * * *", "60 * * * *", "* 24 * * *", "*/0 * * * *", "x * * * *", "1-2-3 * * * *"]
)
def test_cron_schedule_rejected(bad):
    with pytest.raises(ConfigError, match="cron schedule"):
        validate_cron_schedule(bad)


@pytest.mark.parametrize(
    "good",
    ["0 */6 * * *", "15 3 * * mon", "@daily", "0,30 8-18 1 1-12 1-5", "0 9 * jan-mar mon-fri"],
)
def test_cron_schedule_accepted(good):
    assert validate_cron_schedule(good)


def test_cron_entry_name_and_file():
    entry = CronEntry("backup_db", "0 */6 * * *", "/usr/local/bin/backup", user="postgres")
    assert entry.path == "/etc/cron.d/backup_db"
    assert entry.content.endswith("0 */6 * * * postgres /usr/local/bin/backup\n")
    with pytest.raises(ConfigError, match="cron skips"):
        CronEntry("backup.db", "@daily", "x")


def test_cron_entry_writes_an_exact_file():
    """Without its header the file is exactly the env lines and the entry (what another tool
    writes, byte for byte); a header of one's own is allowed, a non-comment one is not."""
    exact = CronEntry("x", "*/5 * * * *", "/bin/job --quiet", env={"MAILTO": ""}, header=None)
    assert exact.content == "MAILTO=\n*/5 * * * * root /bin/job --quiet\n"
    own = CronEntry("x", "@daily", "job", header="# Ansible: x")
    assert own.content == "# Ansible: x\n@daily root job\n"
    assert CronEntry("x", "@daily", "job").content.startswith("# Managed by opskit;")
    with pytest.raises(ConfigError, match="one '#' comment line"):
        CronEntry("x", "@daily", "job", header="not a comment")
    with pytest.raises(ConfigError, match="invalid environment line"):
        CronEntry("x", "@daily", "job", env={"A B": "1"})


def test_cron_entry_converges_exactly(tmp_path):
    """The exact file converges with the engine (real shell, here) and is then a no-op."""
    entry = CronEntry("x", "@hourly", "job", header=None)
    target = File(str(tmp_path / "x"), entry.content, mode=entry.mode)
    remote = LocalRemote()
    assert [c.changed for c in converge(remote, [target])] == [True]
    assert (tmp_path / "x").read_text() == "@hourly root job\n"
    assert [c.changed for c in converge(remote, [target])] == [False]


def test_command_needs_a_guard():
    with pytest.raises(ConfigError, match="needs a guard"):
        Command("x", "echo hi")


def test_split_sections_garbled():
    with pytest.raises(Exception, match="garbled"):
        split_sections("@@opskit 1\nx\n", 2)


# --- the real scripts, run locally ---------------------------------------------------------


def test_converge_creates_then_changes_nothing(tmp_path):
    d = tmp_path / "conf.d"
    resources = [
        Directory(str(d), 0o750),
        File(str(d / "a.conf"), "one\n", mode=0o640),
        Symlink(str(tmp_path / "current"), str(d)),
        Command("marker", f"touch {tmp_path}/marker", creates=f"{tmp_path}/marker"),
    ]
    remote = LocalRemote()
    first = converge(remote, resources)
    assert [c.changed for c in first] == [True, True, True, True]
    assert remote.commands == 2  # one read of all state, one batch of changes
    assert (d / "a.conf").read_text() == "one\n"
    assert stat.S_IMODE(os.stat(d / "a.conf").st_mode) == 0o640
    assert os.readlink(tmp_path / "current") == str(d)
    again = converge(remote, resources)
    assert not any(c.changed for c in again)
    assert remote.commands == 3  # the no-op run is a single round trip


def test_dry_run_reports_diff_and_writes_nothing(tmp_path):
    f = tmp_path / "x.conf"
    f.write_text("old\n")
    remote = LocalRemote()
    [change] = converge(remote, [File(str(f), "new\n")], dry_run=True)
    assert change.changed and "-old\n+new\n" in change.diff
    assert f.read_text() == "old\n" and remote.commands == 1


def test_validator_failure_keeps_old_file(tmp_path):
    f = tmp_path / "x.conf"
    f.write_text("good\n")
    bad = File(str(f), "bad\n", validate="grep -q good %s")
    with pytest.raises(ConvergeError, match=r"file:.*x.conf: exit 65\nvalidation failed"):
        converge(LocalRemote(), [bad])
    assert f.read_text() == "good\n"
    assert [p.name for p in tmp_path.iterdir()] == ["x.conf"]  # no temp file left


def test_check_after_failure_puts_old_file_back(tmp_path, monkeypatch):
    import opskit.resources as res

    monkeypatch.setattr(res, "BACKUP_DIR", str(tmp_path / "backups"))
    f = tmp_path / "x.conf"
    f.write_text("good\n")
    bad = File(str(f), "bad\n", check_after=f"grep -q good {f}")
    with pytest.raises(ConvergeError, match="the previous file was put back"):
        converge(LocalRemote(), [bad])
    assert f.read_text() == "good\n"


def test_failure_midway_reports_what_was_done(tmp_path):
    ok = File(str(tmp_path / "a"), "a\n")
    broken = File(str(tmp_path / "missing-dir" / "b"), "b\n")
    with pytest.raises(ConvergeError) as info:
        converge(LocalRemote(), [ok, broken])
    assert [c.resource for c in info.value.changes] == [ok.id]
    assert str(info.value).startswith(broken.id)


def test_line_in_file_replace_and_append(tmp_path):
    f = tmp_path / "cfg"
    f.write_text("a=1\nport=22\nb=2\n")
    remote = LocalRemote()
    converge(remote, [Line(str(f), "port=2222", regexp=r"^port="), Line(str(f), "c=3")])
    assert f.read_text() == "a=1\nport=2222\nb=2\nc=3\n"
    assert not any(
        c.changed for c in converge(remote, [Line(str(f), "port=2222", regexp=r"^port=")])
    )


def test_secrets_are_redacted_from_diffs(tmp_path):
    f = tmp_path / "env"
    f.write_text("TOKEN=old\n")
    remote = LocalRemote(host=make_host(app_token=Secret("hunter2")))
    [change] = converge(remote, [File(str(f), "TOKEN=hunter2\n")], dry_run=True)
    assert "hunter2" not in change.diff and "***" in change.diff


def test_host_program_is_the_module_verbatim_with_a_managed_by_line(tmp_path, monkeypatch):
    from opskit.resources import files

    (tmp_path / "probe.py").write_text('#!/usr/bin/python3\n"""A probe."""\nprint("x")\n')
    (tmp_path / "plain.py").write_text('"""No shebang."""\n')
    monkeypatch.setattr(files, "HOSTSIDE_DIR", tmp_path)
    res = files.HostProgram("/usr/local/bin/p", "probe", role="status")
    lines = res.content.splitlines()
    assert lines[0] == "#!/usr/bin/python3"
    assert (
        lines[1].startswith("# Managed by opskit, role status;") and "hostside/probe.py" in lines[1]
    )
    assert lines[2:] == ['"""A probe."""', 'print("x")'] and res.mode == 0o755
    plain = files.host_program_source("plain", "x").splitlines()
    assert plain[0] == "#!/usr/bin/python3" and plain[2] == '"""No shebang."""'
    with pytest.raises(ConfigError, match="no such host program"):
        files.HostProgram("/x", "missing", role="x")
    with pytest.raises(ConfigError, match="name a module"):
        files.HostProgram("/x", "../etc", role="x")
