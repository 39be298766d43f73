"""Honest retries on the real stack: a configuration error inside a task fails at once with its
message; a stopped S3 server is retried until it is back. Which errors count as transient is
checked without the stack (tasks/retry.py); a hung task times out once, unretried."""

from __future__ import annotations

import contextvars
import threading
import time
from uuid import UUID

import pytest
from prefect import flow

from helpers import wait_for
from tiny import tiny_tree, write_config


def _task_runs(flow_run_id) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[UUID(str(flow_run_id))])))
    return {tr.name.rsplit("-", 1)[0]: tr for tr in runs}


def test_which_errors_are_transient():
    import urllib.error

    from botocore.exceptions import ClientError, EndpointConnectionError
    from mlflow.exceptions import MlflowException, RestException
    from prefect.task_engine import TaskRunTimeoutError

    from lolcats_core.data.errors import DataError
    from lolcats_core.errors import ConfigError
    from lolcats_core.training.loop import NonFiniteLossError
    from tasks.artifacts import StoreUnreachable
    from tasks.health import ServiceUnreachable
    from tasks.retry import is_transient

    def chained(outer, inner):
        try:
            try:
                raise inner
            except Exception:
                raise outer  # noqa: B904 - implicit __context__ on purpose
        except Exception as e:
            return e

    s3_5xx = ClientError({"Error": {"Code": "InternalError"}, "ResponseMetadata": {"HTTPStatusCode": 500}}, "Get")
    s3_403 = ClientError({"Error": {"Code": "AccessDenied"}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "Get")
    for exc in (ConnectionRefusedError(), EndpointConnectionError(endpoint_url="http://x"), s3_5xx,
                StoreUnreachable("down"), RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy"}),
                chained(ServiceUnreachable("MLflow is not reachable"), urllib.error.URLError("refused")),
                urllib.error.HTTPError("http://x", 503, "busy", {}, None),
                chained(RuntimeError("upload failed"), ConnectionResetError())):
        assert is_transient(exc), exc
    for exc in (ConfigError("stage1.lr"), DataError("no file"), NonFiniteLossError("nan"),
                MemoryError(), RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"), s3_403,
                MlflowException.invalid_parameter_value("bad"), MlflowException("client-side"), FileNotFoundError("x"),
                TaskRunTimeoutError(), ValueError("bug"), chained(ConfigError("bad"), ConnectionError()),
                urllib.error.HTTPError("http://x", 404, "missing", {}, None), None):
        assert not is_transient(exc), exc


@pytest.mark.stack
def test_configuration_error_inside_a_task_is_not_retried(stack, tiny_root, tmp_path, monkeypatch):
    """A missing data file (valid config, fails in prepare_data) fails the flow at once: one
    attempt, its own message, no retry delays (which are long here)."""
    from flows.linearize import linearize

    monkeypatch.setenv("LOLCATS_TASK_RETRY_DELAYS", "30")
    tree = tiny_tree("tiny-noretry", tiny_root / "base", tiny_root)
    tree["data"]["sharegpt_path"] = str(tmp_path / "missing.json")
    t0 = time.monotonic()
    state = linearize(config=str(write_config(tmp_path / "c.yaml", tree)), return_state=True)
    assert state.is_failed() and time.monotonic() - t0 < 30
    with pytest.raises(Exception, match="missing.json does not exist"):
        state.result()
    tr = _task_runs(state.state_details.flow_run_id)["prepare_data"]
    assert tr.run_count == 1 and tr.state.is_failed(), (tr.run_count, tr.state)


@flow(name="lolcats-retry-probe")
def _prepare(config: str) -> str:
    """The flow's data task, with the flow's options, on its own (S3 is down when it starts)."""
    from flows import config as flow_config
    from flows.linearize import step_options
    from tasks import pipeline_tasks, tracking

    cfg = flow_config.load("tiny", None, None, config)
    run_id = tracking.start_run("lolcats-retry-probe", "probe", {})
    return pipeline_tasks.prepare_data.with_options(**step_options(cfg))(cfg, run_id)["fingerprint"]


@pytest.mark.stack
def test_stopped_s3_is_retried(stack, tiny_root, tmp_path, monkeypatch):
    monkeypatch.setenv("LOLCATS_S3_RETRY_SECONDS", "2")
    monkeypatch.setenv("LOLCATS_TASK_RETRY_DELAYS", "6")
    cfg = write_config(tmp_path / "c.yaml", tiny_tree("tiny-retry", tiny_root / "base", tiny_root))
    stack.sh("down", "s3")
    result, ctx = {}, contextvars.copy_context()  # the stack's Prefect settings live in a contextvar
    th = threading.Thread(target=lambda: ctx.run(
        lambda: result.update(state=_prepare(str(cfg), return_state=True))))
    try:
        th.start()
        wait_for(lambda: "state" in result or ((fr := _flow_run_of_probe()) and
                 (tr := _task_runs(fr).get("prepare_data")) and tr.state.name == "AwaitingRetry"),
                 120, "prepare_data to fail on S3 and await its retry", poll=0.5)
    finally:
        stack.sh("up", "s3")
    th.join(180)
    state = result["state"]
    assert state.is_completed(), state
    tr = _task_runs(state.state_details.flow_run_id)["prepare_data"]
    assert tr.run_count >= 2 and tr.state.is_completed(), (tr.run_count, tr.state)


def _flow_run_of_probe():
    """The newest run of the probe flow that is not final, or None."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["lolcats-retry-probe"])),
                                     sort=FlowRunSort.START_TIME_DESC, limit=1)
    return runs[0].id if runs and not runs[0].state.is_final() else None


@pytest.mark.stack
def test_a_task_past_its_time_limit_times_out_once(stack, tiny_root, tmp_path, monkeypatch):
    """A step that hangs (here the library's data preparation, stalled) fails as TimedOut at
    the config's `service.task_timeout_s` and is not retried: the flow ends at once, freeing
    its deployment's concurrency slot."""
    from lolcats_core import pipeline

    def stalled(*args, **kwargs):
        for _ in range(1200):  # short sleeps: the timeout interrupts between them
            time.sleep(0.05)

    monkeypatch.setenv("LOLCATS_TASK_RETRY_DELAYS", "30")
    monkeypatch.setattr(pipeline, "prepare_data", stalled)
    tree = tiny_tree("tiny-timeout", tiny_root / "base", tmp_path) | {"service": {"task_timeout_s": 2}}
    tree["data"]["train_tokens"] = 4100  # data of its own: not a cached step of another test
    t0 = time.monotonic()
    state = _prepare(str(write_config(tmp_path / "c.yaml", tree)), return_state=True)
    assert state.is_failed() and time.monotonic() - t0 < 30, state
    tr = _task_runs(state.state_details.flow_run_id)["prepare_data"]
    assert tr.run_count == 1 and tr.state.name == "TimedOut", (tr.run_count, tr.state)
