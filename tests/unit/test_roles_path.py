"""OPSKIT_ROLES_PATH adds roles (and their templates) from trees laid out like the repo."""

from __future__ import annotations

import pytest

from opskit.core.errors import ConfigError
from opskit.core.render import render
from opskit.core.roles import available_roles


def make_tree(root, role="extra"):
    (root / "roles" / role).mkdir(parents=True)
    (root / "roles" / role / "role.py").write_text("def resources(v):\n    return []\n")
    (root / "roles" / role / "defaults.yml").write_text(f"{role}_greeting: hello\n")
    (root / "templates" / role).mkdir(parents=True)
    (root / "templates" / role / "x.j2").write_text("{{ " + role + "_greeting }}\n")


def test_unset_means_the_repo_roles_only(monkeypatch):
    monkeypatch.delenv("OPSKIT_ROLES_PATH", raising=False)
    assert "extra" not in available_roles() and "base" in available_roles()


def test_extra_tree_adds_roles_and_templates(tmp_path, monkeypatch):
    make_tree(tmp_path)
    monkeypatch.setenv("OPSKIT_ROLES_PATH", str(tmp_path))
    roles = available_roles()
    assert next(iter(roles)) == "base" and roles["extra"].defaults == {"extra_greeting": "hello"}
    assert render("extra/x.j2", {"extra_greeting": "hi"}) == "hi\n"


def test_a_role_defined_twice_is_refused(tmp_path, monkeypatch):
    make_tree(tmp_path, role="base")
    monkeypatch.setenv("OPSKIT_ROLES_PATH", str(tmp_path))
    with pytest.raises(ConfigError, match="role 'base' is also defined in"):
        available_roles()


def test_a_missing_tree_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("OPSKIT_ROLES_PATH", str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="no such roles directory"):
        available_roles()
