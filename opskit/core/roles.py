"""Role discovery: roles/<role>/{README.md, schema.yml, role.py}, in a fixed converge order.

A role declares every variable it reads in `schema.yml` (type, default, doc: see
opskit/core/schema.py and docs/writing-a-role.md). A role with a plain `defaults.yml`
(name: default) instead still loads; its variables are typed after their defaults.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

from opskit.core.errors import ConfigError, TemplateError
from opskit.core.resource import Resource
from opskit.core.schema import (
    Invalid,
    Variable,
    check,
    did_you_mean,
    infer_variables,
    is_unset,
    load_schema,
)

REPO = Path(__file__).resolve().parents[2]
ROLES_DIR = REPO / "roles"
TEMPLATES_DIR = REPO / "templates"
# More trees laid out like the repo (<dir>/roles/<role>/, <dir>/templates/<role>/), separated by
# ':'; their roles come after the repo's own (the benchmark's slice lives in bench/ this way).
ROLES_PATH_ENV = "OPSKIT_ROLES_PATH"
SCHEMA_FILE = "schema.yml"
DEFAULTS_FILE = "defaults.yml"  # the plain form: name: default, typed after the default

# Fields through which a resource names others it reacts to (handlers): Service(reload_on=,
# restart_on=), DaemonReload(watch), and any resource kind with a `watch` of resource ids.
HANDLER_FIELDS = ("watch", "reload_on", "restart_on")
_VARIABLE = re.compile(r"[a-z][a-z0-9]*_[a-z0-9_]+")  # what a variable's name looks like


def extra_roots() -> tuple[Path, ...]:
    """The trees named by $OPSKIT_ROLES_PATH (none when it is unset: the default)."""
    raw = os.environ.get(ROLES_PATH_ENV, "")
    return tuple(Path(p).resolve() for p in raw.split(os.pathsep) if p.strip())


def role_dirs() -> tuple[Path, ...]:
    """The folders searched for roles: the repo's roles/, then each extra tree's roles/."""
    return (ROLES_DIR, *(root / "roles" for root in extra_roots()))


def where_roles_are() -> str:
    """Where roles are looked for, for error messages.

    >>> "roles" in where_roles_are() and ROLES_PATH_ENV in where_roles_are()
    True
    """
    raw = os.environ.get(ROLES_PATH_ENV, "")
    env = f"${ROLES_PATH_ENV}={raw}" if raw.strip() else f"${ROLES_PATH_ENV} is not set"
    dirs = ", ".join(str(d) for d in role_dirs())
    return (
        f"roles are the folders with a role.py in: {dirs} ({env}; it adds trees laid out like "
        "the repo, <tree>/roles/<role>/, separated by ':')"
    )


def template_dirs() -> tuple[Path, ...]:
    """Where templates are looked up: the repo's templates/, then each extra tree's."""
    return (TEMPLATES_DIR, *(root / "templates" for root in extra_roots()))


# Roles converge in this order on a host, whatever order the inventory lists them in.
ORDER = ("base", "postgresql", "app", "nginx", "certbot", "healthcheck", "backup", "papertrail")

# Variables that belong to opskit itself rather than to a role: opskit/core/defaults/<area>.yml
# (schema form), each key starting with `<area>_` (ssh_user, status_disk_warning, audit_ports).
DEFAULTS_DIR = Path(__file__).parent / "defaults"


@cache
def core_variables() -> Mapping[str, Variable]:
    """opskit's own variables; every host has them."""
    found: dict[str, Variable] = {}
    for f in sorted(DEFAULTS_DIR.glob("*.yml")):
        found.update(load_schema(f, "opskit", f"{f.stem}_"))
    return found


@dataclass(frozen=True)
class Role:
    name: str
    variables: Mapping[str, Variable]
    path: Path

    @property
    def defaults(self) -> dict[str, Any]:
        """Each variable's default value."""
        return {name: var.default for name, var in self.variables.items()}

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
    """All roles on disk, in converge order; each role's schema read and checked once.

    Without `roles_dir`: the repo's roles/ and those of the trees in $OPSKIT_ROLES_PATH.
    """
    if roles_dir is not None:
        return _scan_roles((roles_dir,))
    return _scan_roles(role_dirs())


def read_role(path: Path) -> Role:
    """The role in folder `path` (named after it), its variables read and checked."""
    name = path.name
    schema, defaults = path / SCHEMA_FILE, path / DEFAULTS_FILE
    if schema.exists() and defaults.exists():
        raise ConfigError(
            f"{path}: both {SCHEMA_FILE} and {DEFAULTS_FILE}: declare the variables once, "
            f"in {SCHEMA_FILE}"
        )
    if schema.exists():
        variables = load_schema(schema, name, f"{name}_")
    elif defaults.exists():
        variables = infer_variables(defaults, name, f"{name}_")
    else:
        variables = {}
    return Role(name, variables, path)


@cache
def _scan_roles(roles_dirs: tuple[Path, ...]) -> Mapping[str, Role]:
    where: dict[str, Path] = {}
    for roles_dir in roles_dirs:
        if not roles_dir.is_dir():
            raise ConfigError(f"{roles_dir}: no such roles directory (check ${ROLES_PATH_ENV})")
        for p in sorted(roles_dir.iterdir()):
            if (p / "role.py").is_file():
                if p.name in where:
                    raise ConfigError(f"{p}: role '{p.name}' is also defined in {where[p.name]}")
                where[p.name] = p
    found: dict[str, Role] = {}
    for name in sorted(where, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)):
        found[name] = read_role(where[name])
    return found


def required_problem(var: Variable) -> str:
    """What to say when the required variable `var` is null or ""."""
    how = " as {secret: NAME}" if var.spec.secret else ""
    what = re.split(r"; |\. ", var.doc, maxsplit=1)[0].rstrip(".")
    return f"required by role {var.owner} ({what}); set it{how} in the inventory"


def missing_required(role: Role, v: Mapping[str, Any]) -> str | None:
    """Why `v` lacks a variable `role` requires (neither null nor "" allowed), or None."""
    for name, var in role.variables.items():
        if var.spec.required and is_unset(v.get(name)):
            return f"{name}: {required_problem(var)}"
    return None


def check_host_vars(roles: Mapping[str, Role], names: Sequence[str], v: Mapping[str, Any]) -> None:
    """Check a host's merged variables `v` against opskit's and its roles' (`names`)
    declarations: each value's type and constraints, and every required variable set.
    ConfigError names the variable. The inventory loader checks the same at load (naming the
    file and key); a role's unit tests can call this on variables they put together by hand."""
    for name in names:
        problem = missing_required(roles[name], v)
        if problem is not None:
            raise ConfigError(problem)
    declared = dict(core_variables())
    for name in names:
        declared.update(roles[name].variables)
    for key, value in v.items():
        if key in declared:
            try:
                check(declared[key].spec, value)
            except Invalid as exc:
                raise ConfigError(f"{key}{exc.at}: {exc.message}") from None


def build_resources(
    roles: Mapping[str, Role], names: Sequence[str], v: Mapping[str, Any]
) -> list[Resource]:
    """The resources of the roles `names` for one host's variables `v`, in order, and checked:
    no id declared twice, and every handler reference (HANDLER_FIELDS) names a resource of the
    host. ConfigError names the role."""
    built: list[tuple[str, Resource]] = []
    for name in names:
        try:
            made = roles[name].module().resources(v)
        except (ConfigError, TemplateError) as exc:
            raise ConfigError(f"role {name}: {exc}") from None
        except KeyError as exc:
            key = exc.args[0] if exc.args else None
            if not isinstance(key, str) or key in v or not _VARIABLE.fullmatch(key):
                raise  # not a variable: a bug of the role's own
            raise ConfigError(
                f"role {name}: reads variable {key!r}, which none of the host's roles "
                f"declares (declare it in roles/{name}/{SCHEMA_FILE})"
            ) from None
        built += [(name, r) for r in made]
    owner: dict[str, str] = {}
    for name, r in built:
        if r.id in owner:
            raise ConfigError(f"role {name}: {r.id} is also declared by role {owner[r.id]}")
        owner[r.id] = name
    for name, r in built:
        for attr in HANDLER_FIELDS:
            refs = getattr(r, attr, ())
            if isinstance(refs, str):
                refs = (refs,)
            for ref in refs:
                if ref not in owner:
                    raise ConfigError(
                        f"role {name}: {r.id} {attr} names '{ref}', which is no resource of "
                        f"this host{did_you_mean(str(ref), owner)}"
                    )
    return [r for _, r in built]
