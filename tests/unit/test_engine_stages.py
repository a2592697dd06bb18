"""What a package install creates or starts is seen by the resources after it (engine stages)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from opskit.core.engine import ConvergeError, converge
from opskit.core.resource import NOTHING, Plan, Resource, q
from opskit.resources import Absent, File
from tests.fakes import LocalRemote


@dataclass(frozen=True)
class FakeInstall(Resource):
    """Plays a package: installing it drops a default config file, as nginx's package does."""

    marker: str
    creates: str
    fail: bool = False
    alters_host = True

    @property
    def id(self) -> str:  # type: ignore[override]
        return f"packages:{self.marker}"

    def probe(self) -> str:
        return f"test -e {q(self.marker)} && echo ii || echo absent"

    def plan(self, state: str, changed: frozenset[str]) -> Plan:
        return NOTHING if state.strip() == "ii" else Plan(("install",))

    def script(self, plan: Plan) -> str:
        if self.fail:
            return "echo 'E: unable to locate package' >&2; exit 100"
        return f"touch {q(self.marker)} && echo default > {q(self.creates)}"


def test_a_file_a_package_creates_is_seen_in_the_same_run(tmp_path):
    default = str(tmp_path / "sites-enabled-default")
    conf = str(tmp_path / "site.conf")
    resources = [
        FakeInstall(str(tmp_path / "installed"), default),
        Absent(default),  # the role removes what the package ships
        File(conf, "server {}\n"),
    ]
    remote = LocalRemote()
    first = converge(remote, resources)
    assert [c.resource for c in first if c.changed] == [r.id for r in resources]
    assert remote.commands == 4  # probe, install, probe again, change
    assert not (tmp_path / "sites-enabled-default").exists()

    again = LocalRemote()
    assert not any(c.changed for c in converge(again, resources))
    assert again.commands == 1  # the no-op stays one command


def test_without_installs_a_run_stays_two_commands(tmp_path):
    (tmp_path / "installed").touch()
    resources = [
        FakeInstall(str(tmp_path / "installed"), "/nonexistent"),
        File(str(tmp_path / "f"), "x\n"),
    ]
    remote = LocalRemote()
    changes = converge(remote, resources)
    assert [c.changed for c in changes] == [False, True] and remote.commands == 2


def test_handlers_see_the_install_of_an_earlier_stage(tmp_path):
    @dataclass(frozen=True)
    class Watcher(Resource):
        path: str

        @property
        def id(self) -> str:  # type: ignore[override]
            return f"watch:{self.path}"

        def probe(self) -> str:
            return "true"

        def plan(self, state: str, changed: frozenset[str]) -> Plan:
            hit = any(c.startswith("packages:") for c in changed)
            return Plan(("restart (config changed)",)) if hit else NOTHING

        def script(self, plan: Plan) -> str:
            return f"touch {q(self.path)}"

    pkg = FakeInstall(str(tmp_path / "installed"), str(tmp_path / "d"))
    changes = converge(LocalRemote(), [pkg, Watcher(str(tmp_path / "restarted"))])
    assert all(c.changed for c in changes) and (tmp_path / "restarted").exists()


def test_a_failed_install_changes_nothing_else(tmp_path):
    resources = [
        FakeInstall(str(tmp_path / "installed"), str(tmp_path / "d"), fail=True),
        File(str(tmp_path / "f"), "x\n"),
    ]
    with pytest.raises(ConvergeError, match=r"packages:.*exit 100") as err:
        converge(LocalRemote(), resources)
    assert err.value.changes == () and not (tmp_path / "f").exists()


def test_dry_run_plans_from_the_first_probe_only(tmp_path):
    default = str(tmp_path / "default")
    resources = [FakeInstall(str(tmp_path / "installed"), default), Absent(default)]
    remote = LocalRemote()
    changes = converge(remote, resources, dry_run=True)
    assert [c.changed for c in changes] == [True, False] and remote.commands == 1
    assert not (tmp_path / "installed").exists()
