"""A JSON-over-HTTP client for the cloud APIs opskit calls (UptimeRobot, Sentry, Slack).

Every call times out; 429 is retried after the server's `Retry-After` (bounded); 5xx and
connection errors of idempotent calls are retried with exponential backoff; any other failure
becomes `ApiError` naming the service, the call and the status, never a credential (the
`secrets` given are redacted from every message).

With `pace=True` the client also paces itself by the server's rate-limit headers
(`X-RateLimit-Limit`, `-Remaining`, `-Reset` as epoch seconds, as UptimeRobot documents them:
https://uptimerobot.com/api/v3): when a window's requests are used up it waits for the reset
before sending the next call instead of being refused, and a 429 waits for `Retry-After` (or the
reset) as often as needed. All waiting of one client is bounded by `wait_budget` seconds; past it
the call fails with a clear error. `waits` records each wait (seconds, why) for the person.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import requests

from opskit.clients import ApiError
from opskit.core.secrets import redact

log = logging.getLogger(__name__)

IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


def retry_after_seconds(value: str | None, default: float, *, now: float | None = None) -> float:
    """Seconds to wait from a `Retry-After` header (seconds or an HTTP date).

    >>> retry_after_seconds("3", 1.0)
    3.0
    >>> retry_after_seconds(None, 1.5)
    1.5
    >>> retry_after_seconds("Wed, 21 Oct 2015 07:28:10 GMT", 1.0, now=1445412480.0)
    10.0
    """
    if not value:
        return default
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return default
    return max(0.0, when - (time.time() if now is None else now))


class JsonApi:
    """One service: a base URL, headers (with the credential), timeouts and retry policy."""

    def __init__(
        self,
        service: str,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        secrets: Iterable[str] = (),
        session: requests.Session | None = None,
        timeout: float = 10.0,
        attempts: int = 4,
        backoff: float = 0.5,
        max_retry_after: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        pace: bool = False,
        wait_budget: float = 600.0,
        on_wait: Callable[[float, str], None] | None = None,
    ) -> None:
        self.service = service
        self.base_url = base_url.rstrip("/")
        self.headers = {"Accept": "application/json", **(headers or {})}
        self.secrets = [s for s in secrets if s]
        self.session = session or requests.Session()
        self.timeout, self.attempts, self.backoff = timeout, attempts, backoff
        self.max_retry_after = max_retry_after
        self.sleep, self.clock = sleep, clock
        self.retries = 0  # how many retries this client made (reports, tests)
        self.pace, self.wait_budget, self.on_wait = pace, wait_budget, on_wait
        self.waits: list[tuple[float, str]] = []  # (seconds, why) of every wait
        self.limit: int | None = None  # the server's X-RateLimit-Limit, once seen
        self._reset_at: float | None = None  # window used up until then (epoch seconds)

    @property
    def waited(self) -> float:
        return sum(w for w, _ in self.waits)

    def _pause(self, seconds: float, what: str, why: str) -> None:
        """Wait `seconds` within the budget (else ApiError), recorded and reported."""
        seconds = max(0.0, seconds)
        if self.waited + seconds > self.wait_budget:
            raise self._fail(
                what,
                f"{why}; waiting {seconds:.0f} s more would exceed the wait budget of "
                f"{self.wait_budget:.0f} s (already waited {self.waited:.0f} s): try later",
            )
        log.warning("%s %s: %s, waiting %.1f s", self.service, what, why, seconds)
        self.waits.append((seconds, why))
        if self.on_wait is not None:
            self.on_wait(seconds, why)
        self.sleep(seconds)

    def _before(self, what: str) -> None:
        """Pacing: if the last answer said the window is used up, wait for its reset."""
        if self._reset_at is None:
            return
        delay, self._reset_at = self._reset_at - self.clock(), None
        if delay > 0:
            limit = f"{self.limit} requests" if self.limit else "its limit"
            self._pause(delay, what, f"rate limit of {limit} a window used up")

    def _after(self, resp: requests.Response) -> None:
        """Remember what the rate-limit headers say about the window."""
        if not self.pace:
            return
        headers = resp.headers
        try:
            if headers.get("X-RateLimit-Limit"):
                self.limit = int(headers["X-RateLimit-Limit"])
            remaining = headers.get("X-RateLimit-Remaining")
            reset = headers.get("X-RateLimit-Reset")
            if remaining is not None and reset and int(remaining) <= 0:
                self._reset_at = float(reset)
        except ValueError:
            pass  # a header that is not a number: no pacing from it

    def _fail(self, what: str, msg: str) -> ApiError:
        return ApiError(redact(f"{self.service} {what}: {msg}", self.secrets))

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        ok: Iterable[int] = (200, 201, 202, 204),
        what: str | None = None,
    ) -> requests.Response:
        """Send one call (with retries); return the response when its status is in `ok`."""
        url = path if path.startswith(("http://", "https://")) else f"{self.base_url}{path}"
        what = what or f"{method} {path.split('?')[0]}"
        ok = set(ok)
        attempt, limited = 0, 0
        while attempt < self.attempts:
            attempt += 1
            last = attempt == self.attempts
            if self.pace:
                self._before(what)
            try:
                resp = self.session.request(
                    method,
                    url,
                    json=json,
                    params=params,
                    headers=self.headers,
                    timeout=self.timeout,
                    allow_redirects=False,
                )
            except requests.Timeout:
                if method in IDEMPOTENT and not last:
                    self._wait(attempt, None, what, "timed out")
                    continue
                raise self._fail(what, f"timed out after {self.timeout:g} s") from None
            except requests.ConnectionError as exc:
                if method in IDEMPOTENT and not last:
                    self._wait(attempt, None, what, "connection failed")
                    continue
                raise self._fail(
                    what, f"cannot connect to {self.base_url} ({_reason(exc)})"
                ) from None
            self._after(resp)
            if resp.status_code in ok:
                return resp
            if resp.status_code == 429 and self.pace and limited < 50:
                # Paced: wait as the server says, as often as the budget allows.
                limited += 1
                attempt -= 1
                self._reset_at = None
                delay = retry_after_seconds(resp.headers.get("Retry-After"), -1.0)
                if delay < 0:
                    reset = resp.headers.get("X-RateLimit-Reset")
                    delay = float(reset) - self.clock() if reset else self.backoff
                self.retries += 1
                self._pause(delay, what, "rate limited (429)")
                continue
            if resp.status_code == 429 and not last:
                # The request was not served: safe to send again, whatever the method.
                self._wait(attempt, resp.headers.get("Retry-After"), what, "rate limited (429)")
                continue
            if resp.status_code >= 500 and method in IDEMPOTENT and not last:
                self._wait(
                    attempt, resp.headers.get("Retry-After"), what, f"HTTP {resp.status_code}"
                )
                continue
            raise self._fail(what, f"HTTP {resp.status_code} {error_detail(resp)}".rstrip())
        raise self._fail(what, "no answer")  # pragma: no cover (the loop always returns/raises)

    def _wait(self, attempt: int, retry_after: str | None, what: str, why: str) -> None:
        delay = retry_after_seconds(retry_after, self.backoff * 2 ** (attempt - 1))
        if delay > self.max_retry_after:
            raise self._fail(what, f"{why}; the server asks to wait {delay:.0f} s: try later")
        log.warning("%s %s: %s, retrying in %.1f s", self.service, what, why, delay)
        self.retries += 1
        self.sleep(delay)

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self.request(method, path, **kwargs)
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            raise self._fail(
                kwargs.get("what") or f"{method} {path}", "answer is not JSON"
            ) from None


def error_detail(resp: requests.Response) -> str:
    """The useful part of an error answer (JSON message/detail/error, else the text), short."""
    try:
        data = resp.json()
    except ValueError:
        return resp.text.strip()[:200]
    if isinstance(data, dict):
        for key in ("message", "detail", "error"):
            if data.get(key):
                return str(data[key])[:300]
        # Django REST framework's field errors (Sentry): {"name": ["This rule is ..."], ...}
        fields = [
            f"{k}: {' '.join(map(str, v))}"
            for k, v in data.items()
            if isinstance(v, list) and v and all(isinstance(x, str) for x in v)
        ]
        if fields:
            return "; ".join(fields)[:300]
    return str(data)[:300]


def _reason(exc: Exception) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "No route to host"):
        if marker in text:
            return marker
    return type(exc).__name__
