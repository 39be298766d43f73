"""Service helpers that need no running server (run by `make test-fast`)."""

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from tasks import artifacts as A
from tasks import mlflow_registry as R


def test_settings_never_show_the_secret(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
    monkeypatch.setenv("LOLCATS_S3_ENDPOINT", "http://127.0.0.1:9")
    s = A.S3Settings.from_env()
    assert s.secret_key == "s3cr3t-value" and "s3cr3t-value" not in repr(s)


def test_transient_errors_are_classified():
    assert A._transient(EndpointConnectionError(endpoint_url="http://x"))
    slow = ClientError({"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "Put")
    denied = ClientError({"Error": {"Code": "AccessDenied"}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "Put")
    assert A._transient(slow) and not A._transient(denied)
    try:  # the transfer manager wraps the real error
        try:
            raise EndpointConnectionError(endpoint_url="http://x")
        except EndpointConnectionError:
            raise RuntimeError("upload failed")
    except RuntimeError as wrapped:
        assert A._transient(wrapped)


def test_upload_rejects_reserved_names(tmp_path):
    (tmp_path / "COMPLETE").write_text("x")
    s = A.S3Settings(endpoint="http://127.0.0.1:9", bucket="b", retry_seconds=0)
    with pytest.raises(A.ArtifactError, match="reserved name"):
        A.upload_dir(tmp_path, "k", settings=s)


def test_metrics_markdown_and_version_tags():
    table = R.metrics_markdown({"ppl": 10.5}, {"ppl": 10.0})
    assert "| ppl | 10.5 | 10 |" in table
    info = R.VersionInfo("fp", "base", "rev", "data", code_commit="abc")
    assert info.tags()["lolcats.fingerprint"] == "fp" and info.tags()["lolcats.code_commit"] == "abc"
