"""Prefect on the real server and worker: a deployment run through the `local` pool (watched
as the main job watches it), task retries, and deploy/prefect.yaml deployed as written (pools,
schedules, concurrency, pull step).

The flows below are loaded by the worker's flow-run processes too, so this module imports
nothing heavy at the top.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect import flow, task

pytestmark = pytest.mark.stack
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


@task
def logging_step(n: int) -> int:
    from prefect import get_run_logger

    get_run_logger().info("progress step %d of 2", n)
    return n


@flow(name="lolcats-smoke")
def smoke_flow(out: str, x: int = 1) -> int:
    """Writes where and how it ran, so the test can tell the worker ran it; two tasks that log,
    for the watcher's progress lines."""
    Path(out).write_text(json.dumps({"x": x, "pid": os.getpid(), "cwd": os.getcwd()}))
    logging_step(1)
    logging_step(2)
    return x + 1


@flow(name="linearize")
def linearize_stand_in(preset: str, profile: str | None = None, record: str | None = None,
                       hold: float = 0.0) -> str:
    """Stands in for flows/linearize.py:linearize when deploying deploy/prefect.yaml here: it
    checks that the pull step and job variables took effect and records its run interval."""
    start = time.time()
    assert os.getcwd() == os.environ["LOLCATS_REPO"], "pull step did not set the working dir"
    assert os.environ.get("OMP_NUM_THREADS") == "2", "job_variables env not applied"
    time.sleep(hold)
    if record:
        with open(record, "a") as f:
            f.write(json.dumps({"preset": preset, "start": start, "end": time.time()}) + "\n")
    return preset


def test_deployment_runs_through_the_worker_and_watch_prints_its_progress(stack, tmp_path, capsys):
    """A deployment's run goes through the `local` pool's worker (in its subprocess, with the run's
    parameters); `python -m flows.watch RUN` (the main job's wait) shows each task's states and the
    run's log lines as they come, then the final state. One run: a worker run's start-up is most
    of its time."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    from flows import watch

    deployable = smoke_flow.from_source(source=str(HERE), entrypoint="test_prefect.py:smoke_flow")
    deployable.deploy(name="smoke", work_pool_name="local", print_next_steps=False,
                      ignore_warnings=True)
    out = tmp_path / "ran.json"
    t0 = time.monotonic()
    run = run_deployment("lolcats-smoke/smoke", parameters={"out": str(out), "x": 41}, timeout=0)
    assert watch.main([str(run.id), "--timeout", "120"]) == 0
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run.id)
    assert run.state.is_completed(), run.state
    assert run.work_pool_name == "local"
    ran = json.loads(out.read_text())
    assert ran["x"] == 41 and ran["pid"] != os.getpid()  # ran in the worker's subprocess
    watched = capsys.readouterr().out
    assert "task logging_step-" in watched and ": Completed" in watched
    assert "progress step 1 of 2" in watched and "progress step 2 of 2" in watched
    assert watched.index("progress step 1 of 2") < watched.index("progress step 2 of 2")
    assert f"flow run {run.name}: Completed" in watched
    print(f"deployment run round trip (watched): {time.monotonic() - t0:.1f} s")


def test_task_that_fails_once_is_retried(stack, tmp_path):
    from prefect.client.orchestration import get_client

    marker = tmp_path / "attempts"

    @task(retries=2, retry_delay_seconds=0.2)
    def flaky() -> str:
        n = int(marker.read_text()) + 1 if marker.exists() else 1
        marker.write_text(str(n))
        if n == 1:
            raise ConnectionError("transient failure on the first attempt")
        return f"ok after {n}"

    @flow(name="lolcats-retry")
    def retry_flow() -> str:
        return flaky()

    state = retry_flow(return_state=True)
    assert state.is_completed() and state.result() == "ok after 2"
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
        assert run.state.is_completed()
        (tr,) = [t for t in client.read_task_runs() if t.flow_run_id == run.id]
        assert tr.run_count == 2 and tr.state.is_completed()


def test_prefect_yaml_deploys_as_written(stack, tmp_path):
    """`prefect deploy --all` of deploy/prefect.yaml (entrypoints pointed at the stand-in
    flow): four deployments with the right pools, cron schedules, parameters, concurrency
    limit 1 with ENQUEUE; the CPU one runs on the local worker, and two runs never overlap."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    text = (REPO / "deploy" / "prefect.yaml").read_text()
    assert text.count("entrypoint: flows/linearize.py:linearize") == 5
    cfg = tmp_path / "prefect.yaml"
    cfg.write_text(text.replace("flows/linearize.py:linearize",
                                "tests/service/test_prefect.py:linearize_stand_in"))
    env = stack.env | {"PREFECT_API_URL": stack.prefect_api,
                       "PREFECT_HOME": os.environ["PREFECT_HOME"]}
    out = subprocess.run([str(Path(sys.executable).parent / "prefect"),
                          "--no-prompt", "deploy", "--all", "--prefect-file", str(cfg)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr

    expected = {"llama3-8b": "gpu", "mistral-7b": "gpu", "llama3.2-1b": "gpu", "qwen2.5-0.5b": "gpu",
                "smollm2-135m": "local"}
    profiles = {"smollm2-135m": "cpu-smoke"}
    with get_client(sync_client=True) as client:
        for name, pool in expected.items():
            d = client.read_deployment_by_name(f"linearize/{name}")
            assert d.work_pool_name == pool and d.parameters == {"preset": name, "profile": profiles.get(name, "gpu")}
            assert d.global_concurrency_limit.limit == 1
            assert d.concurrency_options.collision_strategy == "ENQUEUE"
            assert len(d.schedules) == 1 and d.schedules[0].active
            assert d.schedules[0].schedule.cron.count(" ") == 4

    record = tmp_path / "runs.jsonl"
    params = {"preset": "smollm2-135m", "record": str(record), "hold": 1.0}
    runs = [run_deployment("linearize/smollm2-135m", parameters=params, timeout=0) for _ in range(2)]
    with get_client(sync_client=True) as client:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            states = [client.read_flow_run(r.id).state for r in runs]
            if all(s.is_final() for s in states):
                break
            time.sleep(1)
    assert all(s.is_completed() for s in states), states
    a, b = sorted((json.loads(line) for line in record.read_text().splitlines()),
                  key=lambda r: r["start"])
    assert a["end"] <= b["start"], f"runs of one deployment overlapped: {a} {b}"
