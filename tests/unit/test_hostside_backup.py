"""The backup host program (opskit/hostside/backup.py, /usr/local/bin/opskit-backup on the
database host), imported like any module: its configuration, checksums, exit codes, local files,
and a whole `run` against a local moto server with pg_dump stood in for."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import http.server
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig
from moto.server import ThreadedMotoServer

from opskit.hostside import backup as program

WEBHOOK = "http://127.0.0.1:9/services/T1/B1/hooktoken123"
SECRET_KEY = "s3cr3t-access-key-value"


def config(tmp_path: Path, **s3: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "_comment": "Managed by opskit, role backup; local edits are overwritten.",
        "database": "app",
        "owner": "app",
        "label": "db1",
        "local_dir": str(tmp_path),
        "local_retention_days": 7,
        "compression_level": 6,
        "restore_jobs": 2,
        "verify_upload": "checksum",
        "heartbeat_url": "",
        "slack_webhook": WEBHOOK,
        "http_timeout": 2,
        "s3": {
            "bucket": "unit-program",
            "prefix": "pg",
            "endpoint": "http://127.0.0.1:9",
            "region": "us-east-1",
            "access_key_id": "AKIDUNIT",
            "secret_access_key": SECRET_KEY,
            "encryption": "AES256",
            "kms_key_id": "",
            "storage_class": "STANDARD",
            "connect_timeout": 2,
            "read_timeout": 5.5,
            "max_attempts": 1,
        },
    }
    cfg["s3"].update(s3)
    return cfg


def write_config(tmp_path: Path, cfg: dict[str, Any]) -> str:
    path = tmp_path / "opskit-backup.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any], str]:
    umask = os.umask(0o022)  # main() sets 077 for the process, as a host program should
    try:
        code = program.main(list(argv), as_postgres=False)
    finally:
        os.umask(umask)
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else {}, err


# --- configuration --------------------------------------------------------------------------


def test_config_round_trip_and_the_keys_are_the_typed_ones(tmp_path):
    cfg = program.parse_config(json.dumps(config(tmp_path)))
    assert cfg["s3"]["read_timeout"] == 5.5 and cfg["http_timeout"] == 2  # a number is a float
    assert set(program.REQUIRED) == set(program.Config.__annotations__)
    assert set(program.REQUIRED_S3) == set(program.S3Config.__annotations__)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.pop("owner"), "owner: missing"),
        (lambda c: c["s3"].pop("max_attempts"), "s3.max_attempts: missing"),
        (lambda c: c.update(s3="x"), "s3: wrong type"),
        (lambda c: c.update(restore_jobs=True), "restore_jobs: wrong type"),  # bool is no int
        (lambda c: c.update(restore_jobs=2.0), "restore_jobs: wrong type"),
        (lambda c: c["s3"].update(connect_timeout="2"), "s3.connect_timeout: wrong type"),
        (lambda c: c.update(database="app-db"), "database: not a plain database name"),
        (lambda c: c.update(verify_upload="md5"), "verify_upload: checksum or download"),
        (lambda c: c["s3"].update(bucket=""), "s3.bucket: empty"),
    ],
)
def test_config_errors_name_the_key_and_exit_2(tmp_path, change, message):
    cfg = config(tmp_path)
    change(cfg)
    with pytest.raises(program.Failure, match=message) as info:
        program.parse_config(json.dumps(cfg), "c.json")
    assert info.value.code == program.EXIT_CONFIG and info.value.step == program.STEP_CONFIG
    assert str(info.value).startswith("c.json: ")


@pytest.mark.parametrize(
    ("text", "message"), [("{", "not valid JSON"), ("[1]", "expected a JSON object")]
)
def test_config_that_is_no_json_object(text, message):
    with pytest.raises(program.Failure, match=message):
        program.parse_config(text)


def test_object_key_and_label(tmp_path):
    cfg = program.parse_config(json.dumps(config(tmp_path, prefix="/pg/")))
    when = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert program.object_key(cfg, when) == "pg/db1/app/app-20250102T030405Z.dump"
    assert program.parse_stamp("20250102T030405Z") == when
    cfg["label"] = ""
    assert program.object_key(cfg, when).split("/")[1] == socket.gethostname().split(".")[0]
    cfg["s3"]["prefix"] = ""
    assert program.object_key(cfg, when).startswith(socket.gethostname().split(".")[0] + "/")


def test_secrets_never_leave_the_program(tmp_path, capsys):
    cfg = program.parse_config(json.dumps(config(tmp_path, access_key_id="AKIDUNIT")))
    secrets = program.secrets_of(cfg)
    assert set(secrets) == {WEBHOOK, SECRET_KEY, "AKIDUNIT"}
    program.Reporter(secrets).log(f"posting to {WEBHOOK} with {SECRET_KEY}")
    err = capsys.readouterr().err
    assert WEBHOOK not in err and SECRET_KEY not in err and err.count("***") == 2


# --- exit codes of the commands -------------------------------------------------------------


def test_missing_config_is_exit_2_with_a_json_result(tmp_path, capsys):
    code, result, err = run_main(capsys, "--config", str(tmp_path / "none.json"), "info", "--json")
    assert code == program.EXIT_CONFIG == 2
    assert result[program.KEY_OK] is False and result[program.KEY_FAILED_STEP] == "config"
    assert "cannot read" in result[program.KEY_ERROR] and "error: " in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["restore", "--key", "k", "--target", "app"], "--target is the live database"),
        (["restore", "--key", "k", "--target", "x; drop"], "--target 'x; drop': a plain"),
        (["swap", "--new", "ok_name", "--keep-as", "bad name"], "'bad name': a plain database"),
    ],
)
def test_bad_arguments_are_exit_2_before_anything_runs(tmp_path, capsys, argv, message):
    path = write_config(tmp_path, config(tmp_path))
    code, result, _ = run_main(capsys, "--config", path, *argv, "--json")
    assert code == program.EXIT_CONFIG
    assert result[program.KEY_FAILED_STEP] == program.STEP_ARGUMENTS
    assert message in result[program.KEY_ERROR]


def test_a_held_lock_is_exit_75(tmp_path):
    d = str(tmp_path)
    with program.Lock(d), pytest.raises(program.Failure) as info, program.Lock(d, wait=0):
        pass
    assert info.value.code == program.EXIT_LOCKED == 75 and info.value.step == program.STEP_LOCK
    with program.Lock(str(tmp_path), wait=0):  # released: free again
        pass


def test_usage_errors_are_argparse_exit_2():
    with pytest.raises(SystemExit) as info:
        program.parser().parse_args(["restore", "--key", "k"])
    assert info.value.code == 2


# --- progress and results on the wire -------------------------------------------------------


def test_progress_is_throttled_and_parsed_back(capsys, monkeypatch):
    rep = program.Reporter([], progress=True)
    clock = iter([10.0, 10.1, 10.2, 11.0])
    monkeypatch.setattr(program.time, "monotonic", lambda: next(clock))
    rep.progress("upload", 1, 10)
    rep.progress("upload", 2, 10)  # within 0.5 s of the last one: dropped
    rep.progress("upload", 3, 10, force=True)
    rep.progress("upload", 4, 10)
    lines = capsys.readouterr().err.splitlines()
    assert [program.parse_progress(x) for x in lines] == [
        ("upload", 1, 10),
        ("upload", 3, 10),
        ("upload", 4, 10),
    ]
    program.Reporter([], progress=False).progress("upload", 1, 10)
    assert capsys.readouterr().err == ""
    assert program.parse_progress(program.PROGRESS_MARK + "{broken") is None


def test_result_is_the_last_json_object_line():
    out = 'backup ok\n{"ok": false}\n["not", "an object"]\n{"ok": true, "key": "k"}\nbye\n'
    assert program.parse_result(out) == {"ok": True, "key": "k"}
    assert program.parse_result("nothing\n{broken\n") == {}


# --- local files ----------------------------------------------------------------------------


def test_prune_local_removes_only_old_backups(tmp_path):
    now = dt.datetime.now(dt.UTC)
    files = {
        "app-20200101T000000Z.dump": 8,
        "app-20200101T000000Z.dump.json": 8,
        "app-20200102T000000Z.dump": 6,
        "other-20200101T000000Z.dump": 30,  # another database's: not ours to remove
        "notes.txt": 30,
        "x.dump.partial": 2,  # a leftover of a failed run, older than a day
        "y.dump.partial": 0,  # a run in progress
    }
    for name, days in files.items():
        p = tmp_path / name
        p.write_text("x")
        t = time.time() - days * 86400 - 60
        os.utime(p, (t, t))
    removed = program.prune_local(str(tmp_path), "app", 7, now)
    assert sorted(removed) == [
        "app-20200101T000000Z.dump",
        "app-20200101T000000Z.dump.json",
        "x.dump.partial",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "app-20200102T000000Z.dump",
        "notes.txt",
        "other-20200101T000000Z.dump",
        "y.dump.partial",
    ]


def test_local_copies_say_whether_they_were_uploaded(tmp_path):
    cfg = program.parse_config(json.dumps(config(tmp_path)))
    for stamp, manifest in [("20250101T000000Z", True), ("20250102T000000Z", False)]:
        (tmp_path / f"app-{stamp}.dump").write_bytes(b"12345")
        program.write_json(str(tmp_path / f"app-{stamp}.dump.json"), {"uploaded": manifest})
    (tmp_path / "app-20250103T000000Z.dump").write_bytes(b"1")  # no manifest
    (tmp_path / "other-20250101T000000Z.dump").write_bytes(b"1")
    copies = program.local_copies(cfg)
    assert [(c["name"], c["size"], c[program.KEY_UPLOADED]) for c in copies] == [
        ("app-20250101T000000Z.dump", 5, True),
        ("app-20250102T000000Z.dump", 5, False),
        ("app-20250103T000000Z.dump", 1, None),
    ]


# --- checksums ------------------------------------------------------------------------------


def test_sha256_of_a_file_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(program, "CHUNK", 7)
    data = os.urandom(100)
    (tmp_path / "f").write_bytes(data)
    assert program.sha256_file(str(tmp_path / "f")) == hashlib.sha256(data).hexdigest()


def test_s3_checksum_of_a_multipart_upload(tmp_path):
    data = b"abcdefghij"
    (tmp_path / "f").write_bytes(data)
    parts = [hashlib.sha256(data[i : i + 4]).digest() for i in (0, 4, 8)]
    want = base64.b64encode(hashlib.sha256(b"".join(parts)).digest()).decode() + "-3"
    assert program.s3_sha256(str(tmp_path / "f"), part_size=4) == want
    assert program.same_s3_checksum(want.split("-")[0], want)
    assert not program.same_s3_checksum(program.s3_sha256(str(tmp_path / "f")), want)


class Body(io.BytesIO):
    pass


class FakeS3:
    """head_object/get_object of one object, as boto3 returns them."""

    def __init__(self, data: bytes, metadata: dict[str, str], **head: Any) -> None:
        self.data, self.metadata, self.head = data, metadata, head

    def head_object(self, **kwargs: Any) -> dict[str, Any]:
        return {
            "ContentLength": len(self.data),
            "Metadata": self.metadata,
            "LastModified": dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
            **self.head,
        }

    def get_object(self, **kwargs: Any) -> dict[str, Any]:
        return {"ContentLength": len(self.data), "Body": Body(self.data)}


DATA = b"pretend this is a pg_dump archive"
SHA = hashlib.sha256(DATA).hexdigest()


def test_fetch_writes_the_object_when_its_checksum_matches(tmp_path):
    out = tmp_path / "download"
    head, sha, size = program.fetch(
        FakeS3(DATA, {"sha256": SHA}), "b", "k", str(out), program.Reporter([])
    )
    assert (sha, size) == (SHA, len(DATA)) and out.read_bytes() == DATA
    assert head["Metadata"]["sha256"] == SHA


@pytest.mark.parametrize(
    ("client", "message"),
    [
        (FakeS3(DATA, {}), "has no sha256 metadata: not made by opskit-backup; refused"),
        (FakeS3(DATA, {"sha256": "A" * 64}), "has no sha256 metadata"),
        (FakeS3(DATA, {"sha256": "0" * 64}), "CHECKSUM MISMATCH"),
        (FakeS3(DATA, {"sha256": SHA}, ContentLength=1), "S3 said 1; refused"),
    ],
)
def test_fetch_refuses_what_does_not_match_with_exit_3(tmp_path, client, message):
    with pytest.raises(program.Failure, match=message) as info:
        program.fetch(client, "b", "k", str(tmp_path / "d"), program.Reporter([]))
    assert info.value.code == program.EXIT_REFUSED and info.value.step == program.STEP_CHECKSUM


def test_an_s3_error_names_its_code_and_is_exit_1():
    class Denied(Exception):
        def __init__(self, message: str) -> None:
            super().__init__(message)
            self.response = {"Error": {"Code": "AccessDenied"}}

    class Client(FakeS3):
        def head_object(self, **kwargs: Any) -> dict[str, Any]:
            raise Denied("no")

    with pytest.raises(program.Failure) as info:
        program.fetch(Client(DATA, {}), "b", "k", "/nonexistent/x", program.Reporter([]))
    assert str(info.value) == "download s3://b/k: AccessDenied: no"
    assert info.value.code == program.EXIT_FAILED


@pytest.mark.parametrize(
    ("mode", "head", "outcome"),
    [
        ("checksum", {}, "s3-sha256"),
        ("checksum", {"ChecksumSHA256": None}, "download"),  # the server keeps no checksum
        ("download", {}, "download"),
        ("checksum", {"ChecksumSHA256": "AAAA"}, "S3's SHA256 checksum differs"),
        ("checksum", {"ContentLength": 3}, "S3 has 3 bytes"),
        ("checksum", {"Metadata": {"sha256": "0" * 64}}, "sha256 metadata differs"),
    ],
)
def test_verify_upload(tmp_path, mode, head, outcome):
    (tmp_path / "dump").write_bytes(DATA)
    cfg = program.parse_config(json.dumps({**config(tmp_path), "verify_upload": mode}))
    checksum = {"ChecksumSHA256": program.s3_sha256(str(tmp_path / "dump"))}
    client = FakeS3(DATA, {"sha256": SHA}, **{**checksum, **head})
    verify = program.verify_upload
    args = (cfg, client, str(tmp_path / "dump"), "k", len(DATA), SHA, program.Reporter([]))
    if outcome in ("s3-sha256", "download"):
        assert verify(*args) == outcome
    else:
        with pytest.raises(program.Failure, match=outcome) as info:
            verify(*args)
        assert info.value.code == program.EXIT_FAILED
        assert info.value.step == program.STEP_VERIFY_UPLOAD


# --- a whole run against moto ---------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def inbox() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    """A local HTTP server standing in for the heartbeat monitor and Slack: it records calls."""
    calls: list[tuple[str, str, bytes]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            calls.append(("GET", self.path, b""))
            self.send_response(200)
            self.end_headers()

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            calls.append(("POST", self.path, body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", calls
    server.shutdown()


def test_multipart_checksum_matches_what_s3_reports(moto_url, tmp_path):
    """The program's local recomputation of S3's SHA256 checksum agrees with the server's."""
    cfg = program.parse_config(json.dumps(config(tmp_path, endpoint=moto_url)))
    client = program.s3_client(cfg)
    client.create_bucket(Bucket="unit-checksums")
    for size in (1000, program.PART_SIZE * 2 + 123):
        path = tmp_path / f"f{size}"
        path.write_bytes(os.urandom(size))
        client.upload_file(
            str(path),
            "unit-checksums",
            path.name,
            ExtraArgs={"ChecksumAlgorithm": "SHA256"},
            Config=TransferConfig(
                multipart_threshold=program.PART_SIZE, multipart_chunksize=program.PART_SIZE
            ),
        )
        head = client.head_object(Bucket="unit-checksums", Key=path.name, ChecksumMode="ENABLED")
        assert program.same_s3_checksum(head["ChecksumSHA256"], program.s3_sha256(str(path)))
    assert not program.same_s3_checksum("AAAA-3", program.s3_sha256(str(path)))


def stand_in_for_postgresql(monkeypatch: pytest.MonkeyPatch) -> None:
    def dump(cfg: program.Config, path: str, rep: program.Reporter) -> None:
        Path(path).write_bytes(DATA * 1000)

    monkeypatch.setattr(program, "dump", dump)
    monkeypatch.setattr(program, "verify_dump", lambda path, rep: 42)
    monkeypatch.setattr(program, "pg_version", lambda: "15.8")


def test_run_uploads_verifies_records_and_pings(tmp_path, moto_url, inbox, monkeypatch, capsys):
    url, calls = inbox
    stand_in_for_postgresql(monkeypatch)
    cfg = config(tmp_path, endpoint=moto_url)
    cfg.update(heartbeat_url=f"{url}/beat/tok", slack_webhook=f"{url}/slack")
    client = program.s3_client(program.parse_config(json.dumps(cfg)))
    client.create_bucket(Bucket="unit-program")
    code, result, err = run_main(
        capsys, "--config", write_config(tmp_path, cfg), "run", "--json", "--progress"
    )
    assert code == program.EXIT_OK and result[program.KEY_OK] is True, result
    assert result[program.KEY_HEARTBEAT] == "pinged" and calls == [("GET", "/beat/tok", b"")]
    assert result[program.KEY_UPLOAD_CHECK] == "s3-sha256" and result[program.KEY_TOC_ENTRIES] == 42
    key = result[program.KEY_KEY]
    assert key.startswith("pg/db1/app/app-") and key.endswith(program.DUMP_SUFFIX)
    assert set(result[program.KEY_SECONDS]) >= {program.SECONDS_UPLOAD, program.SECONDS_TOTAL}
    head = client.head_object(Bucket="unit-program", Key=key)
    assert head["Metadata"][program.META_SHA256] == result[program.KEY_SHA256]
    assert head["Metadata"][program.META_PG_VERSION] == "15.8"
    assert head["ServerSideEncryption"] == "AES256"
    local = result[program.KEY_LOCAL_PATH]
    manifest = json.loads(Path(local + program.MANIFEST_SUFFIX).read_text())
    assert manifest[program.KEY_UPLOADED] is True and manifest[program.KEY_KEY] == key
    last = json.loads((tmp_path / program.LAST_RUN).read_text())
    assert last[program.KEY_OK] is True and last[program.KEY_FINISHED]
    phases = {p[0] for line in err.splitlines() if (p := program.parse_progress(line))}
    assert {program.STEP_UPLOAD, program.STEP_CHECKSUM} <= phases
    # What it uploaded comes back through the restore's download, checksum checked.
    back = str(tmp_path / "back")
    _, sha, size = program.fetch(client, "unit-program", key, back, program.Reporter([]))
    assert (sha, size) == (result[program.KEY_SHA256], len(DATA) * 1000)


def test_failed_upload_alerts_keeps_the_copy_and_records_it(tmp_path, inbox, monkeypatch, capsys):
    url, calls = inbox
    stand_in_for_postgresql(monkeypatch)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    cfg = config(tmp_path, endpoint=closed)
    cfg.update(heartbeat_url=f"{url}/beat/tok", slack_webhook=f"{url}/slack/{SECRET_KEY}")
    code, result, err = run_main(capsys, "--config", write_config(tmp_path, cfg), "run", "--json")
    assert code == program.EXIT_FAILED and result[program.KEY_OK] is False
    assert result[program.KEY_FAILED_STEP] == program.STEP_UPLOAD
    assert result[program.KEY_HEARTBEAT] == "not pinged" and result[program.KEY_ALERT] == "sent"
    assert result[program.KEY_LOCAL_COPY_KEPT] is True
    assert Path(result[program.KEY_LOCAL_PATH]).read_bytes() == DATA * 1000
    [(method, path, body)] = calls  # the alert, and no heartbeat
    assert method == "POST" and path == f"/slack/{SECRET_KEY}"
    text = json.loads(body)["text"]
    assert "FAILED at upload" in text and result[program.KEY_LOCAL_PATH] in text
    assert SECRET_KEY not in json.dumps(result) + err + text
    manifest = json.loads(Path(result[program.KEY_LOCAL_PATH] + ".json").read_text())
    assert manifest[program.KEY_UPLOADED] is False
    last = json.loads((tmp_path / program.LAST_RUN).read_text())
    assert last[program.KEY_OK] is False and last[program.KEY_FAILED_STEP] == "upload"


# --- standing alone -------------------------------------------------------------------------


def test_runs_without_opskit_and_imports_without_boto3(tmp_path):
    """On a host there is no opskit; and the module imports (for --help, info, swap) without
    boto3, which only the S3 commands need."""
    source = Path(program.__file__)
    env = {"PATH": os.environ["PATH"]}
    helped = subprocess.run(
        [sys.executable, "-I", str(source), "--help"], capture_output=True, text=True, env=env
    )
    assert helped.returncode == 0 and "usage: opskit-backup" in helped.stdout
    code = (
        "import sys; sys.modules['boto3'] = sys.modules['botocore'] = None\n"
        f"sys.path.insert(0, {str(source.parent)!r})\n"
        "import backup\n"
        "assert 'opskit' not in ''.join(sys.modules)\n"
        "print(backup.parse_progress(backup.progress_line('dump', 1, 2)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert out.returncode == 0 and out.stdout == "('dump', 1, 2)\n", out.stderr


def test_the_slack_alert_text_is_escaped(tmp_path, monkeypatch):
    """An error quoting a server (`<!here> & <b>`) can neither ping nor link in Slack."""
    cfg = program.parse_config(json.dumps({**config(tmp_path), "slack_webhook": "http://x/h"}))
    sent: list[bytes] = []
    monkeypatch.setattr(program, "http", lambda url, data, timeout: sent.append(data) or 200)
    assert program.alert(cfg, "pg_dump: <!here> & <b>", program.Reporter([])) == "sent"
    [payload] = [json.loads(s) for s in sent]
    assert payload == {"text": "pg_dump: &lt;!here&gt; &amp; &lt;b&gt;"}


@pytest.mark.parametrize("chunk_mib", [5, 12])
def test_a_multipart_upload_whose_part_size_is_not_8_mib_verifies(moto_url, tmp_path, chunk_mib):
    """boto3 raises the part size for big files (10,000 parts at most): the check derives the
    parts from the object (GetObjectAttributes), never from an assumed 8 MiB."""
    cfg = program.parse_config(
        json.dumps({**config(tmp_path, endpoint=moto_url), "verify_upload": "checksum"})
    )
    client = program.s3_client(cfg)
    bucket = f"unit-parts-{chunk_mib}"
    client.create_bucket(Bucket=bucket)
    path = tmp_path / "dump"
    data = os.urandom(26 * 1024 * 1024 + 7)
    path.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    chunk = chunk_mib * 1024 * 1024
    client.upload_file(
        str(path),
        bucket,
        "k",
        ExtraArgs={"ChecksumAlgorithm": "SHA256", "Metadata": {"sha256": sha}},
        Config=TransferConfig(multipart_threshold=chunk, multipart_chunksize=chunk),
    )
    kind, sizes = program.object_parts(client, bucket, "k", len(data))
    assert sizes[0] == chunk and sum(sizes) == len(data) and len(sizes) == -(-len(data) // chunk)
    assert kind == "COMPOSITE"
    head = client.head_object(Bucket=bucket, Key="k", ChecksumMode="ENABLED")
    assert not program.same_s3_checksum(head["ChecksumSHA256"], program.s3_sha256(str(path)))
    cfg = {**cfg, "s3": {**cfg["s3"], "bucket": bucket}}
    rep = program.Reporter([])
    assert program.verify_upload(cfg, client, str(path), "k", len(data), sha, rep) == "s3-sha256"


def test_parts_from_head_when_get_object_attributes_is_not_allowed(tmp_path):
    data = b"abcdefghij"
    (tmp_path / "f").write_bytes(data)

    class Client(FakeS3):
        def get_object_attributes(self, **kwargs: Any) -> dict[str, Any]:
            raise PermissionError("AccessDenied")

        def head_object(self, **kwargs: Any) -> dict[str, Any]:
            if kwargs.get("PartNumber") == 1:
                return {"ContentLength": 4, "PartsCount": 3}
            return super().head_object(**kwargs)

    kind, sizes = program.object_parts(Client(data, {}), "b", "k", len(data))
    assert (kind, sizes) == ("COMPOSITE", [4, 4, 2])
    assert program.expected_s3_sha256(str(tmp_path / "f"), kind, sizes) == program.s3_sha256(
        str(tmp_path / "f"), part_size=4
    )
