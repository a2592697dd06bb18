"""`inv report.daily` and `inv report.weekly` on the lab: the reports hold the numbers of this run.

The hosts are provisioned and the app deployed (other modules of the session may have done it
before: nothing here assumes fresh hosts), some traffic goes through nginx, a backup is taken and
the health check runs as cron runs it. Then the reports are written and compared with values read
independently: the access log's lines in the report's window, the newest backup's size from S3
(boto3), the current release from the host, the certificate's not-after from openssl, the health
check's Slack messages from the journal. The HTML pages are rendered by headless Chromium to PNGs
in test-artifacts/ (look at them), and `--slack` reaches the lab's Slack stand-in.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import zlib
from pathlib import Path
from typing import Any

import pytest

from opskit.backup.spec import config_for
from opskit.backup.text import human_size
from opskit.clients.s3 import make_client
from opskit.core.inventory import Inventory, load_inventory
from opskit.core.remote import connect
from opskit.core.roles import REPO
from opskit.core.runner import provision_work, run_on_hosts
from opskit.lab import registry as labsvc
from tests.integration.conftest import inv, write_inventory

ARTIFACTS = REPO / "test-artifacts"
RUN = uuid.uuid4().hex[:8]
TIMINGS: dict[str, float] = {}
GOOD, MISSING = 25, 6  # requests of this run: GET / and GET /report-missing-<RUN> (404)


def run_inv(inventory: Inventory, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a task as an operator would (`inv ...` with this inventory)."""
    return inv(*args, env={"OPSKIT_INVENTORY": str(inventory.path)})


def on_host(inventory: Inventory, name: str, script: str) -> str:
    remote = connect(inventory.host(name), inventory.ssh)
    try:
        return remote.run(script, what="test read").stdout
    finally:
        remote.close()


def chromium() -> str:
    for name in ("chromium-headless-shell", "chromium", "chromium-browser"):
        path = shutil.which(name) or (
            "/usr/lib/chromium/chromium-headless-shell"
            if name == "chromium-headless-shell"
            and Path("/usr/lib/chromium/chromium-headless-shell").exists()
            else None
        )
        if path:
            return path
    pytest.fail(
        "headless Chromium is missing (the report's HTML is rendered to a screenshot): "
        "run bash scripts/bootstrap (it installs chromium-headless-shell)"
    )


def screenshot(html: Path, png: Path, height: int) -> None:
    """Render `html` with headless Chromium to `png` (1280 px wide)."""
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    argv = [
        chromium(),
        "--headless",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--window-size=1280,{height}",
        f"--screenshot={png}",
        html.resolve().as_uri(),
    ]
    if os.geteuid() == 0:
        argv.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and png.exists(), proc.stderr[-2000:]


def png_facts(png: Path) -> tuple[int, int, float]:
    """Width, height and the share of non-zero bytes of the filtered image data (a blank page
    filters to nearly all zeros)."""
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    pos, idat = 8, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    raw = zlib.decompress(idat)
    return width, height, sum(1 for b in raw[::7] if b) / max(1, len(raw[::7]))


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.fixture(scope="module")
def rinv(lab_inventory: Inventory) -> Inventory:
    """The lab inventory; the hosts provisioned (every role) and the app deployed."""
    results = run_on_hosts(lab_inventory, lab_inventory.hosts, provision_work(None))
    assert [r.error for r in results] == [None] * len(results)
    deployed = run_inv(lab_inventory, "deploy", "-i", str(lab_inventory.path))
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    return lab_inventory


def web(inventory: Inventory) -> str:
    return next(h.name for h in inventory.hosts if "nginx" in h.roles)


def db(inventory: Inventory) -> str:
    return next(h.name for h in inventory.hosts if "backup" in h.roles)


def test_01_traffic_backup_and_a_health_check_as_cron_runs_it(rinv: Inventory) -> None:
    address = rinv.host(web(rinv)).address
    codes = [get(f"http://{address}/") for _ in range(GOOD)]
    codes += [get(f"http://{address}/report-missing-{RUN}") for _ in range(MISSING)]
    assert codes.count(200) == GOOD and codes.count(404) == MISSING, codes
    done = run_inv(rinv, "backup.run", "-i", str(rinv.path))
    assert done.returncode == 0, done.stdout + done.stderr
    for name in (web(rinv), db(rinv)):
        # Exactly what /etc/cron.d/opskit-healthcheck runs (cron's PATH), so the journal has
        # this run's problems, if any.
        on_host(
            rinv,
            name,
            "env -i PATH=/usr/bin:/bin /usr/local/bin/opskit-healthcheck --quiet 2>&1 "
            "| logger -t opskit-healthcheck",
        )


def report(rinv: Inventory, kind: str, out: Path, *extra: str) -> dict[str, Any]:
    started = time.monotonic()
    proc = run_inv(rinv, f"report.{kind}", "-i", str(rinv.path), "--out", str(out), *extra)
    TIMINGS[kind] = time.monotonic() - started
    print(proc.stdout, proc.stderr, file=sys.stderr)
    # 0 written; 1 when a source could not be read (the report is still written, marked)
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    files = sorted(out.glob(f"{kind}-*.json"))
    assert files, proc.stdout
    data = json.loads(files[-1].read_text())
    if proc.returncode == 1:
        assert data["errors"] or data["unreadable"]
    assert f"wrote {files[-1].with_suffix('.md')}" in proc.stdout
    return data


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("reports")


def window_log_counts(rinv: Inventory, since: str, until: str) -> tuple[int, int, int]:
    """Requests, 4xx and 5xx in nginx's current access log between the report's times, read
    with the host's own tools (awk) rather than the report's script."""
    t0 = dt.datetime.fromisoformat(since.replace("Z", "+00:00"))
    t1 = dt.datetime.fromisoformat(until.replace("Z", "+00:00"))
    text = on_host(rinv, web(rinv), "cat /var/log/nginx/access.log")
    n = c4 = c5 = 0
    for line in text.splitlines():
        try:
            stamp = line.split("[", 1)[1].split("]", 1)[0]
            status = int(line.split('"')[2].split()[0])
        except (IndexError, ValueError):
            continue
        t = dt.datetime.strptime(stamp, "%d/%b/%Y:%H:%M:%S %z")
        if t0 <= t <= t1:
            n += 1
            c4 += 400 <= status < 500
            c5 += status >= 500
    return n, c4, c5


def test_02_daily_report_holds_the_numbers_of_this_run(rinv: Inventory, out: Path) -> None:
    data = report(rinv, "daily", out)
    md = (out / f"daily-{data['until'][:10]}.md").read_text()
    html = (out / f"daily-{data['until'][:10]}.html").read_text()
    w, d = web(rinv), db(rinv)

    # traffic: the access log's lines in the window, counted here
    n, c4, c5 = window_log_counts(rinv, data["since"], data["until"])
    assert n >= GOOD + MISSING and c4 >= MISSING
    nginx = data["history"][w]["nginx"]
    assert sum(b["requests"] for b in nginx["buckets"].values()) == n
    assert sum(b["4xx"] for b in nginx["buckets"].values()) == c4
    assert sum(b["5xx"] for b in nginx["buckets"].values()) == c5
    assert f"### {w} — {n} requests, {c4} 4xx, {c5} 5xx" in md
    assert f"{w} — {n} requests, {c4} 4xx, {c5} 5xx" in html
    assert any(b["p95_ms"] is not None for b in nginx["buckets"].values())  # $request_time

    # backups: the newest object in S3, read with boto3
    cfg = config_for(rinv.host(d))
    [b] = [x for x in data["backups"] if x["host"] == d]
    listed = make_client(cfg.s3).list_objects_v2(
        Bucket=cfg.s3.bucket, Prefix=b["location"].split("/", 3)[3]
    )
    newest = max(
        (o for o in listed["Contents"] if o["Key"].endswith(".dump")),
        key=lambda o: o["LastModified"],
    )
    assert b["newest"]["key"] == newest["Key"] and b["newest"]["size"] == newest["Size"]
    assert b["in_window"] >= 1
    assert newest["Key"] in md and human_size(newest["Size"]) in md
    assert human_size(newest["Size"]) in html

    # the current release, read on the host
    current = on_host(rinv, w, "basename $(readlink /srv/sample/current)").strip()
    assert [r["current"] for r in data["releases"] if r["host"] == w] == [current]
    assert current in md and current in html
    assert any(e["action"] == "deploy" for r in data["releases"] for e in r["events"])

    # certificate days left, from openssl on the host
    end = on_host(
        rinv,
        w,
        "openssl x509 -noout -enddate -in /etc/letsencrypt/live/sample.opskit.lab/cert.pem",
    ).strip()
    not_after = dt.datetime.strptime(end.split("=", 1)[1], "%b %d %H:%M:%S %Y GMT")
    until = dt.datetime.fromisoformat(data["until"].replace("Z", "+00:00")).replace(tzinfo=None)
    days = int((not_after - until).total_seconds() // 86400)
    certs = [c for h in data["certs"]["hosts"] if h["host"] == w for c in h["certificates"]]
    assert [c["days_left"] for c in certs if c["name"] == "sample.opskit.lab"] == [days]
    assert f"| {w} | sample.opskit.lab | {days} |" in md

    # health-check Slack messages in the window, from the journal
    t0 = int(dt.datetime.fromisoformat(data["since"].replace("Z", "+00:00")).timestamp())
    t1 = int(until.replace(tzinfo=dt.UTC).timestamp()) + 1
    journal = on_host(
        rinv,
        w,
        f"journalctl -t opskit-healthcheck -o cat --no-pager -q --since @{t0} --until @{t1}"
        " || true",
    )
    sent = sum(1 for x in journal.splitlines() if x.startswith("slack: sent"))
    runs = data["history"][w]["alerts"]["runs"]
    assert sum(1 for r in runs if r["sent"]) == sent

    # the status and the headline
    nums = json.loads((out / f"daily-{data['until'][:10]}.json").read_text())["numbers"]
    assert nums["requests"] >= n and nums["backups_in_window"] >= 1
    assert f"| **{nums['worst']}** |" in md
    if data["status"] is not None:
        samples = next(h for h in data["status"]["hosts"] if h["host"] == w)["samples"]
        assert samples.get("health_ms"), "status sampled the health endpoint"


def test_03_weekly_report_reads_the_daily_and_has_trends(rinv: Inventory, out: Path) -> None:
    data = report(rinv, "weekly", out)
    md = (out / f"weekly-{data['until'][:10]}.md").read_text()
    assert [p["file"] for p in data["previous"]] == [f"daily-{data['until'][:10]}.json"]
    n, _, _ = window_log_counts(rinv, data["since"], data["until"])
    nginx = data["history"][web(rinv)]["nginx"]
    assert sum(b["requests"] for b in nginx["buckets"].values()) == n
    assert data["until"][:10] in nginx["buckets"]  # per day
    assert all(len(k) == len("2026-11-23") for k in nginx["buckets"])
    assert "## To do this week" in md and "## Trends of the week" in md
    assert "From the daily reports of the week (1)" in md


def test_04_html_pages_render_in_headless_chromium(out: Path) -> None:
    for kind, height in (("daily", 3200), ("weekly", 3800)):
        [page] = sorted(out.glob(f"{kind}-*.html"))
        png = ARTIFACTS / f"report-{kind}.png"
        screenshot(page, png, height)
        width, h, ink = png_facts(png)
        print(f"screenshot: {png} ({width}x{h}, {png.stat().st_size} bytes)", file=sys.stderr)
        assert (width, h) == (1280, height)
        assert png.stat().st_size > 30_000, "the page looks blank"
        assert ink > 0.01, f"the page looks blank ({ink:.3%} non-zero filtered bytes)"
        shutil.copy(page, ARTIFACTS / page.name)


def test_05_no_secret_in_any_report_file(out: Path, lab_spec: Any) -> None:
    values = [v for v in labsvc.ensure_lab_secrets(lab_spec).values() if len(v) >= 8]
    assert values
    for f in out.iterdir():
        text = f.read_text()
        assert not [v for v in values if v in text], f"a secret is in {f}"


def test_06_slack_gets_a_short_summary(rinv: Inventory, out: Path, lab_spec: Any) -> None:
    before = len(labsvc.read_inbox(lab_spec, "slack"))
    data = report(rinv, "daily", out, "--slack")
    items = labsvc.read_inbox(lab_spec, "slack")[before:]
    texts = [i["payload"].get("text", "") for i in items]
    mine = [t for t in texts if "Daily review" in t]
    assert len(mine) == 1, texts
    nums = json.loads((out / f"daily-{data['until'][:10]}.json").read_text())["numbers"]
    assert f"requests {nums['requests']} ({nums['errors_5xx']} 5xx)" in mine[0]
    assert len(mine[0].splitlines()) <= 6
    assert "/services/" not in (out / f"daily-{data['until'][:10]}.md").read_text()
    print(f"report timings (s): {TIMINGS}", file=sys.stderr)


def test_07_bad_input_exits_2_and_writes_nothing(rinv: Inventory, tmp_path: Path) -> None:
    proc = run_inv(
        rinv, "report.daily", "-i", str(rinv.path), "--out", str(tmp_path), "--fail-on", "often"
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--fail-on" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_08_an_unreachable_host_is_marked_and_the_report_still_written(
    rinv: Inventory, tmp_path: Path
) -> None:
    d = db(rinv)
    gone = ".".join([*rinv.host(d).address.split(".")[:3], "99"])  # nothing answers there

    def change(data: dict[str, Any]) -> None:
        group = next(g for g in data["groups"].values() if d in g.get("hosts", {}))
        group["hosts"]["gone1"] = {"address": gone}
        for g in data["groups"].values():  # relative paths would point into tmp_path
            if "app_repo" in g.get("vars", {}):
                g["vars"]["app_repo"] = str(REPO)

    path = write_inventory(tmp_path, change)
    proc = run_inv(
        load_inventory(path),
        "report.daily",
        "-i",
        str(path),
        "--hosts",
        f"gone1,{d}",
        "--out",
        str(tmp_path / "r"),
        "--no-audit",
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [md] = (tmp_path / "r").glob("daily-*.md")
    text = md.read_text()
    assert "**Not read:** gone1" in text
    assert "| **critical** |" in text or "| **unknown** |" in text
    assert f"| {d} | app |" in text  # the readable host's backups are still there
