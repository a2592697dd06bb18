"""Secrets: values that never appear in output, diffs, logs or exception text."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

from opskit.core.errors import ConfigError

REDACTED = "***"


class Secret(str):
    """A string whose repr is '***'; `redact()` removes its value from any text."""

    def __repr__(self) -> str:
        return repr(REDACTED)


def read_secrets_file(path: Path) -> dict[str, str]:
    """Read KEY=VALUE lines from `path`, refusing a file that others can read.

    Blank lines and lines starting with '#' are ignored; values may be quoted.
    """
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: secrets file does not exist") from exc
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise ConfigError(
            f"{path}: secrets file has mode {stat.S_IMODE(st.st_mode):04o}; "
            f"it must be readable by its owner only: chmod 600 {path}"
        )
    values: dict[str, str] = {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip().isidentifier():
            # The line may hold a secret: name the line, never echo it.
            raise ConfigError(f"{path}:{n}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


class SecretStore:
    """Looks secrets up in the environment first, then in the inventory's secrets file."""

    def __init__(self, file: Path | None = None, environ: Mapping[str, str] | None = None) -> None:
        self._file = file
        self._environ = os.environ if environ is None else environ
        self._file_values: dict[str, str] | None = None

    def get(self, name: str) -> Secret | None:
        if name in self._environ and self._environ[name] != "":
            return Secret(self._environ[name])
        if self._file is not None:
            if self._file_values is None:
                self._file_values = read_secrets_file(self._file)
            if name in self._file_values:
                return Secret(self._file_values[name])
        return None

    def describe(self) -> str:
        where = "the environment"
        return f"{where} or {self._file}" if self._file else where


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret value in `text` by '***'.

    >>> redact("token=s3cr3t ok", [Secret("s3cr3t")])
    'token=*** ok'
    """
    for value in sorted({str.__str__(s) for s in secrets if s}, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    return text
