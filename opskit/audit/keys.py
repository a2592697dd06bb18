"""authorized_keys in `inv audit`: OpenSSH public key lines, their fingerprints, the public half
of the inventory's ssh.identity, and the judgement of every key file a host program read: a key
nobody allowed in the inventory can log in."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from opskit.audit.findings import Finding
from opskit.checks.levels import Severity

_KEY_TYPES = re.compile(
    r"^(ssh-(rsa|dss|ed25519)|ecdsa-sha2-nistp(256|384|521)|sk-(ssh-ed25519|ecdsa-sha2-nistp256)"
    r"@openssh\.com|ssh-(rsa|ed25519)-cert-v01@openssh\.com)$"
)


@dataclass(frozen=True)
class PublicKey:
    """An OpenSSH public key: type, base64 blob, comment (the blob is the key)."""

    type: str
    blob: str
    comment: str

    @property
    def fingerprint(self) -> str:
        """OpenSSH's SHA256 fingerprint (what `ssh-keygen -lf` prints)."""
        digest = hashlib.sha256(base64.b64decode(self.blob)).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def parse_key_line(line: str) -> PublicKey | None:
    """A key of an authorized_keys line (options before it allowed), or None.

    Options may hold quoted spaces (`command="a b"`), so the key type is looked for among the
    fields rather than at a fixed place.

    >>> k = parse_key_line('command="echo hi there",no-pty ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA'
    ...     'x8WE2Ia0WLUzfu2x6QBSHDwJ3VLuBOd+nOG9ahiQwN me@laptop')
    >>> k.type, k.comment
    ('ssh-ed25519', 'me@laptop')
    >>> parse_key_line("# a comment") is None, parse_key_line("ssh-rsa notbase64!") is None
    (True, True)
    """
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    fields = text.split()
    for i, f in enumerate(fields[:-1]):
        if _KEY_TYPES.match(f):
            blob = fields[i + 1]
            try:
                raw = base64.b64decode(blob, validate=True)
            except ValueError:
                return None
            if len(raw) < 4 or not raw[4:].startswith(f.encode()[:7]):
                return None  # the blob names its own type first
            return PublicKey(f, blob, " ".join(fields[i + 2 :]))
    return None


@dataclass(frozen=True)
class KeyFile:
    """An authorized_keys file the host program read."""

    path: str
    owner: str
    mode: int
    text: str


def judge_keys(
    files: Sequence[KeyFile], allowed: Mapping[tuple[str, str], str], host: str
) -> list[Finding]:
    """A finding per key not in `allowed` ((type, blob) -> the setting that allows it: see
    Settings.allowed_keys), and per line that is not a key (pure)."""
    out = []
    for f in files:
        root = f.path.startswith("/root/")
        for n, line in enumerate(f.text.splitlines(), 1):
            if not line.strip() or line.strip().startswith("#"):
                continue
            key = parse_key_line(line)
            if key is None:
                out.append(
                    Finding(
                        "authorized-keys",
                        Severity.LOW,
                        f"unreadable line in {f.path}",
                        f"line {n} is not an OpenSSH public key (sshd ignores it)",
                        f"remove line {n} from {f.path} on {host}",
                    )
                )
                continue
            if (key.type, key.blob) in allowed:
                continue
            comment = f", comment {key.comment!r}" if key.comment else ""
            where = "base_deploy_authorized_keys (the deploy user's keys)"
            if root:
                where = "audit_allowed_keys"
            out.append(
                Finding(
                    "authorized-keys",
                    Severity.CRITICAL if root else Severity.HIGH,
                    f"unknown key in {f.path}",
                    f"{key.type} {key.fingerprint}{comment} (line {n}, file owner {f.owner}) "
                    "is not in base_deploy_authorized_keys, audit_allowed_keys or the "
                    "inventory's ssh.identity: whoever holds it can log in"
                    + (" as root" if root else ""),
                    f"if nobody can vouch for it, remove line {n} from {f.path} on {host} "
                    f"(grep -n {key.blob[-16:]} {f.path}) and look at who logged in with it "
                    f"(journalctl -t sshd | grep '{key.fingerprint}'); if it is expected, add "
                    f"it to {where} in the inventory",
                )
            )
    return out


def identity_public_key(identity: Path | None) -> tuple[str, str, str] | None:
    """(type, blob, where) of the public half of the inventory's ssh.identity, or None."""
    if identity is None:
        return None
    pub = identity.with_name(identity.name + ".pub")
    try:
        parsed = parse_key_line(pub.read_text())
        if parsed is not None:
            return parsed.type, parsed.blob, str(pub)
    except OSError:
        pass
    try:  # no .pub next to it: derive it (an encrypted key cannot be read: then none)
        import paramiko

        key = paramiko.PKey.from_path(str(identity))
        return key.get_name(), key.get_base64(), str(identity)
    except Exception:  # paramiko raises many kinds; a key we cannot read allows nothing
        return None
