"""The read-only fleet commands cost one connection and one remote command per host (issue 19):
status, audit (its inside), certs.status, backup.list and releases, counted at the transport."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from opskit.core import runner
from opskit.core.inventory import Host, Inventory, SshSettings, load_inventory
from opskit.core.remote import Remote

HOSTS = ("web1", "web2", "db1")


class Channel:
    """A paramiko channel whose command prints `stdout` and exits 0 at once."""

    def __init__(self, stdout: bytes) -> None:
        self.out = stdout

    def exec_command(self, command: str) -> None:
        pass

    def sendall(self, data: bytes) -> None:
        pass

    def shutdown_write(self) -> None:
        pass

    def recv_ready(self) -> bool:
        return bool(self.out)

    def recv(self, n: int) -> bytes:
        data, self.out = self.out[:n], self.out[n:]
        return data

    def recv_stderr_ready(self) -> bool:
        return False

    def exit_status_ready(self) -> bool:
        return True

    def recv_exit_status(self) -> int:
        return 0

    def close(self) -> None:
        pass


class Fleet:
    """Counts, per host, the connections opened and the sessions (remote commands) started."""

    def __init__(self, stdout: bytes = b"") -> None:
        self.stdout = stdout
        self.connections: Counter[str] = Counter()
        self.sessions: Counter[str] = Counter()
        self.lock = threading.Lock()

    def connect(self, host: Host, ssh: SshSettings, *, sudo_password: Any = None) -> Remote:
        with self.lock:
            self.connections[host.name] += 1
        return Remote(host, Transport(self, host.name))  # type: ignore[arg-type]


class Transport:
    def __init__(self, fleet: Fleet, name: str) -> None:
        self.fleet, self.name, self.active = fleet, name, True

    def is_active(self) -> bool:
        return self.active

    def open_session(self) -> Channel:
        with self.fleet.lock:
            self.fleet.sessions[self.name] += 1
        return Channel(self.fleet.stdout)

    def close(self) -> None:
        self.active = False


@pytest.fixture
def inventory(tmp_path: Path) -> Inventory:
    key = tmp_path / "id_ed25519"
    key.write_text("not read: connections are faked\n")
    key.chmod(0o600)
    data = {
        "ssh": {"known_hosts": str(tmp_path / "known_hosts"), "identity": str(key)},
        "roles": ["app", "certbot", "backup"],
        "vars": {
            "ssh_user": "deploy",
            "app_name": "shop",
            "app_repo": str(tmp_path),
            "app_repo_path": ".",
            "certbot_email": "ops@example.invalid",
            "certbot_agree_tos": True,
            "certbot_certificates": [{"domains": ["shop.example.invalid"]}],
            "backup_database": "shop",
            "backup_database_owner": "shop",
            "backup_s3_bucket": "backups",
            "backup_s3_access_key_id": {"secret": "S3_KEY"},
            "backup_s3_secret_access_key": {"secret": "S3_SECRET"},
        },
        "groups": {
            "all": {"hosts": {h: {"address": f"10.0.0.{i}"} for i, h in enumerate(HOSTS, 1)}}
        },
    }
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump(data))
    # Not built: the certbot role wants nginx beside it, whose audit probes would go out over HTTP.
    environ = {"S3_KEY": "AKIAFAKEFAKE", "S3_SECRET": "fake-secret-value"}
    return load_inventory(path, environ=environ, build=False)


def _status(inv: Inventory) -> None:
    from opskit.status.fleet import collect

    collect(inv, inv.hosts, workers=3)


def _audit(inv: Inventory) -> None:
    from opskit.audit.reader import run

    run(inv, inv.hosts, workers=3)


def _certs(inv: Inventory) -> None:
    from opskit.certs.judge import status

    status(inv, inv.hosts, workers=3)


def _backups(inv: Inventory) -> None:
    from opskit.backup import listing

    listing.list_backups(inv, inv.hosts)


def _releases(inv: Inventory) -> None:
    from opskit.app.deploy import list_releases

    list_releases(inv, inv.hosts, journal=5)


COMMANDS: dict[str, Callable[[Inventory], None]] = {
    "status": _status,
    "audit": _audit,
    "certs.status": _certs,
    "backup.list": _backups,
    "releases": _releases,
}


@pytest.mark.parametrize("stdout", [b"", b"garbage\n"], ids=["empty", "garbage"])
@pytest.mark.parametrize("name", list(COMMANDS))
def test_one_connection_and_one_remote_command_per_host(
    name: str, stdout: bytes, inventory: Inventory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opskit.backup import listing

    fleet = Fleet(stdout)
    monkeypatch.setattr(runner, "connect", fleet.connect)
    # backup.list reads S3 from this machine (boto3), never over SSH: not here.
    monkeypatch.setattr(
        listing,
        "list_host",
        lambda cfg, info, label, **kw: listing.Listing(cfg.host, cfg.database, "s3://x/"),
    )
    COMMANDS[name](inventory)
    assert fleet.connections == dict.fromkeys(HOSTS, 1)
    assert fleet.sessions == dict.fromkeys(HOSTS, 1)
