"""Fast reachability checks for the services, with errors that say what to do.

Client libraries retry unreachable servers for a long time (MLflow: minutes) or fail with a
bare `ConnectionRefusedError`; call these first so a missing server fails in seconds with a
message naming the service, its address and the fix.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request

FIX = ("start the local stack with `deploy/stack.sh up` (see deploy/README.md) or point {var} "
       "at a running server")


class ServiceUnreachable(RuntimeError):
    """A service did not answer its health check."""


def _probe(name: str, url: str, var: str, timeout: float) -> str:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        raise ServiceUnreachable(f"{name} at {url} answered HTTP {e.code}; is {var} the right "
                                 f"address?") from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ServiceUnreachable(f"{name} is not reachable at {url} ({reason}): "
                                 + FIX.format(var=var)) from e


def prefect_api_url() -> str:
    from prefect.settings import PREFECT_API_URL  # the value Prefect itself will use

    url = PREFECT_API_URL.value() or os.environ.get("PREFECT_API_URL")
    if not url:
        raise ServiceUnreachable("PREFECT_API_URL is not set, so Prefect would run flows on a "
                                 "throw-away ephemeral server: " + FIX.format(var="PREFECT_API_URL"))
    return url.rstrip("/")


def check_prefect(url: str | None = None, timeout: float = 3) -> str:
    """Raise ServiceUnreachable unless the Prefect API at `url` is healthy; return the URL."""
    url = (url or prefect_api_url()).rstrip("/")
    if _probe("Prefect API", f"{url}/health", "PREFECT_API_URL", timeout).strip() != "true":
        raise ServiceUnreachable(f"Prefect API at {url} is up but reports unhealthy")
    return url


def check_mlflow(uri: str | None = None, timeout: float = 3) -> str:
    """Raise ServiceUnreachable unless the MLflow tracking server answers; return its URI."""
    uri = (uri or os.environ.get("MLFLOW_TRACKING_URI") or "").rstrip("/")
    if not uri.startswith("http"):
        raise ServiceUnreachable(f"MLFLOW_TRACKING_URI={uri!r} is not an MLflow server URL: "
                                 + FIX.format(var="MLFLOW_TRACKING_URI"))
    _probe("MLflow tracking server", f"{uri}/health", "MLFLOW_TRACKING_URI", timeout)
    return uri


def check_s3(settings=None) -> str:
    """Raise ServiceUnreachable unless the S3 endpoint answers and the bucket is accessible."""
    from botocore.exceptions import BotoCoreError, ClientError

    from tasks.artifacts import S3Settings, client

    s = settings or S3Settings.from_env()
    s3 = client(s)  # one attempt, 3 s connect timeout
    try:
        s3.head_bucket(Bucket=s.bucket)
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code")
        raise ServiceUnreachable(
            f"S3 at {s.endpoint} refused bucket {s.bucket!r} ({code}): check LOLCATS_S3_BUCKET "
            "and the AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY credentials") from e
    except BotoCoreError as e:
        raise ServiceUnreachable(f"S3 is not reachable at {s.endpoint} ({e}): "
                                 + FIX.format(var="LOLCATS_S3_ENDPOINT")) from e
    return s.endpoint


def check_all() -> None:
    """Check Prefect, MLflow and S3 (in that order); raise on the first unreachable one."""
    check_prefect()
    check_mlflow()
    check_s3()
