#!/usr/bin/python3
"""opskit-backup: verified PostgreSQL backups to S3, and restores from them.

Runs on the database host as `postgres` (run as root, it re-executes itself as postgres).
Configuration: /etc/opskit-backup.json (mode 0600, written by opskit's `backup` role).

    opskit-backup run [--json] [--progress]
        dump (pg_dump custom format, compressed) -> verify the dump reads back in full
        (pg_restore --list and a full read) -> sha256 -> upload to S3 with the sha256 in the
        object's metadata and S3's own SHA256 checksum -> verify the upload -> keep the local
        copy, remove local copies older than local_retention_days -> ping the heartbeat URL.
        Any failure: Slack alert, the local copy is kept, no heartbeat, exit 1.
    opskit-backup restore --key KEY --target DB [--scratch] [--compare-live]
        download KEY, refuse it (exit 3) unless size and sha256 match its metadata, create DB
        (owned by the database owner) and pg_restore into it; --scratch drops DB afterwards.
    opskit-backup swap --new DB --keep-as NAME
        the live database becomes NAME and DB becomes the live database (one transaction).
    opskit-backup counts --database DB      exact row counts of every table (JSON)
    opskit-backup info                      label, S3 location, last run, local copies (JSON)

Exit codes: 0 ok, 1 failed (alerted), 2 bad configuration or arguments, 3 backup refused
(checksum/size mismatch or not made by opskit-backup), 4 target database exists, 75 another
run holds the lock. With --json the result is one JSON object on stdout; log lines go to
stderr; with --progress, lines "@@progress {json}" on stderr tell a caller how far it got.

This file is opskit/hostside/backup.py, installed verbatim by the `backup` role: standard library
only (boto3, Debian's python3-boto3, is imported where S3 is used), Python 3.11 and later. The
laptop side of opskit imports its constants (paths, exit codes, the keys of what it prints and
records) and its parsers of the progress and result lines.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import re
import resource
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypedDict, cast, get_type_hints, is_typeddict

# --- names the laptop shares ---------------------------------------------------------------

PROGRAM = "opskit-backup"
DESCRIPTION = "opskit-backup: verified PostgreSQL backups to S3, and restores from them."
SCRIPT = f"/usr/local/bin/{PROGRAM}"  # where the role installs this file
CONFIG = f"/etc/{PROGRAM}.json"  # its configuration (0600 postgres)
LOG = f"/var/log/postgresql/{PROGRAM}.log"  # where cron's runs write (Debian rotates it)
LAST_RUN = "last-run.json"  # in local_dir: the result of the last `run`
LOCK = ".lock"  # in local_dir: one backup or restore at a time
DUMP_SUFFIX = ".dump"  # local copies <database>-<STAMP>.dump ...
MANIFEST_SUFFIX = ".json"  # ... and their manifests <database>-<STAMP>.dump.json

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_REFUSED, EXIT_EXISTS, EXIT_LOCKED = 0, 1, 2, 3, 4, 75

PROGRESS_MARK = "@@progress "  # stderr: PROGRESS_MARK + {"phase", "done", "total"}

# Steps: a failure's KEY_FAILED_STEP, and the phases of progress events.
STEP_CONFIG = "config"
STEP_ARGUMENTS = "arguments"
STEP_LOCK = "lock"
STEP_DUMP = "dump"
STEP_VERIFY_DUMP = "verify dump"
STEP_CHECKSUM = "checksum"
STEP_UPLOAD = "upload"
STEP_VERIFY_UPLOAD = "verify upload"
STEP_DOWNLOAD = "download"
STEP_RESTORE = "restore"
STEP_UNEXPECTED = "unexpected"
COUNTED_PHASES = (STEP_RESTORE,)  # progress in archive items, not bytes

# Keys of the JSON results (--json), of last-run.json and of the local manifests.
KEY_OK = "ok"
KEY_ERROR = "error"
KEY_FAILED_STEP = "failed_step"
KEY_EXIT = "exit"
KEY_HOST = "host"
KEY_DATABASE = "database"
KEY_KEY = "key"
KEY_BUCKET = "bucket"
KEY_SIZE = "size"
KEY_SHA256 = "sha256"
KEY_STARTED = "started"
KEY_FINISHED = "finished"
KEY_CREATED = "created"
KEY_UPLOADED = "uploaded"
KEY_SECONDS = "seconds"
KEY_PEAK_MEMORY = "peak_memory"
KEY_LOCAL_PATH = "local_path"
KEY_LOCAL_COPY_KEPT = "local_copy_kept"
KEY_REMOVED_LOCAL = "removed_local"
KEY_TOC_ENTRIES = "toc_entries"
KEY_UPLOAD_CHECK = "upload_check"
KEY_HEARTBEAT = "heartbeat"
KEY_ALERT = "alert"
KEY_TARGET = "target"
KEY_SCRATCH = "scratch"
KEY_CHECKSUM = "checksum"
KEY_LAST_MODIFIED = "last_modified"
KEY_SOURCE_DATABASE = "source_database"
KEY_COUNTS = "counts"
KEY_LIVE_COUNTS = "live_counts"
KEY_DROPPED = "dropped"
KEY_LIVE = "live"
KEY_PREVIOUS_KEPT_AS = "previous_kept_as"
KEY_LABEL = "label"
KEY_PREFIX = "prefix"
KEY_LAST_RUN = "last_run"
KEY_LOCAL = "local"
KEY_LIVE_EXISTS = "live_exists"
KEY_NAME = "name"
KEY_MTIME = "mtime"
# Keys of KEY_SECONDS (step timings) and of KEY_PEAK_MEMORY.
SECONDS_DUMP = "dump"
SECONDS_VERIFY_DUMP = "verify_dump"
SECONDS_CHECKSUM = "checksum"
SECONDS_UPLOAD = "upload"
SECONDS_VERIFY_UPLOAD = "verify_upload"
SECONDS_DOWNLOAD = "download"
SECONDS_RESTORE = "restore"
SECONDS_COUNT = "count"
SECONDS_TOTAL = "total"
MEMORY_SELF = "self_kib"
MEMORY_CHILDREN = "children_kib"
# The S3 object's metadata (x-amz-meta-*): restore refuses an object without a valid sha256.
META_SHA256 = "sha256"
META_DATABASE = "database"
META_HOST = "host"
META_CREATED = "created"
META_FORMAT = "format"
META_PG_VERSION = "pg-version"

# --- internals -----------------------------------------------------------------------------

PART_SIZE = 8 * 1024 * 1024  # multipart chunk size; S3's composite checksum depends on it
CHUNK = 1024 * 1024
LOCK_WAIT = 600.0
STAMP_RE = r"\d{8}T\d{6}Z"
NAME_RE = r"[A-Za-z_][A-Za-z0-9_]{0,62}"  # a plain PostgreSQL name
SHA256_RE = r"[0-9a-f]{64}"


class Failure(Exception):
    """A step failed; `code` is the exit code, `step` names the step."""

    def __init__(self, message: str, code: int = EXIT_FAILED, step: str = "") -> None:
        super().__init__(message)
        self.code, self.step = code, step


# --- configuration -------------------------------------------------------------------------


class S3Config(TypedDict):
    bucket: str
    prefix: str
    endpoint: str  # "" = AWS
    region: str
    access_key_id: str  # both empty: boto3's own credential chain
    secret_access_key: str
    encryption: str
    kms_key_id: str
    storage_class: str
    connect_timeout: float
    read_timeout: float
    max_attempts: int


class Config(TypedDict):
    """The JSON configuration (CONFIG); the `backup` role writes it from its variables."""

    database: str
    owner: str
    label: str  # "" = the host's short hostname
    local_dir: str
    local_retention_days: int
    compression_level: int
    restore_jobs: int
    verify_upload: str  # "checksum" or "download"
    heartbeat_url: str
    slack_webhook: str
    http_timeout: float
    s3: S3Config


_Kind = type | tuple[type, ...]


def _kinds(shape: type) -> dict[str, _Kind]:
    """The JSON type each key of a TypedDict needs (a number for a float, an object for a dict).

    >>> _kinds(S3Config)["max_attempts"], _kinds(S3Config)["read_timeout"], _kinds(Config)["s3"]
    (<class 'int'>, (<class 'int'>, <class 'float'>), <class 'dict'>)
    """
    kinds: dict[str, _Kind] = {}
    for key, hint in get_type_hints(shape).items():
        kinds[key] = (int, float) if hint is float else dict if is_typeddict(hint) else hint
    return kinds


REQUIRED = _kinds(Config)
REQUIRED_S3 = _kinds(S3Config)
VERIFY_MODES = ("checksum", "download")


def parse_config(text: str, where: str = CONFIG) -> Config:
    """The configuration; Failure(code 2) naming the key when it is wrong.

    >>> try:
    ...     parse_config('{"database": "app"}', "c.json")
    ... except Failure as exc:
    ...     print(exc.code, exc)
    2 c.json: owner: missing
    """
    try:
        cfg = json.loads(text)
    except ValueError as exc:
        raise Failure(f"{where}: not valid JSON: {exc}", EXIT_CONFIG, STEP_CONFIG) from None
    if not isinstance(cfg, dict):
        raise Failure(f"{where}: expected a JSON object", EXIT_CONFIG, STEP_CONFIG)
    tables: list[tuple[dict[str, _Kind], str, object]] = [
        (REQUIRED, "", cfg),
        (REQUIRED_S3, "s3.", cfg.get("s3")),
    ]
    for table, prefix, data in tables:
        if not isinstance(data, dict):
            raise Failure(f"{where}: {prefix.rstrip('.')}: missing", EXIT_CONFIG, STEP_CONFIG)
        for key, kind in table.items():
            if key not in data:
                raise Failure(f"{where}: {prefix}{key}: missing", EXIT_CONFIG, STEP_CONFIG)
            if isinstance(data[key], bool) or not isinstance(data[key], kind):
                raise Failure(f"{where}: {prefix}{key}: wrong type", EXIT_CONFIG, STEP_CONFIG)
    if not re.fullmatch(NAME_RE, cfg["database"]):
        raise Failure(f"{where}: database: not a plain database name", EXIT_CONFIG, STEP_CONFIG)
    if cfg["verify_upload"] not in VERIFY_MODES:
        raise Failure(f"{where}: verify_upload: checksum or download", EXIT_CONFIG, STEP_CONFIG)
    if not cfg["s3"]["bucket"]:
        raise Failure(f"{where}: s3.bucket: empty", EXIT_CONFIG, STEP_CONFIG)
    return cast(Config, cfg)


def load_config(path: str = CONFIG) -> Config:
    try:
        with open(path, encoding="utf-8") as f:
            return parse_config(f.read(), path)
    except OSError as exc:
        raise Failure(f"{path}: cannot read: {exc.strerror}", EXIT_CONFIG, STEP_CONFIG) from None


def secrets_of(cfg: Config) -> list[str]:
    """Values that must never appear in output (credentials and URLs with tokens)."""
    values = [cfg["s3"]["secret_access_key"], cfg["s3"]["access_key_id"], cfg["slack_webhook"]]
    values.append(cfg["heartbeat_url"])
    return [v for v in values if v]


def redact(text: str, secrets: Sequence[str]) -> str:
    """Remove every secret value from `text`.

    >>> redact("url http://h/T1/B2/tok failed", ["http://h/T1/B2/tok"])
    'url *** failed'
    """
    for value in sorted(set(secrets), key=len, reverse=True):
        text = text.replace(value, "***")
    return text


def label_of(cfg: Config) -> str:
    """Where this host's backups live under the prefix: the configured label or the hostname."""
    return cfg["label"] or socket.gethostname().split(".")[0]


def stamp(now: datetime.datetime) -> str:
    """UTC timestamp used in names and keys.

    >>> stamp(datetime.datetime(2025, 1, 2, 3, 4, 5, tzinfo=datetime.UTC))
    '20250102T030405Z'
    """
    return now.astimezone(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")


def parse_stamp(text: str) -> datetime.datetime:
    return datetime.datetime.strptime(text, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)


def key_prefix(prefix: str, label: str, database: str) -> str:
    """Where a host's backups of a database live in the bucket.

    >>> key_prefix("/pg/", "db1", "app"), key_prefix("", "db1", "app")
    ('pg/db1/app/', 'db1/app/')
    """
    return "/".join(p for p in (prefix.strip("/"), label, database) if p) + "/"


def local_name(database: str, when: datetime.datetime) -> str:
    """<database>-<STAMP>.dump: the local copy's name, also the last part of its S3 key."""
    return f"{database}-{stamp(when)}{DUMP_SUFFIX}"


def object_key(cfg: Config, when: datetime.datetime) -> str:
    """prefix/label/database/database-STAMP.dump"""
    prefix = key_prefix(cfg["s3"]["prefix"], label_of(cfg), cfg["database"])
    return prefix + local_name(cfg["database"], when)


# --- output --------------------------------------------------------------------------------


def progress_line(phase: str, done: int, total: int) -> str:
    """The stderr line of a progress event.

    >>> progress_line("upload", 5, 10)
    '@@progress {"phase": "upload", "done": 5, "total": 10}'
    """
    return PROGRESS_MARK + json.dumps({"phase": phase, "done": done, "total": total})


def parse_progress(line: str) -> tuple[str, int, int] | None:
    """(phase, done, total) of a progress line; None for any other line.

    >>> parse_progress(progress_line("dump", 2048, 0)), parse_progress("log line")
    (('dump', 2048, 0), None)
    """
    if not line.startswith(PROGRESS_MARK):
        return None
    try:
        event = json.loads(line[len(PROGRESS_MARK) :])
        return str(event["phase"]), int(event["done"]), int(event["total"])
    except (ValueError, KeyError, TypeError):
        return None


def parse_result(stdout: str) -> dict[str, Any]:
    """The JSON result (--json) in a command's stdout: its last line that is a JSON object;
    {} when there is none.

    >>> parse_result('noise\\n{"ok": true}\\n')
    {'ok': True}
    """
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                found = json.loads(line)
            except ValueError:
                continue
            if isinstance(found, dict):
                return found
    return {}


class Reporter:
    """Log lines (stderr, timestamped, secrets removed) and throttled progress events."""

    def __init__(self, secrets: Sequence[str], progress: bool = False) -> None:
        self.secrets, self.progress_on = secrets, progress
        self.last: dict[str, float] = {}
        self.lock = threading.Lock()

    def log(self, message: str) -> None:
        line = f"{datetime.datetime.now(datetime.UTC):%Y-%m-%dT%H:%M:%SZ} {message}"
        with self.lock:
            print(redact(line, self.secrets), file=sys.stderr, flush=True)

    def progress(self, phase: str, done: int, total: int = 0, force: bool = False) -> None:
        if not self.progress_on:
            return
        now = time.monotonic()
        with self.lock:
            if not force and now - self.last.get(phase, 0.0) < 0.5:
                return
            self.last[phase] = now
            print(progress_line(phase, done, total), file=sys.stderr, flush=True)


def peak_memory() -> dict[str, int]:
    """Peak resident memory in KiB of this process and of its largest child (pg_dump, ...)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {MEMORY_SELF: own, MEMORY_CHILDREN: children}


# --- PostgreSQL ----------------------------------------------------------------------------


def ident(name: str) -> str:
    """
    >>> ident('a"b')
    '"a""b"'
    """
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    """
    >>> literal("it's")
    "'it''s'"
    """
    return "'" + text.replace("'", "''") + "'"


def psql(database: str, sql: str, step: str = "psql") -> str:
    """Run `sql` in `database`; return its unaligned, tuples-only output."""
    proc = subprocess.run(
        ["psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", database],
        input=sql,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise Failure(f"{step}: {proc.stderr.strip()[-800:]}", EXIT_FAILED, step)
    return proc.stdout


def database_exists(name: str) -> bool:
    return psql("postgres", f"SELECT 1 FROM pg_database WHERE datname = {literal(name)}") != ""


def parse_counts(out: str) -> dict[str, int]:
    """psql's `name|count` lines as {name: count}.

    >>> parse_counts("public.a|3\\npublic.b|0\\n")
    {'public.a': 3, 'public.b': 0}
    """
    counts = {}
    for line in out.splitlines():
        name, _, count = line.rpartition("|")
        counts[name] = int(count)
    return counts


def row_counts(database: str) -> dict[str, int]:
    """{schema.table: exact row count} for every ordinary table outside the system schemas."""
    tables = psql(
        database,
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') "
        "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
        "AND n.nspname NOT LIKE 'pg_toast%' AND NOT c.relispartition ORDER BY 1",
        "count rows",
    ).split()
    if not tables:
        return {}
    sql = " UNION ALL ".join(f"SELECT {literal(t)}, count(*) FROM {t}" for t in tables)
    return parse_counts(psql(database, sql + ";", "count rows"))


def watch_size(path: str, rep: Reporter, phase: str, stop: threading.Event) -> None:
    while not stop.wait(0.5):
        with contextlib.suppress(OSError):
            rep.progress(phase, os.path.getsize(path))


def dump(cfg: Config, path: str, rep: Reporter) -> None:
    """pg_dump the database to `path` (custom format, compressed)."""
    stop = threading.Event()
    watcher = threading.Thread(target=watch_size, args=(path, rep, STEP_DUMP, stop), daemon=True)
    watcher.start()
    try:
        proc = subprocess.run(
            [
                "pg_dump",
                "--format=custom",
                f"--compress={cfg['compression_level']}",
                "--no-password",
                f"--file={path}",
                cfg["database"],
            ],
            capture_output=True,
            text=True,
        )
    finally:
        stop.set()
        watcher.join()
    if proc.returncode != 0:
        raise Failure(f"pg_dump failed: {proc.stderr.strip()[-800:]}", EXIT_FAILED, STEP_DUMP)
    rep.progress(STEP_DUMP, os.path.getsize(path), os.path.getsize(path), force=True)


def toc_entries(path: str, step: str) -> int:
    """Number of entries in the archive's table of contents (pg_restore --list)."""
    proc = subprocess.run(["pg_restore", "--list", path], capture_output=True, text=True)
    if proc.returncode != 0:
        raise Failure(
            f"the dump does not read back: pg_restore --list: {proc.stderr.strip()[-500:]}",
            EXIT_FAILED if step == STEP_VERIFY_DUMP else EXIT_REFUSED,
            step,
        )
    return count_toc(proc.stdout)


def count_toc(listing: str) -> int:
    """Entries of a `pg_restore --list` listing (its comment lines start with ';').

    >>> count_toc(";\\n; Archive created at\\n215; 1259 16386 TABLE public items app\\n\\n")
    1
    """
    return sum(1 for line in listing.splitlines() if line and not line.startswith(";"))


def verify_dump(path: str, rep: Reporter) -> int:
    """The dump reads back in full: its table of contents and every data block."""
    entries = toc_entries(path, STEP_VERIFY_DUMP)
    if entries == 0:
        raise Failure("the dump has an empty table of contents", EXIT_FAILED, STEP_VERIFY_DUMP)
    size = os.path.getsize(path)
    rep.progress(STEP_VERIFY_DUMP, 0, 0, force=True)
    proc = subprocess.run(["pg_restore", "--file=/dev/null", path], capture_output=True, text=True)
    if proc.returncode != 0:
        raise Failure(
            f"the dump does not read back in full: {proc.stderr.strip()[-500:]}",
            EXIT_FAILED,
            STEP_VERIFY_DUMP,
        )
    rep.progress(STEP_VERIFY_DUMP, size, size, force=True)
    return entries


RESTORE_ITEM = re.compile(r"pg_restore: (creating|processing|finished item|executing)")


def pg_restore_into(cfg: Config, path: str, target: str, entries: int, rep: Reporter) -> None:
    """Restore the archive at `path` into the existing database `target`."""
    jobs = max(1, cfg["restore_jobs"])
    proc = subprocess.Popen(
        ["pg_restore", "--verbose", "--exit-on-error", f"--jobs={jobs}", "-d", target, path],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    done = 0
    tail: list[str] = []
    for line in proc.stderr:
        if RESTORE_ITEM.match(line):
            done += 1
            rep.progress(STEP_RESTORE, min(done, entries), entries)
        tail = [*tail[-20:], line.rstrip()]
    code = proc.wait()
    if code != 0:
        raise Failure("pg_restore failed: " + " | ".join(tail[-8:]), EXIT_FAILED, STEP_RESTORE)
    rep.progress(STEP_RESTORE, entries, entries, force=True)


# --- files and checksums -------------------------------------------------------------------


def sha256_file(path: str, rep: Reporter | None = None, phase: str = STEP_CHECKSUM) -> str:
    """The sha256 (hex) of the file at `path`."""
    digest, size, done = hashlib.sha256(), os.path.getsize(path), 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if rep:
                rep.progress(phase, done, size)
    return digest.hexdigest()


def s3_sha256(path: str, part_size: int = PART_SIZE) -> str:
    """S3's SHA256 checksum of the object an upload of `path` makes (base64; multipart:
    the SHA256 of the concatenated part digests, suffixed -<parts>).

    >>> import tempfile
    >>> f = tempfile.NamedTemporaryFile(delete=False); _ = f.write(b"abc"); f.close()
    >>> s3_sha256(f.name)
    'ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0='
    >>> s3_sha256(f.name, part_size=1) == s3_sha256(f.name, part_size=1).split("-")[0] + "-3"
    True
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if size < part_size:
            return base64.b64encode(hashlib.sha256(f.read()).digest()).decode()
        parts = []
        while chunk := f.read(part_size):
            parts.append(hashlib.sha256(chunk).digest())
    combined = base64.b64encode(hashlib.sha256(b"".join(parts)).digest()).decode()
    return f"{combined}-{len(parts)}"


def s3_sha256_parts(path: str, sizes: Sequence[int]) -> str:
    """S3's composite SHA256 of an object uploaded in parts of `sizes` bytes (in order): the
    SHA256 of the concatenated part digests, suffixed -<parts>
    (https://docs.aws.amazon.com/AmazonS3/latest/userguide/checking-object-integrity.html).

    >>> import tempfile
    >>> f = tempfile.NamedTemporaryFile(delete=False); _ = f.write(b"abcdefghij"); f.close()
    >>> s3_sha256_parts(f.name, [4, 4, 2]) == s3_sha256(f.name, part_size=4)
    True
    """
    digests = []
    with open(path, "rb") as f:
        for size in sizes:
            digest, left = hashlib.sha256(), size
            while left > 0 and (chunk := f.read(min(CHUNK, left))):
                digest.update(chunk)
                left -= len(chunk)
            digests.append(digest.digest())
    combined = base64.b64encode(hashlib.sha256(b"".join(digests)).digest()).decode()
    return f"{combined}-{len(digests)}"


def object_parts(client: Any, bucket: str, key: str, size: int) -> tuple[str, list[int]]:
    """(checksum type, part sizes) of the object as S3 keeps it: GetObjectAttributes'
    ObjectParts (paged by PartNumberMarker) and Checksum.ChecksumType; where that call is not
    allowed, HEAD with PartNumber=1 (PartsCount and the first part's size; boto3 cuts equal
    parts, the last one shorter). One part and no part list: ("FULL_OBJECT", [size])
    (https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObjectAttributes.html,
    https://docs.aws.amazon.com/AmazonS3/latest/API/API_HeadObject.html)."""
    kind, sizes, marker = "", [], 0
    try:
        for _ in range(100):  # 10,000 parts at most, 1,000 a page
            args: dict[str, Any] = {"MaxParts": 1000, "PartNumberMarker": marker} if marker else {}
            attrs = client.get_object_attributes(
                Bucket=bucket,
                Key=key,
                ObjectAttributes=["Checksum", "ObjectParts", "ObjectSize"],
                **args,
            )
            kind = str((attrs.get("Checksum") or {}).get("ChecksumType") or kind)
            parts = attrs.get("ObjectParts") or {}
            found = sorted(parts.get("Parts") or [], key=lambda p: int(p.get("PartNumber", 0)))
            sizes += [int(p["Size"]) for p in found]
            if not parts.get("IsTruncated"):
                break
            marker = int(parts.get("NextPartNumberMarker") or 0)
    except Exception:
        sizes = []
    if sum(sizes) == size and sizes:
        return kind or ("COMPOSITE" if len(sizes) > 1 else "FULL_OBJECT"), sizes
    head = client.head_object(Bucket=bucket, Key=key, PartNumber=1)
    count = int(head.get("PartsCount") or 0)
    first = int(head.get("ContentLength") or size)
    if count <= 1:
        return kind or "FULL_OBJECT", [size]
    return kind or "COMPOSITE", [first] * (count - 1) + [size - first * (count - 1)]


def expected_s3_sha256(path: str, kind: str, sizes: Sequence[int]) -> str:
    """What S3's SHA256 checksum of the object must be, for its checksum type and parts."""
    if kind == "FULL_OBJECT" or len(sizes) <= 1:
        with open(path, "rb") as f:
            digest = hashlib.sha256()
            while chunk := f.read(CHUNK):
                digest.update(chunk)
        return base64.b64encode(digest.digest()).decode()
    return s3_sha256_parts(path, sizes)


def same_s3_checksum(reported: str, expected: str) -> bool:
    """Compare S3 checksums, ignoring the -<parts> suffix some servers leave out.

    >>> same_s3_checksum("abc=", "abc=-3"), same_s3_checksum("abd=-3", "abc=-3")
    (True, False)
    """
    return reported.split("-")[0] == expected.split("-")[0]


def write_json(path: str, data: Mapping[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def prune_local(directory: str, database: str, days: int, now: datetime.datetime) -> list[str]:
    """Remove local backups (and their .json) older than `days`; return the names removed.

    Only files this script makes are touched: <database>-<STAMP>.dump[.json] and leftovers
    (.partial, restore downloads) older than a day.
    """
    removed = []
    dump, manifest = re.escape(DUMP_SUFFIX), re.escape(MANIFEST_SUFFIX)
    pattern = re.compile(rf"^{re.escape(database)}-{STAMP_RE}{dump}({manifest})?$")
    leftover = re.compile(r"^(.*\.partial|restore-.*\.download)$")
    limit = now.timestamp() - days * 86400
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        try:
            mtime = os.path.getmtime(path)
        except OSError:
            continue
        if (pattern.match(name) and mtime < limit) or (
            leftover.match(name) and mtime < now.timestamp() - 86400
        ):
            os.unlink(path)
            removed.append(name)
    return removed


def local_copies(cfg: Config) -> list[dict[str, Any]]:
    """The local copies of the database: name, size, mtime, uploaded (None: no manifest)."""
    pattern = re.compile(rf"^{re.escape(cfg['database'])}-({STAMP_RE}){re.escape(DUMP_SUFFIX)}$")
    found: list[dict[str, Any]] = []
    try:
        names = sorted(os.listdir(cfg["local_dir"]))
    except OSError:
        return found
    for name in names:
        if not pattern.match(name):
            continue
        path = os.path.join(cfg["local_dir"], name)
        item: dict[str, Any] = {
            KEY_NAME: name,
            KEY_SIZE: os.path.getsize(path),
            KEY_MTIME: os.path.getmtime(path),
        }
        try:
            with open(path + MANIFEST_SUFFIX, encoding="utf-8") as f:
                item[KEY_UPLOADED] = bool(json.load(f).get(KEY_UPLOADED))
        except (OSError, ValueError):
            item[KEY_UPLOADED] = None
        found.append(item)
    return found


# --- S3 ------------------------------------------------------------------------------------


def s3_client(cfg: Config) -> Any:
    import boto3  # Debian's python3-boto3; only the commands that talk to S3 need it
    from botocore.config import Config as BotoConfig

    s3 = cfg["s3"]
    options: dict[str, Any] = {
        "connect_timeout": s3["connect_timeout"],
        "read_timeout": s3["read_timeout"],
        "retries": {"max_attempts": s3["max_attempts"], "mode": "standard"},
    }
    if s3["endpoint"]:
        options["s3"] = {"addressing_style": "path"}
    kwargs: dict[str, Any] = {"region_name": s3["region"], "config": BotoConfig(**options)}
    if s3["endpoint"]:
        kwargs["endpoint_url"] = s3["endpoint"]
    if s3["access_key_id"]:
        kwargs["aws_access_key_id"] = s3["access_key_id"]
        kwargs["aws_secret_access_key"] = s3["secret_access_key"]
    return boto3.client("s3", **kwargs)


def s3_failure(exc: Exception, step: str, where: str) -> Failure:
    """A Failure that says what went wrong with S3, without credentials.

    >>> s3_failure(ValueError("boom"), "upload", "s3://b/k")
    Failure('upload s3://b/k: ValueError: boom')
    """
    response = getattr(exc, "response", None)
    code = response.get("Error", {}).get("Code", "") if isinstance(response, dict) else ""
    reason = f"{code}: {exc}" if code else f"{type(exc).__name__}: {exc}"
    return Failure(f"{step} {where}: {reason}", EXIT_FAILED, step)


def transfer_config() -> Any:
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE, max_concurrency=4
    )


class Progress:
    """A boto3 transfer callback that reports bytes done."""

    def __init__(self, rep: Reporter, phase: str, total: int) -> None:
        self.rep, self.phase, self.total, self.done = rep, phase, total, 0
        self.lock = threading.Lock()

    def __call__(self, amount: int) -> None:
        with self.lock:
            self.done += amount
            self.rep.progress(self.phase, self.done, self.total)


def upload_args(s3: S3Config, metadata: Mapping[str, str]) -> dict[str, Any]:
    """boto3's ExtraArgs of an upload: metadata, S3's SHA256 checksum, encryption, class.

    >>> s3 = {"encryption": "aws:kms", "kms_key_id": "k1", "storage_class": ""}
    >>> sorted(upload_args(s3, {}).items())  # doctest: +NORMALIZE_WHITESPACE
    [('ChecksumAlgorithm', 'SHA256'), ('Metadata', {}), ('SSEKMSKeyId', 'k1'),
     ('ServerSideEncryption', 'aws:kms')]
    """
    extra: dict[str, Any] = {"Metadata": dict(metadata), "ChecksumAlgorithm": "SHA256"}
    if s3["encryption"]:
        extra["ServerSideEncryption"] = s3["encryption"]
        if s3["encryption"] == "aws:kms" and s3["kms_key_id"]:
            extra["SSEKMSKeyId"] = s3["kms_key_id"]
    if s3["storage_class"]:
        extra["StorageClass"] = s3["storage_class"]
    return extra


def upload(
    cfg: Config, client: Any, path: str, key: str, metadata: Mapping[str, str], rep: Reporter
) -> None:
    s3 = cfg["s3"]
    size = os.path.getsize(path)
    where = f"s3://{s3['bucket']}/{key}"
    try:
        client.upload_file(
            path,
            s3["bucket"],
            key,
            ExtraArgs=upload_args(s3, metadata),
            Callback=Progress(rep, STEP_UPLOAD, size),
            Config=transfer_config(),
        )
    except Exception as exc:
        raise s3_failure(exc, STEP_UPLOAD, where) from None
    rep.progress(STEP_UPLOAD, size, size, force=True)


def download_sha256(
    client: Any, bucket: str, key: str, rep: Reporter, phase: str, out_path: str | None = None
) -> tuple[str, int]:
    """Stream the object, return (sha256 hex, size); write it to `out_path` if given."""
    try:
        response = client.get_object(Bucket=bucket, Key=key)
    except Exception as exc:
        raise s3_failure(exc, STEP_DOWNLOAD, f"s3://{bucket}/{key}") from None
    total, done, digest = int(response.get("ContentLength", 0)), 0, hashlib.sha256()
    out = open(out_path, "wb") if out_path else None  # noqa: SIM115
    try:
        body = response["Body"]
        while chunk := body.read(CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if out:
                out.write(chunk)
            rep.progress(phase, done, total)
    except Exception as exc:
        raise s3_failure(exc, STEP_DOWNLOAD, f"s3://{bucket}/{key}") from None
    finally:
        if out:
            out.close()
    rep.progress(phase, done, total, force=True)
    return digest.hexdigest(), done


def verify_upload(
    cfg: Config, client: Any, path: str, key: str, size: int, sha: str, rep: Reporter
) -> str:
    """S3 holds exactly the local file: size, our sha256 metadata, and S3's SHA256 checksum
    (recomputed here over the parts S3 reports for the object: boto3 raises the part size to stay
    within 10,000 parts, so it is never assumed); servers without checksums: a full download.
    Returns how it was checked: "s3-sha256" or "download"."""
    bucket = cfg["s3"]["bucket"]
    where = f"s3://{bucket}/{key}"
    try:
        head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    except Exception as exc:
        raise s3_failure(exc, STEP_VERIFY_UPLOAD, where) from None
    if head.get("ContentLength") != size:
        raise Failure(
            f"verify upload {where}: S3 has {head.get('ContentLength')} bytes, the dump {size}",
            EXIT_FAILED,
            STEP_VERIFY_UPLOAD,
        )
    if head.get("Metadata", {}).get(META_SHA256) != sha:
        raise Failure(f"verify upload {where}: sha256 metadata differs", step=STEP_VERIFY_UPLOAD)
    reported = head.get("ChecksumSHA256")
    if cfg["verify_upload"] == "checksum" and reported:
        try:
            kind, sizes = object_parts(client, bucket, key, size)
        except Exception as exc:
            raise s3_failure(exc, STEP_VERIFY_UPLOAD, where) from None
        if not same_s3_checksum(reported, expected_s3_sha256(path, kind, sizes)):
            raise Failure(
                f"verify upload {where}: S3's SHA256 checksum differs from the dump's",
                step=STEP_VERIFY_UPLOAD,
            )
        return "s3-sha256"
    got, got_size = download_sha256(client, bucket, key, rep, STEP_VERIFY_UPLOAD)
    if got != sha or got_size != size:
        raise Failure(
            f"verify upload {where}: the downloaded copy differs", step=STEP_VERIFY_UPLOAD
        )
    return "download"


def fetch(
    client: Any, bucket: str, key: str, out_path: str, rep: Reporter
) -> tuple[dict[str, Any], str, int]:
    """Download `key` to `out_path`: (its HEAD, sha256, size); Failure(3) unless size and
    sha256 match its metadata."""
    where = f"s3://{bucket}/{key}"
    try:
        head: dict[str, Any] = client.head_object(Bucket=bucket, Key=key)
    except Exception as exc:
        raise s3_failure(exc, STEP_DOWNLOAD, where) from None
    want = str(head.get("Metadata", {}).get(META_SHA256, ""))
    if not re.fullmatch(SHA256_RE, want):
        raise Failure(
            f"{where} has no sha256 metadata: not made by opskit-backup; refused",
            EXIT_REFUSED,
            STEP_CHECKSUM,
        )
    got, size = download_sha256(client, bucket, key, rep, STEP_DOWNLOAD, out_path)
    if size != head.get("ContentLength"):
        raise Failure(
            f"{where}: downloaded {size} bytes, S3 said {head.get('ContentLength')}; refused",
            EXIT_REFUSED,
            STEP_CHECKSUM,
        )
    if got != want:
        raise Failure(
            f"{where}: CHECKSUM MISMATCH (sha256 {got}, its metadata says {want}); "
            "the backup is corrupt and was refused",
            EXIT_REFUSED,
            STEP_CHECKSUM,
        )
    return head, got, size


# --- heartbeat and Slack -------------------------------------------------------------------


def http(url: str, data: bytes | None, timeout: float) -> int:
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    if data:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        raise OSError(f"HTTP {exc.code}") from None
    except urllib.error.URLError as exc:
        raise OSError(str(exc.reason)) from None


def ping_heartbeat(cfg: Config, rep: Reporter) -> str:
    if not cfg["heartbeat_url"]:
        return "not configured"
    try:
        http(cfg["heartbeat_url"], None, cfg["http_timeout"])
    except OSError as exc:
        rep.log(f"heartbeat: ping failed: {exc}")
        return f"failed: {exc}"
    return "pinged"


def slack_escape(text: str) -> str:
    """`&`, `<`, `>` as Slack asks (https://api.slack.com/reference/surfaces/formatting#escaping):
    an error message quoting a server's answer can neither ping nor link.

    >>> slack_escape("pg_dump: <!here> & more")
    'pg_dump: &lt;!here&gt; &amp; more'
    """
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def alert(cfg: Config, text: str, rep: Reporter) -> str:
    if not cfg["slack_webhook"]:
        rep.log("slack: no webhook configured; alert not sent")
        return "not configured"
    payload = json.dumps({"text": slack_escape(redact(text, secrets_of(cfg)))}).encode()
    for attempt in range(3):
        try:
            http(cfg["slack_webhook"], payload, cfg["http_timeout"])
            return "sent"
        except OSError as exc:
            rep.log(f"slack: alert not sent (attempt {attempt + 1}): {exc}")
            time.sleep(1 + attempt)
    return "failed"


# --- commands ------------------------------------------------------------------------------


class Lock:
    """One backup or restore at a time on this host (cron and a manual run)."""

    def __init__(self, directory: str, wait: float = LOCK_WAIT) -> None:
        self.path, self.wait = os.path.join(directory, LOCK), wait

    def __enter__(self) -> Lock:
        self.f = open(self.path, "w")
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self.f.close()
                    raise Failure(
                        "another backup or restore is running", EXIT_LOCKED, STEP_LOCK
                    ) from None
                time.sleep(1)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.f.close()


def pg_version() -> str:
    try:
        return psql("postgres", "SHOW server_version").strip()
    except Failure:
        return "unknown"


Command = Callable[[Config, argparse.Namespace, Reporter], tuple[dict[str, Any], int]]


def cmd_run(cfg: Config, args: argparse.Namespace, rep: Reporter) -> tuple[dict[str, Any], int]:
    """Dump, verify, checksum, upload, verify the upload, prune, heartbeat; alert on failure."""
    started, now = time.monotonic(), datetime.datetime.now(datetime.UTC)
    directory = cfg["local_dir"]
    path = os.path.join(directory, local_name(cfg["database"], now))
    key = object_key(cfg, now)
    timings: dict[str, float] = {}
    result: dict[str, Any] = {
        KEY_OK: False,
        KEY_HOST: label_of(cfg),
        KEY_DATABASE: cfg["database"],
        KEY_STARTED: now.isoformat(),
        KEY_KEY: key,
        KEY_BUCKET: cfg["s3"]["bucket"],
        KEY_LOCAL_PATH: path,
        KEY_SECONDS: timings,
        KEY_HEARTBEAT: "not pinged",
        KEY_ALERT: "",
    }

    def timed(step: str, fn: Callable[..., Any], *a: Any) -> Any:
        t = time.monotonic()
        try:
            return fn(*a)
        finally:
            timings[step] = round(time.monotonic() - t, 3)

    try:
        with Lock(directory):
            rep.log(f"backup of {cfg['database']} to {path}")
            partial = path + ".partial"
            try:
                timed(SECONDS_DUMP, dump, cfg, partial, rep)
                result[KEY_TOC_ENTRIES] = timed(SECONDS_VERIFY_DUMP, verify_dump, partial, rep)
            except Failure:
                if os.path.exists(partial):
                    os.unlink(partial)  # an unreadable dump is no backup
                raise
            os.replace(partial, path)
            size = os.path.getsize(path)
            sha = timed(SECONDS_CHECKSUM, sha256_file, path, rep)
            result.update({KEY_SIZE: size, KEY_SHA256: sha})
            manifest = {
                KEY_DATABASE: cfg["database"],
                KEY_HOST: label_of(cfg),
                KEY_CREATED: now.isoformat(),
                KEY_SIZE: size,
                KEY_SHA256: sha,
                KEY_KEY: key,
                KEY_UPLOADED: False,
            }
            write_json(path + MANIFEST_SUFFIX, manifest)
            rep.log(f"dump ok: {size} bytes, sha256 {sha}, {result[KEY_TOC_ENTRIES]} entries")
            client = s3_client(cfg)
            metadata = {
                META_SHA256: sha,
                META_DATABASE: cfg["database"],
                META_HOST: label_of(cfg),
                META_CREATED: now.isoformat(),
                META_FORMAT: "pg_dump-custom",
                META_PG_VERSION: pg_version(),
            }
            timed(SECONDS_UPLOAD, upload, cfg, client, path, key, metadata, rep)
            result[KEY_UPLOAD_CHECK] = timed(
                SECONDS_VERIFY_UPLOAD, verify_upload, cfg, client, path, key, size, sha, rep
            )
            write_json(path + MANIFEST_SUFFIX, {**manifest, KEY_UPLOADED: True})
            rep.log(
                f"upload ok and verified ({result[KEY_UPLOAD_CHECK]}): "
                f"s3://{cfg['s3']['bucket']}/{key}"
            )
            result[KEY_OK] = True
            result[KEY_REMOVED_LOCAL] = prune_local(
                directory, cfg["database"], cfg["local_retention_days"], now
            )
            result[KEY_HEARTBEAT] = ping_heartbeat(cfg, rep)
    except Failure as exc:
        result[KEY_ERROR] = redact(str(exc), secrets_of(cfg))
        result[KEY_FAILED_STEP] = exc.step
        kept = os.path.exists(path)
        result[KEY_LOCAL_COPY_KEPT] = kept
        where = f" The local copy is kept: {path}." if kept else ""
        rep.log(f"FAILED at {exc.step}: {exc}")
        result[KEY_ALERT] = alert(
            cfg,
            f":rotating_light: PostgreSQL backup of {cfg['database']} on {label_of(cfg)} "
            f"FAILED at {exc.step}: {exc}.{where} No heartbeat was sent.",
            rep,
        )
        result[KEY_EXIT] = exc.code
    except Exception as exc:  # an unexpected error still alerts and keeps the local copy
        result[KEY_ERROR] = redact(f"{type(exc).__name__}: {exc}", secrets_of(cfg))
        result[KEY_FAILED_STEP] = STEP_UNEXPECTED
        result[KEY_LOCAL_COPY_KEPT] = os.path.exists(path)
        rep.log(f"FAILED: {result[KEY_ERROR]}")
        result[KEY_ALERT] = alert(
            cfg,
            f":rotating_light: PostgreSQL backup of {cfg['database']} on {label_of(cfg)} "
            f"FAILED: {result[KEY_ERROR]}",
            rep,
        )
        result[KEY_EXIT] = EXIT_FAILED
    timings[SECONDS_TOTAL] = round(time.monotonic() - started, 3)
    result[KEY_FINISHED] = datetime.datetime.now(datetime.UTC).isoformat()
    result[KEY_PEAK_MEMORY] = peak_memory()
    try:
        write_json(os.path.join(directory, LAST_RUN), result)
    except OSError as exc:
        rep.log(f"cannot write {LAST_RUN}: {exc}")
    return result, (EXIT_OK if result[KEY_OK] else int(result.get(KEY_EXIT, EXIT_FAILED)))


def check_name(name: str, what: str) -> None:
    """Failure(2) unless `name` is a plain database name (no quoting needed, no injection)."""
    if not re.fullmatch(NAME_RE, name):
        raise Failure(f"{what}{name!r}: a plain database name", EXIT_CONFIG, STEP_ARGUMENTS)


def cmd_restore(cfg: Config, args: argparse.Namespace, rep: Reporter) -> tuple[dict[str, Any], int]:
    """Download a backup, check it, restore it into a new database (scratch: then drop it)."""
    started = time.monotonic()
    target: str = args.target
    seconds: dict[str, float] = {}
    result: dict[str, Any] = {
        KEY_OK: False,
        KEY_KEY: args.key,
        KEY_TARGET: target,
        KEY_SECONDS: seconds,
        KEY_SCRATCH: args.scratch,
    }
    check_name(target, "--target ")
    if target == cfg["database"]:
        raise Failure(
            "--target is the live database; restore into a new one and swap",
            EXIT_CONFIG,
            STEP_ARGUMENTS,
        )
    directory = cfg["local_dir"]
    download = os.path.join(directory, f"restore-{os.getpid()}-{int(time.time())}.download")
    created = False
    try:
        with Lock(directory):
            if database_exists(target):
                raise Failure(
                    f"database {target} already exists; choose another --target",
                    EXIT_EXISTS,
                    STEP_ARGUMENTS,
                )
            t = time.monotonic()
            head, sha, size = fetch(s3_client(cfg), cfg["s3"]["bucket"], args.key, download, rep)
            seconds[SECONDS_DOWNLOAD] = round(time.monotonic() - t, 3)
            meta = head.get("Metadata", {})
            result.update(
                {
                    KEY_SHA256: sha,
                    KEY_SIZE: size,
                    KEY_CHECKSUM: "ok",
                    KEY_CREATED: meta.get(META_CREATED, ""),
                    KEY_LAST_MODIFIED: head["LastModified"].isoformat(),
                    KEY_SOURCE_DATABASE: meta.get(META_DATABASE, ""),
                }
            )
            entries = toc_entries(download, STEP_CHECKSUM)
            t = time.monotonic()
            owner = cfg["owner"] or "postgres"
            psql(
                "postgres",
                f"CREATE DATABASE {ident(target)} OWNER {ident(owner)} TEMPLATE template0",
                "create database",
            )
            created = True
            pg_restore_into(cfg, download, target, entries, rep)
            seconds[SECONDS_RESTORE] = round(time.monotonic() - t, 3)
            t = time.monotonic()
            result[KEY_COUNTS] = row_counts(target)
            if args.compare_live and database_exists(cfg["database"]):
                result[KEY_LIVE_COUNTS] = row_counts(cfg["database"])
            seconds[SECONDS_COUNT] = round(time.monotonic() - t, 3)
            result[KEY_OK] = True
    finally:
        if os.path.exists(download):
            os.unlink(download)
        if created and (args.scratch or not result[KEY_OK]):
            try:
                psql(
                    "postgres",
                    f"DROP DATABASE IF EXISTS {ident(target)} WITH (FORCE)",
                    "drop scratch database",
                )
                result[KEY_DROPPED] = True
            except Failure as exc:
                rep.log(f"could not drop {target}: {exc}")
        seconds[SECONDS_TOTAL] = round(time.monotonic() - started, 3)
        result[KEY_PEAK_MEMORY] = peak_memory()
    return result, EXIT_OK


def cmd_swap(cfg: Config, args: argparse.Namespace, rep: Reporter) -> tuple[dict[str, Any], int]:
    """Make database `new` the live one; the live one is renamed `keep_as` (one transaction)."""
    live, new, keep = cfg["database"], str(args.new), str(args.keep_as)
    for name in (new, keep):
        check_name(name, "")
    with Lock(cfg["local_dir"]):
        if not database_exists(new):
            raise Failure(f"database {new} does not exist", EXIT_CONFIG, STEP_ARGUMENTS)
        if database_exists(keep):
            raise Failure(f"database {keep} already exists", EXIT_EXISTS, STEP_ARGUMENTS)
        has_live = database_exists(live)
        started = time.monotonic()
        if has_live:
            psql("postgres", f"ALTER DATABASE {ident(live)} WITH ALLOW_CONNECTIONS false", "swap")
        try:
            for attempt in range(20):
                kick = " , ".join(literal(n) for n in (live, new))
                psql(
                    "postgres",
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    f"WHERE datname IN ({kick}) AND pid <> pg_backend_pid()",
                    "swap",
                )
                rename_old = (
                    f"ALTER DATABASE {ident(live)} RENAME TO {ident(keep)};" if has_live else ""
                )
                try:
                    psql(
                        "postgres",
                        f"BEGIN; {rename_old} ALTER DATABASE {ident(new)} RENAME TO "
                        f"{ident(live)}; COMMIT;",
                        "swap",
                    )
                    break
                except Failure as exc:
                    if "being accessed by other users" not in str(exc) or attempt == 19:
                        raise
                    time.sleep(0.5)
        finally:
            old = keep if database_exists(keep) else live
            if has_live and database_exists(old):
                psql("postgres", f"ALTER DATABASE {ident(old)} WITH ALLOW_CONNECTIONS true", "swap")
    return {
        KEY_OK: True,
        KEY_LIVE: live,
        KEY_PREVIOUS_KEPT_AS: keep if has_live else "",
        KEY_SECONDS: round(time.monotonic() - started, 3),
    }, EXIT_OK


def cmd_info(cfg: Config, args: argparse.Namespace, rep: Reporter) -> tuple[dict[str, Any], int]:
    """Where this host's backups go, its last run and local copies, whether live exists."""
    last = None
    try:
        with open(os.path.join(cfg["local_dir"], LAST_RUN), encoding="utf-8") as f:
            last = json.load(f)
    except (OSError, ValueError):
        pass
    return {
        KEY_LABEL: label_of(cfg),
        KEY_DATABASE: cfg["database"],
        KEY_BUCKET: cfg["s3"]["bucket"],
        KEY_PREFIX: key_prefix(cfg["s3"]["prefix"], label_of(cfg), cfg["database"]),
        KEY_LAST_RUN: last,
        KEY_LOCAL: local_copies(cfg),
        KEY_LIVE_EXISTS: database_exists(cfg["database"]),
    }, EXIT_OK


def cmd_counts(cfg: Config, args: argparse.Namespace, rep: Reporter) -> tuple[dict[str, Any], int]:
    return {KEY_DATABASE: args.database, KEY_COUNTS: row_counts(args.database)}, EXIT_OK


COMMANDS: dict[str, Command] = {
    "run": cmd_run,
    "restore": cmd_restore,
    "swap": cmd_swap,
    "counts": cmd_counts,
    "info": cmd_info,
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROGRAM, description=DESCRIPTION)
    p.add_argument("--config", default=CONFIG, help="configuration file")
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        c = sub.add_parser(name)
        c.add_argument("--json", action="store_true", help="print the result as JSON")
        c.add_argument("--progress", action="store_true", help="@@progress lines on stderr")
        if name == "restore":
            c.add_argument("--key", required=True, help="S3 key of the backup")
            c.add_argument("--target", required=True, help="new database to restore into")
            c.add_argument("--scratch", action="store_true", help="drop the target afterwards")
            c.add_argument("--compare-live", action="store_true", help="also count live rows")
        if name == "swap":
            c.add_argument("--new", required=True, help="database that becomes the live one")
            c.add_argument("--keep-as", required=True, help="new name of the live database")
        if name == "counts":
            c.add_argument("--database", required=True)
    return p


def main(argv: Sequence[str] | None = None, *, as_postgres: bool = True) -> int:
    """Run one command; returns the exit code. Run as root (and `as_postgres`), it re-executes
    itself as postgres, which owns the dumps and the databases."""
    args = parser().parse_args(argv)
    if as_postgres and os.geteuid() == 0:
        os.execvp("runuser", ["runuser", "-u", "postgres", "--", sys.argv[0], *sys.argv[1:]])
    secrets: list[str] = []
    rep = Reporter(secrets, args.progress)
    try:
        cfg = load_config(args.config)
        secrets.extend(secrets_of(cfg))
        os.umask(0o077)
        result, code = COMMANDS[args.command](cfg, args, rep)
    except Failure as exc:
        result = {KEY_OK: False, KEY_ERROR: str(exc), KEY_FAILED_STEP: exc.step}
        code = exc.code
        rep.log(f"error: {exc}")
    result = json.loads(redact(json.dumps(result), secrets))
    if args.json:
        print(json.dumps(result, sort_keys=True))
    elif args.command == "run" and result.get(KEY_OK):
        print(f"backup ok: s3://{result[KEY_BUCKET]}/{result[KEY_KEY]} ({result[KEY_SIZE]} bytes)")
    return code


if __name__ == "__main__":
    sys.exit(main())
