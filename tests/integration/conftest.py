"""The lab for integration tests: brought up fresh once per session, stopped at the end.

Needs root and the lab's tools (scripts/bootstrap installs them); a missing prerequisite is an
error that says what to do, never a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from opskit.core.inventory import Inventory, load_inventory
from opskit.core.roles import REPO
from opskit.lab import lifecycle
from opskit.lab.spec import LabSpec, load_lab_spec

# A developer can point the tests at a lab of their own (another bridge, subnet and host names)
# so that two labs run side by side; CI uses the embedded default.
LAB_INVENTORY = Path(os.environ.get("OPSKIT_LAB_INVENTORY", REPO / "inventories" / "lab.yml"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def lab_spec() -> Iterator[LabSpec]:
    if os.geteuid() != 0:
        pytest.fail("integration tests boot lab hosts and need root (run: sudo bash scripts/test)")
    missing = [t for t in ("debootstrap", "systemd-nspawn", "ip", "ssh") if not shutil.which(t)]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run bash scripts/bootstrap")
    spec = load_lab_spec(LAB_INVENTORY)
    lifecycle.up(spec, fresh=True, progress=lambda m: print(f"lab: {m}", file=sys.stderr))
    yield spec
    lifecycle.down(spec)


@pytest.fixture(scope="session")
def lab_inventory(lab_spec: LabSpec) -> Inventory:
    return load_inventory(LAB_INVENTORY)


def write_inventory(tmp_path: Path, change: Any = None, name: str = "inv.yml") -> Path:
    """A copy of the lab inventory (absolute paths), changed by `change(data)` if given."""
    data = yaml.safe_load(LAB_INVENTORY.read_text())
    if change is not None:
        change(data)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def inv(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run an `inv` task as an operator would; returns the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "OPSKIT_INVENTORY": str(LAB_INVENTORY), **(env or {})},
    )


def forget_app(
    spec: LabSpec, inventory: Inventory, app: str = "sample", database: str | None = None
) -> None:
    """Take the app off its hosts (PM2's process list, /srv/<app>), as on a host that never ran it;
    with `database`, drop that database on the postgresql hosts too (a provision makes it again).

    For a module whose app environment differs from what earlier modules deployed: PM2 keeps a
    variable that was removed from the ecosystem file even on `startOrReload --update-env`
    (github.com/Unitech/pm2/issues/3486), so the module starts from no app at all.
    """
    from opskit.lab.nspawn import exec_in

    for host in inventory.hosts:
        if "app" not in host.roles:
            continue
        user = str(host.vars.get("app_user", "app"))
        script = (
            f"systemctl stop pm2-{user} 2>/dev/null; pkill -u {user} 2>/dev/null; "
            f"rm -rf /home/{user}/.pm2/dump.pm2* /srv/{app}; true"
        )
        done = exec_in(spec, host.name, ["/bin/sh", "-c", script])
        assert done.returncode == 0, done.stderr
    for host in inventory.hosts:
        if database and "postgresql" in host.roles:
            drop = ["runuser", "-u", "postgres", "--", "dropdb", "--if-exists", "--force", database]
            done = exec_in(spec, host.name, drop)
            assert done.returncode == 0, done.stderr
