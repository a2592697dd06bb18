"""report.monthly, pure: the criteria against the runbooks' targets, the database findings, the
action items first, and the three renderings (the lab test renders real rows)."""

from __future__ import annotations

import json

from opskit.report import monthly


def _report(uptime: float | None, five_xx: int) -> dict:  # type: ignore[type-arg]
    history = {
        "web1": {
            "nginx": {
                "buckets": {
                    "2026-11-01": {
                        "requests": 1000,
                        "5xx": five_xx,
                        "p95_ms": 120.0,
                        "timed": 1000,
                    },
                    "2026-11-02": {"requests": 3000, "5xx": 0, "p95_ms": 620.0, "timed": 3000},
                }
            }
        },
        "web2": {
            "nginx": {
                "buckets": {
                    "2026-11-02": {"requests": 1000, "5xx": 0, "p95_ms": 20.0, "timed": 1000},
                }
            }
        },
    }
    t = monthly.traffic(history)
    db = {
        "host": "db1",
        "database": "app",
        "database_bytes": 9_000_000,
        "stats_since": None,
        "slow_queries": [
            {
                "query": "SELECT * FROM orders WHERE note LIKE $1",
                "role": "app",
                "calls": 40,
                "mean_ms": 250.5,
                "max_ms": 900.1,
                "total_ms": 10020.0,
                "rows": 40,
            },
            {
                "query": "SELECT 1",
                "role": "app",
                "calls": 9,
                "mean_ms": 0.01,
                "max_ms": 0.02,
                "total_ms": 0.1,
                "rows": 9,
            },
        ],
        "tables": [
            {
                "schema": "public",
                "table": "orders",
                "seq_scan": 400,
                "seq_tup_read": 80000,
                "idx_scan": 2,
                "live_rows": 200,
                "total_bytes": 65536,
                "table_bytes": 49152,
                "index_bytes": 16384,
            }
        ],
        "indexes": [
            {
                "schema": "public",
                "table": "orders",
                "index": "orders_pkey",
                "idx_scan": 2,
                "bytes": 16384,
            }
        ],
    }
    db["seq_heavy"] = monthly.seq_heavy(db["tables"])
    report = {
        "kind": "monthly",
        "generated_at": "2026-11-30T00:00:00Z",
        "since": "2026-10-31T00:00:00Z",
        "until": "2026-11-30T00:00:00Z",
        "inventory": "lab.yml",
        "hosts": ["web1", "web2", "db1"],
        "criteria": [
            monthly.criterion("uptime", uptime, 99.9, "more", " %", "UptimeRobot"),
            monthly.criterion("error rate", t["error_rate"], 1.0, "less", " %", "nginx"),
            monthly.criterion("p95", t["p95_ms"], 500.0, "less", " ms", "nginx"),
        ],
        "uptime": {
            "monitors": [
                {
                    "id": 1,
                    "name": "app",
                    "url": "http://x",
                    "uptime": uptime,
                    "downtime_s": 60,
                    "incidents": 1,
                }
            ]
        }
        if uptime
        else {"monitors": []},
        "traffic": t,
        "databases": [db],
        "errors": {} if uptime else {"uptimerobot": "no key"},
    }
    report["actions"] = monthly.action_items(report)
    return report


def test_the_criteria_are_judged_against_the_runbooks_targets() -> None:
    r = _report(99.95, 10)
    c = {x["name"]: x for x in r["criteria"]}
    assert (c["uptime"]["met"], c["error rate"]["value"], c["error rate"]["met"]) == (
        True,
        0.2,
        True,
    )
    # the days' p95 weighted by their requests: (120*1000 + 620*3000 + 20*1000) / 5000
    assert (c["p95"]["value"], c["p95"]["met"]) == (400.0, True)
    assert r["traffic"]["p95_worst_day_ms"] == 470.0  # 2026-11-02 over both hosts
    bad = _report(99.5, 100)
    assert [a["level"] for a in bad["actions"]][:2] == ["critical", "critical"]
    assert "uptime 99.5 % missed its target > 99.9 %" in bad["actions"][0]["what"]


def test_database_findings_and_renderings_put_action_items_first() -> None:
    r = _report(None, 0)
    whats = [a["what"] for a in r["actions"]]
    assert any("averages 250.5 ms over 40 calls" in w for w in whats)
    assert any("table orders read by 400 sequential scans vs 2 index scans" in w for w in whats)
    assert any(w.startswith("uptime: no data") for w in whats)
    out = monthly.render(r, secrets=["no key"])
    md = out.markdown
    assert (
        md.index("## Action items")
        < md.index("## 30-day success criteria")
        < md.index("### Slowest queries")
    )
    assert "| public.orders | 400 | 80000 | 2 | 200.0 |" in md
    assert "| orders\\_pkey | orders | 16.0 kB | 2 |" in md
    assert "no key" not in out.json and "<svg" in out.html
    assert json.loads(out.json)["criteria"][0]["met"] is None
    assert out.slack.startswith("Monthly review: WARNING; uptime n/a % (no data)")
