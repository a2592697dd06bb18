"""Shared by the testinfra specs: each spec runs only on hosts that have its role.

`inv verify` sets OPSKIT_INVENTORY and OPSKIT_ROLE_HOSTS ({host: [roles]}); a spec module names
its role in `ROLE = "base"`.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from opskit.core.facts import PROBE, parse, release_vars
from opskit.core.inventory import load_inventory


def _host_name(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return None
    host = callspec.params.get("_testinfra_host")
    return host.backend.get_hostname() if host is not None else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    role_hosts = json.loads(os.environ.get("OPSKIT_ROLE_HOSTS", "{}"))
    if not role_hosts:
        return
    keep, drop = [], []
    for item in items:
        role = getattr(item.module, "ROLE", None)
        host = _host_name(item)
        if role and host and role not in role_hosts.get(host, []):
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="module")
def hostvars(host: Any) -> dict[str, Any]:
    """The variables of the host under test as its roles see them: the inventory's, plus the
    facts of its release (os_id, os_version, os_codename) read from the host itself."""
    inventory = load_inventory(os.environ["OPSKIT_INVENTORY"])
    release = parse(host.check_output(PROBE) + "\n")  # the probe opskit sends itself
    return {**inventory.host(host.backend.get_hostname()).vars, **release_vars(release)}
