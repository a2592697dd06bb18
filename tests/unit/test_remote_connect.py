"""connect(): strict host keys before any authentication, the key and known_hosts read once."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

import paramiko
import pytest

from opskit.core import remote as remote_mod
from opskit.core.errors import ConfigError, ConnectError, HostKeyError
from opskit.core.inventory import Host, SshSettings
from tests.fakes import make_host


def host(name: str, address: str) -> Host:
    return dataclasses.replace(make_host(name), address=address)


HOST_KEY = paramiko.ECDSAKey.generate()
OTHER_KEY = paramiko.ECDSAKey.generate()


class FakeTransport:
    """Plays paramiko.Transport: the server offers `server_key`; auth as `accepts` says."""

    made: ClassVar[list[FakeTransport]] = []

    def __init__(self, sock: object, server_key: paramiko.PKey, accepts: bool) -> None:
        self.server_key, self.accepts = server_key, accepts
        self.options = type("Options", (), {"key_types": ["ssh-ed25519", "ecdsa-sha2-nistp256"]})
        self.auth_tries: list[tuple[str, paramiko.PKey]] = []
        self.closed = self.authenticated = False
        FakeTransport.made.append(self)

    def get_security_options(self) -> object:
        return self.options

    def start_client(self, timeout: float) -> None:
        pass

    def get_remote_server_key(self) -> paramiko.PKey:
        return self.server_key

    def auth_publickey(self, user: str, key: paramiko.PKey) -> list[str]:
        self.auth_tries.append((user, key))
        if not self.accepts:
            raise paramiko.AuthenticationException("Authentication failed.")
        self.authenticated = True
        return []

    def is_authenticated(self) -> bool:
        return self.authenticated

    def is_active(self) -> bool:
        return not self.closed

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def ssh(tmp_path, monkeypatch):
    identity = tmp_path / "id_ecdsa"
    paramiko.ECDSAKey.generate().write_private_key_file(str(identity))
    identity.chmod(0o600)
    known = tmp_path / "known_hosts"
    known.write_text(f"10.0.0.1 {HOST_KEY.get_name()} {HOST_KEY.get_base64()}\n")
    monkeypatch.setattr(remote_mod.socket, "create_connection", lambda *a, **k: object())
    remote_mod._credentials.clear()
    FakeTransport.made.clear()
    return SshSettings(known, identity, connect_timeout=3.0)


def serve(monkeypatch, server_key: paramiko.PKey, accepts: bool = True) -> None:
    monkeypatch.setattr(
        remote_mod.paramiko, "Transport", lambda sock: FakeTransport(sock, server_key, accepts)
    )


def test_a_recorded_host_key_connects_and_offers_the_identity(ssh, monkeypatch):
    serve(monkeypatch, HOST_KEY)
    r = remote_mod.connect(host("web1", "10.0.0.1"), ssh)
    [t] = FakeTransport.made
    assert r.connected() and t.options.key_types[0] == HOST_KEY.get_name()
    assert [u for u, _ in t.auth_tries] == [make_host("web1").user]
    r.close()
    assert t.closed


def test_an_unknown_host_key_is_refused_before_authenticating(ssh, monkeypatch):
    serve(monkeypatch, HOST_KEY)
    with pytest.raises(HostKeyError, match=r"unknown host key for 10.0.0.2 .*hosts.trust"):
        remote_mod.connect(host("web2", "10.0.0.2"), ssh)
    [t] = FakeTransport.made
    assert t.auth_tries == [] and t.closed


def test_a_changed_host_key_is_refused_before_authenticating(ssh, monkeypatch):
    serve(monkeypatch, OTHER_KEY)
    with pytest.raises(HostKeyError, match=r"CHANGED: .*--replace"):
        remote_mod.connect(host("web1", "10.0.0.1"), ssh)
    [t] = FakeTransport.made
    assert t.auth_tries == [] and t.closed


def test_a_refused_key_is_an_authentication_failure(ssh, monkeypatch):
    serve(monkeypatch, HOST_KEY, accepts=False)
    with pytest.raises(ConnectError, match="authentication failed"):
        remote_mod.connect(host("web1", "10.0.0.1"), ssh)
    assert FakeTransport.made[0].closed


def test_key_and_known_hosts_are_read_once_and_again_when_they_change(ssh, monkeypatch):
    loads: list[str] = []
    real = paramiko.HostKeys.load

    def counting(self: paramiko.HostKeys, filename: str) -> None:
        loads.append(filename)
        real(self, filename)

    monkeypatch.setattr(paramiko.HostKeys, "load", counting)
    serve(monkeypatch, HOST_KEY)
    for _ in range(5):
        remote_mod.connect(host("web1", "10.0.0.1"), ssh).close()
    assert len(loads) == 1
    keys = {id(t.auth_tries[0][1]) for t in FakeTransport.made}
    assert len(keys) == 1  # one parsed private key, shared
    with ssh.known_hosts.open("a") as f:  # `inv hosts.trust` records another host
        f.write(f"10.0.0.2 {OTHER_KEY.get_name()} {OTHER_KEY.get_base64()}\n")
    serve(monkeypatch, OTHER_KEY)
    remote_mod.connect(host("web2", "10.0.0.2"), ssh).close()
    assert len(loads) == 2


def test_a_broken_known_hosts_or_key_says_which_file(ssh, monkeypatch, tmp_path: Path):
    serve(monkeypatch, HOST_KEY)
    ssh.known_hosts.write_text("10.0.0.1 ssh-ed25519 not-base64!\n")
    with pytest.raises(HostKeyError, match="cannot read known_hosts"):
        remote_mod.connect(host("web1", "10.0.0.1"), ssh)
    remote_mod._credentials.clear()
    ssh.known_hosts.write_text(f"10.0.0.1 {HOST_KEY.get_name()} {HOST_KEY.get_base64()}\n")
    assert ssh.identity is not None
    ssh.identity.write_text("not a key\n")
    with pytest.raises(ConfigError, match="cannot load it"):
        remote_mod.connect(host("web1", "10.0.0.1"), ssh)
