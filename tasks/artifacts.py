"""S3 artifact store: atomic directory upload, verified download, completeness check.

An artifact is a directory of files stored under a key (e.g. `ckpt/smollm2-135m/<fp>/stage1`).
Layout in the bucket:

    <key>/_uploads/<upload_id>/<relative file path>   the files of one upload attempt
    <key>/_uploads/<upload_id>/MANIFEST.json          sha256 + size of every file, written last
    <key>/COMPLETE                                    {"upload_id", "manifest_sha256"}: the commit

The files go to a fresh upload prefix, then the manifest, then the single-object COMPLETE
marker, so an artifact becomes visible in one atomic PUT. Readers (`is_complete`,
`download_dir`) trust only what COMPLETE points at and verify every hash; an upload that dies
half-way leaves files under `_uploads/` that nothing reads. Every S3 call is retried with
exponential backoff on connection errors and 5xx answers until `LOLCATS_S3_RETRY_SECONDS`
(default 120 s) have passed, so an S3 server that goes away mid-upload only delays it.

Environment: LOLCATS_S3_ENDPOINT (or AWS_ENDPOINT_URL_S3 / MLFLOW_S3_ENDPOINT_URL; default
http://127.0.0.1:8333), LOLCATS_S3_BUCKET (default `lolcats`), AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION. Credentials are never logged or printed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from lolcats_core.hashing import sha256_file

log = logging.getLogger("lolcats.artifacts")
T = TypeVar("T")

MARKER = "COMPLETE"
MANIFEST = "MANIFEST.json"
UPLOADS = "_uploads"  # not ".uploads": SeaweedFS omits dot-folders from listings


class ArtifactError(RuntimeError):
    """Base class of artifact-store errors."""


class IncompleteArtifact(ArtifactError):
    """The artifact has no COMPLETE marker (never uploaded, or an upload did not finish)."""


class CorruptArtifact(ArtifactError):
    """A downloaded file does not match the sha256 recorded in the manifest."""


class StoreUnreachable(ArtifactError):
    """The S3 server did not answer within the retry deadline."""


@dataclass(frozen=True)
class S3Settings:
    """Where the store is. `secret_key` is excluded from repr so it never reaches a log."""

    endpoint: str
    bucket: str
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    region: str = "us-east-1"
    retry_seconds: float = 120.0

    @classmethod
    def from_env(cls) -> S3Settings:
        env = os.environ
        return cls(
            endpoint=(env.get("LOLCATS_S3_ENDPOINT") or env.get("AWS_ENDPOINT_URL_S3")
                      or env.get("MLFLOW_S3_ENDPOINT_URL") or "http://127.0.0.1:8333"),
            bucket=env.get("LOLCATS_S3_BUCKET", "lolcats"),
            access_key=env.get("AWS_ACCESS_KEY_ID"),
            secret_key=env.get("AWS_SECRET_ACCESS_KEY"),
            region=env.get("AWS_DEFAULT_REGION", "us-east-1"),
            retry_seconds=float(env.get("LOLCATS_S3_RETRY_SECONDS", "120")),
        )

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key.strip('/')}"


def client(settings: S3Settings | None = None):
    """A boto3 S3 client with short timeouts; retries are done by `_retry` around each call."""
    s = settings or S3Settings.from_env()
    return boto3.client(
        "s3", endpoint_url=s.endpoint, region_name=s.region,
        aws_access_key_id=s.access_key, aws_secret_access_key=s.secret_key,
        config=BotoConfig(retries={"max_attempts": 1, "mode": "standard"},
                          connect_timeout=3, read_timeout=30,
                          # SeaweedFS/MinIO want path-style; AWS prefers virtual-hosted
                          s3={"addressing_style": "virtual" if "amazonaws.com" in s.endpoint
                              else "path"}),
    )


# --- retries ------------------------------------------------------------------------------

_TRANSIENT_CODES = {"500", "502", "503", "504", "InternalError", "ServiceUnavailable",
                    "SlowDown", "RequestTimeout"}


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, (BotoConnectionError, HTTPClientError, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        return err.get("Code") in _TRANSIENT_CODES or status.startswith("5")
    # boto3's transfer manager wraps connection failures in its own exception types
    cause = exc.__cause__ or exc.__context__
    return cause is not None and cause is not exc and _transient(cause)


def _retry(what: str, fn: Callable[[], T], settings: S3Settings) -> T:
    """Call `fn`, retrying transient S3 failures with capped exponential backoff + jitter."""
    deadline = time.monotonic() + settings.retry_seconds
    delay, attempt = 0.5, 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as exc:
            if not _transient(exc):
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise StoreUnreachable(
                    f"S3 at {settings.endpoint} unreachable while trying to {what} "
                    f"({attempt} attempts over {settings.retry_seconds:.0f} s): {exc}. Is the "
                    f"server up? Local stack: `deploy/stack.sh status`; endpoint from "
                    f"LOLCATS_S3_ENDPOINT.") from exc
            sleep = min(delay, left) * (0.8 + 0.4 * random.random())
            log.warning("S3 %s failed (%s: %s); retry %d in %.1f s", what,
                        type(exc).__name__, str(exc)[:120], attempt, sleep)
            time.sleep(sleep)
            delay = min(delay * 2, 8.0)


# --- helpers ------------------------------------------------------------------------------


def _files(local_dir: Path) -> list[Path]:
    return sorted(p for p in local_dir.rglob("*") if p.is_file())


def _get_bytes(s3, bucket: str, key: str, settings: S3Settings) -> bytes | None:
    def get():
        try:
            return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise
    return _retry(f"read {key}", get, settings)


def _get_json(s3, bucket: str, key: str, settings: S3Settings) -> tuple[dict, bytes] | None:
    raw = _get_bytes(s3, bucket, key, settings)
    return None if raw is None else (json.loads(raw), raw)


def ensure_bucket(settings: S3Settings | None = None) -> None:
    """Create the bucket if it does not exist (the local stack already creates it)."""
    s = settings or S3Settings.from_env()
    s3 = client(s)
    try:
        _retry("check bucket", lambda: s3.head_bucket(Bucket=s.bucket), s)
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise ArtifactError(f"bucket {s.bucket!r} at {s.endpoint}: {e} "
                                "(check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)") from e
        _retry("create bucket", lambda: s3.create_bucket(Bucket=s.bucket), s)


# --- public API ---------------------------------------------------------------------------


def read_manifest(key: str, settings: S3Settings | None = None) -> dict | None:
    """The manifest of the complete artifact at `key`, or None if it is not complete.

    The manifest is {"key", "upload_id", "files": {relpath: {"sha256", "size"}},
    "metadata": {...}, "created": unix time}.
    """
    s = settings or S3Settings.from_env()
    s3, key = client(s), key.strip("/")
    got = _get_json(s3, s.bucket, f"{key}/{MARKER}", s)
    if got is None:
        return None
    marker, _ = got
    got = _get_json(s3, s.bucket, f"{key}/{UPLOADS}/{marker['upload_id']}/{MANIFEST}", s)
    if got is None:
        raise CorruptArtifact(f"{s.uri(key)}: COMPLETE points at a missing manifest")
    manifest, raw = got
    if hashlib.sha256(raw).hexdigest() != marker["manifest_sha256"]:
        raise CorruptArtifact(f"{s.uri(key)}: manifest does not match the COMPLETE marker")
    return manifest


def is_complete(key: str, settings: S3Settings | None = None) -> bool:
    """True only if `key` holds a fully uploaded artifact (COMPLETE marker + valid manifest)."""
    return read_manifest(key, settings) is not None


def upload_dir(local_dir: str | os.PathLike, key: str, *, metadata: dict | None = None,
               settings: S3Settings | None = None,
               on_progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Upload `local_dir` atomically to `key`; return its manifest.

    If `key` already holds a complete artifact with exactly the same files (by sha256), nothing
    is uploaded (idempotent re-runs). `on_progress(relpath, done, total)` is called after each
    file. Transient S3 failures are retried (see module doc); a failure that outlasts the
    deadline raises StoreUnreachable and leaves the previous complete version (if any) intact.
    """
    s = settings or S3Settings.from_env()
    src, key = Path(local_dir), key.strip("/")
    if not src.is_dir():
        raise ArtifactError(f"upload_dir: {src} is not a directory")
    files = _files(src)
    entries = {p.relative_to(src).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
               for p in files}
    for rel in entries:
        if rel == MARKER or rel.startswith(UPLOADS + "/"):
            raise ArtifactError(f"upload_dir: {rel!r} is a reserved name in an artifact")

    current = read_manifest(key, s)
    if current is not None and current["files"] == entries:
        log.info("artifact %s already complete with identical files; skipping upload", s.uri(key))
        return current

    s3 = client(s)
    upload_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
    prefix = f"{key}/{UPLOADS}/{upload_id}"
    log.info("uploading %d files (%.1f MB) to %s", len(files),
             sum(e["size"] for e in entries.values()) / 1e6, s.uri(prefix))
    for i, p in enumerate(files, 1):
        rel = p.relative_to(src).as_posix()
        _retry(f"upload {rel}", lambda: s3.upload_file(str(p), s.bucket, f"{prefix}/{rel}"), s)
        if on_progress:
            on_progress(rel, i, len(files))

    manifest = {"key": key, "upload_id": upload_id, "files": entries,
                "metadata": metadata or {}, "created": time.time()}
    raw = json.dumps(manifest, indent=1, sort_keys=True).encode()
    _retry("write manifest", lambda: s3.put_object(Bucket=s.bucket, Key=f"{prefix}/{MANIFEST}",
                                                   Body=raw), s)
    marker = json.dumps({"upload_id": upload_id,
                         "manifest_sha256": hashlib.sha256(raw).hexdigest()}).encode()
    _retry("write COMPLETE marker",
           lambda: s3.put_object(Bucket=s.bucket, Key=f"{key}/{MARKER}", Body=marker), s)
    log.info("artifact %s complete (upload %s)", s.uri(key), upload_id)
    return manifest


def download_dir(key: str, dest: str | os.PathLike, *, last: str | None = None,
                 settings: S3Settings | None = None) -> dict:
    """Download the complete artifact at `key` into `dest`, verifying every sha256.

    Raises IncompleteArtifact if `key` is not complete. Files are written to `*.part` and
    renamed once verified; the file named `last` (a completion marker such as `done.json`) is
    written after all the others, so a download cut short never looks finished. Returns the
    manifest.
    """
    s = settings or S3Settings.from_env()
    key = key.strip("/")
    manifest = read_manifest(key, s)
    if manifest is None:
        raise IncompleteArtifact(f"{s.uri(key)} is not a complete artifact (no COMPLETE marker): "
                                 "it was never uploaded or its upload did not finish")
    s3, dest = client(s), Path(dest)
    prefix = f"{key}/{UPLOADS}/{manifest['upload_id']}"
    for rel, info in sorted(manifest["files"].items(), key=lambda item: item[0] == last):
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists() and out.stat().st_size == info["size"] and sha256_file(out) == info["sha256"]:
            continue
        part = out.with_name(out.name + ".part")
        _retry(f"download {rel}", lambda: s3.download_file(s.bucket, f"{prefix}/{rel}", str(part)), s)
        if sha256_file(part) != info["sha256"]:
            part.unlink()
            raise CorruptArtifact(f"{s.uri(prefix)}/{rel}: sha256 mismatch after download")
        part.replace(out)
    return manifest


def read_object(key: str, settings: S3Settings | None = None) -> bytes | None:
    """The bytes of the single object `key`, or None if there is none."""
    s = settings or S3Settings.from_env()
    return _get_bytes(client(s), s.bucket, key.strip("/"), s)


def write_object(key: str, body: bytes, settings: S3Settings | None = None) -> None:
    """Store `body` as the single object `key` (one PUT: readers see all of it or none)."""
    s = settings or S3Settings.from_env()
    s3 = client(s)
    _retry(f"write {key}", lambda: s3.put_object(Bucket=s.bucket, Key=key.strip("/"), Body=body), s)


def delete_artifact(key: str, settings: S3Settings | None = None) -> int:
    """Delete everything under `key` (marker first, so readers never see a half-deleted one)."""
    s = settings or S3Settings.from_env()
    s3, key = client(s), key.strip("/")
    _retry("delete marker", lambda: s3.delete_object(Bucket=s.bucket, Key=f"{key}/{MARKER}"), s)
    n = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s.bucket, Prefix=f"{key}/"):
        objs = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if objs:
            _retry("delete objects", lambda: s3.delete_objects(Bucket=s.bucket,
                                                               Delete={"Objects": objs}), s)
            n += len(objs)
    return n


def gc_uploads(key: str, older_than_s: float = 3600, settings: S3Settings | None = None) -> int:
    """Delete upload attempts under `key` that COMPLETE does not point at and that are older
    than `older_than_s` (abandoned or superseded uploads). Returns the number of objects."""
    s = settings or S3Settings.from_env()
    s3, key = client(s), key.strip("/")
    got = _get_json(s3, s.bucket, f"{key}/{MARKER}", s)
    live = got[0]["upload_id"] if got else None
    cutoff, doomed = time.time() - older_than_s, []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s.bucket,
                                                             Prefix=f"{key}/{UPLOADS}/"):
        for o in page.get("Contents", []):
            upload_id = o["Key"][len(f"{key}/{UPLOADS}/"):].split("/", 1)[0]
            if upload_id != live and o["LastModified"].timestamp() < cutoff:
                doomed.append({"Key": o["Key"]})
    for i in range(0, len(doomed), 1000):
        batch = doomed[i:i + 1000]
        _retry("delete old uploads", lambda: s3.delete_objects(Bucket=s.bucket,
                                                               Delete={"Objects": batch}), s)
    return len(doomed)
