"""app.toggle / app.killswitch: the real admin.js of the sample app under node, called by the
real remote script (local bash), journal lines and parsing; no lab."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from opskit.app import toggles
from opskit.app.spec import AppLayout
from opskit.core.errors import ConfigError
from opskit.core.roles import REPO

HARNESS = """
const http = require("http");
const admin = require(process.argv[1]);
function send(res, code, body) {
  res.writeHead(code, {"Content-Type": "application/json"});
  res.end(JSON.stringify(body) + "\\n");
}
http.createServer((req, res) => {
  const url = req.url.split("?")[0];
  if (admin.handle(req, res, url, send)) return;
  if (url === "/health") return send(res, 200, {status: "healthy"});
  send(res, 200, {app: "ok", toggles: admin.state().toggles});
}).listen(Number(process.env.PORT), "127.0.0.1");
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def app(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Two processes of the harness sharing one state file, like two PM2 cluster workers."""
    state = tmp_path / "admin-state.json"
    ports = [_free_port(), _free_port()]
    procs = [
        subprocess.Popen(
            ["node", "-e", HARNESS, str(REPO / "app/sample/admin.js")],
            env={
                "PATH": "/usr/bin:/bin",
                "PORT": str(p),
                "ADMIN_TOKEN": "t0ken",
                "ADMIN_STATE_FILE": str(state),
            },
        )
        for p in ports
    ]
    for p in ports:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", p), 0.1).close()
                break
            except OSError:
                time.sleep(0.05)
    yield ports, state, tmp_path
    for proc in procs:
        proc.terminate()
        proc.wait(5)


def _get(port: int, path: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    out = subprocess.run(
        ["curl", "-s", "-w", "\n%{http_code}", f"http://127.0.0.1:{port}{path}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    body, code = out.rsplit("\n", 1)
    return int(code), json.loads(body)


def _flip(port: int, root: Path, flip: toggles.Flip, token: str = "t0ken") -> toggles.Answer:
    layout = AppLayout("sample", "app", port, root=str(root))
    Path(layout.state_dir).mkdir(parents=True, exist_ok=True)
    script = toggles.flip_script(toggles.AdminSettings(layout, "/ops", token), flip)
    assert token not in script.split("OPSKIT_CURL_CONFIG")[0]  # never on a command line
    out = subprocess.run(["bash"], input=script, capture_output=True, text=True, check=True)
    return toggles.parse_answer(out.stdout)


def test_killswitch_on_answers_503_on_every_worker_health_stays_true_and_journals_once(app) -> None:
    (p1, p2), state, root = app
    flip = toggles.Flip(None, True, "ann@laptop", "5xx storm")
    first = _flip(p1, root, flip)
    assert toggles.judge("web1", flip, first).changed and first.journaled
    for p in (p1, p2):  # the other worker reads the same state
        code, body = _get(p, "/")
        assert (code, body["error"]) == (503, "killswitch")
        assert _get(p, "/health") == (200, {"status": "healthy"})
    again = _flip(p2, root, flip)
    assert not toggles.judge("web1", flip, again).changed and not again.journaled
    lines = (root / "sample/.opskit/journal.jsonl").read_text().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert (entry["action"], entry["detail"], entry["operator"], entry["message"]) == (
        "killswitch",
        "killswitch on",
        "ann@laptop",
        "5xx storm",
    )
    assert json.loads(state.read_text())["killswitch"] is True
    off = _flip(p2, root, toggles.Flip(None, False, "ann@laptop"))
    assert off.body["changed"] is True and _get(p1, "/")[0] == 200


def test_a_toggle_persists_in_the_shared_file_and_the_app_sees_it(app) -> None:
    (p1, p2), state, root = app
    flip = toggles.Flip("new-checkout", True, "bob")
    assert toggles.judge("web1", flip, _flip(p1, root, flip)).summary == (
        "toggle new-checkout on (journaled)"
    )
    assert _get(p2, "/")[1]["toggles"] == {"new-checkout": True}
    assert json.loads(state.read_text())["toggles"] == {"new-checkout": True}


def test_a_wrong_token_is_refused_and_nothing_is_journaled(app) -> None:
    (p1, _), state, root = app
    flip = toggles.Flip(None, True, "eve")
    answer = _flip(p1, root, flip, token="wrong")
    assert answer.code == 401 and not answer.journaled and not state.exists()
    with pytest.raises(toggles.ToggleError, match="refused the token"):
        toggles.judge("web1", flip, answer)


def test_no_app_listening_is_a_clear_error(tmp_path: Path) -> None:
    flip = toggles.Flip(None, True, "eve")
    answer = _flip(_free_port(), tmp_path, flip)
    with pytest.raises(toggles.ToggleError, match="did not answer: curl: \\(7\\)"):
        toggles.judge("web1", flip, answer)


def test_bad_input_is_refused_before_any_host() -> None:
    with pytest.raises(ConfigError, match="NAME: 'a b'"):
        toggles.Flip("a b", True, "x")
    with pytest.raises(ConfigError, match="app_admin_token: not set"):
        toggles.AdminSettings.from_vars(
            {"app_name": "sample", "app_user": "app", "app_port": 3000}, "web1"
        )
