"""One SSH connection per host per run (Fabric/Paramiko), host keys checked strictly.

Commands go over the connection's transport as one exec channel each, with the script on
stdin (`sudo -n bash -s`), so a whole batch of state reads or changes is one round trip.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import select
import shlex
import socket
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import fabric
import paramiko

from opskit.core.errors import ConnectError, ConnectionLost, HostKeyError, RemoteCommandError
from opskit.core.inventory import Host, SshSettings, check_identity
from opskit.core.secrets import Secret, redact

log = logging.getLogger(__name__)
q = shlex.quote

# What paramiko raises when the connection under a channel dies (`OSError: Socket is closed`,
# EOF, a reset): a step that meets one is reported as a lost connection, never as a traceback.
TRANSPORT_ERRORS = (OSError, EOFError, paramiko.SSHException)


@dataclass(frozen=True)
class Result:
    command: str
    exited: int
    stdout: str
    stderr: str


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style SHA256 fingerprint of a host key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_name(address: str, port: int) -> str:
    """The name a host is recorded under in known_hosts.

    >>> known_hosts_name("10.0.0.1", 22), known_hosts_name("10.0.0.1", 2222)
    ('10.0.0.1', '[10.0.0.1]:2222')
    """
    return address if port == 22 else f"[{address}]:{port}"


class _RejectUnknown(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
    def __init__(self, host: Host, known_hosts: Path) -> None:
        self.host, self.known_hosts = host, known_hosts

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        raise HostKeyError(
            f"unknown host key for {hostname} ({key.get_name()} {fingerprint(key)}), not in "
            f"{self.known_hosts}. If that fingerprint is right, record it with: "
            f"inv hosts.trust --hosts {self.host.name}"
        )


@dataclass
class Remote:
    """A connected host. `commands` counts the remote commands this run sent (for reports)."""

    host: Host
    conn: fabric.Connection
    sudo_password: Secret | None = None
    commands: int = 0
    _sudo_mode: str = field(default="", repr=False)  # "", "root", "nopasswd", "password"

    @property
    def name(self) -> str:
        return self.host.name

    def run(
        self,
        script: str,
        *,
        sudo: bool = True,
        ok_codes: Collection[int] = (0,),
        what: str | None = None,
        timeout: float | None = None,
    ) -> Result:
        """Run the bash `script` (as root unless sudo=False) and return its output.

        Raises RemoteCommandError when the exit code is not in `ok_codes`; `what` is the short
        description used in that error (the script itself can be long).
        """
        command, prefix = self.shell_command(sudo=sudo)
        step = what or (script.strip().splitlines()[0] if script.strip() else command)
        exited, out, err = self._exec(command, prefix + script, timeout, step)
        if exited == 1 and self._sudo_mode == "nopasswd" and "password is required" in err:
            raise ConnectError(
                f"sudo on {self.name} needs a password for {self.host.user}: set ssh.sudo_password "
                "in the inventory (e.g. {secret: OPSKIT_SUDO_PASSWORD}) or pass --ask-sudo-pass"
            )
        if self._sudo_mode == "password" and exited == 1 and "incorrect password" in err:
            raise ConnectError(f"sudo on {self.name}: the sudo password was refused")
        secrets = [*self.host.secrets, *([self.sudo_password] if self.sudo_password else [])]
        result = Result(
            what or script.strip().splitlines()[0] if script.strip() else command,
            exited,
            redact(out, secrets),
            redact(err, secrets),
        )
        if exited not in ok_codes:
            raise RemoteCommandError(self.name, result.command, exited, result.stderr)
        return result

    def shell_command(self, *, sudo: bool = True) -> tuple[str, str]:
        """The command that runs a bash script from stdin (as root unless sudo=False), and what
        must precede the script on stdin (the sudo password, when sudo asks for one)."""
        if not sudo or self.host.user == "root":
            return "bash -s", ""
        if not self._sudo_mode:
            self._sudo_mode = "password" if self.sudo_password else "nopasswd"
        if self._sudo_mode == "nopasswd":
            return "sudo -n bash -s", ""
        return "sudo -k -S -p '' bash -s", f"{self.sudo_password}\n"

    def open_channel(self, script: str, *, sudo: bool = True) -> paramiko.Channel:
        """Start `script` like run() does, but hand back the open channel: for callers that
        read output as it arrives or hold the channel open (a lock). stdin is left open."""
        command, prefix = self.shell_command(sudo=sudo)
        step = script.strip().splitlines()[0] if script.strip() else command
        chan = self._open(command, step)
        try:
            chan.sendall((prefix + script).encode())
        except TRANSPORT_ERRORS as exc:
            raise self.lost(step, exc) from None
        return chan

    def lost(self, step: str, exc: BaseException | None = None) -> ConnectionLost:
        reason = "" if exc is None else (str(exc) or type(exc).__name__)
        return ConnectionLost(self.name, step, reason)

    def _open(self, command: str, step: str) -> paramiko.Channel:
        transport = self.conn.client.get_transport()
        if transport is None or not transport.is_active():
            raise self.lost(step)
        self.commands += 1
        try:
            chan = transport.open_session()
            chan.exec_command(command)
        except TRANSPORT_ERRORS as exc:
            raise self.lost(step, exc) from None
        return chan

    def _exec(
        self, command: str, stdin: str, timeout: float | None, step: str
    ) -> tuple[int, str, str]:
        chan = self._open(command, step)
        try:
            return self._talk(chan, command, stdin, timeout, step)
        except TRANSPORT_ERRORS as exc:
            raise self.lost(step, exc) from None
        finally:
            chan.close()

    def _talk(
        self, chan: paramiko.Channel, command: str, stdin: str, timeout: float | None, step: str
    ) -> tuple[int, str, str]:
        chan.sendall(stdin.encode())
        chan.shutdown_write()
        out, err = bytearray(), bytearray()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if chan.recv_ready():
                out += chan.recv(65536)
                continue
            if chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
                continue
            if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                break
            if deadline is not None and time.monotonic() > deadline:
                raise RemoteCommandError(self.name, command, -1, f"timed out after {timeout} s")
            select.select([chan], [], [], 0.5)
        # Drain what arrived with the exit status.
        while chan.recv_ready():
            out += chan.recv(65536)
        while chan.recv_stderr_ready():
            err += chan.recv_stderr(65536)
        exited = chan.recv_exit_status()  # -1: the channel closed without an exit status
        if exited == -1 and self._dying():
            raise self.lost(step)
        return (
            exited,
            out.decode(errors="replace"),
            err.decode(errors="replace"),
        )

    def put_bytes(self, data: bytes, remote_path: str) -> None:
        """Upload `data` to `remote_path` as the login user (SFTP; used for large files)."""
        import io

        try:
            self.conn.put(io.BytesIO(data), remote_path)
        except TRANSPORT_ERRORS as exc:
            if isinstance(exc, OSError) and self.connected():
                raise  # a file error on the host (no space, no permission), not the link
            raise self.lost(f"upload of {remote_path}", exc) from None

    def _dying(self, grace: float = 2.0) -> bool:
        """True when the connection is gone or goes within `grace` s: paramiko closes the
        channels of a dead connection just before it marks the connection inactive. (A command
        killed by a signal also ends without an exit status, on a live connection.)"""
        deadline = time.monotonic() + grace
        while self.connected():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def connected(self) -> bool:
        transport = self.conn.client.get_transport()
        return transport is not None and bool(transport.is_active())

    def close(self) -> None:
        self.conn.close()


def connect(host: Host, ssh: SshSettings, *, sudo_password: Secret | None = None) -> Remote:
    """Open the one connection to `host`, refusing unknown or changed host keys (and a
    private key others can read, as OpenSSH does: ConfigError)."""
    check_identity(ssh)
    connect_kwargs: dict[str, object] = {"allow_agent": False, "look_for_keys": False}
    if ssh.identity is not None:
        connect_kwargs["key_filename"] = [str(ssh.identity)]
    else:
        connect_kwargs.update(allow_agent=True, look_for_keys=True)
    conn = fabric.Connection(
        host.address,
        user=host.user,
        port=host.port,
        connect_timeout=ssh.connect_timeout,
        connect_kwargs=connect_kwargs,
        config=fabric.Config(overrides={"load_ssh_configs": False}),
    )
    client = conn.client
    if ssh.known_hosts.exists():
        try:
            client.load_host_keys(str(ssh.known_hosts))
        except (OSError, paramiko.SSHException) as exc:
            raise HostKeyError(f"{ssh.known_hosts}: cannot read known_hosts: {exc}") from exc
    client.set_missing_host_key_policy(_RejectUnknown(host, ssh.known_hosts))
    where = f"{host.name} ({host.user}@{host.address}:{host.port})"
    try:
        conn.open()
    except HostKeyError:
        conn.close()
        raise
    except paramiko.BadHostKeyException as exc:
        conn.close()
        raise HostKeyError(
            f"host key for {where} CHANGED: it offered {exc.key.get_name()} "
            f"{fingerprint(exc.key)}, {ssh.known_hosts} has {fingerprint(exc.expected_key)}. "
            "This can mean someone is intercepting the connection. If the host was really "
            f"rebuilt, check the new fingerprint out of band, then record it with: "
            f"inv hosts.trust --hosts {host.name} --replace"
        ) from None
    except paramiko.AuthenticationException as exc:
        conn.close()
        raise ConnectError(f"{where}: authentication failed ({exc})") from None
    except TimeoutError as exc:
        conn.close()
        raise ConnectError(
            f"{where}: unreachable (no answer in {ssh.connect_timeout:g} s)"
        ) from exc
    except (OSError, paramiko.SSHException, EOFError) as exc:
        conn.close()
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise ConnectError(f"{where}: unreachable ({reason})") from None
    return Remote(host, conn, sudo_password=sudo_password or ssh.sudo_password)


def scan_host_key(address: str, port: int, timeout: float) -> paramiko.PKey:
    """Fetch the host key a server presents (for `inv hosts.trust`), without authenticating."""
    sock = socket.create_connection((address, port), timeout=timeout)
    transport = paramiko.Transport(sock)
    try:
        transport.get_security_options().key_types = [
            k
            for k in ("ssh-ed25519", "ecdsa-sha2-nistp256", "rsa-sha2-512", "rsa-sha2-256")
            if k in transport.get_security_options().key_types
        ]
        transport.start_client(timeout=timeout)
        return transport.get_remote_server_key()
    finally:
        transport.close()


def run_all(remote: Remote, scripts: Sequence[str]) -> list[Result]:
    return [remote.run(s) for s in scripts]
