"""The post-deploy watch: after a host switched to a new release, watch it for a while and roll
back automatically when the runbook's decision tree says so.

`inv deploy --watch 10m` (default: the inventory's ``app_watch``, 0 = off). Per host, on the
deploy's own connection and under the same fleet lock:

1. just before the switch, the **baseline**: nginx's requests of the last
   ``app_watch_baseline_minutes`` (5xx share, p95) on that host — the release that was live;
2. after the switch, a **sample** every ``app_watch_interval`` seconds, one remote command each
   (opskit/hostside/watch_probe.py): the requests nginx logged since the last sample, the app's
   health endpoint on the host, PM2's restarts and processes online;
3. the **decision** (`decide`, pure), in the runbook's order: is the service operational (health
   failed ``app_watch_health_failures`` samples in a row, or PM2 restarted it
   ``app_watch_restarts`` times)? is it over a critical line (5xx share over
   ``app_watch_error_rate_critical`` %, p95 over ``app_watch_p95_critical_ms``)? is it worse than
   before the deploy by a margin (``app_watch_error_rate_margin`` points,
   ``app_watch_p95_margin_ms``)?
   Rates need ``app_watch_min_requests`` requests since the switch;
4. a "yes" **rolls back** to the release that was live before, through the rollback's own code
   path (gated, held alerts, journal entry whose message says why), marks the new release bad
   with the reason, and posts the reason to Slack (the health check's webhook). Another host of
   the same batch still watching rolls back too. The deploy then fails (exit 1), so no later batch
   gets the release. Ctrl-C ends the watch and keeps the release.

Each batch is watched before the next one starts: a release that goes bad on the first batch never
reaches the others.
"""

from __future__ import annotations

import json
import re
import shlex
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opskit.app import deploy
from opskit.app.release import operator
from opskit.app.spec import BAD_MARK, PM2_BIN, AppLayout
from opskit.clients import ApiError
from opskit.clients.http import JsonApi
from opskit.core.errors import ConfigError
from opskit.core.remote import Remote
from opskit.core.result import Change
from opskit.core.runner import RunContext
from opskit.core.secrets import Secret
from opskit.hostside import watch_probe
from opskit.hostside.watch_probe import Params, Sample

PROBE_SOURCE = Path(watch_probe.__file__).read_text()
_END = "OPSKIT_WATCH_PROBE"
_DURATION = re.compile(r"(\d+[smhdw])+|\d+")  # as the schema's `duration`
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
PROGRESS_EVERY = 10.0  # seconds between two progress lines of a host
ACCESS_LOG = "/var/log/nginx/access.log"


def parse_duration(value: Any, what: str = "--watch") -> float:
    """Seconds of a watch: a number of seconds, or numbers with s, m, h, d or w; 0 = no watch.

    >>> parse_duration("10m"), parse_duration("30s"), parse_duration(0), parse_duration("1h30m")
    (600.0, 30.0, 0.0, 5400.0)
    >>> parse_duration("ten")
    Traceback (most recent call last):
    ...
    opskit.core.errors.ConfigError: --watch: 'ten': expected seconds, or a number with s, m or h
    """
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    text = value.strip() if isinstance(value, str) else ""
    if not _DURATION.fullmatch(text):
        raise ConfigError(f"{what}: {value!r}: expected seconds, or a number with s, m or h")
    if text.isdigit():
        return float(text)
    return float(sum(int(n) * _UNIT[u] for n, u in re.findall(r"(\d+)([smhdw])", text)))


@dataclass(frozen=True)
class Rules:
    """The watch's thresholds (the app_watch_* variables)."""

    duration: float = 0.0  # seconds; 0: no watch
    interval: float = 2.0
    baseline_minutes: float = 10.0
    min_requests: int = 20
    error_rate_critical: float = 5.0  # % of requests answered 5xx
    error_rate_margin: float = 2.0  # percentage points over the baseline
    p95_critical_ms: float = 1000.0
    p95_margin_ms: float = 500.0
    health_failures: int = 3  # failed health samples in a row
    restarts: int = 3  # PM2 restarts since the switch

    @classmethod
    def from_vars(cls, v: Mapping[str, Any], watch: Any = None) -> Rules:
        """From a host's variables; `watch` (the --watch flag) overrides app_watch."""
        duration = parse_duration(
            v.get("app_watch", 0) if watch is None else watch,
            "app_watch" if watch is None else "--watch",
        )
        return cls(
            duration=duration,
            interval=float(v.get("app_watch_interval", cls.interval)),
            baseline_minutes=float(v.get("app_watch_baseline_minutes", cls.baseline_minutes)),
            min_requests=int(v.get("app_watch_min_requests", cls.min_requests)),
            error_rate_critical=float(
                v.get("app_watch_error_rate_critical", cls.error_rate_critical)
            ),
            error_rate_margin=float(v.get("app_watch_error_rate_margin", cls.error_rate_margin)),
            p95_critical_ms=float(v.get("app_watch_p95_critical_ms", cls.p95_critical_ms)),
            p95_margin_ms=float(v.get("app_watch_p95_margin_ms", cls.p95_margin_ms)),
            health_failures=int(v.get("app_watch_health_failures", cls.health_failures)),
            restarts=int(v.get("app_watch_restarts", cls.restarts)),
        )


def p95(times_ms: Sequence[int]) -> int | None:
    """The 95th percentile (nearest rank), as the health check computes it.

    >>> p95(list(range(1, 101))), p95([7]), p95([])
    (95, 7, None)
    """
    if not times_ms:
        return None
    ordered = sorted(times_ms)
    return ordered[max(0, -(-95 * len(ordered) // 100) - 1)]


@dataclass(frozen=True)
class Window:
    """Requests over a stretch of time: before the switch (the baseline) or since."""

    requests: int = 0
    errors: int = 0  # 5xx
    p95_ms: int | None = None

    @property
    def error_rate(self) -> float:
        """% of requests answered 5xx (0 without requests)."""
        return 100.0 * self.errors / self.requests if self.requests else 0.0

    def describe(self) -> str:
        """
        >>> Window(200, 10, 12).describe(), Window().describe()
        ('5.0% 5xx of 200 requests, p95 12 ms', 'no requests')
        """
        if not self.requests:
            return "no requests"
        p = f"{self.p95_ms} ms" if self.p95_ms is not None else "n/a"
        return f"{self.error_rate:.1f}% 5xx of {self.requests} requests, p95 {p}"


@dataclass(frozen=True)
class Observed:
    """What the watch saw since the switch."""

    since: Window
    health_failures: int = 0  # failed health samples in a row, up to the last one
    health_detail: str = ""
    restarts: int = 0  # PM2 restarts since the switch


def decide(rules: Rules, before: Window | None, now: Observed) -> str | None:
    """Why to roll back (the runbook's decision tree), or None to keep the release.

    >>> r = Rules(duration=60)
    >>> decide(r, Window(100, 0, 10), Observed(Window(100, 30, 12)))
    'error rate 30.0% (30 of 100 requests) is over the critical line of 5%'
    >>> decide(r, Window(100, 0, 10), Observed(Window(100, 0, 12))) is None
    True
    """
    # 1. Is the service operational?
    if now.health_failures >= rules.health_failures:
        return (
            f"not operational: the health check failed {now.health_failures} samples in a row "
            f"({now.health_detail})"
        )
    if now.restarts >= rules.restarts:
        return f"not operational: PM2 restarted the app {now.restarts} times since the switch"
    w = now.since
    if w.requests < rules.min_requests:
        return None  # too few requests to judge a rate
    # 2. Over a critical line?
    if w.error_rate > rules.error_rate_critical:
        return (
            f"error rate {w.error_rate:.1f}% ({w.errors} of {w.requests} requests) is over the "
            f"critical line of {rules.error_rate_critical:g}%"
        )
    if w.p95_ms is not None and w.p95_ms > rules.p95_critical_ms:
        return f"p95 {w.p95_ms} ms is over the critical line of {rules.p95_critical_ms:g} ms"
    # 3. Worse than before the deploy by a margin?
    if before is None or before.requests < rules.min_requests:
        return None  # no baseline to compare with: the critical lines alone decide
    if w.error_rate > before.error_rate + rules.error_rate_margin:
        return (
            f"error rate {w.error_rate:.1f}% ({w.errors} of {w.requests} requests) is worse than "
            f"before the deploy ({before.error_rate:.1f}%) by more than "
            f"{rules.error_rate_margin:g} points"
        )
    if (
        w.p95_ms is not None
        and before.p95_ms is not None
        and w.p95_ms > before.p95_ms + rules.p95_margin_ms
    ):
        return (
            f"p95 {w.p95_ms} ms is worse than before the deploy ({before.p95_ms} ms) by more "
            f"than {rules.p95_margin_ms:g} ms"
        )
    return None


# --- on the host ---------------------------------------------------------------------------------


def probe_command(params: Params) -> str:
    """One remote command: the probe's source on python3's stdin, its parameters as argument."""
    if f"\n{_END}\n" in f"\n{PROBE_SOURCE}\n":
        raise ValueError(f"the watch probe holds the line {_END}")
    return f"python3 - {shlex.quote(json.dumps(params))} <<'{_END}'\n{PROBE_SOURCE}\n{_END}\n"


def read_sample(remote: Remote, params: Params) -> Sample:
    res = remote.run(probe_command(params), what="watch sample", timeout=60)
    lines = res.stdout.strip().splitlines()
    try:
        sample: Sample = json.loads(lines[-1])
    except (IndexError, ValueError) as exc:
        raise deploy.DeployError(
            f"the watch's sample is unreadable ({exc}): {res.stdout[-300:]!r}; the release stays"
        ) from exc
    return sample


def access_log(v: Mapping[str, Any]) -> str:
    return str(v.get("healthcheck_access_log") or ACCESS_LOG)


def mark_bad_script(layout: AppLayout, release: str, reason: str) -> str:
    body = json.dumps(
        {
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "by": operator(),
            "action": "watch",
            "reason": reason,
        }
    )
    d = shlex.quote(f"{layout.releases}/{release}")
    path = shlex.quote(f"{layout.releases}/{release}/{BAD_MARK}")
    return f"[ -d {d} ] && printf '%s\\n' {shlex.quote(body)} > {path}\n"


def slack_text(app: str, host: str, release: str, previous: str, reason: str) -> str:
    """
    >>> slack_text("shop", "web1", "r2", "r1", "p95 <2s> & more")[-35:]
    'ck to r1: p95 &lt;2s&gt; &amp; more'
    """
    text = f"the post-deploy watch rolled {release} back to {previous}: {reason}"
    esc = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return f":rotating_light: {app} on {host}: {esc}"


# --- the watch -----------------------------------------------------------------------------------


@dataclass
class _Progress:
    samples: int = 0
    requests: int = 0
    errors: int = 0
    times_ms: list[int] = field(default_factory=list)
    health_failures: int = 0
    health_detail: str = ""
    restarts0: int | None = None
    restarts: int = 0
    seconds: float = 0.0  # spent sampling (one remote command each)
    log_error: str = ""

    def add(self, s: Sample, seconds: float = 0.0) -> None:
        self.samples += 1
        self.seconds += seconds
        self.log_error = s.get("log_error", "")
        self.requests += s["requests"]
        self.errors += s["errors"]
        self.times_ms += s["times_ms"]
        del self.times_ms[:-100_000]  # bounded: the newest ones
        health = s.get("health")
        pm2 = s.get("pm2")
        ok, detail = (health["ok"], health["detail"]) if health else (True, "")
        if pm2 is not None and "error" not in pm2:
            if self.restarts0 is None:
                self.restarts0 = pm2["restarts"]
            self.restarts = max(0, pm2["restarts"] - self.restarts0)
            if pm2["online"] < pm2["processes"] or not pm2["processes"]:
                ok = False
                detail = f"{pm2['online']} of {pm2['processes']} PM2 processes online"
        elif pm2 is not None:
            ok, detail = False, pm2.get("error", "PM2 unreadable")
        self.health_failures = 0 if ok else self.health_failures + 1
        self.health_detail = detail

    def observed(self) -> Observed:
        since = Window(self.requests, self.errors, p95(self.times_ms))
        return Observed(since, self.health_failures, self.health_detail, self.restarts)


class Watch:
    """The post-deploy watch of one deploy (a deploy.SwitchHook): one per `inv deploy`."""

    def __init__(
        self,
        watch: Any = None,
        *,
        progress: Callable[[str], None] = lambda line: None,
        health_timeout: float | None = None,
        post: Callable[[Secret, str], None] | None = None,
    ) -> None:
        self.watch = watch  # the --watch flag (None: each host's app_watch)
        self.progress = progress
        self.health_timeout = health_timeout
        self.post = post or post_slack
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self.baselines: dict[str, tuple[Window, int]] = {}
        self.rolled_back: dict[str, str] = {}  # host -> why

    def rules(self, v: Mapping[str, Any]) -> Rules:
        return Rules.from_vars(v, self.watch)

    def stop(self) -> None:
        """Ctrl-C: every host ends its watch and keeps its release."""
        self.stopped.set()

    # SwitchHook
    def before_switch(self, remote: Remote, state: deploy.HostState) -> None:
        rules = self.rules(remote.host.vars)
        if rules.duration <= 0:
            return
        s = read_sample(
            remote,
            {
                "log": access_log(remote.host.vars),
                "offset": -1,
                "baseline_minutes": rules.baseline_minutes,
            },
        )
        before = Window(s["requests"], s["errors"], p95(s["times_ms"]))
        self.baselines[remote.name] = (before, s["offset"])
        self.progress(
            f"[{remote.name}] baseline before the switch, last {rules.baseline_minutes:g} min: "
            f"{before.describe()}"
        )

    def after_switch(
        self,
        remote: Remote,
        ctx: RunContext,
        state: deploy.HostState,
        act: deploy.Activation,
    ) -> list[Change]:
        v = remote.host.vars
        rules = self.rules(v)
        if rules.duration <= 0:
            return []
        layout = AppLayout.from_vars(v)
        before, _ = self.baselines.pop(remote.name, (Window(), 0))
        params: Params = {
            "log": access_log(v),
            "offset": -1,  # the first sample marks the log's end: what follows is the release's
            "health_url": f"http://127.0.0.1:{layout.port}{v['app_health_path']}",
            "health_match": str(v.get("app_health_match") or ""),
            "pm2": {
                "bin": PM2_BIN,
                "user": layout.user,
                "home": layout.pm2_home,
                "app": layout.name,
            },
        }
        seen = _Progress()
        started = time.monotonic()
        deadline = started + rules.duration
        next_line = started + PROGRESS_EVERY
        self.progress(
            f"[{remote.name}] watching {act.target} for {rules.duration:g} s "
            f"(a sample every {rules.interval:g} s)"
        )
        reason = None
        while not self.stopped.is_set():
            t0 = time.monotonic()
            s = read_sample(remote, params)
            params["offset"] = s["offset"]
            seen.add(s, time.monotonic() - t0)
            reason = decide(rules, before, seen.observed())
            with self.lock:
                others = {h: r for h, r in self.rolled_back.items() if h != remote.name}
            if reason is None and others:
                host, why = sorted(others.items())[0]
                reason = f"{host} rolled back ({why})"
            now = time.monotonic()
            if reason is not None or now >= deadline or now >= next_line:
                next_line = now + PROGRESS_EVERY
                self.progress(self._line(remote.name, seen, before, deadline - now))
            if reason is not None or now >= deadline:
                break
            # a sample every `interval` seconds from start to start (the sample takes its part)
            self.stopped.wait(max(0.0, min(rules.interval - (now - t0), deadline - now)))
        elapsed = time.monotonic() - started
        if reason is None:
            how = "ended by Ctrl-C" if self.stopped.is_set() else "done"
            each = seen.seconds / seen.samples if seen.samples else 0.0
            note = (
                f"watch {how} after {elapsed:.0f} s: {seen.samples} samples "
                f"({each:.2f} s each), {seen.observed().since.describe()}: {act.target} kept"
            )
            ctx.notes.append(note)
            self.progress(f"[{remote.name}] {note}")
            return []
        return self._roll_back(remote, ctx, act, reason, elapsed)

    def _line(self, host: str, seen: _Progress, before: Window, left: float) -> str:
        o = seen.observed()
        base = (
            f" (before: {before.error_rate:.1f}%, p95 {before.p95_ms} ms)"
            if before.requests
            else ""
        )
        health = (
            "ok" if not o.health_failures else f"failing x{o.health_failures}: {o.health_detail}"
        )
        log = f"; access log unreadable: {seen.log_error}" if seen.log_error else ""
        return (
            f"[{host}] watch: {seen.samples} samples, {o.since.describe()}{base}; health {health}; "
            f"PM2 restarts {o.restarts}{log}; {max(0.0, left):.0f} s left"
        )

    def _roll_back(
        self, remote: Remote, ctx: RunContext, act: deploy.Activation, reason: str, elapsed: float
    ) -> list[Change]:
        with self.lock:
            self.rolled_back.setdefault(remote.name, reason)
        v = remote.host.vars
        layout = AppLayout.from_vars(v)
        if not act.previous:
            raise deploy.DeployError(
                f"the watch says roll back after {elapsed:.0f} s ({reason}), but there is no "
                f"release before {act.target}: it stays"
            )
        why = f"automatic rollback by the post-deploy watch of {act.target}: {reason}"
        self.progress(f"[{remote.name}] rolling back to {act.previous}: {reason}")
        work = deploy.rollback_work(to=act.previous, opts=deploy.Options(why, self.health_timeout))
        changes = work(remote, ctx)
        remote.run(mark_bad_script(layout, act.target, why), what="mark the release bad")
        webhook = v.get("healthcheck_slack_webhook_url")
        if isinstance(webhook, Secret):
            try:
                self.post(
                    webhook, slack_text(layout.name, remote.name, act.target, act.previous, reason)
                )
            except ApiError as exc:
                ctx.notes.append(f"Slack not told: {exc}")
        summary = "; ".join(c.summary for c in changes)
        raise deploy.DeployError(
            f"rolled back automatically after {elapsed:.0f} s of watching: {reason}; {summary}; "
            f"{act.target} is marked bad"
        )


def post_slack(webhook: Secret, text: str) -> None:
    """Send `text` to the Slack incoming webhook; ApiError (URL redacted) when it fails."""
    api = JsonApi("Slack", str(webhook), secrets=[str(webhook)], attempts=3)
    api.request("POST", str(webhook), json={"text": text}, ok=(200,), what="POST webhook")
