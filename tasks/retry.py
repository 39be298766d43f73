"""Which task failures Prefect retries: only transient ones.

A server that is down or overloaded (S3, MLflow, Prefect unreachable; HTTP 5xx; connection
resets and socket timeouts) may answer on the next attempt, so the task is retried with
backoff and jitter. Everything else fails at once with its own message: configuration, data
and checkpoint errors (`lolcats_core.errors.LolcatsError` and subclasses such as
`NonFiniteLossError`), out-of-memory errors, a task past its `timeout_seconds`, programming
errors. An error is judged by the first decisive exception of its chain (the error itself,
then its `__cause__` / `__context__`): a `ConfigError` raised while handling a connection
error is a configuration error.
"""

from __future__ import annotations

import urllib.error

from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

RETRIES = 3
BACKOFF = exponential_backoff(backoff_factor=10)  # 10, 20, 40 s
JITTER = 0.5  # each delay drawn up to 50 % longer (Prefect's retry_jitter_factor)


def _status(exc: BaseException) -> int | None:
    """The HTTP status an exception carries, if any."""
    resp = getattr(exc, "response", None)
    for holder in (exc, resp):
        for attr in ("status_code", "code", "status"):
            v = getattr(holder, attr, None)
            if isinstance(v, int) and 100 <= v < 600:
                return v
    if isinstance(resp, dict):  # botocore ClientError
        v = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(v) if v else None
    return None


def _verdict(exc: BaseException) -> bool | None:
    """True: transient; False: permanent; None: this exception alone does not tell."""
    from prefect.task_engine import TaskRunTimeoutError

    from lolcats_core.errors import LolcatsError

    if isinstance(exc, (LolcatsError, MemoryError, TaskRunTimeoutError)):
        return False
    if "OutOfMemoryError" in type(exc).__name__ or (
            isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError, urllib.error.URLError)) and \
            not isinstance(exc, urllib.error.HTTPError):
        return True
    names = {c.__name__ for c in type(exc).__mro__}
    # botocore / urllib3 / requests / httpx connection failures (not imported: optional here)
    if names & {"StoreUnreachable", "EndpointConnectionError", "ConnectTimeoutError",
                "ReadTimeoutError", "HTTPClientError", "NewConnectionError", "MaxRetryError",
                "ProtocolError", "TransportError", "ConnectError", "RemoteDisconnected",
                "ConnectionError", "Timeout"}:
        return True
    if names & {"ClientError", "HTTPError", "HTTPStatusError", "PrefectHTTPStatusError"}:
        status = _status(exc)
        return status is not None and status >= 500
    if "MlflowException" in names:  # a server's 5xx (RestException) or no server at all
        text = str(exc)
        if any(t in text for t in ("Max retries exceeded", "Connection refused", "Connection aborted")):
            return True
        return "RestException" in names and exc.get_http_status_code() >= 500
    return None


def is_transient(exc: BaseException | None) -> bool:
    """Whether a task that raised `exc` may succeed when run again (see the module doc)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        verdict = _verdict(exc)
        if verdict is not None:
            return verdict
        exc = exc.__cause__ or exc.__context__
    return False


def retry_transient(task, task_run, state) -> bool:
    """Prefect `retry_condition_fn`: retry only transient failures; say why not otherwise."""
    exc = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    exc = exc if isinstance(exc, BaseException) else None
    if is_transient(exc):
        return True
    try:
        from prefect import get_run_logger

        get_run_logger().error("%s failed with %s: %s - not retried (not a transient error: "
                               "retrying cannot help)", task.name, type(exc).__name__, exc)
    except Exception:  # noqa: BLE001 - logging must not change the decision
        pass
    return False


# The options every step task is declared with (flows override the delays for tests).
TASK_OPTIONS = {"retries": RETRIES, "retry_delay_seconds": BACKOFF, "retry_jitter_factor": JITTER,
                "retry_condition_fn": retry_transient, "cache_policy": NO_CACHE}
