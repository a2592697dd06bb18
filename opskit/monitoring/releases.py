"""Sentry releases for deploys: `inv deploy` tells Sentry which release is live, and where."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import requests

from opskit.clients.sentry import SentryClient
from opskit.core.errors import ConfigError
from opskit.core.inventory import Host, Inventory
from opskit.monitoring.declared import declared


@dataclass(frozen=True)
class SentryRelease:
    version: str
    created: bool  # False: the release existed (a redeploy or a rollback)
    environment: str
    deploy_id: str

    def describe(self) -> str:
        new = "created" if self.created else "exists"
        return (
            f"Sentry release {self.version} ({new}), deploy {self.deploy_id} to {self.environment}"
        )


def sentry_release(
    inventory: Inventory,
    version: str,
    *,
    hosts: Sequence[Host] | None = None,
    environment: str | None = None,
    ref: str | None = None,
    url: str | None = None,
    started: datetime | None = None,
    session: requests.Session | None = None,
) -> SentryRelease | None:
    """Create the Sentry release `version` and a deploy of it (None when Sentry is not set up).

    `inv deploy` calls this after the release is live on the hosts; `version` is what the app
    reports as SENTRY_RELEASE (the commit), `environment` defaults to app_sentry_environment.
    Raises ApiError when Sentry refuses or cannot be reached (never with the token in it).
    """
    decl = declared(inventory, hosts)
    s = decl.sentry
    if s is None:
        return None
    if not version or "/" in version or "\n" in version:
        raise ConfigError(f"Sentry release: invalid version {version!r}")
    client = SentryClient(s.token, s.org, s.project, base_url=s.api_url, session=session)
    created, _ = client.create_release(version, ref=ref, url=url)
    env = environment or s.environment
    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    begun = (
        started.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        if started
        else None
    )
    deploy = client.create_deploy(version, env, started=begun, finished=now)
    return SentryRelease(version, created, env, str(deploy.get("id", "")))
