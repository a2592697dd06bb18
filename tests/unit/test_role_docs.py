"""Each role's README.md variable table is generated from its schema.yml: every variable is
documented there with its type and its real default. After changing a schema, regenerate with

    OPSKIT_UPDATE_DOCS=1 .venv/bin/python -m pytest tests/unit/test_role_docs.py
"""

from __future__ import annotations

import os

import pytest

from opskit.core.roles import ROLES_DIR, available_roles
from opskit.core.schema import UPDATE_HINT, readme_with_table, variables_table

REPO_ROLES = sorted(p.name for p in ROLES_DIR.iterdir() if (p / "role.py").is_file())


@pytest.mark.parametrize("name", REPO_ROLES)
def test_the_readme_table_is_the_schema(name, monkeypatch):
    monkeypatch.delenv("OPSKIT_ROLES_PATH", raising=False)
    role = available_roles()[name]
    readme = role.path / "README.md"
    text = readme.read_text()
    table = variables_table(role.variables.values())
    expected = readme_with_table(text, table, str(readme))
    if os.environ.get("OPSKIT_UPDATE_DOCS") == "1" and expected != text:
        readme.write_text(expected)
        text = expected
    assert text == expected, f"{readme}: the variables table differs from schema.yml: {UPDATE_HINT}"
    for var in role.variables:
        assert f"| `{var}` |" in text


def test_a_readme_without_the_markers_is_an_error(tmp_path):
    from opskit.core.errors import ConfigError

    with pytest.raises(ConfigError, match="no generated variables table"):
        readme_with_table("# Role\n", "| x |", "README.md")
