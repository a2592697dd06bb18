"""Incidents: the record's life (open, update, resolve) on disk, the Slack texts, and what the
weekly review counts from the files; no lab (the timeline's gathering is in the integration
test)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from opskit.core.errors import ConfigError
from opskit.incident import record
from opskit.report.incidents import incidents_in, read_meta
from opskit.report.render import render as render_report
from opskit.report.view import build_view

T0 = dt.datetime(2026, 11, 30, 9, 0, tzinfo=dt.UTC)
EVENTS = [
    {
        "time": "2026-11-30T08:40:00Z",
        "host": "web1",
        "source": "deploy",
        "text": "deploy ok: r2 (from r1) by ann",
    },
    {
        "time": "2026-11-30T08:45:00Z",
        "host": "web1",
        "source": "healthcheck",
        "text": "alert sent: CRITICAL error_rate: 12% 5xx <!channel>",
    },
]


def _open(tmp_path: Path, title: str = "Checkout fails | 502s", when: dt.datetime = T0) -> Path:
    meta = record.new_meta(
        title,
        "high",
        "ann@laptop",
        when,
        hosts=["web1"],
        window="the last 24 h",
        timeline=EVENTS,
        not_read={},
    )
    path = record.new_path(tmp_path, when, title)
    record.write_record(path, meta)
    return path


def test_open_update_resolve_fills_the_template(tmp_path: Path) -> None:
    path = _open(tmp_path)
    assert path.name == "2026-11-30-checkout-fails-502s.md"
    text = path.read_text()
    for heading in (
        "## Timeline (UTC)",
        "## Root cause",
        "## Resolution",
        "## Prevention",
        "## Action items",
    ):
        assert heading in text
    assert "**web1** deploy: deploy ok: r2 (from r1) by ann" in text
    assert "Checkout fails \\| 502s" in text  # free text escaped for Markdown tables
    assert record.find(tmp_path, None) == path

    meta = record.load(path)
    record.add_update(meta, T0 + dt.timedelta(minutes=10), "bob", "killswitch on")
    meta["action_items"].append("alert on 5xx share per release")
    record.write_record(path, meta)
    assert "update: killswitch on (bob)" in path.read_text()

    meta = record.load(path)
    with pytest.raises(ConfigError, match="missing --resolution, --prevention"):
        record.resolve(meta, T0, "bob", {"root_cause": "bad release"})
    assert record.load(path)["status"] == "open"  # nothing changed
    record.resolve(
        meta,
        T0 + dt.timedelta(minutes=65),
        "bob",
        {
            "root_cause": "release r2 broke checkout",
            "resolution": "rolled back to r1",
            "prevention": "post-deploy watch",
        },
    )
    record.write_record(path, meta)
    text = path.read_text()
    assert "| Status | **resolved** |" in text and "| Duration | 1 h 05 min |" in text
    assert "release r2 broke checkout" in text and "- [ ] alert on 5xx share per release" in text
    assert read_meta(text)["resolved_at"] == "2026-11-30T10:05:00Z"
    with pytest.raises(ConfigError, match="no open incident"):
        record.find(tmp_path, None)
    with pytest.raises(ConfigError, match="already resolved"):
        record.resolve(meta, T0, "bob", {})


def test_slack_texts_escape_and_follow_the_guides_alert(tmp_path: Path) -> None:
    path = _open(tmp_path, "API <down> & out")
    meta = record.load(path)
    msg = record.open_message(meta, path)
    assert msg.startswith(":rotating_light: *INCIDENT [HIGH]: API &lt;down&gt; &amp; out*")
    for line in ("Status: Investigating", "Impact: being assessed", "Incident lead: ann@laptop"):
        assert line in msg


def test_bad_input_is_refused() -> None:
    with pytest.raises(ConfigError, match="--severity"):
        record.severity("sev1")
    with pytest.raises(ConfigError, match="--title"):
        record.new_meta(" ", "low", "a", T0, hosts=[], window="", timeline=[], not_read={})


def test_the_weekly_review_counts_incidents_and_their_durations(tmp_path: Path) -> None:
    a = _open(tmp_path, "one", T0)
    meta = record.load(a)
    record.resolve(
        meta,
        T0 + dt.timedelta(minutes=30),
        "bob",
        {"root_cause": "x", "resolution": "y", "prevention": "z"},
    )
    record.write_record(a, meta)
    _open(tmp_path, "two", T0 + dt.timedelta(hours=2))  # still open
    _open(tmp_path, "old", T0 - dt.timedelta(days=30))  # opened before the week: open still
    (tmp_path / "notes.md").write_text("# not an incident\n")
    week = incidents_in(tmp_path, T0 - dt.timedelta(days=7), T0 + dt.timedelta(hours=3))
    assert (week["count"], week["open"], week["by_severity"]["high"]) == (3, 2, 3)
    assert week["mean_time_to_resolve_s"] == 1800.0
    report = {
        "kind": "weekly",
        "generated_at": "2026-11-30T12:00:00Z",
        "since": "2026-11-23T12:00:00Z",
        "until": "2026-11-30T12:00:00Z",
        "hosts": [],
        "settings": {},
        "incidents": week,
    }
    md = render_report(report, link="x.html", secrets=[]).markdown
    assert "## Incidents of the week" in md and "mean time to resolve 30 min" in md
    rows = {r["title"]: r for r in build_view(report)["incidents"]["rows"]}
    assert rows["one"]["duration"] == "30 min" and rows["old"]["status"] == "open"
