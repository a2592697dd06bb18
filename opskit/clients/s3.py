"""S3 through boto3: the calls opskit's backups use, with timeouts, retries and clear errors.

`make_client(S3Settings)` builds the boto3 client (endpoint from configuration: AWS, or the lab's
moto server); `S3Store(client, bucket)` wraps the calls. Every failure becomes `ApiError` naming
the call and the bucket/key, never a credential. Bucket settings (retention, default encryption,
public-access block) go through the usual four steps: read, plan (pure), change, report.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import boto3
import botocore.exceptions
from botocore.config import Config

from opskit.clients import ApiError
from opskit.core.result import Change
from opskit.core.secrets import Secret, redact

LIFECYCLE_RULE_ID = "opskit-backup-retention"
ABORT_MULTIPART_DAYS = 7
BLOCK_ALL = {
    "BlockPublicAcls": True,
    "IgnorePublicAcls": True,
    "BlockPublicPolicy": True,
    "RestrictPublicBuckets": True,
}


@dataclass(frozen=True)
class S3Settings:
    """Where and how to reach S3. Empty endpoint: AWS. No keys: boto3's own credential chain."""

    bucket: str
    region: str = "us-east-1"
    endpoint: str = ""
    access_key_id: Secret | None = None
    secret_access_key: Secret | None = None
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    max_attempts: int = 5

    @property
    def secrets(self) -> list[str]:
        return [s for s in (self.access_key_id, self.secret_access_key) if s]


def make_client(settings: S3Settings) -> Any:
    """A boto3 S3 client: timeouts, standard retries with backoff, path-style for endpoints."""
    options: dict[str, Any] = {
        "connect_timeout": settings.connect_timeout,
        "read_timeout": settings.read_timeout,
        "retries": {"max_attempts": settings.max_attempts, "mode": "standard"},
        "region_name": settings.region,
    }
    if settings.endpoint:
        options["s3"] = {"addressing_style": "path"}
    session = boto3.session.Session(
        aws_access_key_id=str.__str__(settings.access_key_id) if settings.access_key_id else None,
        aws_secret_access_key=(
            str.__str__(settings.secret_access_key) if settings.secret_access_key else None
        ),
        region_name=settings.region,
    )
    return session.client("s3", endpoint_url=settings.endpoint or None, config=Config(**options))


@contextmanager
def api_call(what: str, target: str, secrets: Sequence[str] = ()) -> Iterator[None]:
    """Turn boto3/botocore failures inside the block into ApiError('s3 <what> <target>: ...')."""
    try:
        yield
    except botocore.exceptions.ClientError as exc:
        err = exc.response.get("Error", {})
        code = err.get("Code", "?")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
        msg = f"s3 {what} {target}: {code} (HTTP {status}): {err.get('Message', '')}".rstrip(": ")
        raise ApiError(redact(msg, secrets)) from None
    except botocore.exceptions.NoCredentialsError:
        raise ApiError(
            f"s3 {what} {target}: no AWS credentials (set backup_s3_access_key_id and "
            "backup_s3_secret_access_key as {secret: NAME}, or configure boto3's own chain)"
        ) from None
    except (
        botocore.exceptions.EndpointConnectionError,
        botocore.exceptions.ConnectTimeoutError,
    ) as exc:
        raise ApiError(redact(f"s3 {what} {target}: cannot connect: {exc}", secrets)) from None
    except botocore.exceptions.ReadTimeoutError as exc:
        raise ApiError(redact(f"s3 {what} {target}: timed out: {exc}", secrets)) from None
    except botocore.exceptions.BotoCoreError as exc:
        raise ApiError(redact(f"s3 {what} {target}: {exc}", secrets)) from None


@dataclass(frozen=True)
class ObjectInfo:
    """One object as a listing and a HEAD see it."""

    key: str
    size: int
    last_modified: dt.datetime
    metadata: Mapping[str, str] = field(default_factory=dict)
    checksum_sha256: str | None = None
    encryption: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BucketPolicy:
    """What opskit sets on the backup bucket."""

    prefix: str
    retention_days: int
    encryption: str = "AES256"  # or aws:kms
    kms_key_id: str = ""


# --- pure plans -----------------------------------------------------------------------------


def lifecycle_rule(policy: BucketPolicy) -> dict[str, Any]:
    prefix = policy.prefix.strip("/")
    return {
        "ID": LIFECYCLE_RULE_ID,
        "Status": "Enabled",
        "Filter": {"Prefix": f"{prefix}/" if prefix else ""},
        "Expiration": {"Days": policy.retention_days},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": ABORT_MULTIPART_DAYS},
    }


def plan_lifecycle(
    current: Sequence[Mapping[str, Any]], policy: BucketPolicy
) -> tuple[str, list[dict[str, Any]]]:
    """(reason or '', the rules to put): our rule added or replaced, other rules kept.

    >>> p = BucketPolicy("pg", 30)
    >>> plan_lifecycle([], p)[0]
    'add rule: objects under pg/ expire after 30 days'
    >>> plan_lifecycle([lifecycle_rule(p)], p)[0]
    ''
    >>> other = {"ID": "logs", "Status": "Enabled", "Filter": {"Prefix": "logs/"}}
    >>> reason, rules = plan_lifecycle([other, {**lifecycle_rule(p), "Expiration": {"Days": 9}}], p)
    >>> reason, [r["ID"] for r in rules]
    ('rule: expiry 9 -> 30 days', ['logs', 'opskit-backup-retention'])
    """
    want = lifecycle_rule(policy)
    ours = [r for r in current if r.get("ID") == LIFECYCLE_RULE_ID]
    others = [dict(r) for r in current if r.get("ID") != LIFECYCLE_RULE_ID]
    rules = [*others, want]
    where = want["Filter"]["Prefix"] or "the whole bucket"
    if not ours:
        return f"add rule: objects under {where} expire after {policy.retention_days} days", rules
    have = ours[0]
    if _normal(have) == _normal(want):
        return "", rules
    old_days = have.get("Expiration", {}).get("Days")
    if _normal({**have, "Expiration": want["Expiration"]}) == _normal(want):
        return f"rule: expiry {old_days} -> {policy.retention_days} days", rules
    return f"rule {LIFECYCLE_RULE_ID}: reset to {policy.retention_days} days under {where}", rules


def _normal(rule: Mapping[str, Any]) -> dict[str, Any]:
    """A lifecycle rule without the fields S3 adds or leaves out (top-level Prefix)."""
    keep = ("ID", "Status", "Filter", "Expiration", "AbortIncompleteMultipartUpload")
    out = {k: rule[k] for k in keep if k in rule}
    if "Filter" not in out and "Prefix" in rule:
        out["Filter"] = {"Prefix": rule["Prefix"]}
    return out


def plan_encryption(current: Mapping[str, Any] | None, policy: BucketPolicy) -> str:
    """Reason to set default encryption, or ''.

    >>> plan_encryption(None, BucketPolicy("pg", 30))
    'default encryption: none -> AES256'
    >>> plan_encryption({"SSEAlgorithm": "AES256"}, BucketPolicy("pg", 30))
    ''
    """
    have = (current or {}).get("SSEAlgorithm")
    have_key = (current or {}).get("KMSMasterKeyID", "")
    want_key = policy.kms_key_id if policy.encryption == "aws:kms" else ""
    if have == policy.encryption and (have_key or "") == want_key:
        return ""
    return f"default encryption: {have or 'none'} -> {policy.encryption}" + (
        f" ({want_key})" if want_key else ""
    )


def plan_public_access(current: Mapping[str, Any] | None) -> str:
    """Reason to block all public access, or ''.

    >>> plan_public_access(None)
    'block all public access (none set)'
    >>> plan_public_access(BLOCK_ALL)
    ''
    """
    if current is None:
        return "block all public access (none set)"
    off = [k for k, v in BLOCK_ALL.items() if current.get(k) is not v]
    return f"block all public access ({', '.join(off)} off)" if off else ""


# --- the store ------------------------------------------------------------------------------


class S3Store:
    """The calls opskit makes on one bucket."""

    def __init__(self, client: Any, bucket: str, secrets: Sequence[str] = ()) -> None:
        self.client, self.bucket, self.secrets = client, bucket, list(secrets)

    def _where(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key}"

    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        """Every object under `prefix`, oldest first."""
        out: list[ObjectInfo] = []
        with api_call("list", self._where(prefix), self.secrets):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                for item in page.get("Contents", []):
                    out.append(ObjectInfo(item["Key"], item["Size"], item["LastModified"]))
        return sorted(out, key=lambda o: (o.last_modified, o.key))

    def head(self, key: str, *, with_tags: bool = False) -> ObjectInfo:
        with api_call("head", self._where(key), self.secrets):
            r = self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        tags: dict[str, str] = {}
        if with_tags:
            tags = self.tags(key)
        return ObjectInfo(
            key,
            r["ContentLength"],
            r["LastModified"],
            dict(r.get("Metadata", {})),
            r.get("ChecksumSHA256"),
            r.get("ServerSideEncryption"),
            tags,
        )

    def tags(self, key: str) -> dict[str, str]:
        with api_call("get tags", self._where(key), self.secrets):
            r = self.client.get_object_tagging(Bucket=self.bucket, Key=key)
        return {t["Key"]: t["Value"] for t in r.get("TagSet", [])}

    def set_tags(self, key: str, tags: Mapping[str, str]) -> None:
        """Merge `tags` into the object's tags (the object's data and metadata stay)."""
        merged = {**self.tags(key), **tags}
        with api_call("set tags", self._where(key), self.secrets):
            self.client.put_object_tagging(
                Bucket=self.bucket,
                Key=key,
                Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in sorted(merged.items())]},
            )

    # -- bucket settings --

    def _bucket_exists(self) -> bool:
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return True
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket", "NotFound"):
                return False
            with api_call("head bucket", self._where(), self.secrets):
                raise

    def _get_optional(self, call: Callable[..., Any], missing: str, what: str) -> Any:
        try:
            return call(Bucket=self.bucket)
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == missing:
                return None
            with api_call(what, self._where(), self.secrets):
                raise

    def ensure_bucket(
        self, policy: BucketPolicy, *, region: str, manage: bool = True, dry_run: bool = False
    ) -> list[Change]:
        """The bucket exists with our retention rule, default encryption and public access
        blocked (unless `manage` is false: then it only has to exist). One Change each."""
        label = f"s3://{self.bucket}"
        changes: list[Change] = []
        with api_call("head bucket", self._where(), self.secrets):
            exists = self._bucket_exists()
        if not exists:
            if not manage:
                raise ApiError(
                    f"s3 bucket {label} does not exist (backup_s3_manage_bucket is false: "
                    "create it where it is managed)"
                )
            changes.append(Change.made(label, "s3:bucket", "create"))
            if not dry_run:
                args: dict[str, Any] = {"Bucket": self.bucket}
                if region != "us-east-1":
                    args["CreateBucketConfiguration"] = {"LocationConstraint": region}
                with api_call("create bucket", self._where(), self.secrets):
                    self.client.create_bucket(**args)
        else:
            changes.append(Change.ok(label, "s3:bucket"))
        if not manage:
            return changes

        if exists:
            lc = self._get_optional(
                self.client.get_bucket_lifecycle_configuration,
                "NoSuchLifecycleConfiguration",
                "get lifecycle",
            )
            rules = (lc or {}).get("Rules", [])
            enc = self._get_optional(
                self.client.get_bucket_encryption,
                "ServerSideEncryptionConfigurationNotFoundError",
                "get encryption",
            )
            enc_rule = (
                (enc or {}).get("ServerSideEncryptionConfiguration", {}).get("Rules") or [{}]
            )[0]
            current_enc = enc_rule.get("ApplyServerSideEncryptionByDefault")
            pab = self._get_optional(
                self.client.get_public_access_block,
                "NoSuchPublicAccessBlockConfiguration",
                "get public access block",
            )
            current_pab = (pab or {}).get("PublicAccessBlockConfiguration")
        else:
            rules, current_enc, current_pab = [], None, None

        reason, new_rules = plan_lifecycle(rules, policy)
        changes.append(_change(label, "s3:lifecycle", reason))
        if reason and not dry_run:
            with api_call("put lifecycle", self._where(), self.secrets):
                self.client.put_bucket_lifecycle_configuration(
                    Bucket=self.bucket, LifecycleConfiguration={"Rules": new_rules}
                )
        reason = plan_encryption(current_enc, policy)
        changes.append(_change(label, "s3:encryption", reason))
        if reason and not dry_run:
            default: dict[str, str] = {"SSEAlgorithm": policy.encryption}
            if policy.encryption == "aws:kms" and policy.kms_key_id:
                default["KMSMasterKeyID"] = policy.kms_key_id
            with api_call("put encryption", self._where(), self.secrets):
                self.client.put_bucket_encryption(
                    Bucket=self.bucket,
                    ServerSideEncryptionConfiguration={
                        "Rules": [{"ApplyServerSideEncryptionByDefault": default}]
                    },
                )
        reason = plan_public_access(current_pab)
        changes.append(_change(label, "s3:public-access-block", reason))
        if reason and not dry_run:
            with api_call("put public access block", self._where(), self.secrets):
                self.client.put_public_access_block(
                    Bucket=self.bucket, PublicAccessBlockConfiguration=dict(BLOCK_ALL)
                )
        return changes


def _change(label: str, resource: str, reason: str) -> Change:
    return Change.made(label, resource, reason) if reason else Change.ok(label, resource)
