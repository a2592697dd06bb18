"""A connection that dies mid-run is "connection lost during <step>", never a traceback."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from opskit.core import runner
from opskit.core.errors import ConnectionLost
from opskit.core.inventory import Inventory, SshSettings
from opskit.core.output import format_host, summary
from opskit.core.remote import Remote
from tests.fakes import make_host


class DyingChannel:
    """Plays a paramiko channel whose connection dies once the script was sent."""

    def __init__(self, transport: DyingTransport) -> None:
        self.transport = transport

    def exec_command(self, command: str) -> None:
        pass

    def sendall(self, data: bytes) -> None:
        if self.transport.die_on_send:
            self.transport.active = False
            raise OSError("Socket is closed")

    def shutdown_write(self) -> None:
        self.transport.active = False  # sshd killed while the script runs

    def recv_ready(self) -> bool:
        return False

    recv_stderr_ready = recv_ready

    def exit_status_ready(self) -> bool:
        return not self.transport.active

    def recv_exit_status(self) -> int:
        return -1  # paramiko's value for a channel closed without an exit status

    def close(self) -> None:
        pass


class DyingTransport:
    def __init__(self, *, die_on_send: bool = False) -> None:
        self.active, self.die_on_send = True, die_on_send

    def is_active(self) -> bool:
        return self.active

    def open_session(self) -> DyingChannel:
        if not self.active:
            raise OSError("Socket is closed")
        return DyingChannel(self)

    def close(self) -> None:
        self.active = False


def dying_remote(**kwargs: bool) -> Remote:
    transport = DyingTransport(**kwargs)
    return Remote(make_host("web1"), transport)  # type: ignore[arg-type]


@pytest.mark.parametrize("die_on_send", [False, True])
def test_a_dying_connection_is_connection_lost_during_the_step(die_on_send):
    remote = dying_remote(die_on_send=die_on_send)
    with pytest.raises(ConnectionLost, match=r"^connection lost during read state"):
        remote.run("true", what="read state")
    # The next step on the dead connection says the same, not `OSError: Socket is closed`.
    with pytest.raises(ConnectionLost, match=r"^connection lost during apply changes"):
        remote.run("true", what="apply changes")


def test_the_runner_reports_a_lost_host_in_its_own_category(monkeypatch, caplog):
    monkeypatch.setattr(runner, "connect", lambda host, ssh, sudo_password=None: dying_remote())
    inventory = Inventory(Path("inv.yml"), SshSettings(Path("kh")), (make_host("web1"),), {})

    def work(remote, ctx):
        remote.run("true", what="read state")
        return []

    def raw_transport_error(remote, ctx):
        remote.transport.active = False
        raise OSError("Socket is closed")  # from a library call no step wrapped

    for w in (work, raw_transport_error):
        with caplog.at_level(logging.DEBUG):
            [result] = runner.run_on_hosts(inventory, inventory.hosts, w)
        assert result.lost and not result.failed and not result.unreachable
        assert result.error.startswith("connection lost during")
        assert "Traceback" not in caplog.text and not caplog.records
        assert "[web1] LOST     connection lost during" in format_host(result, show_diff=False)
        assert "1 lost (connection lost)" in summary([result], dry_run=False)


class LateDeath(DyingChannel):
    """paramiko closes a dead connection's channels a moment before it marks it inactive."""

    closed = False

    def shutdown_write(self) -> None:
        self.closed = True
        threading.Timer(0.3, setattr, (self.transport, "active", False)).start()

    def exit_status_ready(self) -> bool:
        return self.closed


def test_a_channel_closed_just_before_its_connection_dies_is_a_lost_connection(monkeypatch):
    remote = dying_remote()
    transport = remote.transport
    monkeypatch.setattr(transport, "open_session", lambda: LateDeath(transport))
    with pytest.raises(ConnectionLost, match=r"^connection lost during apply changes"):
        remote.run("true", what="apply changes")


def test_a_command_killed_on_a_live_connection_is_not_a_lost_connection(monkeypatch):
    from opskit.core.errors import RemoteCommandError

    remote = dying_remote()
    transport = remote.transport
    chan = LateDeath(transport)
    chan.shutdown_write = lambda: setattr(chan, "closed", True)  # the connection lives on
    monkeypatch.setattr(transport, "open_session", lambda: chan)
    with pytest.raises(RemoteCommandError, match="exit -1"):
        remote.run("kill -9 $$", what="a step")
