"""One SSH connection per host per run (a bare Paramiko transport), host keys checked strictly.

Commands go over the connection's transport as one exec channel each, with the script on
stdin (`sudo -n bash -s`), so a whole batch of state reads or changes is one round trip.

Reaching a host costs only the SSH protocol: the private key and known_hosts are read once per
run (`Credentials`, shared by every host's thread, re-read when a file changes), and a
connection is a socket, a `paramiko.Transport`, the host-key check and one public-key
authentication; no per-host configuration machinery.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import logging
import select
import shlex
import socket
import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from opskit.core.errors import (
    ConfigError,
    ConnectError,
    ConnectionLost,
    HostKeyError,
    RemoteCommandError,
)
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


def unknown_key_error(host: Host, known_hosts: Path, name: str, key: paramiko.PKey) -> HostKeyError:
    return HostKeyError(
        f"unknown host key for {name} ({key.get_name()} {fingerprint(key)}), not in "
        f"{known_hosts}. If that fingerprint is right, record it with: "
        f"inv hosts.trust --hosts {host.name}"
    )


def _file_id(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


@dataclass(frozen=True)
class Credentials:
    """What every connection of a run shares: the recorded host keys and the private keys to
    offer (parsed once, not once per host)."""

    host_keys: paramiko.HostKeys
    keys: tuple[paramiko.PKey, ...]  # the identity; empty: the agent's and ~/.ssh's keys
    stamp: tuple[object, ...]


_credentials: dict[tuple[Path, Path | None], Credentials] = {}
_credentials_lock = threading.Lock()


def credentials(ssh: SshSettings) -> Credentials:
    """The known_hosts and key of `ssh`, read once and shared (again after either file changed,
    e.g. by `inv hosts.trust`)."""
    stamp = (_file_id(ssh.known_hosts), None if ssh.identity is None else _file_id(ssh.identity))
    cache_key = (ssh.known_hosts, ssh.identity)
    with _credentials_lock:
        cached = _credentials.get(cache_key)
        if cached is not None and cached.stamp == stamp:
            return cached
        host_keys = paramiko.HostKeys()
        if stamp[0] is not None:
            try:
                host_keys.load(str(ssh.known_hosts))
            except (OSError, paramiko.SSHException, paramiko.hostkeys.InvalidHostKey) as exc:
                raise HostKeyError(f"{ssh.known_hosts}: cannot read known_hosts: {exc}") from None
        keys: tuple[paramiko.PKey, ...] = ()
        if ssh.identity is not None:
            try:
                keys = (paramiko.PKey.from_path(ssh.identity),)
            except (OSError, paramiko.SSHException, ValueError) as exc:
                raise ConfigError(f"ssh.identity: {ssh.identity}: cannot load it ({exc})") from None
        made = Credentials(host_keys, keys, stamp)
        _credentials[cache_key] = made
        return made


def _default_keys() -> list[paramiko.PKey]:
    """With no ssh.identity: the agent's keys, then ~/.ssh's unencrypted ones (as OpenSSH)."""
    keys: list[paramiko.PKey] = []
    with contextlib.suppress(paramiko.SSHException):  # no agent, or one that does not answer
        keys.extend(paramiko.Agent().get_keys())
    for name in ("id_ed25519", "id_ecdsa", "id_rsa"):
        path = Path.home() / ".ssh" / name
        if path.is_file():
            try:
                keys.append(paramiko.PKey.from_path(path))
            except (OSError, paramiko.SSHException, ValueError):
                continue  # encrypted (no passphrase to give) or unreadable: as OpenSSH, skip it
    return keys


@dataclass
class Remote:
    """A connected host. `commands` counts the remote commands this run sent (for reports)."""

    host: Host
    transport: paramiko.Transport
    sudo_password: Secret | None = None
    commands: int = 0
    _sudo_mode: str = field(default="", repr=False)  # "", "root", "nopasswd", "password"
    _sftp: paramiko.SFTPClient | None = field(default=None, repr=False)

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
        if not self.connected():
            raise self.lost(step)
        self.commands += 1
        try:
            chan = self.transport.open_session()
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

    def sftp(self) -> paramiko.SFTPClient:
        """The connection's SFTP session, as the login user (opened on first use, then kept)."""
        if self._sftp is None:
            try:
                self._sftp = paramiko.SFTPClient.from_transport(self.transport)
            except TRANSPORT_ERRORS as exc:
                raise self.lost("opening SFTP", exc) from None
            if self._sftp is None:
                raise self.lost("opening SFTP")
        return self._sftp

    def put_bytes(self, data: bytes, remote_path: str) -> None:
        """Upload `data` to `remote_path` as the login user (SFTP; used for large files);
        a relative path is under the login user's home."""
        try:
            self.sftp().putfo(io.BytesIO(data), remote_path)
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
        return bool(self.transport.is_active())

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
            self._sftp = None
        self.transport.close()


def connect(host: Host, ssh: SshSettings, *, sudo_password: Secret | None = None) -> Remote:
    """Open the one connection to `host`, refusing unknown or changed host keys before
    authenticating (and a private key others can read, as OpenSSH does: ConfigError)."""
    check_identity(ssh)
    creds = credentials(ssh)
    where = f"{host.name} ({host.user}@{host.address}:{host.port})"
    timeout = ssh.connect_timeout
    try:
        sock = socket.create_connection((host.address, host.port), timeout=timeout)
    except TimeoutError as exc:
        raise ConnectError(f"{where}: unreachable (no answer in {timeout:g} s)") from exc
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise ConnectError(f"{where}: unreachable ({reason})") from None
    transport = paramiko.Transport(sock)
    try:
        _handshake(transport, host, ssh, creds, where)
        _authenticate(transport, host, creds, where)
    except (HostKeyError, ConnectError):
        transport.close()
        raise
    except TimeoutError as exc:
        transport.close()
        raise ConnectError(f"{where}: unreachable (no answer in {timeout:g} s)") from exc
    except (OSError, paramiko.SSHException, EOFError) as exc:
        transport.close()
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise ConnectError(f"{where}: unreachable ({reason})") from None
    except BaseException:
        transport.close()
        raise
    return Remote(host, transport, sudo_password=sudo_password or ssh.sudo_password)


def _handshake(
    transport: paramiko.Transport, host: Host, ssh: SshSettings, creds: Credentials, where: str
) -> None:
    """Key exchange, then the host-key check against known_hosts (as paramiko's SSHClient
    does: the recorded key types are asked for first; another type or key is a CHANGED key)."""
    name = known_hosts_name(host.address, host.port)
    recorded = creds.host_keys.lookup(name)
    if recorded is not None:
        options = transport.get_security_options()
        wanted = [_sha2(options.key_types, k) for k in recorded]
        options.key_types = [*wanted, *(k for k in options.key_types if k not in wanted)]
    transport.start_client(timeout=ssh.connect_timeout)
    key = transport.get_remote_server_key()
    if recorded is None:
        raise unknown_key_error(host, ssh.known_hosts, name, key)
    expected = recorded.get(key.get_name())
    if expected != key:
        expected = expected or next(iter(recorded.values()))
        raise HostKeyError(
            f"host key for {where} CHANGED: it offered {key.get_name()} "
            f"{fingerprint(key)}, {ssh.known_hosts} has {fingerprint(expected)}. "
            "This can mean someone is intercepting the connection. If the host was really "
            f"rebuilt, check the new fingerprint out of band, then record it with: "
            f"inv hosts.trust --hosts {host.name} --replace"
        )


def _sha2(available: Sequence[str], keytype: str) -> str:
    """The algorithm to ask for a recorded key type (an RSA key is asked for with SHA-2).

    >>> _sha2(["ssh-ed25519", "rsa-sha2-512", "ssh-rsa"], "ssh-rsa")
    'rsa-sha2-512'
    """
    if keytype == "ssh-rsa":
        return next((k for k in ("rsa-sha2-512", "rsa-sha2-256") if k in available), keytype)
    return keytype


def _authenticate(
    transport: paramiko.Transport, host: Host, creds: Credentials, where: str
) -> None:
    keys = list(creds.keys) if creds.keys else _default_keys()
    failure: Exception | None = None
    for key in keys:
        try:
            transport.auth_publickey(host.user, key)
        except paramiko.AuthenticationException as exc:
            failure = exc
            continue
        if transport.is_authenticated():
            return
    reason = f"{failure}" if failure else "no key to offer: set ssh.identity in the inventory"
    raise ConnectError(f"{where}: authentication failed ({reason})")


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
