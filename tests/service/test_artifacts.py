"""S3 artifact store on the real SeaweedFS server: atomic upload, verified download, and an
upload that survives the server going away (while a dead upload never looks complete)."""

import os
import threading
import time
from dataclasses import replace

import pytest

from tasks import artifacts as A

pytestmark = pytest.mark.stack


def make_dir(root, n_files=4, size=256 * 1024):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        (root / f"shard-{i}.bin").write_bytes(os.urandom(size))
    (root / "sub").mkdir(exist_ok=True)
    (root / "sub" / "config.json").write_text('{"a": 1}')
    (root / "empty.txt").write_bytes(b"")
    return root


def same_tree(a, b):
    files = lambda r: {p.relative_to(r).as_posix(): p.read_bytes() for p in r.rglob("*") if p.is_file()}
    return files(a) == files(b)


def test_round_trip_and_idempotent_reupload(stack, tmp_path):
    src = make_dir(tmp_path / "src")
    key = "test/roundtrip"
    assert not A.is_complete(key)
    with pytest.raises(A.IncompleteArtifact, match="not a complete artifact"):
        A.download_dir(key, tmp_path / "nope")
    m = A.upload_dir(src, key, metadata={"fingerprint": "abc"})
    assert A.is_complete(key) and m["metadata"] == {"fingerprint": "abc"}
    assert set(m["files"]) == {"shard-0.bin", "shard-1.bin", "shard-2.bin", "shard-3.bin",
                               "sub/config.json", "empty.txt"}
    A.download_dir(key, tmp_path / "dst")
    assert same_tree(src, tmp_path / "dst")
    # Same files again: nothing uploaded, same upload id.
    assert A.upload_dir(src, key)["upload_id"] == m["upload_id"]
    # Changed files: a new upload replaces the old one atomically.
    (src / "sub" / "config.json").write_text('{"a": 2}')
    m2 = A.upload_dir(src, key)
    assert m2["upload_id"] != m["upload_id"]
    A.download_dir(key, tmp_path / "dst2")
    assert (tmp_path / "dst2" / "sub" / "config.json").read_text() == '{"a": 2}'
    # The superseded upload can be collected; the live one is kept.
    assert A.gc_uploads(key, older_than_s=0) == len(m["files"]) + 1  # its files + manifest
    assert A.gc_uploads(key, older_than_s=0) == 0 and A.is_complete(key)
    assert A.delete_artifact(key) > 0 and not A.is_complete(key)


def test_tampered_object_is_detected(stack, tmp_path):
    src = make_dir(tmp_path / "src", n_files=1)
    m = A.upload_dir(src, "test/tamper")
    s = A.S3Settings.from_env()
    A.client(s).put_object(Bucket=s.bucket, Key=f"test/tamper/_uploads/{m['upload_id']}/shard-0.bin",
                           Body=b"evil")
    with pytest.raises(A.CorruptArtifact, match="sha256 mismatch"):
        A.download_dir("test/tamper", tmp_path / "dst")


def test_upload_survives_s3_restart_and_partial_is_never_complete(stack, tmp_path):
    """Stop SeaweedFS after the first file of an upload; bring it back a few seconds later.

    - an upload with a short retry deadline gives up: StoreUnreachable, and the files it did
      upload are never seen as an artifact (no COMPLETE marker);
    - an upload with the normal deadline retries through the outage and completes.
    """
    src = make_dir(tmp_path / "src", n_files=6)
    events = []

    def stop_s3_once(rel, done, total):
        events.append((rel, done, total))
        if done == 1:
            stack.sh("down", "s3")

    # 1. Gives up while the server is down: a partial upload remains, but not complete.
    short = replace(A.S3Settings.from_env(), retry_seconds=2)
    with pytest.raises(A.StoreUnreachable, match="unreachable while trying to upload"):
        A.upload_dir(src, "test/partial", settings=short, on_progress=stop_s3_once)
    assert len(events) == 1
    stack.sh("up", "s3")
    assert not A.is_complete("test/partial")
    s = A.S3Settings.from_env()
    listed = A.client(s).list_objects_v2(Bucket=s.bucket, Prefix="test/partial/")
    first_file = events[0][0]
    assert any(o["Key"].endswith(first_file) for o in listed.get("Contents", [])), \
        (events, listed.get("Contents"))
    with pytest.raises(A.IncompleteArtifact):
        A.download_dir("test/partial", tmp_path / "x")

    # 2. Retries through the outage: the server comes back after ~4 s, the upload completes.
    events.clear()
    restarted = threading.Event()

    def restart_later():
        time.sleep(4)
        stack.sh("up", "s3")
        restarted.set()

    def stop_then_restart(rel, done, total):
        events.append((rel, done, total))
        if done == 1:
            stack.sh("down", "s3")
            threading.Thread(target=restart_later, daemon=True).start()

    t0 = time.monotonic()
    m = A.upload_dir(src, "test/interrupted", on_progress=stop_then_restart)
    assert restarted.is_set() and time.monotonic() - t0 >= 4
    assert [d for _, d, _ in events] == list(range(1, 9))  # every file once, none skipped
    assert A.is_complete("test/interrupted")
    A.download_dir("test/interrupted", tmp_path / "dst")
    assert same_tree(src, tmp_path / "dst") and len(m["files"]) == 8
