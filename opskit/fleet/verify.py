"""`inv verify`: the testinfra specs of tests/infra against hosts, with strict host keys.

testinfra's ssh:// backend shells out to OpenSSH with an ssh_config that opskit writes from the
inventory (StrictHostKeyChecking yes, the inventory's known_hosts, its identity).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from opskit.core.errors import ConfigError
from opskit.core.inventory import Host, Inventory
from opskit.core.roles import REPO

INFRA = REPO / "tests" / "infra"


def ssh_config(inventory: Inventory, hosts: Sequence[Host], control_dir: Path) -> str:
    """An OpenSSH client config for `hosts`, host keys checked strictly, one master connection
    per host that every check of the run reuses."""
    out = []
    for h in hosts:
        out += [
            f"Host {h.name}",
            f"  HostName {h.address}",
            f"  Port {h.port}",
            f"  User {h.user}",
            "  StrictHostKeyChecking yes",
            f"  UserKnownHostsFile {inventory.ssh.known_hosts}",
            f"  ConnectTimeout {int(inventory.ssh.connect_timeout)}",
            "  BatchMode yes",
            "  LogLevel ERROR",
            f"  ControlPath {control_dir}/%C",
        ]
        if inventory.ssh.identity:
            out += [f"  IdentityFile {inventory.ssh.identity}", "  IdentitiesOnly yes"]
    return "\n".join(out) + "\n"


def run_verify(
    inventory: Inventory,
    hosts: Sequence[Host],
    extra: Sequence[str] = (),
    roles: Sequence[str] | None = None,
) -> int:
    """Run pytest on tests/infra for `hosts`; each spec only on hosts that have its role, and
    with `roles` only the specs of those roles."""
    specs = [str(INFRA / f"test_{r}.py") for r in roles] if roles else [str(INFRA)]
    missing = [s for s in specs if not Path(s).exists()]
    if missing:
        raise ConfigError(f"no testinfra spec for {', '.join(missing)}")
    with tempfile.TemporaryDirectory(prefix="opskit-verify-") as tmp:
        cfg = Path(tmp) / "ssh_config"
        cfg.write_text(ssh_config(inventory, hosts, Path(tmp)))
        env = dict(os.environ)
        env["OPSKIT_INVENTORY"] = str(inventory.path)
        env["OPSKIT_ROLE_HOSTS"] = json.dumps({h.name: list(h.roles) for h in hosts})
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            *specs,
            "-p",
            "no:cacheprovider",
            "-q",
            f"--hosts={','.join('ssh://' + h.name for h in hosts)}",
            f"--ssh-config={cfg}",
            "--sudo",
            *extra,
        ]
        try:
            return subprocess.call(cmd, cwd=REPO, env=env)
        finally:
            for h in hosts:  # close the master connections testinfra left behind
                subprocess.run(
                    ["ssh", "-F", str(cfg), "-O", "exit", h.name],
                    capture_output=True,
                    check=False,
                    timeout=10,
                )
