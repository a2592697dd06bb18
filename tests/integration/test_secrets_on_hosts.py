"""No secret readable by others on a lab host: after provisioning every role and deploying the
app, no file that the user `nobody` can read, on any lab host, holds any of the lab's secret
values (the lab inventory's secrets file lists them). What a finding names is the host, the file
and the secret's name, never its value.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import yaml

from opskit.core.inventory import Inventory
from opskit.core.remote import connect
from opskit.core.runner import provision_work, run_on_hosts
from opskit.core.secrets import read_secrets_file
from tests.integration.conftest import LAB_INVENTORY, inv

# Where to look: every file system a host writes to (the root overlay and the tmpfs mounts);
# /proc and /sys are not files on disk.
ROOTS = ("/", "/run", "/tmp", "/var/tmp", "/dev/shm")


def lab_secrets() -> dict[str, str]:
    data = yaml.safe_load(LAB_INVENTORY.read_text())
    path = (LAB_INVENTORY.parent / data["secrets"]["file"]).resolve()
    values = read_secrets_file(Path(path))
    assert len(values) >= 5, f"{path}: expected the lab's secrets"
    return {k: v for k, v in values.items() if len(v) >= 12}  # none is a common word


def scan_script(secrets: dict[str, str]) -> str:
    """Prints `@@found NAME PATH` for each file readable by nobody that holds a secret's value.
    The values travel in this script (on the SSH channel's stdin), never on a command line."""
    lines = [
        "set -eu",
        "d=$(mktemp -d /root/.opskit-scan.XXXXXX)",  # root only (0700)
        "trap 'rm -rf \"$d\"' EXIT",
    ]
    for name, value in secrets.items():
        lines.append(f"cat > \"$d/{name}\" <<'OPSKIT_EOF'\n{value}\nOPSKIT_EOF")
    lines += [
        'cat "$d"/* > "$d/all"',
        # the files `nobody` can read (one list, no duplicates across the roots)
        "runuser -u nobody -- find "
        + " ".join(shlex.quote(r) for r in ROOTS)
        + ' -xdev -type f -readable -size -16M -print0 2>/dev/null | sort -zu > "$d/list" || true',
        'echo "@@files $(tr -cd \'\\0\' < "$d/list" | wc -c)"',
        'xargs -0 -r grep -lsF -f "$d/all" < "$d/list" | tr \'\\n\' \'\\0\' > "$d/hits" || true',
        'for f in "$d"/*; do',
        "  name=${f##*/}; case $name in all|list|hits) continue;; esac",
        '  xargs -0 -r grep -lsF -f "$f" < "$d/hits" | sed "s|^|@@found $name |" || true',
        "done",
    ]
    return "\n".join(lines) + "\n"


def test_no_file_readable_by_others_holds_a_secret(lab_spec: Any, lab_inventory: Inventory):
    secrets = lab_secrets()
    hosts = list(lab_inventory.hosts)
    results = run_on_hosts(lab_inventory, hosts, provision_work(None))
    assert [r.error for r in results] == [None] * len(hosts)
    # a deploy writes PM2's dump (the app's environment: SENTRY_DSN) on the web hosts
    deployed = inv("deploy", "--hosts", "web")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    found: list[str] = []
    scanned: dict[str, int] = {}
    for host in hosts:
        remote = connect(host, lab_inventory.ssh)
        try:
            out = remote.run(scan_script(secrets), what="scan", timeout=600).stdout
        finally:
            remote.close()
        for line in out.splitlines():
            if line.startswith("@@files "):
                scanned[host.name] = int(line.split()[1])
            elif line.startswith("@@found "):
                _, name, path = line.split(" ", 2)
                found.append(f"{host.name}: {path} holds {name}")
    # the scan saw the hosts' files (the whole base system is readable by nobody)
    assert all(scanned.get(h.name, 0) > 1000 for h in hosts), scanned
    assert found == [], "\n".join(found)
    for value in secrets.values():  # and no value leaked into what this test shows
        assert value not in deployed.stdout + deployed.stderr
