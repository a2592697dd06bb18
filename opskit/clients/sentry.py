"""Sentry's web API: releases and deploys (`inv deploy`) and issue alert rules (`monitoring.sync`).

Bearer token authentication (scopes project:releases and alerts:write); org and project slugs;
every failure is an `ApiError` without the token. Reference: https://docs.sentry.io/api/ (releases,
deploys, issue alert rules; pagination: https://docs.sentry.io/api/pagination/).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import requests

from opskit.clients import ApiError
from opskit.clients.http import JsonApi
from opskit.core.secrets import Secret

DEFAULT_URL = "https://sentry.io"
MAX_PAGES = 100


def next_page(link_header: str | None) -> str | None:
    """The URL of the next page from Sentry's `Link` header, or None on the last page.

    Sentry always sends both a previous and a next link; `results="true"` on the `rel="next"`
    one says there is more (https://docs.sentry.io/api/pagination/).

    >>> h = ('<https://s/api/0/x/?&cursor=0:0:1>; rel="previous"; results="false"; '
    ...      'cursor="0:0:1", <https://s/api/0/x/?&cursor=0:100:0>; rel="next"; '
    ...      'results="true"; cursor="0:100:0"')
    >>> next_page(h)
    'https://s/api/0/x/?&cursor=0:100:0'
    >>> next_page(h.replace('results="true"', 'results="false"')) is None
    True
    """
    for link in requests.utils.parse_header_links(link_header or ""):
        if link.get("rel") == "next":
            return str(link["url"]) if link.get("results", "true") == "true" else None
    return None


class SentryClient:
    def __init__(
        self,
        token: Secret,
        org: str,
        project: str,
        *,
        base_url: str = DEFAULT_URL,
        session: requests.Session | None = None,
        timeout: float = 10.0,
        **retry: Any,
    ) -> None:
        self.org, self.project = org, project
        self.api = JsonApi(
            "Sentry",
            base_url.rstrip("/") + "/api/0",
            headers={"Authorization": f"Bearer {token}"},
            secrets=[token],
            session=session,
            timeout=timeout,
            **retry,
        )

    @property
    def _rules(self) -> str:
        return f"/projects/{quote(self.org)}/{quote(self.project)}/rules/"

    # --- releases ----------------------------------------------------------------------

    def create_release(
        self, version: str, *, ref: str | None = None, url: str | None = None
    ) -> tuple[bool, dict[str, Any]]:
        """Create release `version` for the project; (created, release). An existing one: False."""
        body: dict[str, Any] = {"version": version, "projects": [self.project]}
        if ref:
            body["ref"] = ref
        if url:
            body["url"] = url
        resp = self.api.request(
            "POST",
            f"/organizations/{quote(self.org)}/releases/",
            json=body,
            ok=(200, 201, 208),
            what=f"create release {version}",
        )
        return resp.status_code == 201, dict(resp.json())

    def create_deploy(
        self,
        version: str,
        environment: str,
        *,
        name: str | None = None,
        url: str | None = None,
        started: str | None = None,
        finished: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"environment": environment}
        for key, value in (
            ("name", name),
            ("url", url),
            ("dateStarted", started),
            ("dateFinished", finished),
        ):
            if value:
                body[key] = value
        path = f"/organizations/{quote(self.org)}/releases/{quote(version, safe='')}/deploys/"
        return dict(self.api.json("POST", path, json=body, what=f"create deploy of {version}"))

    # --- issue alert rules ---------------------------------------------------------------

    def rules(self) -> list[dict[str, Any]]:
        """Every issue alert rule of the project: all pages of the `Link` header."""
        out: list[dict[str, Any]] = []
        url, seen = self._rules, set()
        for _ in range(MAX_PAGES):
            resp = self.api.request("GET", url, what="list alert rules")
            try:
                page = resp.json() if resp.content else []
            except ValueError:
                raise ApiError("Sentry list alert rules: answer is not JSON") from None
            if not isinstance(page, list):
                raise ApiError("Sentry list alert rules: unexpected answer (not a list)")
            out.extend(page)
            nxt = next_page(resp.headers.get("Link"))
            if nxt is None:
                return out
            if nxt in seen:
                raise ApiError("Sentry list alert rules: pagination repeated a page")
            seen.add(nxt)
            url = nxt
        raise ApiError(f"Sentry list alert rules: more than {MAX_PAGES} pages")

    def create_rule(self, body: dict[str, Any]) -> dict[str, Any]:
        what = f"create alert rule {body.get('name')!r}"
        return dict(self.api.json("POST", self._rules, json=body, what=what))

    def update_rule(self, rule_id: str, body: dict[str, Any]) -> dict[str, Any]:
        what = f"update alert rule {rule_id}"
        return dict(self.api.json("PUT", f"{self._rules}{rule_id}/", json=body, what=what))

    def delete_rule(self, rule_id: str) -> None:
        self.api.request(
            "DELETE",
            f"{self._rules}{rule_id}/",
            ok=(200, 202, 204, 404),
            what=f"delete alert rule {rule_id}",
        )
