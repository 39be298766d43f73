"""The linearize flow on the real stack with a tiny model: registration, idempotent re-runs,
the pyfunc model, S3 outage, a killed worker (its zombie run crashed, the next run resumed),
and bad input.

Each run takes seconds of compute; most of a test's time is Prefect and process start-up.
"""

from __future__ import annotations

import contextvars
import os
import signal
import threading
import time
from pathlib import Path
from uuid import UUID

import pytest

from helpers import descendant_pids, wait_for
from tiny import tiny_tree, wait_flow_run, write_config

pytestmark = pytest.mark.stack
REPO = Path(__file__).resolve().parents[2]


def _logs(flow_run_id) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(
            flow_run_id=LogFilterFlowRunId(any_=[UUID(str(flow_run_id))])))
    return [log.message for log in logs]


def _logs_with(flow_run_id, *needles: str, timeout: float = 20) -> str:
    """The flow run's log text once it holds every needle (logs reach the API in batches)."""
    deadline = time.monotonic() + timeout
    while True:
        text = "\n".join(_logs(flow_run_id))
        if all(n in text for n in needles) or time.monotonic() > deadline:
            return text
        time.sleep(1)


def _task_runs(flow_run_id) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[UUID(str(flow_run_id))])))
    return {tr.name: tr for tr in runs}


def _versions(name: str) -> list:
    from tasks.tracking import client

    return client().search_model_versions(f"name = '{name}'")


def test_cli_run_registers_one_version_with_metrics_and_artifacts(stack, tiny_root, tiny_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from tasks import artifacts, step_artifacts
    from tasks.tracking import client

    run = tiny_run["flow_run"]
    assert run.state.is_completed(), (run.state, _logs(run.id)[-30:])
    assert run.work_pool_name == "local"
    (mv,) = _versions("lolcats-tiny-cli")
    assert mv.version == "1" and mv.run_id
    c = client()
    mv = c.get_model_version("lolcats-tiny-cli", "1")
    assert {"candidate", "champion"} <= set(mv.aliases)  # the tiny config's gate is loose
    assert mv.tags["lolcats.base_model"] == str(tiny_root / "base")
    assert mv.tags["lolcats.base_revision"] == "local"
    assert len(mv.tags["lolcats.data_fingerprint"]) == 64 and mv.tags["lolcats.code_commit"]
    assert float(mv.tags["metric.perplexity"]) > 0 and mv.tags["gate.passed"] == "true"
    assert "| metric | model | teacher |" in mv.description

    mrun = c.get_run(mv.run_id)
    assert mrun.data.tags["prefect.flow_run_id"] == str(run.id)
    m = mrun.data.metrics
    for key in ("stage1.mse/layer_0", "stage1.final_mse/layer_1", "stage1.train_loss",
                "stage2.train_loss", "teacher.perplexity", "linearized.perplexity", "perplexity"):
        assert key in m, f"metric {key} missing: {sorted(m)}"
    assert mrun.data.params["name"] == "tiny-cli"
    files = {a.path for top in ("plots", "eval") for a in c.list_artifacts(mv.run_id, top)}
    assert "plots/stage1" in files and any(f.startswith("eval/linearized") for f in files)

    # every finished step is a complete artifact in S3; trainer checkpoints were shipped
    for step_dir in (tiny_root / "runs" / "tiny-cli").iterdir():
        key = step_artifacts.step_key("tiny-cli", step_dir)
        manifest = artifacts.read_manifest(key)
        assert manifest is not None, f"{key} not complete in S3"
        assert "done.json" in manifest["files"] and not any(f.startswith("trainer/") for f in manifest["files"])
        if step_dir.name.startswith("stage"):
            assert artifacts.is_complete(step_artifacts.checkpoint_key("tiny-cli", step_dir))

    with get_client(sync_client=True) as pc:
        arts = pc.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    kinds = {a.key: a for a in arts}
    assert "teacher" in kinds["evaluation-tiny-cli"].data and "registered: models:/lolcats-tiny-cli/1" \
        in kinds["linearize-summary-tiny-cli"].data
    assert "#/models/lolcats-tiny-cli/versions/1" in kinds["model-version-tiny-cli"].data
    print(f"CLI deployment run (worker): {tiny_run['seconds']:.1f} s")


def test_rerun_skips_every_step_and_registers_nothing(stack, tiny_root, tiny_run, tiny_deployment):
    from flows.linearize import linearize

    assert tiny_run["flow_run"].state.is_completed()
    done = {p: p.stat().st_mtime_ns for p in (tiny_root / "runs" / "tiny-cli").glob("*/done.json")}
    t0 = time.monotonic()
    state = linearize(config=str(tiny_deployment["config"]), return_state=True)
    took = time.monotonic() - t0
    assert state.is_completed(), state
    out = state.result()
    assert out["created"] is False and out["registered"] == "models:/lolcats-tiny-cli/1"
    assert len(_versions("lolcats-tiny-cli")) == 1
    assert {p: p.stat().st_mtime_ns for p in done} == done, "a finished step was redone"
    trs = _task_runs(state.state_details.flow_run_id)
    assert len(trs) == 8 and {t.state.name for t in trs.values()} == {"Cached"}, trs  # Prefect's cache
    assert took < 60, f"a no-op re-run took {took:.0f} s"
    print(f"no-op re-run: {took:.1f} s")
    from tasks.tracking import client

    run_tags = client().get_run(out["mlflow_run_id"]).data.tags
    assert run_tags.get("lolcats.outcome") == "reused"  # no-op runs are easy to filter out
    exp = client().get_experiment_by_name("lolcats-tiny-cli")
    kept = client().search_runs([exp.experiment_id], filter_string="tags.`lolcats.outcome` = 'registered'")
    assert [r.info.run_id for r in kept] != [] and out["mlflow_run_id"] not in {r.info.run_id for r in kept}


def test_champion_pyfunc_generates_and_evaluate_flow(stack, tiny_run, tiny_deployment):
    import mlflow

    from flows.evaluate import evaluate

    model = mlflow.pyfunc.load_model("models:/lolcats-tiny-cli@champion")
    out = model.predict(["Hello, my name is"], params={"max_new_tokens": 4})
    assert isinstance(out, list) and len(out) == 1 and isinstance(out[0], str) and out[0]

    res = evaluate(config=str(tiny_deployment["config"]), version="champion")
    assert res["version"] == 1 and res["metrics"]["perplexity"] > 0
    from tasks.tracking import client

    assert "eval.perplexity" in client().get_model_version("lolcats-tiny-cli", "1").tags


def _stage1_checkpoint_key(root: Path, run: str) -> str | None:
    from tasks import step_artifacts

    dirs = list((root / "runs" / run).glob("stage1-*"))
    return step_artifacts.checkpoint_key(run, dirs[0]) if dirs else None


def test_s3_outage_mid_run_is_retried_and_nothing_partial_registered(stack, tiny_root, monkeypatch):
    """S3 stops while stage 1 ships checkpoints; stage 1 ends while it is down, so its output
    upload fails and the task fails once; S3 comes back and the retried task succeeds.

    Stage 1 (the flow runs in this process) waits after shipping its first checkpoint until S3
    is down: the outage lands mid-stage on any machine, however fast its steps."""
    from flows.linearize import linearize
    from tasks import artifacts, step_artifacts

    monkeypatch.setenv("LOLCATS_S3_RETRY_SECONDS", "3")
    monkeypatch.setenv("LOLCATS_TASK_RETRY_DELAYS", "5,10,20,40")
    s3_down, ship = threading.Event(), step_artifacts.ship_checkpoint

    def ship_then_wait_for_the_outage(trainer_dir, key):
        ship(trainer_dir, key)
        s3_down.wait(120)  # set by the test once S3 is down

    monkeypatch.setattr(step_artifacts, "ship_checkpoint", ship_then_wait_for_the_outage)
    tree = tiny_tree("tiny-s3", tiny_root / "base", tiny_root, max_steps=150, eval_every=100)
    cfg = write_config(tiny_root / "tiny-s3.yaml", tree)
    result, ctx = {}, contextvars.copy_context()  # the stack's Prefect settings live in a contextvar
    th = threading.Thread(target=lambda: ctx.run(
        lambda: result.update(state=linearize(config=str(cfg), return_state=True))))
    th.start()
    try:
        key = wait_for(lambda: (k := _stage1_checkpoint_key(tiny_root, "tiny-s3")) and
                        artifacts.is_complete(k) and k, 120, "the first shipped checkpoint")
        stack.sh("down", "s3")
        s3_down.set()
        stage1 = next((tiny_root / "runs" / "tiny-s3").glob("stage1-*"))
        wait_for(lambda: (stage1 / "done.json").exists(), 120, "stage 1 to finish locally")
        time.sleep(4)  # its upload is now failing (3 s retry deadline)
    finally:
        s3_down.set()
        stack.sh("up", "s3")
    th.join(300)
    state = result["state"]
    assert state.is_completed(), state
    fr_id = state.state_details.flow_run_id
    trs = _task_runs(fr_id)
    at = [t for n, t in trs.items() if n.startswith("attention_transfer")][0]
    assert at.run_count >= 2 and at.state.is_completed(), "attention_transfer was not retried"
    logs = _logs_with(fr_id, "could not ship the step", "done before (local), skipping")
    assert "could not ship the step" in logs and "done before (local), skipping" in logs
    # nothing partial: every artifact is complete and verifies; one version, complete model
    for d in (tiny_root / "runs" / "tiny-s3").iterdir():
        artifacts.download_dir(step_artifacts.step_key("tiny-s3", d), tiny_root / "verify" / d.name)
    (mv,) = _versions("lolcats-tiny-s3")
    import mlflow

    got = Path(mlflow.artifacts.download_artifacts(artifact_uri="models:/lolcats-tiny-s3/1",
                                                   dst_path=str(tiny_root / "verify-model")))
    from tasks.pyfunc_logging import checkpoint_in

    local = stage1.parent / Path(state.result()["stage2_dir"]).name / "model"
    for f in local.iterdir():
        assert (checkpoint_in(got) / f.name).read_bytes() == f.read_bytes()
    assert key


def test_killed_worker_run_is_crashed_and_the_next_run_resumes_from_its_checkpoint(stack, tiny_root):
    """SIGKILL the worker (and its flow-run process) during attention transfer of a run of a
    deployment that runs one at a time (concurrency 1, ENQUEUE, as in deploy/prefect.yaml), wipe
    the local stage-1 folder (as if the next run ran on another machine) and submit the next run
    right after the kill. Nobody cancels the killed run: it holds the deployment's slot, so the
    next run waits behind it, until (within the zombie window) the automation of deploy/stack.py
    marks it Crashed (tests/service/test_zombie_runs.py). The next run then starts and completes:
    stage 1 resumes from the checkpoint shipped to S3, data preparation is not redone."""
    import json
    import re
    import shutil

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.deployments import run_deployment

    from flows.linearize import linearize
    from tasks import artifacts
    from test_zombie_runs import heartbeats

    tree = tiny_tree("tiny-kill", tiny_root / "base", tiny_root, max_steps=300, eval_every=100)
    cfg = write_config(tiny_root / "tiny-kill.yaml", tree)
    linearize.from_source(source=str(REPO), entrypoint="flows/linearize.py:linearize").deploy(
        name="tiny-one-at-a-time", work_pool_name="local", parameters={"config": str(cfg)},
        job_variables={"env": {"LOLCATS_TASK_RETRY_DELAYS": "2,4,8", "OMP_NUM_THREADS": "2"}},
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy="ENQUEUE"),
        print_next_steps=False, ignore_warnings=True)
    name = "linearize/tiny-one-at-a-time"
    first = run_deployment(name, parameters={"config": str(cfg)}, timeout=0)
    wait_for(lambda: heartbeats(stack, first.id) > 0, 120, "its first heartbeat (sent as it starts)", poll=0.5)
    key = wait_for(lambda: (k := _stage1_checkpoint_key(tiny_root, "tiny-kill")) and
                    artifacts.is_complete(k) and k, 180, "the first shipped stage-1 checkpoint", poll=0.05)
    stage1 = next((tiny_root / "runs" / "tiny-kill").glob("stage1-*"))
    assert not (stage1 / "done.json").exists(), "stage 1 finished before the kill: lengthen it"
    worker = stack.pid("worker")
    for pid in [worker] + descendant_pids(worker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    killed = time.monotonic()
    data_manifests = {p: p.stat().st_mtime_ns for p in (tiny_root / "data").glob("*/lolcats_data.json")}
    shutil.rmtree(stage1)
    stack.sh("up", "worker")
    second = run_deployment(name, parameters={"config": str(cfg)}, timeout=0)
    with get_client(sync_client=True) as client:
        time.sleep(5)  # the new worker has polled: the second run must wait for the slot
        assert client.read_flow_run(first.id).state.is_running()
        assert not client.read_flow_run(second.id).state.is_final()
        crashed = wait_for(lambda: (s := client.read_flow_run(first.id).state).is_final() and s,
                           90, "the zombie run to be marked Crashed", poll=0.5)
        took = time.monotonic() - killed
    assert crashed.is_crashed(), crashed
    assert "no heartbeat for 50 s" in (crashed.message or ""), crashed.message
    assert took <= 50 + 30 + 10, f"crashed {took:.0f} s after the kill"  # window + beat + evaluation
    print(f"zombie run Crashed {took:.1f} s after the kill")

    run = wait_flow_run(second.id, timeout=300)
    logs = _logs_with(second.id, "resuming from the step-")
    assert run.state.is_completed(), (run.state, logs[-3000:])
    assert "attention_transfer: resuming from the step-" in logs and "(downloaded from S3)" in logs, logs[-3000:]
    resumed_at = int(re.search(r"resuming from the step-(\d+) checkpoint", logs).group(1))
    assert 100 <= resumed_at < 300
    prepare = [t for n, t in _task_runs(second.id).items() if n.startswith("prepare_data")]
    assert [t.state.name for t in prepare] == ["Cached"]  # data preparation reused
    assert {p: p.stat().st_mtime_ns for p in data_manifests} == data_manifests
    done = json.loads((stage1 / "done.json").read_text())
    assert done["steps"] == 300 and done["history"][0]["step"] == 100  # history kept across the kill
    assert len(_versions("lolcats-tiny-kill")) == 1
    assert key
    print(f"next run completed {time.monotonic() - killed:.1f} s after the kill")


def test_bad_input_fails_fast_with_a_clear_error(stack, tiny_root, tmp_path, monkeypatch):
    from flows.linearize import linearize

    def error_of(**params) -> str:
        t0 = time.monotonic()
        state = linearize(**params, return_state=True)
        assert state.is_failed() and time.monotonic() - t0 < 30
        with pytest.raises(Exception) as exc:
            state.result()
        return str(exc.value)

    msg = error_of(preset="no-such-model")  # the flow's parameter type lists the choices
    assert "preset: Input should be" in msg and "smollm2-135m" in msg and "qwen2.5-0.5b" in msg
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: [unclosed\n")
    assert "not valid YAML" in error_of(config=str(bad))
    tree = tiny_tree("tiny-bad", tiny_root / "base", tiny_root)
    tree["stage1"]["learning_rate"] = 0.1
    msg = error_of(config=str(write_config(tmp_path / "typo.yaml", tree)))
    assert "unknown setting" in msg and "learning_rate" in msg
    tree = tiny_tree("tiny-bad", tiny_root / "base", tiny_root)
    msg = error_of(config=str(write_config(tmp_path / "ok.yaml", tree)), profile="gpu")
    assert "unknown profile 'gpu'" in msg

    good = str(write_config(tmp_path / "ok.yaml", tree))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    msg = error_of(config=good)
    assert "MLflow tracking server is not reachable" in msg and "deploy/stack.sh up" in msg
    monkeypatch.setenv("MLFLOW_TRACKING_URI", stack.mlflow_uri)
    monkeypatch.setenv("LOLCATS_S3_ENDPOINT", "http://127.0.0.1:9")
    msg = error_of(config=good)
    assert "S3 is not reachable" in msg and "LOLCATS_S3_ENDPOINT" in msg
