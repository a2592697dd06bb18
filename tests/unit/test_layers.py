"""The layer rule of docs/architecture.md, checked on the source (every import, also in functions).

Lower layers never import higher ones, no import circle, roles use only the role author's API,
and the host programs stand alone (they are installed on hosts verbatim, without opskit).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from opskit.core.roles import REPO

# Areas by rank: an area may import areas of a lower rank only (never one of its own rank).
AREA_RANK = {
    "app": 1,
    "backup": 1,
    "certs": 1,
    "monitoring": 1,
    "fleet": 1,
    "status": 2,
    "audit": 2,
    "report": 3,
    "incident": 4,
}
# What an area offers roles: paths, config shapes and its own resource kinds, never operations.
SPEC_MODULES = ("spec", "resources")
FOUNDATION = ("core", "resources", "checks", "hostside", "clients")


def _modules(root: Path) -> Iterator[tuple[str, Path]]:
    for f in sorted(root.rglob("*.py")):
        parts = f.relative_to(REPO).with_suffix("").parts
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), f


MODULES = dict(_modules(REPO / "opskit"))


def _imports(name: str, path: Path) -> Iterator[tuple[str, bool]]:
    """(imported module, at top level?) for every import of the file, relative ones resolved."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, id(node) in top
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if is_pkg else name.split(".")[:-1]
                here = here[: len(here) - (node.level - 1)]
                base = ".".join([*here, base] if base else here)
            subs = [f"{base}.{a.name}" for a in node.names]
            for sub in subs:
                yield sub, id(node) in top
            if not any(sub in MODULES for sub in subs):  # `from pkg import module` imports module
                yield base, id(node) in top


def _resolve(target: str) -> str | None:
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def _layer(module: str) -> tuple[str, str]:
    """(top package under opskit, next part) of an opskit module: ("status", "ops")."""
    parts = [*module.split(".")[1:], "", ""]
    return parts[0], parts[1]


def _allowed(src: str, dst: str) -> bool:
    (a, a_sub), (b, b_sub) = _layer(src), _layer(dst)
    if a == "hostside":
        return False  # host programs run on hosts, without opskit
    if a == b:
        return True
    if a in ("", "core", "resources", "checks", "clients"):  # foundations import the core only
        return b == "core"
    if a in AREA_RANK:
        if a_sub in SPEC_MODULES:  # an area's spec imports foundations and other specs only
            return b in FOUNDATION or (b in AREA_RANK and b_sub in SPEC_MODULES)
        return b in FOUNDATION or (b in AREA_RANK and AREA_RANK[b] < AREA_RANK[a])
    return a == "lab"  # the lab is the top of the library (its stand-ins: see below)


def _violations() -> list[str]:
    bad = []
    for name, path in MODULES.items():
        for target, at_top in _imports(name, path):
            if target.split(".")[0] in ("cli", "tasks", "roles", "opskit_roles"):
                bad.append(f"{name} imports {target}: the library never imports tasks or roles")
                continue
            dst = _resolve(target) if target.startswith("opskit") else None
            if dst is None or dst == name:
                continue
            if not _allowed(name, dst):
                bad.append(f"{name} imports {dst}")
            elif not at_top and not name.startswith("opskit.lab.standins"):
                bad.append(f"{name} imports {dst} inside a function: import at the top")
    return sorted(set(bad))


def test_library_imports_only_downward() -> None:
    assert _violations() == []


def test_lab_standins_import_nothing_of_the_lab_above_them() -> None:
    bad = [
        f"{name} imports {dst}"
        for name, path in MODULES.items()
        if name.startswith("opskit.lab.standins")
        for target, _ in _imports(name, path)
        if (dst := _resolve(target)) and dst.startswith("opskit.lab") and "standins" not in dst
    ]
    assert bad == []


def test_no_import_circle() -> None:
    edges = {
        m: {d for t, _ in _imports(m, p) if (d := _resolve(t)) and d != m}
        for m, p in MODULES.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for m in sorted(edges):
        if m not in index:
            visit(m)
    assert circles == []


@pytest.mark.parametrize("role", sorted(p.parent.name for p in (REPO / "roles").glob("*/role.py")))
def test_roles_use_the_role_authors_api_only(role: str) -> None:
    path = REPO / "roles" / role / "role.py"
    bad = []
    for target, _ in _imports(f"roles.{role}.role", path):
        dst = _resolve(target) if target.startswith("opskit") else None
        if dst is None:
            continue
        top, sub = _layer(dst)
        if not (top in FOUNDATION and top != "clients") and not (
            top in AREA_RANK and sub in SPEC_MODULES
        ):
            bad.append(dst)
    assert bad == [], f"roles/{role}/role.py imports operations: {sorted(set(bad))}"
