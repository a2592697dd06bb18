"""Role discovery: roles/<role>/{README.md,defaults.yml,role.py}, in a fixed converge order."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from opskit.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
ROLES_DIR = REPO / "roles"
TEMPLATES_DIR = REPO / "templates"

# Roles converge in this order on a host, whatever order the inventory lists them in.
ORDER = ("base", "postgresql", "app", "nginx", "certbot", "healthcheck", "backup", "papertrail")

# Variables that belong to opskit itself rather than to a role.
CORE_VARS: Mapping[str, Any] = {
    "ssh_user": "root",  # login user; a deploy user with sudo is the normal case
    "ssh_port": 22,
}


@dataclass(frozen=True)
class Role:
    name: str
    defaults: Mapping[str, Any]
    path: Path

    def module(self) -> ModuleType:
        return _load_module(self.name, self.path / "role.py")


@cache
def _load_module(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"opskit_roles.{name}", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path}: cannot load role module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def available_roles(roles_dir: Path = ROLES_DIR) -> Mapping[str, Role]:
    """All roles on disk, in converge order; each role's defaults.yml read and checked once."""
    found: dict[str, Role] = {}
    names = sorted(p.name for p in roles_dir.iterdir() if (p / "role.py").is_file())
    for name in sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)):
        path = roles_dir / name
        defaults_file = path / "defaults.yml"
        defaults = yaml.safe_load(defaults_file.read_text()) if defaults_file.exists() else {}
        defaults = defaults or {}
        if not isinstance(defaults, dict):
            raise ConfigError(f"{defaults_file}: expected a mapping of variables")
        for key in defaults:
            if not str(key).startswith(f"{name}_"):
                raise ConfigError(f"{defaults_file}: {key}: role variables start with '{name}_'")
        found[name] = Role(name, defaults, path)
    return found
