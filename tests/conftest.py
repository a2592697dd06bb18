"""Shared test settings: no cloud credentials leak in from the environment; HOME is a temp dir."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    for key in list(os.environ):
        if key.startswith(("AWS_", "SLACK_", "UPTIMEROBOT_", "SENTRY_", "OPSKIT_SUDO")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))


@pytest.fixture(autouse=True)
def _keep_umask() -> Iterator[None]:
    """A test that runs a host program's main() in-process (it sets umask 077, as it should on a
    host) must not leave that umask to the tests after it: labs booted later would get a `/`
    of mode 0700. Fails the test that changed it, and puts it back."""
    before = os.umask(0o022)
    os.umask(before)
    yield
    after = os.umask(before)
    assert after == before, f"the test left umask {after:o} (was {before:o})"
