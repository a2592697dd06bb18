"""Shared test settings: no cloud credentials leak in from the environment; HOME is a temp dir."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    for key in list(os.environ):
        if key.startswith(("AWS_", "SLACK_", "UPTIMEROBOT_", "SENTRY_", "OPSKIT_SUDO")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))
