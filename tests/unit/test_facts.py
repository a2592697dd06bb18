"""A host's release is read inside the one probe, remembered, and roles are built for it."""

from __future__ import annotations

import pytest

from opskit.core import facts, runner
from opskit.core.facts import GUESS, Facts, FactsCache, UnsupportedRelease
from opskit.core.inventory import load_inventory
from opskit.core.runner import RunContext, provision_work
from tests.fakes import LocalRemote

ROLE = """
from opskit.resources import File

def resources(v):
    # What a role does with the facts: here, write down the release it was built for.
    return [File(v["rel_path"], f"{v.get('os_codename')} {v.get('os_version')}\\n")]
"""
INVENTORY = """\
ssh: {known_hosts: kh}
roles: [rel]
vars: {rel_path: %s}
groups:
  g:
    hosts:
      h1: {address: 127.0.0.1, user: root}
"""


@pytest.fixture
def setup(tmp_path, monkeypatch):
    (tmp_path / "tree/roles/rel").mkdir(parents=True)
    (tmp_path / "tree/roles/rel/role.py").write_text(ROLE)
    (tmp_path / "tree/roles/rel/defaults.yml").write_text("rel_path: /nonexistent\n")
    monkeypatch.setenv("OPSKIT_ROLES_PATH", str(tmp_path / "tree"))
    monkeypatch.setenv("OPSKIT_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "inv.yml"
    path.write_text(INVENTORY % (tmp_path / "release"))
    (tmp_path / "os-release").write_text('ID=debian\nVERSION_ID="12"\nVERSION_CODENAME=bookworm\n')
    # The probe reads this file instead of the machine's own /etc/os-release.
    monkeypatch.setattr(
        facts, "PROBE", facts.PROBE.replace("/etc/os-release", str(tmp_path / "os-release"))
    )
    inventory = load_inventory(path)
    return tmp_path, inventory, inventory.hosts[0]


def run(inventory, host):
    remote = LocalRemote(host=host)
    changes = provision_work(None)(remote, RunContext(inventory, dry_run=False))
    return remote, changes


def test_a_host_as_guessed_costs_nothing_more_and_is_remembered(setup):
    tmp_path, inventory, host = setup
    remote, changes = run(inventory, host)
    assert remote.commands == 2 and [c.changed for c in changes] == [True]
    assert (tmp_path / "release").read_text() == "bookworm 12\n"
    assert runner.facts_cache().get(host.name, host.address, host.port) == GUESS
    again, _ = run(inventory, host)
    assert again.commands == 1  # the no-op: one command, the release re-read inside it


def test_another_release_rebuilds_the_roles_for_it_before_changing_anything(setup):
    tmp_path, inventory, host = setup
    (tmp_path / "os-release").write_text('ID=debian\nVERSION_ID="13"\nVERSION_CODENAME=trixie\n')
    remote, _ = run(inventory, host)
    assert remote.commands == 3  # probe (guess: 12), probe again (13), change
    assert (tmp_path / "release").read_text() == "trixie 13\n"
    assert FactsCache(tmp_path / "cache/facts").get(host.name, host.address, host.port) == Facts(
        "debian", "13", "trixie"
    )
    again, _ = run(inventory, host)
    assert again.commands == 1


def test_an_unsupported_release_is_refused_and_nothing_changes(setup):
    tmp_path, inventory, host = setup
    (tmp_path / "os-release").write_text('ID=debian\nVERSION_ID="11"\nVERSION_CODENAME=bullseye\n')
    with pytest.raises(UnsupportedRelease, match=r"h1: debian 11 \(bullseye\) is not supported"):
        run(inventory, host)
    assert not (tmp_path / "release").exists()


@pytest.mark.parametrize(
    ("chosen", "os_version", "expected"),
    [(None, 12, 15), (None, 13, 17), (None, None, 15), (16, 13, 16)],
)
def test_postgresql_follows_the_release_unless_chosen(chosen, os_version, expected):
    from opskit.core.roles import available_roles

    role = available_roles()["postgresql"].module()
    v = {"postgresql_version": chosen, **({"os_version": os_version} if os_version else {})}
    assert role.cluster_version(v) == expected
