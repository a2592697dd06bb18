"""Role discovery: roles/<role>/{README.md,defaults.yml,role.py}, in a fixed converge order."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from opskit.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
ROLES_DIR = REPO / "roles"
TEMPLATES_DIR = REPO / "templates"
# More trees laid out like the repo (<dir>/roles/<role>/, <dir>/templates/<role>/), separated by
# ':'; their roles come after the repo's own (the benchmark's slice lives in bench/ this way).
ROLES_PATH_ENV = "OPSKIT_ROLES_PATH"


def extra_roots() -> tuple[Path, ...]:
    """The trees named by $OPSKIT_ROLES_PATH (none when it is unset: the default)."""
    raw = os.environ.get(ROLES_PATH_ENV, "")
    return tuple(Path(p).resolve() for p in raw.split(os.pathsep) if p.strip())


def template_dirs() -> tuple[Path, ...]:
    """Where templates are looked up: the repo's templates/, then each extra tree's."""
    return (TEMPLATES_DIR, *(root / "templates" for root in extra_roots()))


# Roles converge in this order on a host, whatever order the inventory lists them in.
ORDER = ("base", "postgresql", "app", "nginx", "certbot", "healthcheck", "backup", "papertrail")

# Variables that belong to opskit itself rather than to a role: opskit/defaults/<area>.yml, each
# key starting with `<area>_` (ssh_user, status_disk_warning, audit_ports, ...).
DEFAULTS_DIR = Path(__file__).parent / "defaults"


def _core_vars() -> dict[str, Any]:
    found: dict[str, Any] = {}
    for f in sorted(DEFAULTS_DIR.glob("*.yml")):
        data = yaml.safe_load(f.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{f}: expected a mapping of variables")
        for key in data:
            if not str(key).startswith(f"{f.stem}_"):
                raise ConfigError(f"{f}: {key}: variables here start with '{f.stem}_'")
        found.update(data)
    return found


CORE_VARS: Mapping[str, Any] = _core_vars()


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
    # Registered before it runs, as `import` does: dataclasses and typing look the module up.
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[spec.name]
        raise
    return module


def available_roles(roles_dir: Path | None = None) -> Mapping[str, Role]:
    """All roles on disk, in converge order; each role's defaults.yml read and checked once.

    Without `roles_dir`: the repo's roles/ and those of the trees in $OPSKIT_ROLES_PATH.
    """
    if roles_dir is not None:
        return _scan_roles((roles_dir,))
    return _scan_roles((ROLES_DIR, *(root / "roles" for root in extra_roots())))


@cache
def _scan_roles(roles_dirs: tuple[Path, ...]) -> Mapping[str, Role]:
    where: dict[str, Path] = {}
    for roles_dir in roles_dirs:
        if not roles_dir.is_dir():
            raise ConfigError(f"{roles_dir}: no such roles directory (check ${ROLES_PATH_ENV})")
        for p in roles_dir.iterdir():
            if (p / "role.py").is_file():
                if p.name in where:
                    raise ConfigError(f"{p}: role '{p.name}' is also defined in {where[p.name]}")
                where[p.name] = p
    found: dict[str, Role] = {}
    for name in sorted(where, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)):
        path = where[name]
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
