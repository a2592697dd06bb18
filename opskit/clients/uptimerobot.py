"""UptimeRobot API v3: the calls `inv monitoring.sync` uses (monitors, alert contacts).

Bearer authentication, JSON bodies, cursor pagination (`nextLink`)
(https://uptimerobot.com/api/v3). Rate limits by plan (free: 10 requests a minute; PRO: twice the
monitor limit, at most 5000): the client paces itself by `X-RateLimit-Remaining`/`-Reset` and
waits out a 429's `Retry-After`, within `wait_budget` seconds in all (default 10 minutes, enough
for a first sync of several apps on the free plan). The API key never appears in errors.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests

from opskit.clients import ApiError
from opskit.clients.http import JsonApi
from opskit.core.secrets import Secret

DEFAULT_URL = "https://api.uptimerobot.com/v3"
MAX_PAGES = 200


class UptimeRobotClient:
    def __init__(
        self,
        api_key: Secret,
        *,
        base_url: str = DEFAULT_URL,
        session: requests.Session | None = None,
        timeout: float = 10.0,
        **retry: Any,
    ) -> None:
        retry.setdefault("pace", True)
        self.api = JsonApi(
            "UptimeRobot",
            base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            secrets=[api_key],
            session=session,
            timeout=timeout,
            **retry,
        )

    def monitors(self) -> list[dict[str, Any]]:
        """Every monitor of the account (all pages)."""
        out: list[dict[str, Any]] = []
        params: dict[str, Any] = {}
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            page = self.api.json("GET", "/monitors", params=params, what="list monitors")
            if not isinstance(page, dict):
                raise ApiError("UptimeRobot list monitors: unexpected answer (no object)")
            out.extend(page.get("data") or page.get("monitors") or [])
            cursor = page.get("nextCursorId")
            link = page.get("nextLink")
            if cursor is None and link:
                found = parse_qs(urlsplit(link).query).get("cursor")
                cursor = found[0] if found else None
            if cursor is None:
                return out
            if str(cursor) in seen:
                raise ApiError(f"UptimeRobot list monitors: pagination cursor {cursor} repeated")
            seen.add(str(cursor))
            params = {"cursor": cursor}
        raise ApiError(f"UptimeRobot list monitors: more than {MAX_PAGES} pages")

    def alert_contacts(self) -> list[dict[str, Any]]:
        data = self.api.json("GET", "/user/alert-contacts", what="list alert contacts")
        if isinstance(data, dict):  # tolerate a wrapped answer
            data = data.get("data") or data.get("alertContacts") or []
        return list(data or [])

    def create_monitor(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("friendlyName")
        return dict(self.api.json("POST", "/monitors", json=body, what=f"create monitor {name!r}"))

    def update_monitor(self, monitor_id: int, body: dict[str, Any]) -> dict[str, Any]:
        what = f"update monitor {monitor_id}"
        return dict(self.api.json("PATCH", f"/monitors/{monitor_id}", json=body, what=what) or {})

    def uptime_stats(self, monitor_id: int, since: str, until: str) -> dict[str, Any]:
        """A monitor's uptime over [since, until] (ISO 8601, at most 90 days apart):
        `GET /monitors/{id}/stats/uptime?from=&to=` answers `{uptime (percent),
        total_downtime_seconds, incident_count, mtbf, from, to}` (v3 OpenAPI,
        `MonitorUptimeStatsDto`)."""
        data = self.api.json(
            "GET",
            f"/monitors/{monitor_id}/stats/uptime",
            params={"from": since, "to": until},
            what=f"uptime of monitor {monitor_id}",
        )
        if not isinstance(data, dict) or not isinstance(data.get("uptime"), int | float):
            raise ApiError(f"UptimeRobot uptime of monitor {monitor_id}: no uptime in the answer")
        return dict(data)

    def delete_monitor(self, monitor_id: int) -> None:
        # 404/410: already gone, which is what was wanted.
        self.api.request(
            "DELETE",
            f"/monitors/{monitor_id}",
            ok=(200, 202, 204, 404, 410),
            what=f"delete monitor {monitor_id}",
        )
